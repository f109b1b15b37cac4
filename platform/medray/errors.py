"""User-facing error types: each names the input at fault and, where it can, the fix.

Policy: a user mistake (bad config, unreadable file, region off a slide) raises a
``MedrayError`` subclass; ``assert`` is kept for internal invariants only.
"""


class MedrayError(ValueError):
    """Base of every error a user can cause and fix."""


class ConfigError(MedrayError):
    """A configuration file or override is invalid."""


class StorageError(MedrayError):
    """A URI cannot be resolved, read or written."""


class SlideError(MedrayError):
    """A slide cannot be opened or read as asked."""


class AnnotationError(MedrayError):
    """An annotation file is malformed or does not fit its slide."""


class DataError(MedrayError):
    """An input image, volume or manifest entry is wrong or corrupt."""


class ModelError(MedrayError):
    """A model name, weight file or model URI is wrong."""
