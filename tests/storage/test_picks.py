"""Pick files of every supported format read as (y, x) particle centers, matched to micrographs by stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.errors import SourceError
from storage.sources import match_picks, read_picks

CENTERS = np.array([[100.5, 40.0], [7.0, 3000.25], [2048.0, 2048.0]])  # (y, x)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "a.star",
            "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n" + "".join(f"{x} {y}\n" for y, x in CENTERS),
        ),
        ("a.box", "".join(f"{x - 64}\t{y - 64}\t128\t128\n" for y, x in CENTERS)),  # lower-left corner
        ("a.coord", "".join(f"{x}\t{y}\n" for y, x in CENTERS)),
        ("a.coords", "".join(f"{x} {y}\n" for y, x in CENTERS)),
        ("a.csv", "X-Coordinate,Y-Coordinate,Diameter\n" + "".join(f"{x},{y},108\n" for y, x in CENTERS)),
        ("a.txt", "x y\n" + "".join(f"{x} {y}\n" for y, x in CENTERS)),
        (
            "a.cbox",
            "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n_Width #3\n_Height #4\n"
            + "".join(f"{x - 50} {y - 60} 100 120\n" for y, x in CENTERS),
        ),
    ],
)
def test_every_format_gives_centers(tmp_path: Path, name: str, text: str) -> None:
    picks = read_picks(write(tmp_path / name, text))
    assert list(picks) == ["a"]
    np.testing.assert_allclose(picks["a"], CENTERS)


def test_one_file_for_many_micrographs(tmp_path: Path) -> None:
    text = "image_name\tx_coord\ty_coord\nmic1\t10\t20\nmic2\t30\t40\nmic1\t50\t60\n"
    picks = read_picks(write(tmp_path / "particles.txt", text))
    assert picks["mic1"].tolist() == [[20, 10], [60, 50]] and picks["mic2"].tolist() == [[40, 30]]


def test_star_with_micrograph_names(tmp_path: Path) -> None:
    text = (
        "data_particles\n\nloop_\n_rlnMicrographName #1\n_rlnCoordinateX #2\n_rlnCoordinateY #3\n"
        "MotionCorr/job002/mic_a.mrc 1 2\nMotionCorr/job002/mic_b.mrc 3 4\n"
    )
    picks = read_picks(write(tmp_path / "particles.star", text))
    assert picks == {
        "mic_a": pytest.approx(np.array([[2.0, 1.0]])),
        "mic_b": pytest.approx(np.array([[4.0, 3.0]])),
    }


def test_empty_files_have_no_picks(tmp_path: Path) -> None:
    for name in ("e.box", "e.coord", "e.csv"):
        assert read_picks(write(tmp_path / name, ""))["e"].shape == (0, 2)


@pytest.mark.real_data
def test_real_pick_files(real_data: Path) -> None:
    formats = real_data / "picks-formats"
    box = read_picks(formats / "aspire" / "sample.box")["sample"]
    coord = read_picks(formats / "aspire" / "sample.coord")["sample"]
    assert len(box) == len(coord) == 440
    np.testing.assert_allclose(box, coord + 128)  # the same corners; a .box center is corner + 256 / 2
    assert (
        len(read_picks(formats / "cryoppp" / "Falcon_2012_06_12-14_33_35_0.csv")["Falcon_2012_06_12-14_33_35_0"])
        == 629
    )
    topaz = read_picks(formats / "topaz" / "particles.txt")
    assert len(topaz) == 30 and sum(len(v) for v in topaz.values()) == 1500
    cbox = read_picks(formats / "cryolo" / "TcdA1-0018_frames_sum.cbox")["TcdA1-0018_frames_sum"]
    assert len(cbox) == 120
    np.testing.assert_allclose(cbox[0], [3874.455551 + 110, 3700.367188 + 110], rtol=1e-6)  # 220-px boxes
    star = read_picks(real_data / "cryoem-ucsf-micrograph" / "Ucsf_stack_1142_DW_autopick.star")
    assert star["Ucsf_stack_1142_DW_autopick"][0].tolist() == pytest.approx([19.979167, 839.125024])


@pytest.mark.real_data
def test_real_micrograph_matched_to_its_autopick_file(real_data: Path) -> None:
    folder = real_data / "cryoem-ucsf-micrograph"
    match = match_picks([folder / "Ucsf_stack_1142_DW.mrc"], [folder / "Ucsf_stack_1142_DW_autopick.star"])
    assert len(match.picks["Ucsf_stack_1142_DW"]) == 45
    assert match.micrographs_without_picks == [] and match.picks_without_micrograph == {}
    assert match.report() == "45 picks on 1 micrographs"


def test_match_reports_what_did_not_match(tmp_path: Path) -> None:
    mics = [tmp_path / f"{stem}.mrc" for stem in ("m1", "m2", "m10")]
    files = [
        write(tmp_path / "m1_autopick.coord", "1 2\n3 4\n"),
        write(tmp_path / "m10.coord", "5 6\n"),
        write(tmp_path / "x9.coord", "7 8\n9 10\n11 12\n"),
        write(tmp_path / "m1_more.coord", "13 14\n"),  # a second file for m1: joined
    ]
    match = match_picks(mics, files)
    assert match.picks["m1"].tolist() == [[2, 1], [4, 3], [14, 13]]
    assert match.picks["m10"].tolist() == [[6, 5]]  # m10, not m1 (longest stem first)
    assert match.picks["m2"].shape == (0, 2)
    assert match.micrographs_without_picks == ["m2"]
    assert match.picks_without_micrograph == {"x9": 3}
    assert (
        match.report()
        == "4 picks on 2 micrographs; 1 micrographs without picks (m2); 3 picks name no micrograph given (x9)"
    )


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.star", "data_\n\nloop_\n_rlnAnglePsi #1\n1.0\n", "no block with particle coordinates"),
        ("a.csv", "Diameter,Score\n1,2\n", "no x coordinate column"),
        ("a.csv", "x,y\n1,2\nnan,3\n4,nan\n", "2 picks have NaN or infinite coordinates .first at row 2"),
        ("a.box", "1 2 3\n", "line 1 has 3 columns, expected x y width height"),
        ("a.coord", "1 abc\n", "not numbers"),
        ("a.pdf", "x", "unknown pick file type '.pdf'"),
    ],
)
def test_bad_pick_files_are_one_line_errors_naming_the_file(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(SourceError, match=message) as err:
        read_picks(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_duplicate_micrograph_names(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such pick file"):
        read_picks(tmp_path / "none.star")
    with pytest.raises(SourceError, match="micrograph name 'm' also used by"):
        match_picks([tmp_path / "a" / "m.mrc", tmp_path / "b" / "m.mrc"], [])
