"""Pipeline settings from the ``zarrforge`` config: defaults, named profiles, and command-line overrides.

``zarrforge.picking`` holds the defaults of ``zarrforge picking`` and ``zarrforge.picking.profiles`` named presets
of the same keys; a value given on the command line beats the profile, which beats the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import config
from .errors import ConfigError

__all__ = ["PickingSettings", "picking_settings"]

_PICKING_KEYS = (
    "micrographs",
    "picks",
    "size",
    "stride",
    "radius",
    "negative-ratio",
    "split",
    "mode",
    "normalize",
    "bin",
)


@dataclass(frozen=True)
class PickingSettings:
    """The resolved settings of one ``zarrforge picking`` run."""

    micrographs: list[str]
    picks: list[str]
    size: int
    stride: int
    radius: float
    negative_ratio: float
    split: tuple[float, float, float]
    mode: Any
    normalize: bool
    bin: int


def picking_settings(profile: str | None = None, **given: Any) -> PickingSettings:
    """Resolve the picking settings: ``given`` (not None) over ``profile`` over the ``zarrforge.picking`` defaults.

    Parameters
    ----------
    profile : str, optional
        A key of ``zarrforge.picking.profiles``.
    **given
        Command-line values by keyword (``negative_ratio=0.5``); ``None`` means not given.

    Raises
    ------
    ConfigError
        An unknown profile or profile key, no micrographs or picks anywhere, or a malformed split.

    Examples
    --------
    >>> s = picking_settings("dense", micrographs=["m/*.mrc"], picks=["p/*.star"], size=64)
    >>> s.size, s.negative_ratio, s.radius
    (64, 1.0, 20.0)
    """
    profiles = config.get("picking.profiles") or {}
    chosen: dict[str, Any] = {}
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(
                f"no picking profile {profile!r} (known: {known}); add it under zarrforge.picking.profiles"
            )
        chosen = dict(profiles[profile] or {})
        unknown = sorted(set(chosen) - set(_PICKING_KEYS))
        if unknown:
            raise ConfigError(f"picking profile {profile!r}: unknown setting {unknown[0]!r}")

    def value(key: str) -> Any:
        cli = given.get(key.replace("-", "_"))
        if cli is not None:
            return cli
        if key in chosen:
            return chosen[key]
        return config.get(f"picking.{key}")

    micrographs, picks = value("micrographs"), value("picks")
    if not micrographs:
        raise ConfigError("no micrographs: give them as arguments or set zarrforge.picking.micrographs")
    if not picks:
        raise ConfigError("no pick files: give --picks or set zarrforge.picking.picks")
    return PickingSettings(
        micrographs=_as_list(micrographs),
        picks=_as_list(picks),
        size=int(value("size")),
        stride=int(value("stride")),
        radius=float(value("radius")),
        negative_ratio=float(value("negative-ratio")),
        split=_split(value("split")),
        mode=str(value("mode")),
        normalize=bool(value("normalize")),
        bin=int(value("bin")),
    )


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _split(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` or a list of three shares."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        shares = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"split {value!r}: give three numbers train,val,test, e.g. 0.8,0.1,0.1") from None
    if len(shares) != 3:
        raise ConfigError(f"split {value!r}: give three numbers train,val,test, e.g. 0.8,0.1,0.1")
    if any(not 0 <= s <= 1 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        total = sum(shares)
        raise ConfigError(f"split {value!r}: the shares must be between 0 and 1 and sum to 1 (got {total:g})")
    return shares[0], shares[1], shares[2]
