"""3-D augmentations of a voxel subvolume and its rays, applied consistently to both.

Each transform takes and returns a sample dict of :class:`~torch_bridge.VoxelRayDataset`: ``voxels``
``(C, D, H, W)``, ``origins``/``directions`` ``(R, 3)`` in the voxels' ``(z, y, x)`` axes, ``distances``,
``hits`` and ``center`` (the cube's center on every axis, in the rays' frame). Rotations and flips move the
voxels and the rays together, about ``center``, so every ray still meets the same voxel at the same distance.
Random draws use torch's global generator (seeded per DataLoader worker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._torch import torch

__all__ = ["Compose", "NormalizeRayOrigins", "RandomFlip", "RandomRaySubsample", "RandomRotation90"]

Sample = dict[str, Any]
_PLANES = ((0, 1), (0, 2), (1, 2))


class Compose:
    """Apply transforms one after the other.

    Examples
    --------
    >>> Compose([RandomFlip(p=0.0)])({"x": 1})
    {'x': 1}
    """

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        """The transformed sample (a new dict; the input is not changed)."""
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def rotate90(sample: Sample, k: int, plane: tuple[int, int]) -> Sample:
    """Turn voxels and rays ``k`` quarter turns in ``plane`` (axes of the volume), as ``torch.rot90`` does.

    A point ``p`` goes to ``q`` with ``q[a] = 2c - p[b]``, ``q[b] = p[a]`` per quarter turn (``c`` the center);
    directions turn the same way without the shift.
    """
    a, b = plane
    out = dict(sample)
    out["voxels"] = torch.rot90(sample["voxels"], k, dims=(a + 1, b + 1))
    c = float(sample["center"])
    origins, directions = sample["origins"].clone(), sample["directions"].clone()
    for _ in range(k % 4):
        pa, pb = origins[:, a].clone(), origins[:, b].clone()
        origins[:, a], origins[:, b] = 2 * c - pb, pa
        da, db = directions[:, a].clone(), directions[:, b].clone()
        directions[:, a], directions[:, b] = -db, da
    out["origins"], out["directions"] = origins, directions
    return out


def flip(sample: Sample, axis: int) -> Sample:
    """Mirror voxels and rays along one axis of the volume (``p[a] → 2c - p[a]``, ``d[a] → -d[a]``)."""
    out = dict(sample)
    out["voxels"] = torch.flip(sample["voxels"], dims=(axis + 1,))
    c = float(sample["center"])
    origins, directions = sample["origins"].clone(), sample["directions"].clone()
    origins[:, axis] = 2 * c - origins[:, axis]
    directions[:, axis] = -directions[:, axis]
    out["origins"], out["directions"] = origins, directions
    return out


class RandomRotation90:
    """With probability ``p``, turn the sample 1-3 quarter turns in one of the three axis planes (uniform).

    Examples
    --------
    >>> RandomRotation90(p=0.5)
    RandomRotation90(p=0.5)
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample) -> Sample:
        """The transformed sample (a new dict; the input is not changed)."""
        if float(torch.rand(())) >= self.p:
            return sample
        plane = _PLANES[int(torch.randint(3, ()))]
        return rotate90(sample, int(torch.randint(1, 4, ())), plane)

    def __repr__(self) -> str:
        return f"RandomRotation90(p={self.p})"


class RandomFlip:
    """Mirror each of ``axes`` (of the volume: 0 = z, 1 = y, 2 = x) with probability ``p``, independently.

    Examples
    --------
    >>> RandomFlip(axes=(0, 1, 2))
    RandomFlip(axes=(0, 1, 2), p=0.5)
    """

    def __init__(self, axes: Sequence[int] = (0, 1, 2), p: float = 0.5) -> None:
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"axes must be among 0, 1, 2 (z, y, x), got {tuple(axes)}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.axes, self.p = tuple(axes), float(p)

    def __call__(self, sample: Sample) -> Sample:
        """The transformed sample (a new dict; the input is not changed)."""
        for axis in self.axes:
            if float(torch.rand(())) < self.p:
                sample = flip(sample, axis)
        return sample

    def __repr__(self) -> str:
        return f"RandomFlip(axes={self.axes}, p={self.p})"


class NormalizeRayOrigins:
    """Map the subvolume's cube ``[0, 2c]**3`` onto ``[-1, 1]**3``: origins ``(o - c) / c``, distances ``/ c``.

    Directions stay unit vectors, so distances scale with the origins (a miss stays ``inf``), and ``center``
    becomes 0, so later rotations and flips still turn about the cube's center.

    Examples
    --------
    >>> s = {"origins": torch.tensor([[0.0, 4.0, 8.0]]), "distances": torch.tensor([2.0]), "center": 4.0}
    >>> out = NormalizeRayOrigins()(s)
    >>> out["origins"].tolist(), out["distances"].tolist(), out["center"]
    ([[-1.0, 0.0, 1.0]], [0.5], 0.0)
    """

    def __call__(self, sample: Sample) -> Sample:
        """The transformed sample (a new dict; the input is not changed)."""
        c = float(sample["center"])
        if c == 0:
            return sample  # already normalized
        out = dict(sample)
        out["origins"] = (sample["origins"] - c) / c
        out["distances"] = sample["distances"] / c
        out["center"] = 0.0
        return out

    def __repr__(self) -> str:
        return "NormalizeRayOrigins()"


class RandomRaySubsample:
    """Keep ``n`` random rays of the sample (without replacement; all of them, shuffled, when it has fewer).

    Examples
    --------
    >>> s = {k: torch.zeros(10, 3) for k in ("origins", "directions")}
    >>> s.update(distances=torch.zeros(10), hits=torch.zeros(10, dtype=torch.bool))
    >>> RandomRaySubsample(4)(s)["origins"].shape
    torch.Size([4, 3])
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = int(n)

    def __call__(self, sample: Sample) -> Sample:
        """The transformed sample (a new dict; the input is not changed)."""
        have = len(sample["distances"])
        pick = torch.randperm(have)[: self.n]
        out = dict(sample)
        for name in ("origins", "directions", "distances", "hits"):
            # index_select, not fancy indexing: the latter spins up intra-op threads (milliseconds on a busy CPU).
            out[name] = sample[name].index_select(0, pick)
        return out

    def __repr__(self) -> str:
        return f"RandomRaySubsample({self.n})"
