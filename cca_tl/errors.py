"""Errors that tell the user what went wrong and what to do about it.

Every error raised on bad input derives from :class:`CCAError` so notebooks can catch them as one family,
and each subclass also derives from the builtin a Python user would expect (``ValueError``, ``KeyError``
...), so generic handlers keep working.
"""

from __future__ import annotations


class CCAError(Exception):
    """Base class of every error cca_tl raises on bad input."""


class ModelLoadError(CCAError, ValueError):
    """A model could not be loaded: unknown name, missing optional extra, corrupt or unreadable file."""


class MaskMismatchError(CCAError, ValueError):
    """A component mask does not fit the model (or the other mask) it is used with."""


class ExportError(CCAError, ValueError):
    """A HookedTransformer cannot be written back to HuggingFace format faithfully."""


class RunConfigMismatch(CCAError):
    """The run directory was started with a different config."""


class EmptyMaskError(CCAError):
    """DCM kept no component: an update would change nothing."""


class EmptyLocalizationError(CCAError):
    """No right/wrong trace pair was found, so there is nothing to learn a mask from."""


class DeviceError(CCAError, ValueError):
    """The requested device or dtype is not available here (no GPU, a dtype the device cannot run)."""


class CorruptFileError(CCAError, ValueError):
    """A file a run wrote (a config, a stage marker, a result) cannot be read back: the message names it and
    what to do."""


class LockedError(CCAError, RuntimeError):
    """Another process is writing the same run directory (or sweep cell); the message names it."""


class DiskWriteError(CCAError, OSError):
    """The disk refused a write (full, over quota, read-only, not permitted, file too large); what was
    finished before it is kept, and the same command resumes once the disk takes writes again."""


class OutOfMemory(CCAError, MemoryError):
    """A stage ran out of (GPU or CPU) memory; the run directory keeps every finished stage."""


class NonFiniteLossError(CCAError, FloatingPointError):
    """The loss became NaN/inf. ``step`` says when; ``last_good`` holds the state before that step."""

    def __init__(self, message: str, step: int, last_good: object = None):
        super().__init__(message)
        self.step = step
        self.last_good = last_good


class BackendError(CCAError, ValueError):
    """The requested TransformerLens backend is not installed here, or cannot serve this model or operation."""
