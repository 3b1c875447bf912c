"""Paired weak and strong augmentations of whole batches, for FixMatch-style training on particle patches.

FixMatch trains on two views of each patch: a *weak* one (a symmetry of the square: flips and quarter turns,
which leave a particle a particle) whose confident predictions become pseudo-labels, and a *strong* one (another
symmetry, plus noise and contrast/brightness changes) trained to match them. Both are computed on the collated
batch with a handful of vectorised torch ops, so they are cheap inside DataLoader workers.

Randomness comes from torch's RNG: the global one, which a DataLoader seeds in each worker (``base_seed +
worker_id``, reproducible with ``DataLoader(generator=...)``), or an explicit :class:`torch.Generator`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._torch import torch
from .loader import collate

__all__ = ["N_SYMMETRIES", "WeakStrongBatch", "WeakStrongCollate", "strong_augment", "symmetry", "weak_augment"]

#: The symmetries of the square: code ``c`` flips left-right when ``c >= 4``, then turns ``c % 4`` quarter turns.
N_SYMMETRIES = 8


class WeakStrongBatch(NamedTuple):
    """What :class:`WeakStrongCollate` returns: two views of the images and their int64 labels."""

    weak: torch.Tensor
    strong: torch.Tensor
    label: torch.Tensor
    sample_type: torch.Tensor


def weak_augment(batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each sample flipped and turned by a random symmetry of the square (one of 8, uniformly).

    The same as a random horizontal flip, random vertical flip and random ``rot90`` per sample: those 16
    combinations give each of the 8 symmetries twice.

    Parameters
    ----------
    batch : torch.Tensor
        Images ``(B, H, W)`` or ``(B, C, H, W)`` with ``H == W`` (a quarter turn must keep the shape).
    generator : torch.Generator, optional
        Source of randomness; default: torch's global RNG.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape and dtype.

    Raises
    ------
    ValueError
        ``batch`` is not 3-D or 4-D, or its patches are not square.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(8.0).reshape(2, 2, 2)
    >>> y = weak_augment(x, generator=torch.Generator().manual_seed(0))
    >>> y.shape, bool((y.flatten(1).sort().values == x.flatten(1)).all())  # each sample: its values, moved
    (torch.Size([2, 2, 2]), True)
    """
    _check_images(batch)
    return _symmetries(batch, generator)


