"""Seeded stripe simulation on numpy sinogram patches (no dask: the torch bridge simulates on the fly with it).

:func:`simulate_stripes` draws full and partial stripes (1-10 columns wide), multiplicative ones of either sign,
and dead (zero) and hot (saturated) columns, from ``np.random.default_rng([seed, *ids])``, so one patch's
stripes depend only on its ids and the seed, never on the order or the worker that makes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ParameterError

__all__ = ["KINDS", "StripeParams", "simulate_stripes"]


@dataclass(frozen=True)
class StripeParams:
    """What :func:`simulate_stripes` draws from, per patch.

    ``count``: stripes per patch, uniform in ``[min, max]``. ``width``: columns per stripe, uniform in
    ``[min, max]``. ``contrast``: relative change of a multiplicative stripe, uniform in ``[min, max]``,
    brighter or darker at random. ``kinds``: the relative odds of ``full``, ``partial`` (a non-empty range of
    at least ``min_partial`` of the angles), ``dead`` (zero) and ``hot`` (the patch's maximum) stripes.
    """

    count: tuple[int, int] = (1, 3)
    width: tuple[int, int] = (1, 10)
    contrast: tuple[float, float] = (0.02, 0.2)
    kinds: tuple[float, float, float, float] = (0.45, 0.35, 0.1, 0.1)
    min_partial: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.count[0] <= self.count[1]:
            raise ParameterError(f"stripe count range must be 0 <= min <= max, got {self.count}")
        if not 1 <= self.width[0] <= self.width[1]:
            raise ParameterError(f"stripe width range must be 1 <= min <= max, got {self.width}")
        if not 0 < self.contrast[0] <= self.contrast[1] < 1:
            raise ParameterError(f"stripe contrast range must be 0 < min <= max < 1, got {self.contrast}")
        if len(self.kinds) != 4 or min(self.kinds) < 0 or sum(self.kinds) <= 0:
            raise ParameterError(f"stripe kinds are 4 non-negative odds (full, partial, dead, hot): {self.kinds}")
        if not 0 < self.min_partial <= 1:
            raise ParameterError(f"min_partial must be in (0, 1], got {self.min_partial}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-clean."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StripeParams:
        """The inverse of :meth:`as_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})  # type: ignore[arg-type]


KINDS = ("full", "partial", "dead", "hot")


def simulate_stripes(
    clean: np.ndarray, seed: int, ids: Sequence[int], params: StripeParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Add seeded stripes to a clean sinogram patch ``(angle, detector_x)``.

    Parameters
    ----------
    clean : numpy.ndarray
        The patch (any float dtype; the result is float32).
    seed : int
        The run's seed.
    ids : sequence of int
        What identifies the patch (e.g. ``(sinogram, patch)``): the generator is
        ``np.random.default_rng([seed, *ids])``, so the same seed and ids give the same stripes, in any order.
    params : StripeParams, optional

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The striped patch (float32) and the boolean mask of the pixels a stripe changed.

    Examples
    --------
    >>> clean = np.ones((100, 64), np.float32)
    >>> stripe, mask = simulate_stripes(clean, seed=0, ids=(3, 1))
    >>> bool(mask.any()), bool((stripe[~mask] == 1).all())
    (True, True)
    >>> np.array_equal(simulate_stripes(clean, 0, (3, 1))[0], stripe)
    True
    """
    p = params or StripeParams()
    clean = np.asarray(clean, dtype=np.float32)
    if clean.ndim != 2:
        raise ParameterError(f"a sinogram patch is 2-D (angle, detector_x), got shape {clean.shape}")
    n_angles, width = clean.shape
    rng = np.random.default_rng([int(seed), *(int(i) for i in ids)])
    stripe = clean.copy()
    mask = np.zeros(clean.shape, dtype=bool)
    odds = np.asarray(p.kinds, np.float64) / sum(p.kinds)
    top = float(clean.max()) if clean.size else 0.0
    for _ in range(int(rng.integers(p.count[0], p.count[1] + 1))):
        # Every draw is made whatever the kind, so one stripe's kind never shifts the next one's numbers.
        kind = KINDS[int(rng.choice(len(KINDS), p=odds))]
        w = min(int(rng.integers(p.width[0], p.width[1] + 1)), width)
        x0 = int(rng.integers(0, width - w + 1))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        contrast = float(rng.uniform(*p.contrast))
        shortest = max(1, int(np.ceil(p.min_partial * n_angles)))
        a0 = int(rng.integers(0, n_angles - shortest + 1))
        a1 = int(rng.integers(a0 + shortest, n_angles + 1))
        rows = slice(a0, a1) if kind == "partial" else slice(0, n_angles)
        cols = slice(x0, x0 + w)
        if kind == "dead":
            stripe[rows, cols] = 0
        elif kind == "hot":
            stripe[rows, cols] = top
        else:
            stripe[rows, cols] *= np.float32(1 + sign * contrast)
        mask[rows, cols] = True
    return stripe, mask
