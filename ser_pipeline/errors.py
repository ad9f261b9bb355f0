"""Project errors. Every error names the file, field or value that is wrong."""

from __future__ import annotations


class SerError(Exception):
    """Base class of every error the project raises on purpose (the CLI prints it, exit 2)."""


class ConfigError(SerError, ValueError):
    """An invalid parameter: the message names the field and the bad value."""


class CorpusLayoutError(SerError):
    """A corpus folder is missing or does not match the adapter's published layout."""


class AudioError(SerError):
    """A recording cannot be used: unreadable, empty, silent or non-finite."""


class ManifestError(SerError):
    """A manifest is missing, malformed, or has duplicate utterance ids."""


class StoreError(SerError):
    """The feature store cannot be read or written."""


class ProtocolError(SerError):
    """An evaluation protocol cannot be formed on this manifest."""


class TrainingError(SerError):
    """Training failed (NaN loss, missing device, ...)."""


class TrackingError(SerError):
    """The tracking server is unreachable or rejected a request."""
