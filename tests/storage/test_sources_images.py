from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from storage.errors import SourceError
from storage.sources import open_images
from storage.synthetic import write_micrographs


def test_chooses_the_reader_by_suffix(tmp_path: Path):
    write_micrographs(tmp_path / "m", 2, (40, 30))
    assert open_images(tmp_path / "m").dims == ("micrograph", "y", "x")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((20, 10), np.uint16))
    one = open_images(tmp_path / "one.tif")
    assert one.dims == ("image", "y", "x") and one.shape == (1, 20, 10)


def test_mixed_file_types_are_refused(tmp_path: Path):
    write_micrographs(tmp_path, 1, (40, 30))
    np.save(tmp_path / "x.npy", np.zeros((40, 30), np.float32))
    with pytest.raises(SourceError, match=r"mix file types.*--format"):
        open_images([tmp_path / "micrograph_0000.mrc", tmp_path / "x.npy"])


def test_unknown_suffix_asks_for_a_format(tmp_path: Path):
    (tmp_path / "a.dat").write_bytes(b"\0" * 100)
    with pytest.raises(SourceError, match=r"a\.dat: unknown file type; pass --format"):
        open_images(tmp_path / "a.dat")
    with pytest.raises(SourceError, match="unknown --format 'jpeg'"):
        open_images(tmp_path / "a.dat", fmt="jpeg")


def test_format_overrides_the_suffix(tmp_path: Path):
    path = tmp_path / "stack.bin"
    np.save(tmp_path / "stack.npy", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    (tmp_path / "stack.npy").rename(path)
    images = open_images(path, fmt="npy")
    assert images.shape == (2, 3, 4) and int(images[1, 2, 3]) == 23
