"""TrainingStore: create, write, finalize, resume, refuse, lock, detect damage, pickle, describe."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from storage.chunks import ChunkReader
from storage.errors import StoreError, StoreExistsError, StoreLockedError, StoreMismatchError, ZarrforgeError
from storage.layout import SampleGrid
from storage.store import FORMAT_VERSION, ArraySpec, TrainingStore, is_training_store
from storage.testing import verify_store

N = 11
GRID = SampleGrid(2, 4)  # 3 blocks: 4, 4, 3 samples
RECORD = {"pipeline": "patches", "parameters": {"size": 4, "stride": 4}, "seed": 3, "sources": ["a.mrc"]}


def _specs(n: int = N) -> list[ArraySpec]:
    return [
        ArraySpec("patches", ("sample", "patch_y", "patch_x"), (n, 4, 4), np.dtype("float32"), {"units": "e"}),
        ArraySpec("y0", ("sample",), (n,), np.dtype("int32"), {"long_name": "top row"}),
    ]


def _data(n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "patches": rng.normal(size=(n, 4, 4)).astype("float32"),
        "y0": np.arange(n, dtype="int32") * 3,
    }


def _open(path: Path, **kwargs: Any) -> TrainingStore:
    kwargs.setdefault("grid", GRID)
    kwargs.setdefault("record", RECORD)
    return TrainingStore.open_for_writing(path, _specs(), **kwargs)


def _write(store: TrainingStore, data: dict[str, np.ndarray], only: set[int] | None = None) -> None:
    for block in store.blocks():
        if only is None or block.index in only:
            store.write_block(block, {k: v[block.start : block.stop] for k, v in data.items()})


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A complete store of N samples."""
    path = tmp_path / "train.zarr"
    with _open(path, attrs={"title": "test store"}) as store:
        _write(store, _data())
        store.finalize({"n_patches": N})
    return path


# ---------------------------------------------------------------- creating and reading


