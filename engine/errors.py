"""Errors of the engine: clusters that cannot be started or reached, runs that fail."""

from __future__ import annotations

from storage.errors import ZarrforgeError

__all__ = ["ClusterError", "ConfigError", "RunError", "ZarrforgeError"]


class ClusterError(ZarrforgeError, RuntimeError):
    """A cluster profile is unknown, or its cluster cannot be started or reached."""


class RunError(ZarrforgeError, RuntimeError):
    """A pipeline run failed (the message names the block and the cause)."""


class ConfigError(ZarrforgeError, ValueError):
    """A setting or profile of the ``zarrforge`` config is unknown or invalid."""
