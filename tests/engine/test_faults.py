"""Faults a run survives with nothing lost: a worker killed, two writers at once, a full disk.

Each test ends by comparing the store byte for byte with a clean run of the same pipeline. The client killed
with SIGKILL (and Ctrl-C) is in ``test_resume.py``.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import psutil
import pytest

from engine.pipelines import run_patches
from storage.errors import StoreError
from storage.shards import ShardWriter
from storage.store import TrainingStore
from storage.synthetic import write_micrographs
from storage.testing import assert_stores_identical, finished_block_files, verify_store

# Small shards make many blocks (91 here), so a fault lands in the middle of the run.
CHUNK_BYTES, SHARD_BYTES = 2 * 64 * 64 * 4, 8 * 64 * 64 * 4
ENV = {
    "DASK_ZARRFORGE__STORE__CHUNK_BYTES": str(CHUNK_BYTES),
    "DASK_ZARRFORGE__STORE__SHARD_BYTES": str(SHARD_BYTES),
    "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
}
ARGS = ["--size", "64", "--stride", "32"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mics = tmp_path_factory.mktemp("faults") / "mics"
    write_micrographs(mics, 6, (400, 400), seed=3)
    return mics


@pytest.fixture(scope="module")
def clean(inputs: Path) -> Path:
    """The reference: the same pipeline run once, undisturbed, on threads."""
    out = inputs.parent / "clean.zarr"
    with dask.config.set(_settings(processes=False)):
        run_patches([str(inputs)], out, size=64, stride=32, progress=False)
    return out


def _settings(*, processes: bool) -> dict[str, object]:
    return {
        "zarrforge.store.chunk-bytes": CHUNK_BYTES,
        "zarrforge.store.shard-bytes": SHARD_BYTES,
        "zarrforge.local.processes": processes,
        "zarrforge.local.n-workers": 2 if processes else 1,
        "zarrforge.local.threads-per-worker": 1 if processes else 2,
        "zarrforge.local.dashboard-address": "127.0.0.1:0",
    }


def cli(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine", "patches", str(inputs), "-o", str(out), *ARGS, *extra]


def run_cli(inputs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV}
    return subprocess.run(cli(inputs, out, *extra), env=env, capture_output=True, text=True, timeout=300)


def block_files(store: Path, block: int) -> dict[str, bytes]:
    """The bytes of every array's shard of one block."""
    names = [p.parent.name for p in store.glob("*/zarr.json") if not p.parent.name.startswith(".")]
    return {name: ShardWriter(store / name).file(block).read_bytes() for name in sorted(names)}


# ---------------------------------------------------------------- (a) a worker killed mid-run


@pytest.mark.slow
def test_worker_killed_mid_run_is_replaced_and_the_store_matches_a_clean_run(
    inputs: Path, clean: Path, tmp_path: Path
):
    total = TrainingStore.open(clean).progress()[1]
    out = tmp_path / "t.zarr"
    before = {p.pid for p in psutil.Process().children()}
    killed: list[tuple[int, int]] = []  # (pid, blocks done when it was killed)
    errors: list[BaseException] = []

    def kill_a_worker() -> None:
        try:
            deadline = time.monotonic() + 120
            while finished_block_files(out) < total // 4:
                if time.monotonic() > deadline:
                    raise TimeoutError("the run never reached a quarter of its blocks")
                time.sleep(0.01)
            # The LocalCluster's worker processes: children of this process started by the run.
            workers = [
                p
                for p in psutil.Process().children()
                if p.pid not in before and "spawn_main" in " ".join(p.cmdline())
            ]
            assert len(workers) == 2, [p.cmdline() for p in workers]
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append((workers[0].pid, finished_block_files(out)))
        except BaseException as e:
            errors.append(e)

    with dask.config.set(_settings(processes=True)):
        killer = threading.Thread(target=kill_a_worker, daemon=True)
        killer.start()
        start = time.perf_counter()
        summary = run_patches([str(inputs)], out, size=64, stride=32, progress=False)
        seconds = time.perf_counter() - start
        killer.join(timeout=10)
    assert not errors, errors
    [(pid, done_at_kill)] = killed
    assert 0 < done_at_kill < total, "the worker was not killed mid-run"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert summary.blocks_written == total and summary.blocks_skipped == 0
    assert not list(out.rglob("*.partial"))
    assert_stores_identical(clean, out)
    verify_store(out)
    print(f"worker {pid} killed at block {done_at_kill}/{total}; run finished in {seconds:.1f} s")


# ---------------------------------------------------------------- (c) two writers at once


@pytest.mark.slow
def test_two_runs_on_one_store_at_once_the_second_is_refused(inputs: Path, clean: Path, tmp_path: Path):
    out = tmp_path / "t.zarr"
    env = {**os.environ, **ENV}
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    procs = [subprocess.Popen(cli(inputs, out, "-q"), **pipe) for _ in range(2)]  # type: ignore[call-overload]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        results.append((proc.returncode, stdout, stderr))
    assert sorted(code for code, _, _ in results) == [0, 1], results
    [(_, _, refused)] = [r for r in results if r[0] == 1]
    lines = refused.strip().splitlines()
    assert len(lines) == 1, refused
    assert lines[0].startswith(f"Error: {out} is being written by another process (lock ")
    assert "write.lock" in lines[0] and "wait for it to finish" in lines[0]
    # The writer that held the lock was not disturbed.
    assert_stores_identical(clean, out)
    verify_store(out)


