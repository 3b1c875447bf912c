"""The README's commands and Python example stay true to the code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest

from engine.pipelines import run_patches
from storage.synthetic import write_micrographs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_runs(tmp_path: Path):
    write_micrographs(tmp_path / "micrographs", 2, (320, 320))
    with dask.config.set({"zarrforge.local.dashboard-address": "127.0.0.1:0"}):
        run_patches(tmp_path / "micrographs", tmp_path / "train.zarr", size=128, stride=64, progress=False)
    example = re.search(r"```python\n(import torch.*?)```", README.read_text(), re.S)
    assert example is not None
    (tmp_path / "example.py").write_text(example.group(1))
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_the_set_up_commands_are_what_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install torch==2.13.0; pip install -e ".[torch,test]" && python -m pytest'
    assert test_command in text and test_command in ci
    assert 'pip install torch==2.13.0; pip install -e ".[torch]" && zarrforge demo' in text


def test_the_picking_commands_and_example_run(tmp_path: Path):
    """The README's picking command on generated micrographs and picks, then its training example."""
    from storage.synthetic import write_picking_set

    write_picking_set(tmp_path, 4, (512, 512), seed=0)  # micrographs/*.mrc and picks/*.star, as in the README
    text = README.read_text()
    command = re.search(r"(zarrforge picking .*?--seed 0)", text, re.S)
    assert command is not None
    env = {"DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    done = subprocess.run(
        command.group(1).replace("\\\n", " "),
        shell=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    info = subprocess.run(["zarrforge", "info", "picking.zarr"], cwd=tmp_path, capture_output=True, text=True)
    assert "samples by split" in info.stdout
    example = re.search(
        r"```python\n(import torch\nfrom torch_bridge import BalancedBatchSampler.*?)```", text, re.S
    )
    assert example is not None
    (tmp_path / "train.py").write_text(example.group(1).replace("...", "assert int(label.sum()) == 32"))
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_images_command_and_example_run(tmp_path: Path):
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)
    for folder in ("edente", "dente"):
        (tmp_path / "data_dir" / folder).mkdir(parents=True)
        for i in range(12):
            tifffile.imwrite(tmp_path / "data_dir" / folder / f"{i}.tif", rng.integers(0, 9, (300, 280), "uint16"))
    text = README.read_text()
    command = re.search(r"(zarrforge images data_dir .*?--seed 42)", text)
    assert command is not None
    env = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    done = subprocess.run(command.group(1), shell=True, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    example = re.search(r"```python\n(from torch_bridge import image_loaders.*?)```", text, re.S)
    assert example is not None
    code = example.group(1).replace("...", "assert target.shape[1:] == (1, 256, 256)")
    (tmp_path / "train.py").write_text(
        "if __name__ == '__main__':\n" + "\n".join("    " + line for line in code.splitlines())
    )
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_tensor_tomo_commands_and_example_run(tmp_path: Path):
    """The README's tensor-tomo commands as written (a synthetic 16³ scan, 8 samples), then its Python example."""
    text = README.read_text()
    block = re.search(r"```bash\n(zarrforge tensor-tomo --synthetic.*?)```", text, re.S)
    assert block is not None
    env = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    for command in block.group(1).strip().splitlines():
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=500
        )
        assert done.returncode == 0, done.stderr
    example = re.search(r"```python\n(from torch_bridge import ReconstructionDataset.*?)```", text, re.S)
    assert example is not None
    (tmp_path / "example.py").write_text(example.group(1))
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


def test_the_tomography_commands_and_example_run(tmp_path: Path):
    """The README's sinograms → stripes → preview commands on a generated scan, then its PairDataset example."""
    from storage.tomo_synthetic import write_nxtomo_scan

    write_nxtomo_scan(tmp_path / "scan.nxs", n_angles=1801, height=6, width=520, stripe_columns=(40,), seed=0)
    text = README.read_text()
    block = re.search(r"```bash\n(zarrforge sinograms scan\.nxs.*?)```", text, re.S)
    assert block is not None
    env = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    for line in block.group(1).strip().splitlines():
        command = line.split("  #")[0].strip()
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, (command, done.stderr)
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    example = re.search(r"```python\n(import torch\nfrom torch_bridge import PairDataset.*?)```", text, re.S)
    assert example is not None
    code = example.group(1).replace("...", "assert clean.shape[1:] == stripe.shape[1:] == (1801, 256)")
    (tmp_path / "train.py").write_text(code)
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow  # 100 objects and 3.9 million rays, as the README says: about 40 s on 2 cores
def test_the_voxel_commands_and_example_run(tmp_path: Path):
    """The README's voxels, rays and splits commands as written (meshes generated here), then its example."""
    import trimesh

    (tmp_path / "meshes").mkdir()
    trimesh.creation.icosphere(subdivisions=3).export(tmp_path / "meshes" / "sphere.stl")
    trimesh.creation.box((1.0, 2.0, 1.5)).export(tmp_path / "meshes" / "box.stl")
    trimesh.creation.torus(1.0, 0.3).export(tmp_path / "meshes" / "torus.stl")
    text = README.read_text()
    block = re.search(r"```bash\n(zarrforge voxels --synthetic 100.*?)```", text, re.S)
    assert block is not None
    env = {**os.environ, "DASK_ZARRFORGE__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    for line in block.group(1).strip().splitlines():
        command = line.split("  #")[0].strip()
        done = subprocess.run(
            command, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, (command, done.stderr)
    assert "objects per split train 70, val 20, test 10" in done.stdout
    example = re.search(r"```python\n(from torch.utils.data import DataLoader\n.*?)```", text, re.S)
    assert example is not None
    checks = "assert voxels.shape[:2] == (8, 1) and origins.shape == (4096, 3); break"
    (tmp_path / "train.py").write_text(example.group(1).replace("            ...", f"            {checks}"))
    done = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
