"""``zarrforge demo``: the main job end to end on data it generates, in well under a minute."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from storage.synthetic import write_micrographs

from .pipelines import run_patches

__all__ = ["run_demo"]


def run_demo(
    directory: str | os.PathLike[str] = "zarrforge-demo",
    *,
    n_micrographs: int = 8,
    shape: int = 1024,
    seed: int = 0,
    cluster: str | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Generate micrographs, write a patch store on the cluster, and read it back through a DataLoader.

    Returns a dict of what it did (paths, counts, rates), which the tests check.
    """
    directory = Path(directory)
    mics = directory / "micrographs"
    store = directory / "train.zarr"
    existing = sorted(mics.glob("*.mrc"))
    if len(existing) != n_micrographs:
        echo(f"1. generating {n_micrographs} synthetic micrographs ({shape}×{shape} float32 MRC) in {mics}/")
        for old in existing:
            old.unlink()
        write_micrographs(mics, n_micrographs, (shape, shape), seed=seed)
    else:
        echo(f"1. using the {n_micrographs} micrographs already in {mics}/")

    echo(f"2. zarrforge patches '{mics}/*.mrc' -o {store} --size 128 --stride 64")
    summary = run_patches(f"{mics}/*.mrc", store, size=128, stride=64, seed=seed, cluster=cluster, overwrite=True)
    echo(f"   {summary.line()}")

    import xarray as xr

    ds = xr.open_zarr(store)
    echo(
        f"3. xr.open_zarr({str(store)!r}): patches {dict(ds.patches.sizes)} {ds.patches.dtype}, "
        f"coords {', '.join(map(str, ds.coords))}"
    )
    result: dict[str, Any] = {
        "store": str(store),
        "samples": int(ds.sizes["sample"]),
        "summary": summary.as_dict(),
    }

    try:
        import torch
    except ImportError:
        echo('4. PyTorch is not installed: pip install "zarrforge[torch]" to read the store through a DataLoader')
        return result

    from torch_bridge import ChunkShuffleSampler, ZarrDataset, make_loader

    dataset = ZarrDataset(store, arrays=["patches"], return_metadata=True)
    sampler = ChunkShuffleSampler(dataset, seed=seed)
    loader = make_loader(dataset, batch_size=64, sampler=sampler, num_workers=2)
    start, n, checked = time.perf_counter(), 0, False
    first_batch = None
    for batch in loader:
        if first_batch is None:  # the clock starts once the workers are up
            first_batch, start, n = batch["patches"].shape[0], time.perf_counter(), 0
        else:
            n += batch["patches"].shape[0]
        if not checked:  # the first sample of the first batch is exactly the source pixels
            meta = {k: int(v[0]) for k, v in batch["meta"].items()}
            import mrcfile

            source = mrcfile.read(sorted(mics.glob("*.mrc"))[meta["source_index"]])
            expected = source[meta["y0"] : meta["y0"] + 128, meta["x0"] : meta["x0"] + 128]
            if not np.array_equal(batch["patches"][0].numpy(), expected):
                raise RuntimeError("demo check failed: a patch differs from its source pixels")
            checked = True
    seconds = time.perf_counter() - start
    total = n + (first_batch or 0)
    echo(
        f"4. one epoch through torch.utils.data.DataLoader (ChunkShuffleSampler, batch 64, 2 workers): "
        f"{total:,} samples, {n / max(seconds, 1e-9):,.0f} samples/s after the workers started; "
        f"first patch matches its source pixels; torch {torch.__version__}"
    )
    echo(f"next: zarrforge info {store}")
    result.update(epoch_samples=total, epoch_seconds=seconds)
    return result
