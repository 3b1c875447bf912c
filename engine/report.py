"""Human-readable descriptions of stores (``zarrforge info``)."""

from __future__ import annotations

import json
import os
from typing import Any

from storage.store import TrainingStore

__all__ = ["describe_store"]


def _items(arrays: dict[str, Any]) -> str:
    """``1,800 samples``; for a store without a sample axis its leading axes, e.g. ``100 object, 5 angle``."""
    lengths: dict[str, int] = {}
    for arr in arrays.values():
        if arr["dims"] and arr["shape"]:
            lengths.setdefault(arr["dims"][0], arr["shape"][0])
    if "sample" in lengths or not lengths:
        return f"{lengths.get('sample', 0):,} samples"
    return ", ".join(f"{n:,} {axis}" for axis, n in lengths.items())


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def describe_store(path: str | os.PathLike[str], *, as_json: bool = False) -> str:
    """Describe a store as text (or JSON): arrays, chunks, codecs, size, progress, provenance.

    Examples
    --------
    >>> describe_store("does-not-exist.zarr")
    Traceback (most recent call last):
    ...
    storage.errors.StoreError: does-not-exist.zarr: no such store
    """
    info = TrainingStore.open(path).describe()
    if as_json:
        return json.dumps(info, indent=2)
    meta: dict[str, Any] = info["zarrforge"]
    done, total = info["blocks_done"], info["blocks_total"]
    state = (
        "complete"
        if meta.get("complete")
        else f"UNFINISHED: {done} of {total} blocks written; re-run the same command to resume"
    )
    lines = [f"{info['path']}: {meta.get('pipeline', '?')} store, {_items(info['arrays'])}, {state}"]
    lines.append(f"  size on disk: {_size(info['nbytes_on_disk'])}")
    lines.append("  arrays:")
    width = max((len(n) for n in info["arrays"]), default=0)
    for name, arr in info["arrays"].items():
        shape = " × ".join(map(str, arr["shape"]))
        chunks = "×".join(map(str, arr["chunks"]))
        shards = "×".join(map(str, arr["shards"])) if arr["shards"] else "none"
        dims = ", ".join(arr["dims"])
        lines.append(
            f"    {name:<{width}}  ({dims})  {shape}  {arr['dtype']}  "
            f"chunks {chunks}  shards {shards}  codecs {'+'.join(arr['codecs']) or 'none'}  "
            f"{_size(arr['nbytes'])} decoded"
        )
    lines.extend(_count_lines(meta.get("counts")))
    params = ", ".join(f"{k}={v}" for k, v in meta.get("parameters", {}).items())
    lines.append(f"  made by: zarrforge {meta.get('pipeline', '?')} ({params}), seed {meta.get('seed')}")
    sources = meta.get("sources", [])
    if sources:
        first = sources[0].get("path", "?") if isinstance(sources[0], dict) else sources[0]
        lines.append(f"  sources: {len(sources)} files (first: {first})")
    versions = meta.get("versions", {})
    lines.append("  versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(
        f"  created: {meta.get('created')}" + (f", finished: {meta['finished']}" if "finished" in meta else "")
    )
    summary = meta.get("summary")
    if summary and summary.get("seconds"):
        lines.append(
            f"  last run: {summary['blocks_written']} blocks in {summary['seconds']:.1f} s "
            f"({summary['nbytes'] / max(summary['seconds'], 1e-9) / 2**20:,.0f} MiB/s decoded)"
        )
    return "\n".join(lines)


def _count_lines(counts: dict[str, Any] | None) -> list[str]:
    """Samples per split and sample type, and what did not match (a picking store's ``counts``)."""
    if not counts:
        return []
    splits = {name: c for name, c in counts.items() if isinstance(c, dict) and "samples" in c}
    kinds = [k for k in next(iter(splits.values()), {}) if k != "samples"]
    lines = ["  samples by split:" + "".join(f"{h:>12}" for h in ("samples", *kinds))] if splits else []
    for name, c in splits.items():
        lines.append(f"    {name:<14}" + "".join(f"{c.get(k, 0):>12,}" for k in ("samples", *kinds)))
    unmatched = counts.get("unmatched")
    if unmatched:
        lines.append(
            "  unmatched: " + ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in unmatched.items())
        )
    return lines
