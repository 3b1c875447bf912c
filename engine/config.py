"""zarrforge's settings, the Dask way: defaults from ``zarrforge.yaml`` merged into ``dask.config``.

Users override them in ``~/.config/dask/zarrforge.yaml``, with ``DASK_ZARRFORGE__CLUSTER=...`` environment
variables, or with ``dask.config.set``; CLI options override all of these. Values are looked up at call time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.config
import yaml

__all__ = ["get", "section"]

_DEFAULTS = Path(__file__).with_name("zarrforge.yaml")

with _DEFAULTS.open() as f:
    _defaults = yaml.safe_load(f)

dask.config.update_defaults(_defaults)


def get(key: str, override: Any = None) -> Any:
    """Look up ``zarrforge.<key>``, unless ``override`` is given (not None).

    Examples
    --------
    >>> get("store.codec")
    'blosc-lz4'
    >>> get("store.codec", "zstd")
    'zstd'
    """
    if override is not None:
        return override
    # Fall back to the packaged default: a ``dask.config.set`` entered before this module was imported
    # removes the whole ``zarrforge`` section again when it exits.
    return dask.config.get(f"zarrforge.{key}", default=_packaged(key))


def _packaged(key: str) -> Any:
    node: Any = _defaults["zarrforge"]
    for part in key.split("."):
        node = node[dask.config.canonical_name(part, node)]
    return node


def section() -> dict[str, Any]:
    """The whole effective ``zarrforge`` section (for ``zarrforge config``).

    Merged over the packaged defaults again if a ``dask.config.set`` entered before this module was imported
    removed them when it exited.
    """
    current = dask.config.get("zarrforge", default=None)
    if current is None or "store" not in current:
        dask.config.update_defaults(_defaults)
        current = dask.config.get("zarrforge")
    return dict(current)
