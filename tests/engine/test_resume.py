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
from storage.testing import assert_stores_identical, finished_block_files, verify_store


def block_inodes(store: Path, blocks: set[int]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of these blocks: a rewrite (temp file + rename) changes the inode."""
    arrays = [*(p.parent for p in store.glob("[!.]*/zarr.json")), store / ".zarrforge" / "ledger"]
    files = [ShardWriter(array).file(k) for array in arrays for k in blocks]
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


@pytest.mark.slow
def test_resume_after_sigkill_recomputes_nothing_and_matches_a_clean_run(
    tmp_path: Path, patches_cli, many_blocks_env
):
    mics = tmp_path / "mics"
    write_micrographs(mics, 6, (400, 400), seed=3)
    env = {**os.environ, **many_blocks_env}  # many blocks: the kill lands mid-run

    clean = tmp_path / "clean.zarr"
    subprocess.run(patches_cli(mics, clean), env=env, check=True, capture_output=True)
    total = TrainingStore.open(clean).progress()[1]
    assert total > 50

    killed = tmp_path / "killed.zarr"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(patches_cli(mics, killed), env=env, start_new_session=True, **quiet)
    deadline = time.monotonic() + 120
    while finished_block_files(killed) < total // 4:
        assert proc.poll() is None, "the run finished before it could be killed; make it longer"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the client, the scheduler and every worker at once
    proc.wait()
    time.sleep(0.5)
    finished_before = finished_block_files(killed)
    assert 0 < finished_before < total

    info = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(killed), "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(info.stdout)["blocks_done"] == finished_before
    finished = TrainingStore.open(killed).done_blocks()
    untouched = block_inodes(killed, finished)

    resumed = subprocess.run(patches_cli(mics, killed), env=env, capture_output=True, text=True)
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
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, patches_cli, many_blocks_env):
    mics = tmp_path / "mics"
    write_micrographs(mics, 6, (400, 400), seed=3)
    env = {**os.environ, **many_blocks_env}  # many blocks: the kill lands mid-run
    out = tmp_path / "t.zarr"
    proc = subprocess.Popen(
        patches_cli(mics, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while finished_block_files(out) < 5:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    store = TrainingStore.open(out)
    done, total = store.progress()
    assert 0 < done < total and not store.complete
    resumed = subprocess.run(patches_cli(mics, out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert TrainingStore.open(out).attrs["summary"]["blocks_skipped"] >= done
    verify_store(out)
