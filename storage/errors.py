"""The errors of zarrforge's storage layer.

Every error a user can cause derives from :class:`ZarrforgeError`, and also from the builtin exception that
callers would naturally catch (``FileNotFoundError``, ``ValueError``, ...), as zarr-python does. Messages are
one line: what was found, where, and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "MissingDependencyError",
    "SourceError",
    "SourceNotFoundError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreMismatchError",
    "ZarrforgeError",
]


class ZarrforgeError(Exception):
    """Base class of every error zarrforge raises for bad input or bad state."""


class MissingDependencyError(ZarrforgeError, ImportError):
    """An optional dependency a command needs is not installed; the message names the extra to install."""


class SourceNotFoundError(ZarrforgeError, FileNotFoundError):
    """A source file, glob or dataset path does not exist."""


class SourceError(ZarrforgeError, ValueError):
    """A source file exists but cannot be used: wrong format, truncated, odd shape or dtype, NaNs."""


class StoreError(ZarrforgeError):
    """A training store cannot be created, opened or written."""


class StoreExistsError(StoreError, FileExistsError):
    """The output path exists and is not a zarrforge store that may be resumed or replaced."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was made with other parameters; resuming it would mix two runs."""


class StoreLockedError(StoreError, RuntimeError):
    """Another process is writing the store."""
