from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore
from torch_bridge import ZarrDataset
from torch_bridge._torch import torch
from torch_bridge.augment import (
    N_SYMMETRIES,
    WeakStrongBatch,
    WeakStrongCollate,
    strong_augment,
    symmetry,
    weak_augment,
)
from torch_bridge.balanced import BalancedBatchSampler


def write_picking_store(path: Path, n: int = 120, size: int = 8, chunk: int = 16) -> Path:
    """A store like a picking store's: square ``patches``, int8 ``label`` and ``sample_type``, int32 ``index``.

    conftest's ``make_store`` writes non-square patches and no labels, so the picking arrays are written here.
    """
    rng = np.random.default_rng(0)
    data = {
        "patches": (5 + 2 * rng.standard_normal((n, size, size))).astype("float32"),
        "label": (np.arange(n) % 4 == 0).astype("int8"),
        "sample_type": (np.arange(n) % 3).astype("int8"),
        "index": np.arange(n, dtype="int32"),
    }
    dims = {"patches": ("sample", "patch_y", "patch_x")}
    specs = [ArraySpec(k, dims.get(k, ("sample",)), v.shape, v.dtype) for k, v in data.items()]
    with TrainingStore.open_for_writing(
        path, specs, grid=SampleGrid(chunk, 2 * chunk), record={"pipeline": "test"}
    ) as s:
        for block in s.blocks():
            s.write_block(block, {k: v[block.start : block.stop] for k, v in data.items()})
        s.finalize()
    return path


