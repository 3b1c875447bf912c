"""window_grid: counts and corners against a brute-force enumeration, coverage with padding, rows(), errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graphs.errors import ParameterError
from graphs.windows import EDGES, WindowGrid, window_grid
from storage.errors import ZarrforgeError


def _drop_corners(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Every top-left corner on the stride lattice whose window fits inside the image."""
    return [
        (y, x)
        for y in range(0, height, stride)
        for x in range(0, width, stride)
        if y + size <= height and x + size <= width
    ]


def _pad_axis(length: int, size: int, stride: int) -> list[int]:
    """Corners along one axis with padding: the fitting ones, plus one more if they stop short of the end."""
    starts = [s for s in range(0, length, stride) if s + size <= length]
    nxt = starts[-1] + stride
    if starts[-1] + size < length and nxt < length:
        starts.append(nxt)
    return starts


def _all_corners(grid: WindowGrid) -> list[tuple[int, int]]:
    return [grid.corner(w) for w in range(grid.per_image)]


# ---------------------------------------------------------------- examples


def test_docstring_examples() -> None:
    g = window_grid(300, 260, 128, 64)
    assert (g.ny, g.nx, g.per_image, g.pad_y, g.pad_x) == (3, 3, 9, 0, 0)
    g = window_grid(300, 260, 128, 64, edges="pad")
    assert (g.ny, g.nx, g.per_image, g.pad_y, g.pad_x) == (4, 4, 16, 20, 60)


def test_stride_defaults_to_size() -> None:
    g = window_grid(10, 7, 3)
    assert g.stride == 3
    assert (g.ny, g.nx) == (3, 2)
    assert _all_corners(g) == [(0, 0), (0, 3), (3, 0), (3, 3), (6, 0), (6, 3)]


def test_corners_are_row_major() -> None:
    g = window_grid(6, 5, 4, 2)
    assert _all_corners(g) == [(0, 0), (2, 0)]
    g = window_grid(6, 8, 2, 3)
    assert _all_corners(g) == [(0, 0), (0, 3), (0, 6), (3, 0), (3, 3), (3, 6)]


def test_window_the_size_of_the_image() -> None:
    for edges in EDGES:
        g = window_grid(5, 5, 5, 1, edges)
        assert (g.ny, g.nx, g.pad_y, g.pad_x) == (1, 1, 0, 0)
        assert g.rows(0, 1) == (0, 5)


def test_pad_equals_drop_when_windows_fit_exactly() -> None:
    assert window_grid(10, 13, 4, 3, "pad") == window_grid(10, 13, 4, 3, "drop")


def test_pad_adds_one_row_and_column() -> None:
    g = window_grid(11, 9, 4, 3, "pad")
    assert (g.ny, g.nx, g.pad_y, g.pad_x) == (4, 3, 2, 1)
    assert g.corner(g.per_image - 1) == (9, 6)


def test_pad_with_stride_larger_than_size_keeps_corners_inside() -> None:
    # The ceil formula alone would put a second window at y0 = 100 in an 11-row image (and ask for 99 rows of
    # reflection, which the 11 rows cannot give).
    g = window_grid(11, 11, 10, 100, "pad")
    assert (g.ny, g.nx, g.pad_y, g.pad_x) == (1, 1, 0, 0)
    g = window_grid(25, 12, 4, 10, "pad")
    assert [g.corner(w) for w in range(g.per_image)] == [(0, 0), (0, 10), (10, 0), (10, 10), (20, 0), (20, 10)]
    assert (g.pad_y, g.pad_x) == (0, 2)


def test_rows_examples() -> None:
    g = window_grid(300, 260, 128, 64)  # 3 × 3 windows
    assert g.rows(0, 1) == (0, 128)
    assert g.rows(0, 3) == (0, 128)
    assert g.rows(2, 4) == (0, 192)
    assert g.rows(3, 9) == (64, 256)
    assert g.rows(8, 9) == (128, 256)
    gp = window_grid(300, 260, 128, 64, edges="pad")
    assert gp.rows(0, gp.per_image) == (0, 300 + gp.pad_y)


@pytest.mark.parametrize("w0, w1", [(-1, 2), (3, 3), (4, 2), (0, 10), (9, 10)])
def test_rows_outside_the_grid_raise(w0: int, w1: int) -> None:
    g = window_grid(300, 260, 128, 64)
    with pytest.raises(ValueError, match="window range"):
        g.rows(w0, w1)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 0}, "size"),
        ({"size": -3}, "size"),
        ({"size": 4, "stride": 0}, "stride"),
        ({"size": 4, "stride": -2}, "stride"),
        ({"size": 11}, "size"),
        ({"size": 9}, "size"),  # taller than the 8-row image
        ({"size": 4, "edges": "wrap"}, "edges"),
        ({"size": 4, "edges": "Drop"}, "edges"),
    ],
)
def test_bad_parameters_raise_naming_the_parameter(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ParameterError, match=name) as info:
        window_grid(8, 10, **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ZarrforgeError)
    assert "\n" not in str(info.value)


