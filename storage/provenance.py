"""What made a store: package versions, times, and the fingerprint that decides whether a re-run may resume."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["diff_keys", "fingerprint", "json_clean", "package_versions", "utc_now"]

_PACKAGES = ("zarrforge", "numpy", "dask", "distributed", "xarray", "zarr", "numcodecs")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a store's bytes.

    Examples
    --------
    >>> "zarr" in package_versions()
    True
    """
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def json_clean(value: Any) -> Any:
    """Convert numpy scalars, tuples and paths to plain JSON types; refuse NaN and infinity.

    Zarr v3 attributes are JSON, where NaN is not valid.

    Examples
    --------
    >>> import numpy as np
    >>> json_clean({"a": np.int32(3), "b": (1.5, "x")})
    {'a': 3, 'b': [1.5, 'x']}
    """
    if isinstance(value, Mapping):
        return {str(k): json_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"attribute value {value} is not valid JSON")
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def fingerprint(record: Mapping[str, Any]) -> str:
    """A stable hash of everything that decides a store's content.

    Examples
    --------
    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    """
    text = json.dumps(json_clean(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def diff_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Describe where two nested records differ, e.g. ``["parameters.size: 128 → 64"]``.

    Examples
    --------
    >>> diff_keys({"p": {"size": 128, "stride": 64}}, {"p": {"size": 64, "stride": 64}})
    ['p.size: 128 → 64']
    """
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_keys(a, b, prefix=f"{name}."))
        elif json_clean(a) != json_clean(b):
            text_a, text_b = json.dumps(json_clean(a)), json.dumps(json_clean(b))
            if len(text_a) > 60 or len(text_b) > 60:
                out.append(f"{name} differs")
            else:
                out.append(f"{name}: {text_a} → {text_b}")
    return out
