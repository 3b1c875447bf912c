"""Kill a real run with SIGKILL half-way, re-run the same command, and check nothing finished is redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.shards import ShardWriter
from storage.store import TrainingStore
from storage.synthetic import write_micrographs
from storage.testing import assert_stores_identical, verify_store

# Small shards make many blocks, so the kill lands in the middle of the run.
ENV = {
    "DASK_ZARRFORGE__STORE__CHUNK_BYTES": str(2 * 64 * 64 * 4),
    "DASK_ZARRFORGE__STORE__SHARD_BYTES": str(8 * 64 * 64 * 4),
    "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
}


def command(inputs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "engine",
        "patches",
        str(inputs),
        "-o",
        str(out),
        "--size",
        "64",
        "--stride",
        "32",
    ]


def block_inodes(store: Path, blocks: set[int]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of these blocks: a rewrite (temp file + rename) changes the inode."""
    arrays = [*(p.parent for p in store.glob("[!.]*/zarr.json")), store / ".zarrforge" / "ledger"]
    files = [ShardWriter(array).file(k) for array in arrays for k in blocks]
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


def done_blocks(store: Path) -> int:
    ledger = store / ".zarrforge" / "ledger" / "c"
    # One file per finished block; a ``.partial`` file is a ledger write that a kill interrupted (not done).
    return len([f for f in ledger.iterdir() if not f.name.endswith(".partial")]) if ledger.is_dir() else 0


@pytest.mark.slow
def test_resume_after_sigkill_recomputes_nothing_and_matches_a_clean_run(tmp_path: Path):
    mics = tmp_path / "mics"
    write_micrographs(mics, 6, (400, 400), seed=3)
    env = {**os.environ, **ENV}

    clean = tmp_path / "clean.zarr"
    subprocess.run(command(mics, clean), env=env, check=True, capture_output=True)
    total = TrainingStore.open(clean).progress()[1]
    assert total > 50

    killed = tmp_path / "killed.zarr"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(command(mics, killed), env=env, start_new_session=True, **quiet)
    deadline = time.monotonic() + 120
    while done_blocks(killed) < total // 4:
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and every worker at once
    proc.wait()
    time.sleep(0.5)
    finished_before = done_blocks(killed)
    assert 0 < finished_before < total

    info = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(killed), "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(info.stdout)["blocks_done"] == finished_before
    finished = TrainingStore.open(killed).done_blocks()
    untouched = block_inodes(killed, finished)

    resumed = subprocess.run(command(mics, killed), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished_before} blocks already done" in resumed.stdout
    summary = TrainingStore.open(killed).attrs["summary"]
    assert summary["blocks_skipped"] == finished_before
    assert summary["blocks_written"] == total - finished_before  # nothing finished was recomputed
    assert block_inodes(killed, finished) == untouched  # ... nor rewritten: the very same files
    assert not list(killed.rglob("*.partial"))
    assert_stores_identical(clean, killed)
    verify_store(killed)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path):
    mics = tmp_path / "mics"
    write_micrographs(mics, 6, (400, 400), seed=3)
    env = {**os.environ, **ENV}
    out = tmp_path / "t.zarr"
    proc = subprocess.Popen(command(mics, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while done_blocks(out) < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    store = TrainingStore.open(out)
    done, total = store.progress()
    assert 0 < done < total and not store.complete
    resumed = subprocess.run(command(mics, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert TrainingStore.open(out).attrs["summary"]["blocks_skipped"] >= done
    verify_store(out)
