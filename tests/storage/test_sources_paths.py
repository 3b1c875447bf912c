"""resolve_paths and file_record: how users name their files, and what provenance records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from storage.errors import SourceNotFoundError
from storage.sources import file_record, resolve_paths


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("b.tif", "a.TIF", "c.tiff", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    return tmp_path


def test_one_path_as_str_and_pathlike(folder: Path) -> None:
    assert resolve_paths(str(folder / "b.tif")) == [folder / "b.tif"]
    assert resolve_paths(folder / "b.tif") == [folder / "b.tif"]


def test_relative_paths_stay_relative(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    assert resolve_paths("b.tif") == [Path("b.tif")]


def test_glob_is_sorted_and_skips_directories(folder: Path) -> None:
    assert [p.name for p in resolve_paths(str(folder / "*"))] == [
        "a.TIF",
        "b.tif",
        "c.tiff",
        "notes.txt",
    ]


def test_directory_filters_suffixes_case_insensitively(folder: Path) -> None:
    names = [p.name for p in resolve_paths(folder, suffixes=(".tif", ".tiff"))]
    assert names == ["a.TIF", "b.tif", "c.tiff"]
    assert len(resolve_paths(folder)) == 4


def test_list_keeps_order_and_resolves_each_element(folder: Path) -> None:
    got = resolve_paths([folder / "c.tiff", str(folder / "[ab].*")], suffixes=(".tif",))
    assert [p.name for p in got] == ["c.tiff", "a.TIF", "b.tif"]


def test_empty_glob_names_the_pattern(folder: Path) -> None:
    pattern = str(folder / "*.mrc")
    with pytest.raises(SourceNotFoundError, match=r"no files match '.*\*\.mrc'"):
        resolve_paths(pattern)


def test_missing_file_names_it(folder: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"missing\.mrc: no such file") as info:
        resolve_paths([folder / "b.tif", folder / "missing.mrc"])
    assert isinstance(info.value, FileNotFoundError)


def test_directory_without_matching_files(folder: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"sub: directory holds no files with suffix \.mrc"):
        resolve_paths(folder / "sub", suffixes=[".mrc"])


def test_empty_list() -> None:
    with pytest.raises(SourceNotFoundError, match="empty"):
        resolve_paths([])


def test_file_record_is_json_clean_and_absolute(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    record = file_record("b.tif")
    assert record == {
        "path": str(folder / "b.tif"),
        "size": 1,
        "mtime": os.stat(folder / "b.tif").st_mtime,
    }
    assert json.loads(json.dumps(record)) == record
    assert type(record["size"]) is int
    assert type(record["mtime"]) is float


def test_file_record_of_missing_file(folder: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope\.bin: no such file"):
        file_record(folder / "nope.bin")