@pytest.mark.slow
def test_a_second_run_started_mid_run_is_refused_and_leaves_the_first_alone(
    inputs: Path, clean: Path, tmp_path: Path
):
    out = tmp_path / "t.zarr"
    env = {**os.environ, **ENV}
    first = subprocess.Popen(cli(inputs, out, "-q"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while finished_block_files(out) < 5:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = run_cli(inputs, out)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"Error: {out} is being written by another process (lock {out / '.zarrforge' / 'write.lock'}); "
            "wait for it to finish"
        ]
        assert first.poll() is None, "the first run ended while the second was refused; make it longer"
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr
    assert_stores_identical(clean, out)


# ---------------------------------------------------------------- (d) a full disk


class SmallDisk:
    """A tmpfs of a given size mounted on a folder; it can be grown in place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, kib: int) -> str | None:
        """Mount it; return why that failed, or None."""
        if shutil.which("mount") is None:
            return "no mount command"
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(self.path)], capture_output=True, text=True
        )
        return None if result.returncode == 0 else (result.stderr.strip() or f"mount exited {result.returncode}")

    def resize(self, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path, require_feature) -> Iterator[SmallDisk]:  # type: ignore[no-untyped-def]
    """A 64 KiB tmpfs (grow it with ``resize``); skipped loudly where mounting is not permitted."""
    disk = SmallDisk(tmp_path / "disk")
    disk.path.mkdir()
    require_feature("mount", disk.mount(64))
    try:
        yield disk
    finally:
        disk.unmount()


def pages_kib(store: Path) -> int:
    """What a store takes on a tmpfs: every file rounded up to 4 KiB pages."""
    return sum(-(-p.stat().st_size // 4096) * 4 for p in store.rglob("*") if p.is_file())


@pytest.mark.slow
def test_disk_full_mid_run_is_one_clear_error_marks_nothing_torn_and_resumes(
    inputs: Path, clean: Path, small_disk: SmallDisk
):
    total = TrainingStore.open(clean).progress()[1]
    small_disk.resize(pages_kib(clean) // 2)  # room for about half the blocks
    out = small_disk.path / "t.zarr"

    failed = run_cli(inputs, out, "-q")
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"Error: {out}/") and "no space left on device" in lines[0].lower()
    assert "re-run the same command to resume" in lines[0]

    # Every block the ledger marks done holds exactly the clean run's bytes, in every array.
    done = TrainingStore.open(out).done_blocks()
    assert 0 < len(done) < total
    for block in sorted(done):
        assert block_files(out, block) == block_files(clean, block), f"block {block} marked done but torn"
    assert not list(out.rglob("*.partial")), "torn temporary files left on the full disk"

    small_disk.resize(4 * pages_kib(clean))
    resumed = run_cli(inputs, out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} blocks already done" in resumed.stdout
    summary = TrainingStore.open(out).attrs["summary"]
    assert (summary["blocks_skipped"], summary["blocks_written"]) == (len(done), total - len(done))
    assert_stores_identical(clean, out)
    verify_store(out)
    print(f"disk full after {len(done)}/{total} blocks; resumed and wrote the other {total - len(done)}")


@pytest.mark.slow
def test_disk_full_while_creating_the_store_resumes_without_overwrite(
    inputs: Path, clean: Path, small_disk: SmallDisk
):
    small_disk.resize(12)  # the root metadata and a couple of arrays' fit, not all of them
    out = small_disk.path / "t.zarr"
    failed = run_cli(inputs, out, "-q")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"Error: {out}: creating the store failed: no space left on device; free space (or write elsewhere), "
        "then re-run the same command to resume"
    ]
    small_disk.resize(4 * pages_kib(clean))
    resumed = run_cli(inputs, out, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_stores_identical(clean, out)


def test_disk_full_while_finishing_leaves_the_store_unfinished_and_a_rerun_finishes_it(
    inputs: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "t.zarr"

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "zarr.json"))

    with dask.config.set(_settings(processes=False)):
        with monkeypatch.context() as patch:
            patch.setattr("storage.store.zarr.consolidate_metadata", full)
            with pytest.raises(StoreError, match=r"finishing the store failed: no space left on device"):
                run_patches([str(inputs)], out, size=64, stride=32, progress=False)
        store = TrainingStore.open(out)
        assert store.attrs["complete"] and not store.complete  # marked, but not consolidated
        summary = run_patches([str(inputs)], out, size=64, stride=32, progress=False)
    assert summary.blocks_written == 0 and summary.blocks_skipped == summary.blocks_total
    assert TrainingStore.open(out).complete
    assert_stores_identical(clean, out)


@pytest.mark.parametrize(
    ("code", "retried"), [(errno.EIO, True), (errno.ENOSPC, False), (errno.EACCES, False)], ids=errno.errorcode.get
)
def test_a_passing_io_error_is_retried_and_a_lasting_one_is_not(
    inputs: Path, clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, retried: bool
):
    out = tmp_path / "t.zarr"
    write_shard = ShardWriter.write_shard
    attempts: list[int] = []

    def fail_block_3_once(self: ShardWriter, k: int, data: object) -> None:
        if k == 3 and self.path.name == "patches":
            attempts.append(k)
            if len(attempts) == 1:
                raise OSError(code, os.strerror(code))
        write_shard(self, k, data)  # type: ignore[arg-type]

    monkeypatch.setattr(ShardWriter, "write_shard", fail_block_3_once)
    with dask.config.set(_settings(processes=False)):
        if retried:
            run_patches([str(inputs)], out, size=64, stride=32, progress=False)
            assert len(attempts) == 2
            assert_stores_identical(clean, out)
        else:
            with pytest.raises(StoreError, match=rf"{out}/patches/c/3/0/0: writing block 3 failed: ") as info:
                run_patches([str(inputs)], out, size=64, stride=32, progress=False)
            assert attempts == [3], "a lasting error was retried"
            assert "\n" not in str(info.value)
            assert 3 not in TrainingStore.open(out).done_blocks()
