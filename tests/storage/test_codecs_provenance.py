"""storage.codecs and storage.provenance: codec chains, JSON cleaning, fingerprints, record diffs."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from storage.codecs import CODECS, DEFAULT_CODEC, compressors
from storage.errors import StoreError
from storage.provenance import diff_keys, fingerprint, json_clean, package_versions, utc_now

# ---------------------------------------------------------------- codecs


def test_codec_names() -> None:
    assert CODECS == ("blosc-lz4", "blosc-zstd", "zstd", "none")
    assert DEFAULT_CODEC in CODECS


@pytest.mark.parametrize(
    "codec, names",
    [
        ("blosc-lz4", ["BloscCodec", "Crc32cCodec"]),
        ("blosc-zstd", ["BloscCodec", "Crc32cCodec"]),
        ("zstd", ["ZstdCodec", "Crc32cCodec"]),
        ("none", ["Crc32cCodec"]),
    ],
)
def test_chains_end_with_crc32c(codec: str, names: list[str]) -> None:
    chain = compressors(codec)
    assert [type(c).__name__ for c in chain] == names
    assert isinstance(chain[-1], Crc32cCodec)


def test_default_levels_and_settings() -> None:
    lz4, zstd_blosc, zstd = compressors("blosc-lz4")[0], compressors("blosc-zstd")[0], compressors("zstd")[0]
    assert isinstance(lz4, BloscCodec) and lz4.cname.value == "lz4" and lz4.clevel == 5
    assert lz4.shuffle.value == "shuffle"
    assert isinstance(zstd_blosc, BloscCodec) and zstd_blosc.cname.value == "zstd" and zstd_blosc.clevel == 3
    assert isinstance(zstd, ZstdCodec) and zstd.level == 1
    assert compressors() == compressors(DEFAULT_CODEC)


def test_explicit_levels() -> None:
    assert compressors("blosc-lz4", 9)[0].clevel == 9
    assert compressors("blosc-zstd", 1)[0].clevel == 1
    assert compressors("zstd", 7)[0].level == 7
    assert len(compressors("none", 3)) == 1  # no compressor to take the level


@pytest.mark.parametrize("codec", ["gzip", "lz4", "", "Blosc-LZ4", "blosc"])
def test_unknown_codec(codec: str) -> None:
    with pytest.raises(StoreError, match=re.escape(f"codec {codec!r} is not one of blosc-lz4, blosc-zstd")):
        compressors(codec)


@pytest.mark.parametrize("codec", CODECS)
def test_each_chain_round_trips_through_zarr(tmp_path: Path, codec: str) -> None:
    values = np.random.default_rng(1).normal(size=(9, 5)).astype("float32")
    array = zarr.create_array(
        tmp_path / codec, shape=values.shape, chunks=(4, 5), dtype="float32", compressors=compressors(codec)
    )
    array[:] = values
    np.testing.assert_array_equal(zarr.open_array(tmp_path / codec, mode="r")[:], values)


# ---------------------------------------------------------------- json_clean


def test_json_clean_converts() -> None:
    value = {
        "a": np.int32(3),
        "b": (1.5, "x"),
        "c": [np.float32(0.5), np.bool_(True), None],
        "d": Path("/tmp/x.mrc"),
        4: {"nested": np.uint64(7)},
    }
    clean = json_clean(value)
    assert clean == {"a": 3, "b": [1.5, "x"], "c": [0.5, True, None], "d": "/tmp/x.mrc", "4": {"nested": 7}}
    assert type(clean["a"]) is int and type(clean["c"][1]) is bool and type(clean["c"][0]) is float
    json.dumps(clean, allow_nan=False)  # strict JSON


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan"), np.float64("inf")])
def test_json_clean_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        json_clean(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        json_clean({"parameters": {"scale": [1.0, bad]}})


def test_json_clean_keeps_plain_values() -> None:
    for value in (0, -1, 2.5, "text", True, False, None, [], {}):
        assert json_clean(value) == value


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable() -> None:
    record = {"pipeline": "patches", "parameters": {"size": 128, "stride": 64}, "seed": 0}
    fp = fingerprint(record)
    assert re.fullmatch(r"[0-9a-f]{32}", fp)
    assert fp == fingerprint(dict(reversed(list(record.items()))))  # key order does not matter
    assert fp == fingerprint({**record, "parameters": {"stride": 64, "size": 128}})
    assert fp == fingerprint({**record, "seed": np.int64(0)})  # numpy scalars hash as their values
    # a fixed value, so a release that changes how records hash is noticed (it would refuse every resume)
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": (1, 2), "a": 1})
    assert fingerprint({"a": 1}) == "015abd7f5cc57a2dd94b7590f04ad808"


def test_fingerprint_changes_with_content() -> None:
    base = {"parameters": {"size": 128, "stride": 64}, "seed": 0}
    prints = {
        fingerprint(base),
        fingerprint({**base, "seed": 1}),
        fingerprint({**base, "parameters": {"size": 128, "stride": 32}}),
        fingerprint({**base, "parameters": {"size": 128}}),
        fingerprint({**base, "extra": None}),
        fingerprint({**base, "seed": "0"}),
    }
    assert len(prints) == 6


def test_fingerprint_refuses_nan() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        fingerprint({"scale": float("nan")})


# ---------------------------------------------------------------- diff_keys


def test_diff_keys_examples() -> None:
    assert diff_keys({"p": {"size": 128, "stride": 64}}, {"p": {"size": 64, "stride": 64}}) == ["p.size: 128 → 64"]
    assert diff_keys({"a": 1}, {"a": 1}) == []
    assert diff_keys({"a": 1}, {"a": np.int64(1)}) == []
    assert diff_keys({"a": (1, 2)}, {"a": [1, 2]}) == []
    assert diff_keys({"a": 1}, {}) == ["a: 1 → null"]
    assert diff_keys({}, {"b": "x"}) == ['b: null → "x"']
    assert diff_keys({"codec": {"name": "zstd"}}, {"codec": {"name": "none"}}) == ['codec.name: "zstd" → "none"']


def test_diff_keys_sorted_and_nested() -> None:
    old = {"z": 1, "a": {"b": {"c": 1, "d": 2}}, "m": 0}
    new = {"z": 2, "a": {"b": {"c": 1, "d": 3}}, "m": 0}
    assert diff_keys(old, new) == ["a.b.d: 2 → 3", "z: 1 → 2"]


def test_diff_keys_mapping_against_value() -> None:
    assert diff_keys({"a": {"x": 1}}, {"a": 5}) == ['a: {"x": 1} → 5']


def test_diff_keys_shortens_long_values() -> None:
    old = {"sources": [f"/data/run/micrograph_{i:04d}.mrc" for i in range(10)]}
    new = {"sources": old["sources"][:-1]}
    assert diff_keys(old, new) == ["sources differs"]


# ---------------------------------------------------------------- versions and times


def test_package_versions() -> None:
    versions = package_versions()
    assert set(versions) == {"zarrforge", "numpy", "dask", "distributed", "xarray", "zarr", "numcodecs"}
    assert versions["zarr"] == zarr.__version__
    assert versions["numpy"] == np.__version__


def test_utc_now() -> None:
    text = utc_now()
    parsed = dt.datetime.fromisoformat(text)
    assert parsed.utcoffset() == dt.timedelta(0)
    assert parsed.microsecond == 0
    assert abs((dt.datetime.now(dt.UTC) - parsed).total_seconds()) < 60