def strong_augment(
    batch: torch.Tensor,
    *,
    noise_std: float = 0.25,
    contrast: float = 0.25,
    brightness: float = 0.25,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random symmetry of the square per sample, then random contrast, brightness and Gaussian noise.

    With ``m`` and ``s`` a sample's mean and standard deviation (over all its pixels and channels), the result
    is ``(x - m) * c + m + (b + noise_std * n) * s``: ``c`` uniform in ``[1 - contrast, 1 + contrast]`` and
    ``b`` in ``[-brightness, brightness]`` per sample, ``n`` standard normal per pixel. Being relative to each
    sample's spread, the strength does not depend on the micrograph's scale or normalisation.

    Parameters
    ----------
    batch : torch.Tensor
        Float images ``(B, H, W)`` or ``(B, C, H, W)`` with ``H == W``.
    noise_std : float
        Standard deviation of the additive noise, in units of each sample's standard deviation (``>= 0``).
    contrast : float
        Largest relative change of contrast, in ``[0, 1)``.
    brightness : float
        Largest shift of the mean, in units of each sample's standard deviation (``>= 0``).
    generator : torch.Generator, optional
        Source of randomness; default: torch's global RNG.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape and dtype.

    Raises
    ------
    TypeError
        ``batch`` is not a floating-point tensor.
    ValueError
        ``batch`` is not 3-D or 4-D or its patches are not square, or a strength is out of range.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> y = strong_augment(x, generator=torch.Generator().manual_seed(1))
    >>> y.shape, y.dtype, bool((y - x).abs().mean() > 0.1)
    (torch.Size([4, 1, 16, 16]), torch.float32, True)
    """
    _check_images(batch)
    _check_strengths(noise_std, contrast, brightness)
    if not batch.is_floating_point():
        raise TypeError(f"strong_augment needs float images, got {batch.dtype}; convert with batch.float()")
    x = _symmetries(batch, generator)
    per_sample = (len(x),) + (1,) * (x.ndim - 1)
    pixels = tuple(range(1, x.ndim))
    mean = x.mean(dim=pixels, keepdim=True)
    std = x.std(dim=pixels, keepdim=True, correction=0)  # no NaN for a one-pixel sample
    c = 1 + contrast * (2 * _rand(per_sample, generator, x) - 1)
    b = brightness * (2 * _rand(per_sample, generator, x) - 1)
    noise = _randn(tuple(x.shape), generator, x)
    return (x - mean) * c + mean + (b + noise_std * noise) * std


class WeakStrongCollate:
    """A DataLoader ``collate_fn`` that returns ``(weak, strong, label, sample_type)`` views of each batch.

    The batch is first collated by :func:`torch_bridge.collate` (the stack a :class:`~torch_bridge.ZarrDataset`
    batch already carries), then augmented as a whole with :func:`weak_augment` and :func:`strong_augment`,
    whose symmetries are drawn independently. Use it with a dataset opened with ``return_metadata=True`` on a
    picking store, whose ``meta`` holds ``label`` and ``sample_type``. Integer images are converted to float32.

    It holds no generator: in each DataLoader worker it draws from torch's global RNG, which the DataLoader seeds
    per worker (one shared generator would repeat the same draws in every worker). Seed the run with
    ``DataLoader(generator=torch.Generator().manual_seed(s))``, or ``torch.manual_seed`` with ``num_workers=0``.

    Parameters
    ----------
    image_key : str
        The array of images in the collated batch.
    label_key, sample_type_key : str
        The metadata arrays returned as ``label`` and ``sample_type`` (int64).
    noise_std, contrast, brightness : float
        Strengths of :func:`strong_augment`.

    Raises
    ------
    ValueError
        When called, if the batch has no ``meta`` (a dataset without ``return_metadata=True``) or ``meta`` lacks
        the label or sample type arrays (not a picking store); or if the images are not square.
    KeyError
        When called, if the batch has no ``image_key``.

    Examples
    --------
    >>> import torch
    >>> samples = [{"patches": torch.ones(4, 4) * i, "meta": {"label": i % 2, "sample_type": 0}} for i in range(3)]
    >>> _ = torch.manual_seed(0)
    >>> weak, strong, label, sample_type = WeakStrongCollate()(samples)
    >>> weak.shape, strong.shape, label.tolist(), sample_type.dtype
    (torch.Size([3, 4, 4]), torch.Size([3, 4, 4]), [0, 1, 0], torch.int64)

    With a store (``DataLoader`` with ``batch_sampler=BalancedBatchSampler(...)``, say)::

        ds = ZarrDataset("picks.zarr", arrays=["patches"], return_metadata=True)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=WeakStrongCollate())
    """

    def __init__(
        self,
        image_key: str = "patches",
        *,
        label_key: str = "label",
        sample_type_key: str = "sample_type",
        noise_std: float = 0.25,
        contrast: float = 0.25,
        brightness: float = 0.25,
    ) -> None:
        _check_strengths(noise_std, contrast, brightness)
        self.image_key, self.label_key, self.sample_type_key = image_key, label_key, sample_type_key
        self.noise_std, self.contrast, self.brightness = float(noise_std), float(contrast), float(brightness)

    def __repr__(self) -> str:
        return (
            f"WeakStrongCollate(image_key={self.image_key!r}, label_key={self.label_key!r}, "
            f"sample_type_key={self.sample_type_key!r}, noise_std={self.noise_std}, contrast={self.contrast}, "
            f"brightness={self.brightness})"
        )

    def __call__(self, batch: list[Any]) -> WeakStrongBatch:
        """Collate ``batch`` and return its weak and strong views with its labels and sample types."""
        stacked = collate(batch)
        if self.image_key not in stacked:
            raise KeyError(
                f"the batch has no array {self.image_key!r} (it has {', '.join(map(repr, stacked))}); "
                "pass image_key= naming the images"
            )
        meta = stacked.get("meta")
        if meta is None:
            raise ValueError(
                "the batch has no 'meta' with labels; open the dataset with return_metadata=True on a picking "
                "store"
            )
        missing = [key for key in (self.label_key, self.sample_type_key) if key not in meta]
        if missing:
            raise ValueError(
                f"the batch's meta has no {' or '.join(map(repr, missing))} "
                f"(it has {', '.join(map(repr, meta)) or 'nothing'}); use a picking store, whose metadata holds "
                "them, or pass label_key=/sample_type_key="
            )
        images = stacked[self.image_key]
        if not images.is_floating_point():
            images = images.float()
        return WeakStrongBatch(
            weak_augment(images),
            strong_augment(images, noise_std=self.noise_std, contrast=self.contrast, brightness=self.brightness),
            torch.as_tensor(meta[self.label_key], dtype=torch.int64),
            torch.as_tensor(meta[self.sample_type_key], dtype=torch.int64),
        )


def _check_images(batch: torch.Tensor) -> None:
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"batch must be a torch.Tensor of images, got {type(batch).__name__}")
    if batch.ndim not in (3, 4):
        raise ValueError(f"batch must be (B, H, W) or (B, C, H, W) images, got shape {tuple(batch.shape)}")
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(
            f"batch must hold square patches (quarter turns keep the shape), got {tuple(batch.shape[-2:])}; "
            "extract square patches or crop them"
        )


def _check_strengths(noise_std: float, contrast: float, brightness: float) -> None:
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0 (in units of a sample's std), got {noise_std}")
    if not 0 <= contrast < 1:
        raise ValueError(f"contrast must be in [0, 1) (largest relative change), got {contrast}")
    if not brightness >= 0:
        raise ValueError(f"brightness must be >= 0 (in units of a sample's std), got {brightness}")


def _symmetries(batch: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Each sample moved by a random symmetry: one flip/rot90 op per symmetry drawn, on its samples together."""
    device = generator.device if generator is not None else batch.device
    codes = torch.randint(0, N_SYMMETRIES, (len(batch),), generator=generator, device=device).to(batch.device)
    out = torch.empty_like(batch)
    for code in range(N_SYMMETRIES):
        rows = (codes == code).nonzero().squeeze(1)
        if rows.numel():
            out[rows] = symmetry(batch[rows], code)
    return out


def symmetry(images: torch.Tensor, code: int) -> torch.Tensor:
    """Symmetry ``code`` (0-7) of the square on the last two axes: left-right flip when ``code >= 4``, then turns.

    Examples
    --------
    >>> import torch
    >>> symmetry(torch.tensor([[1, 2], [3, 4]]), 5)  # flipped, then a quarter turn
    tensor([[1, 3],
            [2, 4]])
    """
    if code >= 4:
        images = torch.flip(images, dims=(-1,))
    return torch.rot90(images, code % 4, dims=(-2, -1))


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device).to(like)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(like)
