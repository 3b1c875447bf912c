"""Mask-aware normalization of one image: numpy or torch in, the same kind out.

No dask here, so DataLoader workers and ``torch_bridge`` can use it on the fly. Foreground = the non-zero
pixels: their mean and standard deviation normalize them; background stays zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["masked_moments", "masked_normalize"]


def masked_moments(image: Any) -> tuple[float, float]:
    """Mean and standard deviation of the non-zero pixels of ``image`` (``(0, 1)`` if all are zero or equal).

    Examples
    --------
    >>> masked_moments(np.array([[0.0, 2.0], [4.0, 0.0]]))
    (3.0, 1.0)
    """
    values = np.asarray(image, dtype=np.float64)
    foreground = values[values != 0]
    if not foreground.size:
        return 0.0, 1.0
    std = float(foreground.std())
    return float(foreground.mean()), std if std > 0 else 1.0


def masked_normalize(image: Any, mean: float | None = None, std: float | None = None) -> Any:
    """Normalize the non-zero pixels of ``image`` to zero mean and unit variance; zero pixels stay zero.

    Works on a numpy array or a torch tensor (returned as the same kind, floating point). The statistics are
    the image's own (:func:`masked_moments`) unless given; an image with no foreground, or a flat one, is not
    divided by zero.

    Examples
    --------
    >>> masked_normalize(np.array([[0.0, 2.0], [4.0, 0.0]])).tolist()
    [[0.0, -1.0], [1.0, 0.0]]
    """
    if mean is None or std is None:
        mean, std = masked_moments(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    if hasattr(image, "detach"):  # a torch tensor
        floating = image if image.is_floating_point() else image.float()
        return ((floating - mean) / std) * (image != 0)
    values = np.asarray(image)
    floating = values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float32)
    return np.where(values != 0, (floating - mean) / std, 0).astype(floating.dtype)
