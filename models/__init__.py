"""The model lab: read beats, train autoencoders on normal beats, calibrate, evaluate."""
