"""ReconstructionDataset and coefficient_subset over a tensor-tomography store written with the store's own API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graphs.tensor_tomo import coefficient_table
from storage.errors import StoreError
from storage.layout import SampleGrid
from storage.store import ArraySpec, TrainingStore
from torch_bridge import ReconstructionDataset, ZarrDataset, coefficient_subset

N, SHAPE, ELL_MAX = 5, (4, 3, 2), 4


def _values(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = len(coefficient_table(ELL_MAX)[0])
    return {
        "reconstructions": rng.normal(size=(N, *SHAPE, c)).astype(np.float32),
        "projection_indices": np.sort(rng.choice(50, size=(N, 7)), axis=1).astype(np.int32),
        "final_loss": rng.uniform(1, 2, N),
        "iterations": rng.integers(1, 20, N).astype(np.int32),
        "evaluations": rng.integers(20, 40, N).astype(np.int32),
    }


def _write(path: Path, values: dict[str, np.ndarray], pipeline: str = "tensor-tomo") -> Path:
    """A store laid out as ``zarrforge tensor-tomo`` writes it: one sample per chunk and per block."""
    ell, m = coefficient_table(ELL_MAX)
    dims = {
        "reconstructions": ("sample", "x", "y", "z", "coefficient"),
        "projection_indices": ("sample", "projection"),
    }
    specs = [
        ArraySpec(
            name,
            dims.get(name, ("sample",)),
            v.shape,
            v.dtype,
            {"ell": ell.tolist(), "m": m.tolist()} if name == "reconstructions" else {},
        )
        for name, v in values.items()
    ]
    record = {"pipeline": pipeline, "parameters": {"ell_max": ELL_MAX}, "seed": 7}
    with TrainingStore.open_for_writing(path, specs, grid=SampleGrid(1, 1), record=record) as store:
        for block in store.blocks():
            store.write_block(block, {name: v[block.start : block.stop] for name, v in values.items()})
        store.finalize()
    return path


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    values = _values()
    return _write(tmp_path / "recon.zarr", values), values


def test_volumes_and_metadata_are_the_stored_samples(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, values = store
    ds = ReconstructionDataset(path, return_metadata=True)
    assert len(ds) == N and ds.volume_shape == (*SHAPE, 15) and ds.ell_max == ELL_MAX and ds.seed == 7
    for i in (0, 3, -1):
        volume, meta = ds[i]
        assert volume.dtype == torch.float32 and volume.shape == (*SHAPE, 15)
        np.testing.assert_array_equal(volume.numpy(), values["reconstructions"][i])
        assert meta["index"] == i % N and meta["seed"] == 7
        np.testing.assert_array_equal(meta["projection_indices"].numpy(), values["projection_indices"][i])
        assert meta["loss"] == values["final_loss"][i] and meta["iterations"] == values["iterations"][i]
    plain = ReconstructionDataset(path)[2]
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, ds[2][0])
    with pytest.raises(IndexError):
        ds[N]


def test_in_memory_and_transformed_reads_agree(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = store
    lazy = ReconstructionDataset(path)
    memory = ReconstructionDataset(path, load_in_memory=True)
    assert all(torch.equal(lazy[i], memory[i]) for i in range(N))
    moved = ReconstructionDataset(path, transform=lambda v: v.permute(3, 0, 1, 2))
    assert moved[1].shape == (15, *SHAPE) and torch.equal(moved[1], lazy[1].permute(3, 0, 1, 2))


def test_coefficient_subsets_by_order_or_index(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, values = store
    ds = ReconstructionDataset(path, return_metadata=True)
    low = coefficient_subset(ds, ell_max=2)
    assert low.ell.tolist() == [0, 2, 2, 2, 2, 2] and low.m.tolist() == [0, -2, -1, 0, 1, 2]
    assert low.volume_shape == (*SHAPE, 6)
    volume, meta = low[4]
    np.testing.assert_array_equal(volume.numpy(), values["reconstructions"][4][..., :6])
    assert meta["index"] == 4
    assert torch.equal(coefficient_subset(ds, range(6))[4][0], volume)
    picked = coefficient_subset(ds, [14, 0])
    np.testing.assert_array_equal(picked[1][0].numpy(), values["reconstructions"][1][..., [14, 0]])
    assert picked.ell.tolist() == [4, 0] and picked.m.tolist() == [4, 0]
    assert coefficient_subset(ds, ell_max=0).volume_shape == (*SHAPE, 1)
    assert ds.volume_shape == (*SHAPE, 15)  # the dataset given is unchanged


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "either channels .* or ell_max"),
        ((range(3),), {"ell_max": 2}, "either channels"),
        ((), {"ell_max": 3}, "even order 0-4"),
        ((), {"ell_max": 6}, "even order 0-4"),
        ((), {"ell_max": -2}, "even order 0-4"),
        (([15],), {}, "indices 0-14"),
        (([],), {}, "at least one"),
    ],
)
def test_bad_subsets_are_refused(
    store: tuple[Path, dict[str, np.ndarray]], args: tuple[object, ...], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        coefficient_subset(ReconstructionDataset(store[0]), *args, **kwargs)


def test_a_store_of_another_pipeline_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "other.zarr", _values(), pipeline="patches")
    with pytest.raises(StoreError, match="not a tensor-tomo store"):
        ReconstructionDataset(path)
    with pytest.raises(StoreError, match="no such store"):
        ReconstructionDataset(tmp_path / "absent.zarr")


def test_dataloader_workers_read_the_same_batches(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, values = store
    ds = coefficient_subset(ReconstructionDataset(path, return_metadata=True), ell_max=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    volumes = torch.cat([volume for volume, _ in batches])
    np.testing.assert_array_equal(volumes.numpy(), values["reconstructions"][..., :6])
    indices = torch.cat([meta["index"] for _, meta in batches])
    assert indices.tolist() == list(range(N))
    assert torch.cat([meta["loss"] for _, meta in batches]).tolist() == values["final_loss"].tolist()


def test_it_reads_through_zarrdataset_like_every_store(store: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = store
    raw = ZarrDataset(path, arrays=["reconstructions"])
    assert raw.chunk_samples == 1 and raw.n_chunks == N
    assert torch.equal(raw[2]["reconstructions"], ReconstructionDataset(path)[2])
