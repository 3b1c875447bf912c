"""The ``slurm`` profile: settings checked before anything reaches a job script, and runs on a REAL SLURM.

The real-SLURM tests need the single-node SLURM that ``.ci/run`` starts (``../shared/scripts/slurm-local-up.sh``,
which exports ``SLURM_CONF``); without it they skip, and fail where ``ZARRFORGE_REQUIRE`` includes ``slurm``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.config
import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.errors import ClusterError
from engine.slurm import job_script, slurm_settings
from storage.store import TrainingStore
from storage.synthetic import write_micrographs
from storage.testing import assert_stores_identical, finished_block_files, verify_store

# --------------------------------------------------------------------------- settings (no SLURM needed)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("job-name", "x; rm -rf ~", "not a valid job name"),
        ("job-name", "a\nhostname", "not a valid job name"),
        ("job-name", "$(id)", "not a valid job name"),
        ("queue", "gpu\n#SBATCH --mem=1T", "not a valid partition"),
        ("account", "me`id`", "not a valid account"),
        ("walltime", "1 hour", "not a SLURM time"),
        ("walltime", "00:00:00", "longer than zero"),
        ("memory", "lots", "not a size"),
        ("memory", "4GB\nhostname", "not a size"),
        ("jobs", 0, "whole number >= 1"),
        ("cores", "two", "whole number >= 1"),
        ("job-extra", ["--gres=gpu:1\nhostname"], "not an sbatch option"),
        ("job-extra", ["--comment='x'"], "not an sbatch option"),
        ("job-extra", ["--wrap=rm -rf /"], "not an sbatch option"),
        ("log-directory", "/tmp/my logs", "characters a job script cannot take"),
        ("local-directory", "/tmp/$(id)", "characters a job script cannot take"),
        ("lifetime", "2h", "shorter than the walltime"),
        ("interface", "eth0;id", "not a valid network interface"),
    ],
)
def test_unsafe_or_wrong_settings_are_refused_naming_the_setting(key: str, value: object, message: str) -> None:
    with pytest.raises(ClusterError, match=message) as err:
        slurm_settings({key: value})
    assert f"zarrforge.slurm.{key}" in str(err.value)
    assert "\n" not in str(err.value).replace(repr(value), "")


@pytest.mark.parametrize(
    ("walltime", "seconds"),
    [("30", 1800), ("30:15", 1815), ("01:30:00", 5400), ("1-00", 86400), ("1-02:03", 93780), ("2-0:0:1", 172801)],
)
def test_walltimes_in_every_slurm_format(walltime: str, seconds: int) -> None:
    assert slurm_settings({"walltime": walltime}).walltime_seconds == seconds


def test_workers_retire_before_the_walltime() -> None:
    assert slurm_settings({"walltime": "01:00:00"}).lifetime == "3300s"  # 5 minutes before
    assert slurm_settings({"walltime": "10"}).lifetime == "480s"  # 80% of a short walltime
    assert slurm_settings({"walltime": "01:00:00", "lifetime": "50m"}).lifetime == "50m"


def test_adaptive_bounds_default_to_jobs() -> None:
    settings = slurm_settings({"jobs": 3})
    assert (settings.minimum_jobs, settings.maximum_jobs) == (3, 3)
    settings = slurm_settings({"jobs": 1, "adaptive": {"minimum": 0, "maximum": 8}})
    assert (settings.minimum_jobs, settings.maximum_jobs) == (0, 8)
    with pytest.raises(ClusterError, match="minimum 5 is larger than maximum 2"):
        slurm_settings({"adaptive": {"minimum": 5, "maximum": 2}})


def test_job_script_holds_exactly_the_settings() -> None:
    settings = slurm_settings(
        {
            "job-name": "zf-run.1",
            "cores": 4,
            "processes": 2,
            "memory": "16GB",
            "walltime": "02:00:00",
            "queue": "gpu,cpu",
            "account": "proj_42",
            "job-extra": ["--gres=gpu:1", "--constraint=ssd"],
        }
    )
    script = job_script(settings)
    for line in [
        "#SBATCH -J zf-run.1",
        "#SBATCH -p gpu,cpu",
        "#SBATCH -A proj_42",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=15G",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --constraint=ssd",
    ]:
        assert line in script.splitlines(), (line, script)
    command = script.strip().splitlines()[-1]
    assert command.startswith(f"{sys.executable} -m distributed.cli.dask_worker ")
    assert "--dashboard-address 127.0.0.1:0" in command  # worker dashboards on loopback
    assert "--lifetime 6900s" in command
    assert "--nworkers 2" in command and "--nthreads 2" in command


def test_dry_run_cli_prints_the_script_and_takes_config() -> None:
    result = CliRunner().invoke(
        main, ["cluster", "--dry-run", "--job-name", "mine", "--memory", "8GB", "-c", "slurm.cores=2"]
    )
    assert result.exit_code == 0, result.output
    assert "#SBATCH -J mine" in result.output and "#SBATCH --cpus-per-task=2" in result.output
    assert "#SBATCH --mem=8G" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["cluster", "--dry-run", "--job-name", "x;reboot"],
        ["cluster", "--dry-run", "--job-extra=--begin=now\nid"],
        ["patches", "in", "-o", "out.zarr", "--size", "8", "--cluster", "slurm", "--job-name", "a b"],
        ["patches", "in", "-o", "out.zarr", "--size", "8", "--cluster", "slurm", "-c", "slurm.walltime=forever"],
    ],
)
def test_bad_slurm_settings_from_the_cli_are_one_line_errors(args: list[str], tmp_path: Path) -> None:
    os.chdir(tmp_path)
    write_micrographs(tmp_path / "in", 1, (32, 32), seed=0)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: zarrforge.slurm.") and "Traceback" not in result.output
    assert not (tmp_path / "out.zarr").exists()  # checked before anything is written


def test_config_option_needs_key_and_value() -> None:
    result = CliRunner().invoke(main, ["cluster", "--dry-run", "-c", "slurm.cores"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


# --------------------------------------------------------------------------- a real SLURM


@pytest.fixture
def slurm(require_feature, tmp_path: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of a running local SLURM, with settings that suit one node on loopback."""
    missing = None
    if not os.environ.get("SLURM_CONF"):
        missing = "SLURM_CONF is not set (start one with ../shared/scripts/slurm-local-up.sh)"
    elif shutil.which("sbatch") is None:
        missing = "sbatch is not installed"
    else:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or not {"idle", "mixed", "allocated"} & set(probe.stdout.split()):
            missing = f"no usable SLURM node: {probe.stdout.strip() or probe.stderr.strip()}"
    require_feature("slurm", missing)
    return {
        **os.environ,
        "DASK_ZARRFORGE__SLURM__INTERFACE": "lo",  # scheduler and workers on 127.0.0.1 (one node)
        "DASK_ZARRFORGE__SLURM__MEMORY": "2GB",
        "DASK_ZARRFORGE__SLURM__WALLTIME": "00:15:00",
        "DASK_ZARRFORGE__SLURM__DASHBOARD_ADDRESS": "127.0.0.1:0",
        "DASK_ZARRFORGE__SLURM__TIMEOUT": "180s",
        "DASK_ZARRFORGE__SLURM__LOG_DIRECTORY": str(tmp_path / "job-logs"),  # not slurm-N.out in the cwd
        "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
    }


