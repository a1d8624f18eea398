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


class OutputPathError(UsfastError):
    """An output path cannot be written (a file where a folder is wanted, read-only, under a file)."""


class LockedError(UsfastError):
    """Another live process holds the lock of an output folder."""


# Exit statuses of the ``usfast`` command (documented in docs/ARCHITECTURE.md, "Conventions").
EXIT_OK = 0
EXIT_USER_ERROR = 2  # UsfastError: one line, no traceback
EXIT_PARTIAL = 3  # finished, but some inputs failed or were used partially
EXIT_NO_OUTPUT = 4  # finished, but no input could be used (0 rows)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``kill``) raised as an interrupt, so that every
    ``except KeyboardInterrupt`` path that commits finished work runs for it too."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def note_saved(exc: BaseException, text: str) -> BaseException:
    """Attach what an interrupted job saved and how to resume (the CLI prints it on exit)."""
    exc.usfast_saved = text  # type: ignore[attr-defined]
    return exc


def saved_note(exc: BaseException) -> str | None:
    return getattr(exc, "usfast_saved", None)