def dihedral(sample: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square sample, built from plain flips and rotations (not the module's helper)."""
    out = []
    for flipped in (sample, torch.flip(sample, dims=(-2,))):
        out += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return out


def symmetry_index(out: torch.Tensor, sample: torch.Tensor) -> int:
    matches = [i for i, t in enumerate(dihedral(sample)) if torch.equal(out, t)]
    assert matches, "not a flip/rotation of the input"
    return matches[0]


@pytest.mark.parametrize("shape", [(64, 5, 5), (64, 3, 6, 6)])
def test_weak_is_a_symmetry_of_each_sample(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    y = weak_augment(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    used = {symmetry_index(y[i], x[i]) for i in range(len(x))}
    assert len(used) == N_SYMMETRIES  # 64 samples: every symmetry drawn (chance of missing one < 1e-3)
    assert not torch.equal(y, x)


def test_the_eight_symmetries_are_distinct() -> None:
    x = torch.arange(9.0).reshape(3, 3)
    images = [symmetry(x, code) for code in range(N_SYMMETRIES)]
    assert len({tuple(i.flatten().tolist()) for i in images}) == 8
    assert {symmetry_index(i, x) for i in images} == set(range(8))


def test_strong_changes_the_input_but_keeps_its_statistics() -> None:
    x = 3 + 2 * torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = strong_augment(
        x, noise_std=0.25, contrast=0.25, brightness=0.25, generator=torch.Generator().manual_seed(1)
    )
    assert y.shape == x.shape and y.dtype == torch.float32
    assert not any(torch.allclose(y[i], t) for i in range(4) for t in dihedral(x[i]))  # not only moved
    mean, std = x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3), correction=0)
    y_mean, y_std = y.mean(dim=(1, 2, 3)), y.std(dim=(1, 2, 3), correction=0)
    assert ((y_mean - mean).abs() <= (0.25 + 0.1) * std).all()  # brightness bound, plus the noise's mean
    ratio = y_std / std
    assert (ratio > 0.7).all() and (ratio < 1.35).all()  # (1 ± contrast) with noise added in quadrature
    assert ratio.min() < 0.9 and ratio.max() > 1.1  # contrast does vary per sample


def test_no_strength_leaves_only_the_symmetry() -> None:
    x = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(0))
    y = strong_augment(x, noise_std=0, contrast=0, brightness=0, generator=torch.Generator().manual_seed(2))
    for i in range(len(x)):
        assert any(torch.allclose(y[i], t, atol=1e-6) for t in dihedral(x[i]))


def test_reproducible_with_the_same_generator_seed() -> None:
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for augment in (weak_augment, strong_augment):
        a = augment(x, generator=torch.Generator().manual_seed(7))
        b = augment(x, generator=torch.Generator().manual_seed(7))
        c = augment(x, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    a = strong_augment(x)
    torch.manual_seed(3)
    assert torch.equal(strong_augment(x), a)  # the global RNG by default: DataLoader seeds it per worker


def test_collate_through_a_dataloader(tmp_path: Path) -> None:
    path = write_picking_store(tmp_path / "picks.zarr")
    ds = ZarrDataset(path, arrays=["patches"], return_metadata=True)
    labels = (np.arange(len(ds)) % 4 == 0).astype(np.int8)
    sampler = BalancedBatchSampler(ds, labels, batch_size=12, window=2)
    collate_fn = WeakStrongCollate()
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=0, collate_fn=collate_fn)
    torch.manual_seed(0)
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert isinstance(batch, WeakStrongBatch)
        weak, strong, label, sample_type = batch
        assert weak.shape == strong.shape == (12, 8, 8) and weak.dtype == strong.dtype == torch.float32
        assert label.dtype == sample_type.dtype == torch.int64 and label.shape == sample_type.shape == (12,)
        assert int(label.sum()) == 6  # the balanced sampler's ratio, carried through
    # weak views are symmetries of the stored patches, and meta lines up with them
    first = sampler.batches()[0]
    raw = ds.__getitems__(first.tolist()).stacked
    weak, strong, label, sample_type = batches[0]
    for i in range(12):
        symmetry_index(weak[i], raw["patches"][i])
    assert label.tolist() == (first % 4 == 0).astype(int).tolist()
    assert sample_type.tolist() == (first % 3).tolist()
    torch.manual_seed(0)
    again = next(iter(loader))
    assert torch.equal(again.weak, weak) and torch.equal(again.strong, strong)
    assert pickle.loads(pickle.dumps(collate_fn)).noise_std == collate_fn.noise_std  # spawn workers pickle it


def test_collate_converts_integer_images() -> None:
    samples = [
        {"patches": torch.full((4, 4), i, dtype=torch.uint8), "meta": {"label": 1, "sample_type": 2}}
        for i in range(3)
    ]
    weak, strong, label, sample_type = WeakStrongCollate()(samples)
    assert weak.dtype == strong.dtype == torch.float32
    assert label.tolist() == [1, 1, 1] and sample_type.tolist() == [2, 2, 2]


def test_collate_errors_without_labels(make_store: Callable[..., Path]) -> None:
    path = make_store(n=40, chunk=8, shard=16)  # patches (8, 6): not square, and no label arrays
    without_meta = ZarrDataset(path, arrays=["patches"])
    batch = without_meta.__getitems__([0, 1, 2])
    with pytest.raises(ValueError, match="return_metadata=True"):
        WeakStrongCollate()(batch)
    with_meta = ZarrDataset(path, arrays=["patches"], return_metadata=True)
    with pytest.raises(ValueError, match=r"no 'label' or 'sample_type'.*picking store"):
        WeakStrongCollate()(with_meta.__getitems__([0, 1, 2]))
    with pytest.raises(KeyError, match="image_key"):
        WeakStrongCollate("images")(batch)
    with pytest.raises(ValueError, match="square"):  # labels present under other names: then the shape fails
        WeakStrongCollate(label_key="y0", sample_type_key="source_index")(with_meta.__getitems__([0, 1, 2]))


@pytest.mark.parametrize("augment", [weak_augment, strong_augment])
def test_bad_images(augment: Callable[..., torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="square"):
        augment(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, C, H, W\)"):
        augment(torch.zeros(4, 4))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        augment(np.zeros((2, 4, 4)))


def test_strong_needs_floats() -> None:
    with pytest.raises(TypeError, match="float"):
        strong_augment(torch.zeros(2, 4, 4, dtype=torch.int32))
    assert weak_augment(torch.zeros(2, 4, 4, dtype=torch.int32)).dtype == torch.int32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"noise_std": -1}, "noise_std"), ({"contrast": 1.0}, "contrast"), ({"brightness": -0.5}, "brightness")],
)
def test_bad_strengths(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        strong_augment(torch.zeros(2, 4, 4), **kwargs)
    with pytest.raises(ValueError, match=match):
        WeakStrongCollate(**kwargs)