_names = itertools.count()


def job_name() -> str:
    return f"zf-test-{os.getpid()}-{next(_names)}"


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_until_no_jobs(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while jobs_named(name):
        assert time.monotonic() < deadline, f"jobs {name} still queued: {jobs_named(name)}"
        time.sleep(0.5)


@pytest.mark.slurm
@pytest.mark.slow
def test_run_on_slurm_equals_local_and_leaves_no_jobs(slurm: dict[str, str], tmp_path: Path, patches_cli) -> None:  # type: ignore[no-untyped-def]
    write_micrographs(tmp_path / "mics", 3, (256, 320), seed=1)
    name = job_name()
    local = tmp_path / "local.zarr"
    subprocess.run(patches_cli(tmp_path / "mics", local), env=slurm, check=True, capture_output=True)
    on_slurm = tmp_path / "slurm.zarr"
    logs = tmp_path / "logs"
    run = subprocess.run(
        [
            *patches_cli(tmp_path / "mics", on_slurm),
            "--cluster",
            "slurm",
            "--jobs",
            "2",
            "--job-name",
            name,
            "-c",
            f"slurm.log-directory={logs}",
        ],
        env=slurm,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "dashboard: http://127.0.0.1:" in run.stderr
    assert "SLURM: jobs cancelled" in run.stderr
    assert_stores_identical(local, on_slurm)
    wait_until_no_jobs(name, timeout=30)  # cluster.close() cancelled them
    assert list(logs.glob(f"{name}-*.err")), "the worker jobs wrote their logs where asked"


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_of_a_worker_job_mid_run_loses_nothing(
    slurm: dict[str, str], many_blocks_env: dict[str, str], tmp_path: Path, patches_cli
) -> None:  # type: ignore[no-untyped-def]
    write_micrographs(tmp_path / "mics", 6, (400, 400), seed=3)
    env = {**slurm, **many_blocks_env}
    clean = tmp_path / "clean.zarr"
    subprocess.run(patches_cli(tmp_path / "mics", clean), env=env, check=True, capture_output=True)
    total = TrainingStore.open(clean).progress()[1]

    name = job_name()
    out = tmp_path / "slurm.zarr"
    command = [*patches_cli(tmp_path / "mics", out), "--cluster", "slurm", "--jobs", "2", "--job-name", name]
    # Slow the blocks down a little, so the run is still going when a job is cancelled.
    env["DASK_ZARRFORGE__RUN__MAX_IN_FLIGHT"] = "2"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(jobs_running(name)) < 2 or finished_block_files(out) < 2:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        victim = jobs_running(name)[0]
        subprocess.run(["scancel", victim], check=True)
        cancelled_at = finished_block_files(out)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert cancelled_at < total, "the run ended before the job was cancelled; make it longer"
    assert_stores_identical(clean, out)
    verify_store(out)
    wait_until_no_jobs(name, timeout=30)


@pytest.mark.slurm
@pytest.mark.slow
def test_ctrl_c_cancels_every_job(  # type: ignore[no-untyped-def]
    slurm: dict[str, str], many_blocks_env: dict[str, str], tmp_path: Path, patches_cli
) -> None:
    write_micrographs(tmp_path / "mics", 6, (400, 400), seed=3)
    name = job_name()
    out = tmp_path / "slurm.zarr"
    command = [*patches_cli(tmp_path / "mics", out), "--cluster", "slurm", "--jobs", "2", "--job-name", name]
    proc = subprocess.Popen(
        command, env={**slurm, **many_blocks_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while not jobs_named(name):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), stderr  # 0 if it had just finished
    assert "Traceback" not in stderr
    wait_until_no_jobs(name, timeout=30)


def jobs_running(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_settings_come_from_dask_config() -> None:
    with dask.config.set({"zarrforge.slurm.jobs": 5, "zarrforge.slurm.queue": "short"}):
        settings = slurm_settings()
    assert settings.jobs == 5 and settings.queue == "short"
    assert slurm_settings({"jobs": 7}).jobs == 7  # explicit overrides win


@pytest.mark.slow
def test_cluster_command_serves_a_cluster_that_pipelines_join(tmp_path: Path, patches_cli) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    with subprocess.Popen(
        [sys.executable, "-m", "engine", "cluster", "--cluster", "local"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        try:
            assert server.stdout is not None and server.stderr is not None
            first = server.stdout.readline()
            assert first.startswith("scheduler: tcp://127.0.0.1:"), first + server.stderr.read()
            address = first.split()[1]
            write_micrographs(tmp_path / "mics", 2, (128, 128), seed=0)
            run = subprocess.run(
                [*patches_cli(tmp_path / "mics", tmp_path / "a.zarr"), "--cluster", address],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr
            assert f"connected to {address}" in run.stderr
            verify_store(tmp_path / "a.zarr")
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=60) == 130
        finally:
            if server.poll() is None:
                server.kill()
