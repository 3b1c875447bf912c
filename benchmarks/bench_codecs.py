"""Codecs of training stores: write speed, compression and chunk decode speed on micrograph patches.

The measurement behind ``storage.codecs.DEFAULT_CODEC``. For each codec of ``storage.codecs.CODECS`` and each
source — synthetic micrographs (``storage.synthetic.make_micrograph``, 4096²) and, when present, the real UCSF
micrograph in ``shared/data/real`` — 128×128 float32 windows (stride 64) are written to a Zarr v3 array laid out
like a training store (chunks of 64 samples, shards of 2048, ``storage.codecs.compressors(codec)``, so CRC32C
included), then read back chunk by chunk:

- write: ``zarr.create_array`` + one ``arr[start:stop] = block`` per shard, from memory into the page cache (no
  fsync), GB/s of decoded bytes;
- ratio: decoded bytes / bytes of the shard files;
- decode: every chunk once per pass, page cache warm, with ``storage.chunks.ChunkReader(...).read_chunk(k)`` (in
  the calling thread, where numcodecs lets Blosc use several threads; also with Blosc forced to one thread) and
  with zarr-python ``arr[k*64:(k+1)*64]`` (whose codec pipeline runs Blosc in a thread pool, single-threaded).

Each (source, codec) runs in a fresh process, configurations interleaved round by round; the table shows medians.
Each timing repeats its operation until it has run at least ``--min-time`` seconds.

Usage::

    python benchmarks/bench_codecs.py --quick --json codecs.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import GB, dir_nbytes, interleaved, median, print_table, run_worker, write_json

PATCH = 128
STRIDE = 64
MICROGRAPH = (4096, 4096)
CHUNK = 64
SHARD = 2048
REAL_MRC = Path(__file__).resolve().parents[2] / "shared/data/real/cryoem-ucsf-micrograph/Ucsf_stack_1142_DW.mrc"


def windows(image: np.ndarray) -> np.ndarray:
    """All 128×128 windows of ``image`` at stride 64, as ``(n, 128, 128)`` (a view)."""
    from numpy.lib.stride_tricks import sliding_window_view

    view = sliding_window_view(image, (PATCH, PATCH))[::STRIDE, ::STRIDE]
    return view.reshape(-1, PATCH, PATCH)


def make_sources(root: Path, n_synthetic: int) -> dict[str, dict[str, Any]]:
    """Write each source's patches to a .npy file; return ``{source: {"path", "samples", "note"}}``."""
    from storage.synthetic import make_micrograph

    out = np.empty((n_synthetic, PATCH, PATCH), np.float32)
    filled, index = 0, 0
    while filled < n_synthetic:
        patches = windows(make_micrograph(MICROGRAPH, seed=0, index=index)[0])
        take = min(len(patches), n_synthetic - filled)
        out[filled : filled + take] = patches[:take]
        filled, index = filled + take, index + 1
    np.save(root / "synthetic.npy", out)
    sources = {
        "synthetic": {
            "path": str(root / "synthetic.npy"),
            "samples": n_synthetic,
            "note": f"windows of {index} synthetic {MICROGRAPH[0]}² micrograph(s)",
        }
    }
    if REAL_MRC.exists():
        import mrcfile

        with mrcfile.open(REAL_MRC, permissive=True) as mrc:
            image = np.asarray(mrc.data, dtype=np.float32)
        image = image[0] if image.ndim == 3 else image
        patches = windows(image)
        # One micrograph gives only a few chunks' worth of windows: fill the same number of whole chunks as the
        # synthetic source with 64-window runs starting at spread offsets. Codecs work chunk by chunk, so the
        # repeats change no chunk's compression, and the timings see the same working set as the synthetic one.
        offsets = np.linspace(0, len(patches) - CHUNK, 8).astype(int)
        n_chunks = -(-n_synthetic // CHUNK)
        real = np.concatenate([patches[o : o + CHUNK] for o in np.resize(offsets, n_chunks)])
        np.save(root / "real.npy", real)
        sources["real"] = {
            "path": str(root / "real.npy"),
            "samples": len(real),
            "note": f"the {len(patches)} windows of {REAL_MRC.name} ({image.shape[0]}×{image.shape[1]}) "
            f"in runs of {CHUNK} from {len(offsets)} offsets",
        }
    return sources


# --------------------------------------------------------------------------- worker
def _timed(fn: Any, nbytes: int, min_time: float) -> tuple[float, int]:
    """Run ``fn`` until ``min_time`` seconds have passed (at least once); return (GB/s, runs)."""
    runs, start = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return runs * nbytes / elapsed / GB, runs


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import numcodecs.blosc
    import zarr

    from storage.chunks import ChunkReader
    from storage.codecs import compressors

    data = np.load(cfg["path"])  # into memory: the write measures encoding, not page faults
    n, nbytes = len(data), data.nbytes
    codec, min_time = cfg["codec"], cfg["min_time"]
    target = Path(cfg["dir"]) / f"{cfg['source']}-{codec}.zarr"
    arr: Any = None

    def write() -> None:
        nonlocal arr
        arr = zarr.create_array(
            store=str(target),
            shape=data.shape,
            dtype=data.dtype,
            chunks=(CHUNK, PATCH, PATCH),
            shards=(SHARD, PATCH, PATCH),
            compressors=compressors(codec),
            fill_value=0,
            config={"write_empty_chunks": True},
            overwrite=True,
        )
        for start in range(0, n, SHARD):
            arr[start : start + SHARD] = data[start : start + SHARD]

    try:
        write_gbs, write_runs = _timed(write, nbytes, min_time)
        stored = dir_nbytes(target / "c")

        reader = ChunkReader(target)
        if not reader.direct:
            raise SystemExit(f"{target}: ChunkReader fell back to zarr-python")
        n_chunks = reader.n_chunks
        for k in range(n_chunks):  # warm-up pass, and check every chunk against the source
            start, stop = reader.chunk_bounds(k)
            if not np.array_equal(reader.read_chunk(k), data[start:stop]):
                raise SystemExit(f"{target}: chunk {k} read back differs from what was written")

        def read_direct() -> None:
            for k in range(n_chunks):
                reader.read_chunk(k)

        blosc_threads = numcodecs.blosc.get_nthreads()
        direct_gbs, direct_runs = _timed(read_direct, nbytes, min_time)
        numcodecs.blosc.set_nthreads(1)
        direct1_gbs, _ = _timed(read_direct, nbytes, min_time)
        numcodecs.blosc.set_nthreads(blosc_threads)

        za = zarr.open_array(str(target), mode="r")
        if not np.array_equal(za[0:CHUNK], data[0:CHUNK]):
            raise SystemExit(f"{target}: zarr-python reads chunk 0 differently")

        def read_zarr() -> None:
            for k in range(n_chunks):
                za[k * CHUNK : (k + 1) * CHUNK]

        zarr_gbs, zarr_runs = _timed(read_zarr, nbytes, min_time)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return {
        "source": cfg["source"],
        "codec": codec,
        "samples": n,
        "chunks": n_chunks,
        "decoded_bytes": nbytes,
        "stored_bytes": stored,
        "ratio": nbytes / stored,
        "write_gbs": write_gbs,
        "decode_chunkreader_gbs": direct_gbs,
        "decode_chunkreader_1thread_gbs": direct1_gbs,
        "decode_zarr_gbs": zarr_gbs,
        "runs": {"write": write_runs, "chunkreader": direct_runs, "zarr": zarr_runs},
        "blosc_threads": blosc_threads,
    }


# --------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    from storage.codecs import CODECS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 synthetic samples, 2 rounds, short timings")
    parser.add_argument("--samples", type=int, help="samples per source (default 8,192; --quick 2,048)")
    parser.add_argument("--repeats", type=int, help="rounds of all configurations (default 3; --quick 2)")
    parser.add_argument("--min-time", type=float, help="seconds per timing (default 0.5; --quick 0.15)")
    parser.add_argument("--json", type=Path, help="write all measurements here")
    parser.add_argument("--dir", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    n = args.samples or (2_048 if args.quick else 8_192)
    repeats = args.repeats or (2 if args.quick else 3)
    min_time = args.min_time or (0.15 if args.quick else 0.5)
    root = Path(tempfile.mkdtemp(prefix="zf-bench-codecs-", dir=args.dir))
    try:
        sources = make_sources(root, n)
        if "real" not in sources:
            print(f"(no real micrograph at {REAL_MRC}: synthetic only)")
        configs = [(source, codec) for source in sources for codec in CODECS]
        runs = []
        for rep, (source, codec) in interleaved(configs, repeats):
            cfg = {"source": source, "codec": codec, "path": sources[source]["path"], "dir": str(root)}
            run = run_worker(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    json.dumps({**cfg, "min_time": min_time}),
                ]
            )
            runs.append({**run.result, "repeat": rep, "peak_rss": run.peak_rss})
            r = run.result
            print(
                f"  round {rep + 1}/{repeats} {source:>9} {codec:>10}: write {r['write_gbs']:.2f} GB/s, "
                f"ratio {r['ratio']:.3f}, decode {r['decode_chunkreader_gbs']:.2f} (ChunkReader) / "
                f"{r['decode_zarr_gbs']:.2f} (zarr) GB/s",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    keys = ("ratio", "write_gbs", "decode_chunkreader_gbs", "decode_chunkreader_1thread_gbs", "decode_zarr_gbs")
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for source, codec in configs:
        mine = [r for r in runs if r["source"] == source and r["codec"] == codec]
        summary[(source, codec)] = {
            "source": source,
            "codec": codec,
            "samples": mine[0]["samples"],
            **{key: median(r[key] for r in mine) for key in keys},
            "write_spread": f"{min(r['write_gbs'] for r in mine):.2f}–{max(r['write_gbs'] for r in mine):.2f}",
        }
    ratios: dict[str, float] = {}
    for source in sources:
        lz4, zstd = summary[(source, "blosc-lz4")], summary[(source, "zstd")]
        prefix = "" if source == "synthetic" else f"{source}_"
        ratios[f"{prefix}write_vs_zstd"] = lz4["write_gbs"] / zstd["write_gbs"]
        ratios[f"{prefix}decode_vs_zstd"] = lz4["decode_chunkreader_gbs"] / zstd["decode_chunkreader_gbs"]
        ratios[f"{prefix}ratio_vs_zstd"] = lz4["ratio"] / zstd["ratio"]

    print()
    notes = "; ".join(f"{s}: {v['samples']:,} patches, {v['note']}" for s, v in sources.items())
    print(
        textwrap.fill(
            f"128×128 float32 patches in chunks of {CHUNK}, shards of {SHARD} ({notes}). Medians of {repeats} "
            f"fresh-process run(s); GB/s of decoded bytes; write = encode + write to the page cache (no fsync); "
            f"decode = page cache warm, every chunk once per pass; Blosc may use {runs[0]['blosc_threads']} "
            "threads in ChunkReader (its calling thread), 1 in zarr-python (its thread pool).",
            115,
        )
    )
    print_table(
        list(summary.values()),
        [
            ("source", "source"),
            ("codec", "codec"),
            ("ratio", "ratio", ".3f"),
            ("write_gbs", "write GB/s", ".2f"),
            ("write_spread", "write min–max"),
            ("decode_chunkreader_gbs", "ChunkReader GB/s", ".2f"),
            ("decode_chunkreader_1thread_gbs", "ChunkReader 1 thread", ".2f"),
            ("decode_zarr_gbs", "zarr arr[k*64:] GB/s", ".2f"),
        ],
    )
    print()
    print("blosc-lz4 vs zstd (level 1):")
    print_table(
        [{"ratio": k, "value": v} for k, v in ratios.items()], [("ratio", "ratio"), ("value", "value", ".3f")]
    )
    if args.json:
        write_json(
            args.json,
            {"runs": runs, "summary": list(summary.values()), "sources": sources},
            ratios,
            parameters={"samples": n, "repeats": repeats, "min_time": min_time, "chunk": CHUNK, "shard": SHARD},
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
