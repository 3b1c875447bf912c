"""Errors raised by graphs for bad parameters or bad data found while computing."""

from __future__ import annotations

from storage.errors import SourceError, ZarrforgeError

__all__ = ["ParameterError", "SourceError"]


class ParameterError(ZarrforgeError, ValueError):
    """A pipeline parameter is invalid for the given input (the message names the parameter)."""
