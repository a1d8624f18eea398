"""User-facing errors.

Every failure a user can fix (missing file, bad config, corrupt checkpoint, wrong shape) raises
:class:`UsfastError` with a one-line message that names the offending file/key and the fix. The CLI
prints the message without a traceback and exits with status 2; library callers can catch it.
"""

from __future__ import annotations


class UsfastError(Exception):
    """An error caused by user input, with a one-line message that says what to do."""


class ConfigError(UsfastError):
    """A config file or override is invalid (unknown key, wrong type)."""


class DataError(UsfastError):
    """A dataset, image or video cannot be read."""


class CheckpointError(UsfastError):
    """A checkpoint file cannot be loaded into the requested model."""


class BackendUnavailableError(UsfastError):
    """An optional backend (CUDA, Triton, DALI, TensorRT, ONNX Runtime provider) is not usable here."""