def test_new_store_is_a_group_with_the_arrays(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    with _open(path) as store:
        assert is_training_store(path)
        assert store.progress() == (0, 3)
        assert store.done_blocks() == set()
        assert not store.complete
        assert [(b.start, b.stop) for b in store.blocks()] == [(0, 4), (4, 8), (8, 11)]
        group = zarr.open_group(path, mode="r")
        patches = group["patches"]
        assert patches.shape == (N, 4, 4)
        assert patches.chunks == (2, 4, 4)
        assert patches.shards == (4, 4, 4)
        assert patches.metadata.dimension_names == ("sample", "patch_y", "patch_x")
        assert patches.attrs["units"] == "e"
        meta = group.attrs["zarrforge"]
        assert meta["format_version"] == FORMAT_VERSION
        assert meta["pipeline"] == "patches"
        assert meta["parameters"] == {"size": 4, "stride": 4}
        assert meta["seed"] == 3
        assert meta["n_samples"] == N and meta["n_blocks"] == 3
        assert meta["complete"] is False
        assert "zarr" in meta["versions"]


def test_round_trip_through_xarray(finished: Path) -> None:
    ds = xr.open_zarr(finished)
    data = _data()
    assert set(ds.data_vars) == {"patches", "y0"}  # the hidden bookkeeping group is not a variable
    assert ds.patches.dims == ("sample", "patch_y", "patch_x")
    assert ds.y0.dims == ("sample",)
    np.testing.assert_array_equal(ds.patches.values, data["patches"])
    np.testing.assert_array_equal(ds.y0.values, data["y0"])
    assert ds.patches.dtype == np.float32 and ds.y0.dtype == np.int32
    assert ds.attrs["title"] == "test store"
    assert ds.attrs["zarrforge"]["complete"] is True
    assert ds.attrs["zarrforge"]["summary"] == {"n_patches": N}
    store = TrainingStore.open(finished)
    assert store.complete
    assert store.progress() == (3, 3)
    np.testing.assert_array_equal(store.array("y0")[:], data["y0"])


def test_text_labels_are_coords_and_part_of_the_fingerprint(tmp_path: Path) -> None:
    names = [f"image é{i}.tif" for i in range(N)]
    path = tmp_path / "train.zarr"
    with _open(path, labels={"name": ("sample", names)}) as store:
        _write(store, _data())
        store.finalize()
    verify_store(path)
    ds = xr.open_zarr(path)
    assert set(ds.data_vars) == {"patches", "y0"} and ds.coords["name"].values.tolist() == names
    assert ds.patches.coords["name"].dims == ("sample",)
    assert "name" in zarr.open_array(str(path / "patches")).attrs["coordinates"]
    with pytest.raises(StoreMismatchError):  # other names, other content
        _open(path, labels={"name": ("sample", names[::-1])})
    with pytest.raises(ValueError, match="3 strings for axis 'sample'"):
        _open(tmp_path / "other.zarr", labels={"name": ("sample", names[:3])})


def test_open_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store"):
        TrainingStore.open(tmp_path / "missing.zarr")
    zarr.create_group(tmp_path / "plain.zarr")
    with pytest.raises(StoreError, match="not a zarrforge training store"):
        TrainingStore.open(tmp_path / "plain.zarr")


def test_an_existing_empty_folder_is_used(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.mkdir()
    with _open(path) as store:
        assert store.progress() == (0, 3)


def test_zero_sample_store(tmp_path: Path) -> None:
    spec = ArraySpec("x", ("sample",), (0,), np.dtype("uint8"))
    with TrainingStore.open_for_writing(tmp_path / "e.zarr", [spec], grid=GRID, record=RECORD) as store:
        assert store.blocks() == []
        assert store.progress() == (0, 0)
        store.finalize()
        assert store.complete


# ---------------------------------------------------------------- resuming and refusing


def test_reopen_with_same_arguments_resumes(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    data = _data()
    with _open(path) as store:
        _write(store, data, only={0, 2})
        with pytest.raises(StoreError, match="only 2 of 3 blocks"):
            store.finalize()
    with _open(path) as store:
        assert store.done_blocks() == {0, 2}
        np.testing.assert_array_equal(store.array("y0")[8:], data["y0"][8:])  # kept, not cleared
        _write(store, data, only=store.done_blocks() ^ {0, 1, 2})
        store.finalize()
    with _open(path) as store:
        assert store.complete
        assert store.progress() == (3, 3)
    np.testing.assert_array_equal(xr.open_zarr(path).patches.values, data["patches"])


@pytest.mark.parametrize(
    "change, named",
    [
        ({"record": {**RECORD, "parameters": {"size": 4, "stride": 2}}}, "parameters.stride: 4 → 2"),
        ({"record": {**RECORD, "seed": 4}}, "seed: 3 → 4"),
        ({"record": {**RECORD, "sources": ["b.mrc"]}}, "sources"),
        ({"grid": SampleGrid(2, 8)}, "grid.shard_samples: 4 → 8"),
        ({"codec": "zstd"}, 'codec.name: "blosc-lz4" → "zstd"'),
    ],
)
def test_other_record_is_a_mismatch_naming_the_change(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    path = tmp_path / "train.zarr"
    with _open(path) as store:
        _write(store, _data(), only={0})
    before = _snapshot(path)
    with pytest.raises(StoreMismatchError, match="--overwrite") as info:
        _open(path, **change)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)
    assert _snapshot(path) == before  # nothing touched
    with _open(path) as store:  # and the lock was released
        assert store.done_blocks() == {0}


def test_mismatch_names_parameters_before_layout(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    _open(path).close()
    with pytest.raises(StoreMismatchError) as info:
        _open(path, record={**RECORD, "parameters": {"size": 4, "stride": 2}}, grid=SampleGrid(1, 4))
    message = str(info.value)
    assert message.index("parameters.stride") < message.index("grid.chunk_samples")


def test_overwrite_replaces_a_store_made_otherwise(finished: Path) -> None:
    record = {**RECORD, "seed": 99}
    with _open(finished, record=record, overwrite=True) as store:
        assert store.progress() == (0, 3)
        assert not store.complete
        assert store.attrs["seed"] == 99
        np.testing.assert_array_equal(store.array("y0")[:], 0)  # the old data are gone
    # overwrite=True with the same record resumes instead of clearing
    with _open(finished, record=record, overwrite=True) as store:
        _write(store, _data(), only={1})
    with _open(finished, record=record, overwrite=True) as store:
        assert store.done_blocks() == {1}


def test_a_file_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    path.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match="is a file") as info:
            _open(path, overwrite=overwrite)
        assert isinstance(info.value, FileExistsError)
    assert path.read_text() == "precious"


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_folder_is_not_touched(tmp_path: Path, overwrite: bool) -> None:
    path = tmp_path / "results"
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("keep me")
    (path / "sub" / "data.npy").write_bytes(b"\x00\x01")
    before = _snapshot(path)
    with pytest.raises(StoreExistsError, match="not a zarrforge store"):
        _open(path, overwrite=overwrite)
    assert _snapshot(path) == before
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt", "sub"]  # no .zarrforge folder left behind


def test_a_plain_zarr_group_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.zarr"
    zarr.create_group(path).create_array("a", shape=(3,), dtype="int8")
    before = _snapshot(path)
    with pytest.raises(StoreExistsError):
        _open(path, overwrite=True)
    assert _snapshot(path) == before


def test_partial_files_are_removed_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    with _open(path) as store:
        _write(store, _data(), only={0})
    partials = [path / "patches" / "c" / "1" / "0" / "0.partial", path / "y0" / "c" / "1.partial"]
    for partial in partials:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"torn")
    kept = _snapshot(path)
    with _open(path) as store:
        assert not any(p.exists() for p in partials)
        assert store.done_blocks() == {0}
    after = _snapshot(path)
    assert {k: v for k, v in kept.items() if not k.endswith(".partial")} == after


# ---------------------------------------------------------------- the writer lock


def test_second_writer_in_this_process_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    with _open(path) as first:
        with pytest.raises(StoreLockedError, match="another process") as info:
            _open(path)
        assert isinstance(info.value, RuntimeError)
        assert "write.lock" in str(info.value)
        _write(first, _data(), only={0})  # the first writer is unaffected
    with _open(path) as again:  # released on close
        assert again.done_blocks() == {0}


def test_second_writer_in_another_process_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    script = (
        "import sys, numpy as np\n"
        "from storage.errors import StoreLockedError\n"
        "from storage.layout import SampleGrid\n"
        "from storage.store import ArraySpec, TrainingStore\n"
        "spec = ArraySpec('x', ('sample',), (3,), np.dtype('uint8'))\n"
        "try:\n"
        "    TrainingStore.open_for_writing(sys.argv[1], [spec], grid=SampleGrid(1, 1), record={})\n"
        "except StoreLockedError as e:\n"
        "    print('locked:', e)\n"
        "else:\n"
        "    print('not locked')\n"
    )
    with _open(path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60, check=True
        )
    assert result.stdout.startswith("locked:"), result.stdout + result.stderr
    assert "wait for it to finish" in result.stdout


def test_close_is_idempotent(tmp_path: Path) -> None:
    store = _open(tmp_path / "train.zarr")
    store.close()
    store.close()


# ---------------------------------------------------------------- writing errors


def test_block_of_wrong_shape_is_refused(tmp_path: Path) -> None:
    with _open(tmp_path / "train.zarr") as store:
        block = store.blocks()[2]  # 3 samples
        data = _data()
        with pytest.raises(StoreError, match=r"block 2 of 'patches' has shape \(4, 4, 4\), expected \(3, 4, 4\)"):
            store.write_block(block, {"patches": data["patches"][:4], "y0": data["y0"][8:]})
        with pytest.raises(StoreError, match="expected"):
            store.write_block(block, {"patches": data["patches"][8:, :3], "y0": data["y0"][8:]})
        assert store.done_blocks() == set()


def test_block_missing_an_array_is_refused(tmp_path: Path) -> None:
    with _open(tmp_path / "train.zarr") as store:
        block = store.blocks()[0]
        data = _data()
        with pytest.raises(StoreError, match=r"has arrays \['patches'\], expected \['patches', 'y0'\]"):
            store.write_block(block, {"patches": data["patches"][:4]})
        with pytest.raises(StoreError, match="expected"):
            store.write_block(block, {"patches": data["patches"][:4], "y0": data["y0"][:4], "x0": data["y0"][:4]})
        assert store.done_blocks() == set()


def test_write_block_returns_decoded_bytes(tmp_path: Path) -> None:
    with _open(tmp_path / "train.zarr") as store:
        data = _data()
        block = store.blocks()[0]
        nbytes = store.write_block(block, {k: v[:4] for k, v in data.items()})
        assert nbytes == 4 * 4 * 4 * 4 + 4 * 4


def test_finalize_with_blocks_missing(tmp_path: Path) -> None:
    with _open(tmp_path / "train.zarr") as store:
        with pytest.raises(StoreError, match="cannot finalize, only 0 of 3 blocks"):
            store.finalize()
        assert not store.complete


@pytest.mark.parametrize(
    "args, match",
    [
        ((("sample", "y"), (3,)), "do not match"),
        (((), ()), "at least one dim"),
    ],
)
def test_array_spec_validates(args: tuple[Any, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ArraySpec("a", *args, np.dtype("uint8"))
    with pytest.raises(ValueError, match="rows_per_chunk"):
        ArraySpec("a", ("sample",), (3,), np.dtype("uint8"), rows_per_chunk=2)


def _two_axis_specs() -> list[ArraySpec]:
    return [
        ArraySpec("y0", ("sample",), (5,), np.dtype("int32")),
        ArraySpec("images", ("image", "y", "x"), (3, 10, 4), np.dtype("float32"), rows_per_chunk=4),
    ]


def test_store_with_two_leading_axes(tmp_path: Path) -> None:
    """A second leading axis (a virtual picking store's micrographs) gets its own grid and blocks, row chunks."""
    path = tmp_path / "two.zarr"
    grids = {"sample": SampleGrid(2, 4), "image": SampleGrid(1, 1)}
    images = np.arange(3 * 10 * 4, dtype="float32").reshape(3, 10, 4)
    with TrainingStore.open_for_writing(path, _two_axis_specs(), grid=grids, record={"pipeline": "t"}) as store:
        blocks = store.blocks()
        assert [(b.axis, b.shard, b.start, b.stop) for b in blocks] == [
            ("sample", 0, 0, 4),
            ("sample", 1, 4, 5),
            ("image", 0, 0, 1),
            ("image", 1, 1, 2),
            ("image", 2, 2, 3),
        ]
        with pytest.raises(StoreError, match=r"expected \['images'\]"):
            store.write_block(blocks[2], {"y0": np.zeros(1, "int32")})
        for b in blocks:
            if b.axis == "sample":
                store.write_block(b, {"y0": np.arange(b.start, b.stop, dtype="int32")})
            else:
                store.write_block(b, {"images": images[b.start : b.stop]})
        store.finalize()
    arr = zarr.open_array(str(path / "images"))
    assert arr.chunks == (1, 4, 4) and arr.shards == (1, 12, 4)
    np.testing.assert_array_equal(arr[:], images)
    np.testing.assert_array_equal(zarr.open_array(str(path / "y0"))[:], np.arange(5))
    assert TrainingStore.open(path).progress() == (5, 5)
    verify_store(path)


def test_store_needs_a_grid_per_axis(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no grid for the leading axis 'image'"):
        TrainingStore.open_for_writing(
            tmp_path / "x.zarr", _two_axis_specs(), grid=SampleGrid(2, 4), record={"pipeline": "t"}
        )


def test_arrays_must_agree_on_samples(tmp_path: Path) -> None:
    a = ArraySpec("a", ("sample",), (3,), np.dtype("uint8"))
    b = ArraySpec("b", ("sample",), (4,), np.dtype("uint8"))
    with pytest.raises(ValueError, match="disagree"):
        TrainingStore.open_for_writing(tmp_path / "s", [a, b], grid=GRID, record={})
    with pytest.raises(ValueError, match="at least one array"):
        TrainingStore.open_for_writing(tmp_path / "s", [], grid=GRID, record={})


def test_record_with_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        _open(tmp_path / "s", record={**RECORD, "parameters": {"scale": float("nan")}})


# ---------------------------------------------------------------- damage


def _flip_first_chunk_byte(path: Path) -> Path:
    shard = path / "patches" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[20] ^= 0xFF  # inside chunk 0's bytes (the shard index sits at the end)
    shard.write_bytes(bytes(raw))
    return shard


def test_damaged_chunk_is_an_error_for_zarr_and_chunk_reader(finished: Path) -> None:
    _flip_first_chunk_byte(finished)
    array = zarr.open_array(finished / "patches", mode="r")
    with pytest.raises(Exception, match=r"(?i)checksum"):
        array[:2]
    np.testing.assert_array_equal(array[4:], _data()["patches"][4:])  # other shards are fine
    reader = ChunkReader(finished / "patches")
    assert reader.direct
    with pytest.raises(StoreError, match=r"chunk 0 is damaged \(CRC32C mismatch\)"):
        reader.read_chunk(0)
    np.testing.assert_array_equal(reader.read_chunk(1), _data()["patches"][2:4])  # same shard, other chunk


def test_damaged_chunk_under_xarray(finished: Path) -> None:
    _flip_first_chunk_byte(finished)
    ds = xr.open_zarr(finished)
    with pytest.raises(Exception, match=r"(?i)checksum"):
        ds.patches[:2].load()
    np.testing.assert_array_equal(ds.y0.values, _data()["y0"])


# ---------------------------------------------------------------- pickling and reporting


def test_pickles_as_its_path_alone(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    with _open(path) as store:
        store.array("patches")
        store.done_blocks()
        assert store.__getstate__() == {"path": path}
        clone = pickle.loads(pickle.dumps(store))
        assert clone.path == path
        assert clone._lock is None and clone._arrays == {} and clone._ledger is None
        assert repr(clone) == f"TrainingStore({str(path)!r})"
        # a worker's copy writes without the lock, as the engine's tasks do
        _write(clone, _data(), only={1})
        assert store.done_blocks() == {1}


def test_describe(finished: Path) -> None:
    report = TrainingStore.open(finished).describe()
    assert report["path"] == str(finished)
    assert report["blocks_done"] == report["blocks_total"] == 3
    assert report["nbytes_on_disk"] == sum(p.stat().st_size for p in finished.rglob("*") if p.is_file())
    assert set(report["arrays"]) == {"patches", "y0"}
    patches = report["arrays"]["patches"]
    assert patches == {
        "shape": [N, 4, 4],
        "dtype": "float32",
        "dims": ["sample", "patch_y", "patch_x"],
        "chunks": [2, 4, 4],
        "shards": [4, 4, 4],
        "codecs": ["BloscCodec", "Crc32cCodec"],
        "nbytes": N * 16 * 4,
    }
    assert report["arrays"]["y0"]["dims"] == ["sample"]
    meta = report["zarrforge"]
    assert "content" not in meta
    assert meta["complete"] is True
    assert meta["summary"] == {"n_patches": N}
    assert meta["fingerprint"] == TrainingStore.open(finished).attrs["fingerprint"]


def test_describe_of_an_unfinished_store_and_other_codecs(tmp_path: Path) -> None:
    path = tmp_path / "train.zarr"
    with _open(path, codec="none") as store:
        _write(store, _data(), only={0})
        report = store.describe()
    assert (report["blocks_done"], report["blocks_total"]) == (1, 3)
    assert report["arrays"]["y0"]["codecs"] == ["Crc32cCodec"]
    assert report["zarrforge"]["complete"] is False


def test_errors_share_one_base(tmp_path: Path) -> None:
    for cls in (StoreExistsError, StoreMismatchError, StoreLockedError):
        assert issubclass(cls, StoreError) and issubclass(cls, ZarrforgeError)
