"""Pure arithmetic of sliding windows over an image: how many, where, and which rows a run of them needs.

No arrays and no I/O here; tested by example and by hypothesis against a brute-force enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ParameterError

__all__ = ["EDGES", "WindowGrid", "window_grid"]

#: What happens to windows that do not fit: ``drop`` them, or ``pad`` (reflect) the bottom/right edges so the
#: windows cover the whole image.
EDGES = ("drop", "pad")
Edges = Literal["drop", "pad"]


@dataclass(frozen=True)
class WindowGrid:
    """Windows of ``size`` pixels every ``stride`` pixels over a ``height × width`` image.

    Windows are numbered in row-major order of their top-left corner ``(y0, x0) = (iy·stride, ix·stride)``.
    ``pad_y``/``pad_x`` rows/columns are reflected onto the bottom/right edges (``edges="pad"`` only), so
    corners always lie inside the image.
    """

    height: int
    width: int
    size: int
    stride: int
    ny: int
    nx: int
    pad_y: int = 0
    pad_x: int = 0

    @property
    def per_image(self) -> int:
        """Windows per image."""
        return self.ny * self.nx

    def corner(self, w: int) -> tuple[int, int]:
        """Top-left ``(y0, x0)`` of window ``w``."""
        iy, ix = divmod(w, self.nx)
        return iy * self.stride, ix * self.stride

    def rows(self, w0: int, w1: int) -> tuple[int, int]:
        """Rows ``[r0, r1)`` of the (padded) image that windows ``[w0, w1)`` cover."""
        if not 0 <= w0 < w1 <= self.per_image:
            raise ValueError(f"window range [{w0}, {w1}) outside [0, {self.per_image})")
        return (w0 // self.nx) * self.stride, ((w1 - 1) // self.nx) * self.stride + self.size


def window_grid(
    height: int, width: int, size: int, stride: int | None = None, edges: Edges = "drop"
) -> WindowGrid:
    """Lay out sliding windows over an image.

    With ``edges="drop"`` an ``H × W`` image gives ``((H - size)//stride + 1) · ((W - size)//stride + 1)``
    windows; with ``edges="pad"`` it gives ``(ceil((H - size)/stride) + 1) · (ceil((W - size)/stride) + 1)``,
    the last row and column reaching into reflected padding (fewer where ``stride > size`` would put a corner
    outside the image: corners always lie inside it, and the padding is less than ``min(size, stride)``).

    Parameters
    ----------
    height, width : int
        Image size in pixels.
    size : int
        Window side in pixels.
    stride : int, optional
        Step between windows; defaults to ``size`` (no overlap).
    edges : {"drop", "pad"}
        What to do with windows that do not fit.

    Returns
    -------
    WindowGrid

    Raises
    ------
    ParameterError
        For a size or stride below 1, a window larger than the image, or an unknown ``edges``.

    Examples
    --------
    >>> g = window_grid(300, 260, 128, 64)
    >>> g.ny, g.nx, g.per_image
    (3, 3, 9)
    >>> g = window_grid(300, 260, 128, 64, edges="pad")
    >>> g.ny, g.nx, g.pad_y, g.pad_x
    (4, 4, 20, 60)
    """
    stride = size if stride is None else stride
    if size < 1:
        raise ParameterError(f"size must be >= 1 pixel, got {size}")
    if stride < 1:
        raise ParameterError(f"stride must be >= 1 pixel, got {stride}")
    if edges not in EDGES:
        raise ParameterError(f"edges must be one of {', '.join(EDGES)}, got {edges!r}")
    if size > height or size > width:
        raise ParameterError(f"size {size} is larger than the image ({height} × {width} pixels)")
    if edges == "drop":
        return WindowGrid(height, width, size, stride, (height - size) // stride + 1, (width - size) // stride + 1)
    # One more window than fits, unless its corner would fall outside the image (a stride larger than the
    # window skips those pixels anyway, and reflect padding cannot reach that far).
    ny = min(-(-(height - size) // stride), (height - 1) // stride) + 1
    nx = min(-(-(width - size) // stride), (width - 1) // stride) + 1
    pad_y = max((ny - 1) * stride + size - height, 0)
    pad_x = max((nx - 1) * stride + size - width, 0)
    return WindowGrid(height, width, size, stride, ny, nx, pad_y, pad_x)
