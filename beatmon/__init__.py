"""beatmon: a streaming ECG beat monitor built on autoencoders of normal beats."""

__version__ = "0.1.0"
