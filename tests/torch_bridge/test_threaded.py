"""ThreadedLoader: the batches of make_loader, read by threads of this process."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from torch_bridge import ChunkShuffleSampler, ThreadedLoader, ZarrDataset, make_loader


def as_lists(batches) -> list[dict[str, list]]:  # type: ignore[no-untyped-def]
    out = []
    for batch in batches:
        flat = {k: v.tolist() for k, v in batch.items() if k != "meta"}
        flat.update({f"meta.{k}": v.tolist() for k, v in batch.get("meta", {}).items()})
        out.append(flat)
    return out


@pytest.mark.parametrize("num_threads", [1, 2, 4])
@pytest.mark.parametrize(("batch_size", "drop_last", "window"), [(64, False, 1), (50, True, 1), (100, False, 3)])
def test_same_batches_as_make_loader(
    store: Path, num_threads: int, batch_size: int, drop_last: bool, window: int
) -> None:
    ds = ZarrDataset(store, arrays=["patches", "origin"], return_metadata=True, cache_bytes=64 * 8 * 6 * 4 * 2)
    threaded = ThreadedLoader(ds, batch_size, seed=3, window=window, num_threads=num_threads, drop_last=drop_last)
    reference = make_loader(ds, batch_size, seed=3, window=window, drop_last=drop_last)
    assert len(threaded) == len(reference)
    for epoch in range(2):
        threaded.set_epoch(epoch)
        reference.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        assert as_lists(threaded) == as_lists(reference)


def test_every_sample_once_per_epoch(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    x0 = torch.cat([b["meta"]["x0"] for b in ThreadedLoader(ds, 64, num_threads=3)])
    assert sorted(x0.tolist()) == [3 * i for i in range(len(ds))]


def test_a_sampler_and_a_dataset_without_getitems(store: Path) -> None:
    class Plain(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.inner = ZarrDataset(store, arrays=["patches"])
            self.n_chunks, self.chunk_bounds = self.inner.n_chunks, self.inner.chunk_bounds

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return self.inner[i]

    plain = Plain()
    sampler = ChunkShuffleSampler(plain, seed=9)
    got = torch.cat([b["patches"] for b in ThreadedLoader(plain, 64, sampler=sampler)])
    order = sampler.indices()
    expected = ZarrDataset(store, arrays=["patches"]).__getitems__(order.tolist()).stacked["patches"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_stopping_early_stops_the_threads(store: Path) -> None:
    ds = ZarrDataset(store, arrays=["patches"])
    before = threading.active_count()
    for i, _ in enumerate(ThreadedLoader(ds, 16, num_threads=3, prefetch=8)):
        if i == 2:
            break
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("zarrforge-loader")]


def test_errors_reach_the_consumer(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store()
    shard = min(p for p in (store / "patches").rglob("*") if p.is_file() and p.name != "zarr.json")
    shard.write_bytes(shard.read_bytes()[:100])  # the first shard, truncated
    with pytest.raises(Exception, match=str(shard)):
        list(ThreadedLoader(ZarrDataset(store, arrays=["patches"]), 64, shuffle=False))


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"num_threads": 0}, "num_threads"), ({"prefetch": 0}, "prefetch")]
)
def test_bad_parameters(store: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThreadedLoader(ZarrDataset(store), 64, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pin_memory(store: Path) -> None:
    batch = next(iter(ThreadedLoader(ZarrDataset(store), 64, pin_memory=True)))
    assert all(t.is_pinned() for t in batch.values())
    assert np.isfinite(batch["patches"].numpy()).all()
