"""Exceptions raised for bad input or unavailable resources.

Every user-facing error derives from `AlignprobeError`; the CLI prints its
message without a traceback. Messages say what was wrong and how to fix it.
"""


class AlignprobeError(Exception):
    """Base class for errors the user can act on."""


class UnknownEncoderError(AlignprobeError, KeyError):
    """A name that is neither a registered encoder, a source-prefixed id, nor a local directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EncoderNotAvailableError(AlignprobeError):
    """The encoder's weights are not available locally and cannot be downloaded."""


class DataError(AlignprobeError):
    """A data source is missing, malformed, or yields unusable samples."""


class ImageLoadError(DataError):
    """One image is missing or cannot be decoded."""

    def __init__(self, sample_id: str, path: str, reason: str):
        self.sample_id, self.path, self.reason = sample_id, path, reason
        super().__init__(f"image {sample_id!r} ({path}) could not be loaded: {reason}")


class CacheMismatchError(AlignprobeError):
    """A cached embedding exists but was made with different settings and recompute is off."""


class ValidationError(AlignprobeError, ValueError):
    """An argument has the wrong shape, type or value."""


class NotFittedError(AlignprobeError, RuntimeError):
    """A model was used before `fit`."""


class CacheDamagedError(CacheMismatchError):
    """A cache entry is damaged (truncated shard or manifest) and recompute is off."""


class OutputNotWritableError(AlignprobeError):
    """An output or cache location cannot be written (below a file, read-only, missing permission)."""


class DamagedRecordError(AlignprobeError):
    """A result record exists but cannot be read (truncated or not JSON)."""


class ResultNotSavedError(AlignprobeError):
    """A finished result could not be written to its place; the message says where it was kept."""
