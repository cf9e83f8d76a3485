"""The exception tree of beatmon: one root, one subclass per kind of failure."""


class BeatmonError(Exception):
    """Root of every error beatmon raises on purpose."""


class DataError(BeatmonError):
    """A beat file is missing or malformed, or its labels do not fit the request."""


class BundleError(BeatmonError):
    """A model bundle is missing, incomplete, tampered with or unreadable."""


class MessageError(BeatmonError):
    """A Kafka message cannot be decoded into a valid beat or alert."""


class ConfigError(BeatmonError):
    """A setting is unknown, of the wrong type or out of range."""


class TransportError(BeatmonError):
    """A message broker cannot be reached, or refuses or loses messages."""
