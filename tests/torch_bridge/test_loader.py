from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from torch_bridge import ChunkShuffleSampler, ZarrDataset, make_loader

# Python >= 3.12 warns when a multi-threaded process forks (zarr keeps an I/O thread); forking after the parent
# used the store is exactly what the fork test checks, and zarr resets its loop in the child.
FORK_WARNING = "ignore:This process .* is multi-threaded, use of fork.. may lead to deadlocks:DeprecationWarning"


def epoch(loader: torch.utils.data.DataLoader) -> dict[str, torch.Tensor]:
    batches = list(loader)
    out = {"patches": torch.cat([b["patches"] for b in batches])}
    out.update({f"meta.{k}": torch.cat([b["meta"][k] for b in batches]) for k in batches[0]["meta"]})
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_fork_workers_after_the_parent_read_the_store(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    sampler = ChunkShuffleSampler(ds, seed=0)
    ds[0]  # the parent has opened readers, decoded a chunk and used zarr
    expected = epoch(torch.utils.data.DataLoader(ds, batch_size=64, sampler=sampler))
    forked = torch.utils.data.DataLoader(
        ds, batch_size=64, sampler=sampler, num_workers=2, multiprocessing_context="fork"
    )
    assert_same(epoch(forked), expected)
    assert sorted(expected["meta.x0"].tolist()) == [3 * i for i in range(len(ds))]


def test_make_loader_spawns_persistent_workers(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    ds[0]
    loader = make_loader(ds, batch_size=64, seed=4, num_workers=2)
    assert loader.multiprocessing_context.get_start_method() == "spawn"
    assert loader.persistent_workers
    assert isinstance(loader.sampler, ChunkShuffleSampler) and loader.sampler.seed == 4
    reference = make_loader(ds, batch_size=64, seed=4)
    for e in range(2):  # the same workers serve both epochs
        loader.sampler.set_epoch(e)
        reference.sampler.set_epoch(e)
        assert_same(epoch(loader), epoch(reference))


def test_make_loader_in_process_defaults(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    loader = make_loader(ds, batch_size=100, shuffle=False, drop_last=True)
    assert loader.multiprocessing_context is None and not loader.persistent_workers
    assert loader.sampler.shuffle is False  # type: ignore[attr-defined]
    batches = list(loader)
    assert len(batches) == 10 and batches[0]["patches"].shape == (100, 8, 6)
    torch.testing.assert_close(batches[0]["patches"][5], ds[5]["patches"])


def test_make_loader_passes_a_sampler_and_options(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    sampler = ChunkShuffleSampler(ds, num_replicas=2, rank=1)
    loader = make_loader(ds, batch_size=32, sampler=sampler, collate_fn=lambda items: len(items))
    assert loader.sampler is sampler
    assert sum(loader) == len(sampler)
