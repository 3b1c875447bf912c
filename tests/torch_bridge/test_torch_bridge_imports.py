"""torch_bridge's import contract: light (no dask, no engine) and a helpful error without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_never_imports_dask_or_engine() -> None:
    result = run(
        """
        import sys
        import torch_bridge
        from torch_bridge import ZarrDataset, ChunkShuffleSampler, ChunkCache, make_loader
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in {"dask", "distributed", "engine", "xarray", "graphs"})
        assert not heavy, heavy
        assert "distributed" not in sys.modules and "dask" not in sys.modules
        """
    )
    assert result.returncode == 0, result.stderr


def test_missing_torch_says_what_to_install() -> None:
    result = run(
        """
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        try:
            import torch_bridge
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported without torch")
        """
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "zarrforge[torch]"' in result.stdout


def test_public_names() -> None:
    import torch_bridge

    assert sorted(torch_bridge.__all__) == [
        "BalancedBatchSampler",
        "BatchIndices",
        "ChunkBatchSampler",
        "ChunkCache",
        "ChunkShuffleSampler",
        "PairDataset",
        "RayBatchSampler",
        "ReconstructionDataset",
        "SampleBatch",
        "ThreadedLoader",
        "VoxelRayDataset",
        "WeakStrongBatch",
        "WeakStrongCollate",
        "ZarrDataset",
        "coefficient_subset",
        "collate",
        "collate_ray_batch",
        "image_loaders",
        "make_loader",
        "order_randomness",
        "paired_loaders",
        "strong_augment",
        "transforms",
        "weak_augment",
    ]
