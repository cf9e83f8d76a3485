"""The model lab: train autoencoders on normal beats, calibrate, evaluate."""