def test_larger_than_image_message_gives_the_image_size() -> None:
    with pytest.raises(ParameterError, match=r"size 11 is larger than the image \(8 × 10 pixels\)"):
        window_grid(8, 10, 11)


def test_unknown_edges_lists_the_choices() -> None:
    with pytest.raises(ParameterError, match=r"drop, pad.*'wrap'"):
        window_grid(8, 10, 4, edges="wrap")  # type: ignore[arg-type]


# ---------------------------------------------------------------- properties

dims = st.integers(1, 60)


@st.composite
def grids(draw: st.DrawFn, edges: str | None = None) -> tuple[int, int, int, int, str]:
    height, width = draw(dims), draw(dims)
    size = draw(st.integers(1, min(height, width)))
    stride = draw(st.integers(1, 70))
    return height, width, size, stride, edges or draw(st.sampled_from(EDGES))


@given(grids(edges="drop"))
def test_drop_matches_brute_force(args: tuple[int, int, int, int, str]) -> None:
    height, width, size, stride, edges = args
    g = window_grid(height, width, size, stride, edges)  # type: ignore[arg-type]
    corners = _drop_corners(height, width, size, stride)
    assert g.per_image == len(corners)
    assert _all_corners(g) == corners
    assert (g.pad_y, g.pad_x) == (0, 0)


@given(grids(edges="pad"))
def test_pad_matches_brute_force(args: tuple[int, int, int, int, str]) -> None:
    height, width, size, stride, edges = args
    g = window_grid(height, width, size, stride, edges)  # type: ignore[arg-type]
    ys, xs = _pad_axis(height, size, stride), _pad_axis(width, size, stride)
    assert _all_corners(g) == [(y, x) for y in ys for x in xs]
    # Padding reaches exactly the bottom/right of the last window, and is less than a stride and a window.
    assert g.pad_y == max(ys[-1] + size - height, 0)
    assert g.pad_x == max(xs[-1] + size - width, 0)
    assert 0 <= g.pad_y < min(stride, size)
    assert 0 <= g.pad_x < min(stride, size)


@given(grids())
def test_corners_lie_inside_the_image(args: tuple[int, int, int, int, str]) -> None:
    height, width, size, stride, edges = args
    g = window_grid(height, width, size, stride, edges)  # type: ignore[arg-type]
    assert g.per_image >= 1
    for y0, x0 in _all_corners(g):
        assert 0 <= y0 < height and 0 <= x0 < width
        assert y0 + size <= height + g.pad_y and x0 + size <= width + g.pad_x


@given(grids(edges="pad"))
def test_pad_covers_every_pixel_when_windows_overlap_or_touch(args: tuple[int, int, int, int, str]) -> None:
    height, width, size, stride, edges = args
    g = window_grid(height, width, size, stride, edges)  # type: ignore[arg-type]
    covered_y = {y for y0, _ in _all_corners(g) for y in range(y0, y0 + size)}
    covered_x = {x for _, x0 in _all_corners(g) for x in range(x0, x0 + size)}
    if stride <= size:
        assert covered_y >= set(range(height))
        assert covered_x >= set(range(width))
    # Either way the last image row and column are reached when a window can start at or before them.
    ys = range(0, height, stride)
    if any(y + size >= height for y in ys):
        assert height - 1 in covered_y


@given(grids())
def test_pad_only_adds_windows(args: tuple[int, int, int, int, str]) -> None:
    height, width, size, stride, _ = args
    drop = window_grid(height, width, size, stride, "drop")
    pad = window_grid(height, width, size, stride, "pad")
    assert drop.ny <= pad.ny <= drop.ny + 1
    assert drop.nx <= pad.nx <= drop.nx + 1
    assert set(_all_corners(drop)) <= set(_all_corners(pad))


@given(grids(), st.data())
def test_rows_cover_exactly_the_rows_windows_need(
    args: tuple[int, int, int, int, str], data: st.DataObject
) -> None:
    height, width, size, stride, edges = args
    g = window_grid(height, width, size, stride, edges)  # type: ignore[arg-type]
    w0 = data.draw(st.integers(0, g.per_image - 1))
    w1 = data.draw(st.integers(w0 + 1, g.per_image))
    needed = {y for w in range(w0, w1) for y in range(g.corner(w)[0], g.corner(w)[0] + size)}
    r0, r1 = g.rows(w0, w1)
    # The windows' rows form one contiguous run when stride <= size; rows() is its hull in any case.
    assert (r0, r1) == (min(needed), max(needed) + 1)
    assert r1 <= height + g.pad_y
