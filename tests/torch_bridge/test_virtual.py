"""Virtual patches: windows cut on the fly from a picking store's micrographs equal the materialized patches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from storage.errors import StoreError
from torch_bridge import (
    BalancedBatchSampler,
    BatchIndices,
    ChunkShuffleSampler,
    WeakStrongCollate,
    ZarrDataset,
    make_loader,
)


def _pair(stores: dict[str, Path], **kwargs: object) -> tuple[ZarrDataset, ZarrDataset]:
    m = ZarrDataset(stores["materialized"], arrays=["patches"], **kwargs)  # type: ignore[arg-type]
    v = ZarrDataset(stores["virtual"], arrays=["patches"], **kwargs)  # type: ignore[arg-type]
    return m, v


def test_virtual_store_reads_as_patches(picking_stores: dict[str, Path]) -> None:
    m, v = _pair(picking_stores, return_metadata=True)
    assert len(m) == len(v) > 500
    assert v.arrays == ("patches",) and "micrographs" not in v.metadata
    assert v.n_chunks == m.n_chunks and v.chunk_samples == m.chunk_samples
    for i in (0, 1, len(m) // 3, len(m) - 1):
        a, b = m[i], v[i]
        assert torch.equal(a["patches"], b["patches"])
        assert a["meta"]["label"] == b["meta"]["label"]
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(len(m), 64, replace=False).tolist()
        a, b = m.__getitems__(idx).stacked, v.__getitems__(idx).stacked
        assert torch.equal(a["patches"], b["patches"])
        assert torch.equal(a["meta"]["sample_type"], b["meta"]["sample_type"])


def test_virtual_in_memory_and_with_prefetch(picking_stores: dict[str, Path]) -> None:
    m, _ = _pair(picking_stores)
    v = ZarrDataset(picking_stores["virtual"], arrays=["patches"], load_in_memory=True)
    idx = list(range(0, len(m), 7))
    assert torch.equal(m.__getitems__(idx).stacked["patches"], v.__getitems__(idx).stacked["patches"])
    cached = ZarrDataset(picking_stores["virtual"], arrays=["patches"])
    batch = BatchIndices(range(64, 128), prefetch=[2, 3])
    assert torch.equal(
        cached.__getitems__(batch).stacked["patches"], m.__getitems__(list(batch)).stacked["patches"]
    )


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_splits_of_both_modes(picking_stores: dict[str, Path], split: str) -> None:
    m, v = _pair(picking_stores, split=split, return_metadata=True)
    assert len(m) == len(v) > 0
    idx = list(range(len(m)))
    a, b = m.__getitems__(idx).stacked, v.__getitems__(idx).stacked
    assert torch.equal(a["patches"], b["patches"])
    code = {"train": 0, "val": 1, "test": 2}[split]
    assert set(a["meta"]["split"].tolist()) == {code}
    assert sum(b - a for a, b in (m.chunk_bounds(k) for k in range(m.n_chunks))) == len(m)
    order = list(ChunkShuffleSampler(v, seed=1))
    assert sorted(order) == idx


def test_loader_with_workers_gives_the_same_batches(picking_stores: dict[str, Path]) -> None:
    m, v = _pair(picking_stores, split="train")
    batches = []
    for ds in (m, v):
        loader = make_loader(ds, batch_size=32, num_workers=2, seed=3, multiprocessing_context="spawn")
        batches.append([b["patches"] for b in loader])
    assert len(batches[0]) == len(batches[1])
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a, b)


def test_balanced_batches_of_weak_and_strong_views(picking_stores: dict[str, Path]) -> None:
    """The training loop the picking issue asks for: balanced batches of (weak, strong, label, sample_type)."""
    ds = ZarrDataset(picking_stores["virtual"], arrays=["patches"], split="train", return_metadata=True)
    labels = ds.read("label")
    assert labels.shape == (len(ds),) and set(labels.tolist()) <= {0, 1}
    sampler = BalancedBatchSampler(ds, batch_size=16, positive_ratio=0.25, seed=0, window=2)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=WeakStrongCollate())
    seen = 0
    for weak, strong, label, sample_type in loader:
        assert weak.shape == strong.shape == (16, 32, 32)
        assert int(label.sum()) == 4
        assert set(sample_type.tolist()) <= {0, 1, 2}
        seen += 1
    assert seen == len(sampler) > 0


def test_bad_virtual_descriptions(picking_stores: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="'micrographs' is not indexed by sample"):
        ZarrDataset(picking_stores["virtual"], arrays=["micrographs"])
    broken = shutil.copytree(picking_stores["virtual"], tmp_path / "broken.zarr")
    meta = json.loads((broken / "zarr.json").read_text())
    meta["attributes"]["zarrforge"]["virtual"]["patches"]["images"] = "gone"
    (broken / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="needs array 'gone'"):
        ZarrDataset(broken)
