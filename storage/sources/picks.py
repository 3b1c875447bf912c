"""Particle pick files (RELION/crYOLO STAR, EMAN box, plain coordinates, CSV, Topaz) as particle centers.

Every reader returns, per micrograph (named by file stem), the particle **centers** in pixels of that micrograph
as ``(y, x)`` float64 rows: ``x`` is the column and ``y`` the row of the image as :func:`open_mrc` reads it.

Conventions, by format:

- ``.star`` (RELION): ``rlnCoordinateX/Y`` are centers. With ``rlnMicrographName`` the rows go to that
  micrograph's stem, otherwise to the file's stem (``mic_autopick.star`` is matched to ``mic``, see
  :func:`match_picks`).
- ``.cbox`` (crYOLO): ``CoordinateX/Y`` are the lower-left corner of a ``Width`` × ``Height`` box; centers are
  corner + size / 2.
- ``.box`` (EMAN): columns ``x y width height``, the lower-left corner: centers are corner + size / 2.
- ``.coord``/``.coords`` and ``.csv``/``.txt`` with two numeric columns: centers. A CSV or TXT header may name
  ``x``/``y`` columns (``X-Coordinate``, ``x_coord``, ...) and an ``image_name`` column, which assigns each
  row to a micrograph (Topaz's ``particles.txt``: one file for many micrographs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import SourceError

__all__ = ["PICK_SUFFIXES", "PickMatch", "match_picks", "micrograph_stem", "read_picks"]

PICK_SUFFIXES = (".star", ".cbox", ".box", ".coord", ".coords", ".csv", ".txt")
_X_NAMES = ("rlncoordinatex", "coordinatex", "x", "xcoord", "xcoordinate", "x_coord", "x-coordinate")
_Y_NAMES = ("rlncoordinatey", "coordinatey", "y", "ycoord", "ycoordinate", "y_coord", "y-coordinate")
_IMAGE_NAMES = ("rlnmicrographname", "image_name", "micrograph", "micrograph_name", "image")


def read_picks(path: str | Path) -> dict[str, np.ndarray]:
    r"""Read a pick file into particle centers per micrograph stem.

    Parameters
    ----------
    path : path
        A ``.star``, ``.cbox``, ``.box``, ``.coord(s)``, ``.csv`` or ``.txt`` pick file (see the module doc for
        each format's convention).

    Returns
    -------
    dict of str to numpy.ndarray
        ``{micrograph stem: (n, 2) float64 array of (y, x) centers}``; a file without an image-name column gives
        one entry under its own stem.

    Raises
    ------
    SourceError
        The file is missing, has no coordinate columns, or holds NaN or non-numeric coordinates (naming the file,
        the count and the first bad row).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "mic_01.box"
    >>> _ = f.write_text("10 20 100 100\n300 40 100 100\n")
    >>> read_picks(f)["mic_01"].tolist()  # (y, x) centers of the boxes
    [[70.0, 60.0], [90.0, 350.0]]
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such pick file")
    suffix = path.suffix.lower()
    if suffix not in PICK_SUFFIXES:
        raise SourceError(f"{path}: unknown pick file type {suffix!r}; expected one of {', '.join(PICK_SUFFIXES)}")
    if suffix in (".star", ".cbox"):
        table, corner = _read_star(path), suffix == ".cbox"
    elif suffix == ".box":
        table, corner = _read_columns(path, ("x", "y", "width", "height")), True
    else:
        table, corner = _read_delimited(path), False
    return _centers(path, table, corner)


@dataclass(frozen=True)
class PickMatch:
    """Pick files matched to micrographs: what :func:`match_picks` found and what it could not match."""

    picks: dict[str, np.ndarray]
    """Centers per micrograph stem, for every micrograph given (no picks: an empty ``(0, 2)`` array)."""
    micrographs_without_picks: list[str]
    """Stems of micrographs that no pick file names."""
    picks_without_micrograph: dict[str, int]
    """Pick-file entries (stem: number of picks) that name no micrograph given."""

    def report(self) -> str:
        """One line: matched micrographs and picks, and what did not match (first few names)."""

        def some(names: Sequence[str]) -> str:
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

        n_picks = sum(len(v) for v in self.picks.values())
        parts = [f"{n_picks:,} picks on {sum(len(v) > 0 for v in self.picks.values())} micrographs"]
        if self.micrographs_without_picks:
            missing = self.micrographs_without_picks
            parts.append(f"{len(missing)} micrographs without picks ({some(missing)})")
        if self.picks_without_micrograph:
            unmatched = sorted(self.picks_without_micrograph)
            lost = sum(self.picks_without_micrograph.values())
            parts.append(f"{lost:,} picks name no micrograph given ({some(unmatched)})")
        return "; ".join(parts)


def match_picks(micrographs: Iterable[str | Path], pick_files: Iterable[str | Path]) -> PickMatch:
    """Match pick files to micrographs by file stem.

    A pick entry named ``mic`` goes to the micrograph whose stem is ``mic``; failing that, to the micrograph
    whose stem is the longest prefix of it followed by ``_``, ``-`` or ``.`` (``mic_autopick.star`` → ``mic``).

    Parameters
    ----------
    micrographs : iterable of path
        The micrograph files (their stems must be unique).
    pick_files : iterable of path
        Pick files of any supported format; several may name the same micrograph (their picks are joined).

    Returns
    -------
    PickMatch

    Raises
    ------
    SourceError
        Two micrographs share a stem, or a pick file cannot be read.
    """
    stems: dict[str, Path] = {}
    for mic in map(Path, micrographs):
        stem = micrograph_stem(mic.name)
        if stem in stems:
            raise SourceError(f"{mic}: micrograph name {stem!r} also used by {stems[stem]}; names must be unique")
        stems[stem] = mic
    found: dict[str, list[np.ndarray]] = {stem: [] for stem in stems}
    unmatched: dict[str, int] = {}
    by_length = sorted(stems, key=len, reverse=True)
    for file in map(Path, pick_files):
        for name, centers in read_picks(file).items():
            target = name if name in stems else _prefix_match(name, by_length)
            if target is None:
                unmatched[name] = unmatched.get(name, 0) + len(centers)
            else:
                found[target].append(centers)
    picks = {stem: np.concatenate(parts) if parts else np.empty((0, 2)) for stem, parts in found.items()}
    without = [stem for stem, parts in found.items() if not parts]
    return PickMatch(picks, without, unmatched)


# ---------------------------------------------------------------------------- helpers
def micrograph_stem(name: str | Path) -> str:
    """A file name without its directory and suffix(es) that belong to the format, as picks are matched by it.

    Examples
    --------
    >>> micrograph_stem("data/mic_001.mrc"), micrograph_stem("mic_002.mrc.gz")
    ('mic_001', 'mic_002')
    """
    name = str(name)
    return Path(name).name.split(".")[0] if name.endswith((".mrc.gz", ".tif.gz")) else Path(name).stem


def _prefix_match(name: str, stems_longest_first: Sequence[str]) -> str | None:
    for stem in stems_longest_first:
        if name.startswith(stem) and len(name) > len(stem) and name[len(stem)] in "_-.":
            return stem
    return None


def _read_star(path: Path) -> dict[str, Any]:
    import starfile  # type: ignore[import-untyped]

    try:
        data = starfile.read(path, always_dict=True)
    except Exception as e:  # starfile raises a range of parser errors
        raise SourceError(f"{path}: not a readable STAR file ({type(e).__name__}: {e})") from None
    for block in data.values():  # the first block with coordinates (crYOLO: data_cryolo)
        if hasattr(block, "columns") and any(str(c).lower() in _X_NAMES for c in block.columns):
            return {str(c).lower(): block[c].to_numpy() for c in block.columns}
    raise SourceError(f"{path}: no block with particle coordinates (rlnCoordinateX/Y or CoordinateX/Y)")


def _read_columns(path: Path, names: Sequence[str]) -> dict[str, Any]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not rows:
        return {name: np.empty(0) for name in names}
    bad = next((i for i, r in enumerate(rows) if len(r) < len(names)), None)
    if bad is not None:
        raise SourceError(f"{path}: line {bad + 1} has {len(rows[bad])} columns, expected {' '.join(names)}")
    try:
        values = np.array([[float(v) for v in r[: len(names)]] for r in rows])
    except ValueError as e:
        raise SourceError(f"{path}: a coordinate is not a number ({e})") from None
    return {name: values[:, i] for i, name in enumerate(names)}


def _read_delimited(path: Path) -> dict[str, Any]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        return {"x": np.empty(0), "y": np.empty(0)}
    delimiter = "," if "," in lines[0] else None
    first = [c.strip() for c in (lines[0].split(delimiter))]
    if not _is_number(first[0]) and not (len(first) > 1 and _is_number(first[1])):  # a header
        header, body = [c.lower() for c in first], lines[1:]
    else:
        header, body = ["x", "y"], lines
    rows = [[c.strip() for c in line.split(delimiter)] for line in body]
    table: dict[str, Any] = {}
    for i, name in enumerate(header):
        column = [r[i] if i < len(r) else "" for r in rows]
        table[name] = np.array(column, dtype=object)
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column(path: Path, table: Mapping[str, Any], names: Sequence[str], what: str) -> np.ndarray:
    key = next((k for k in table if re.sub(r"[^a-z_-]", "", k) in names or k in names), None)
    if key is None:
        raise SourceError(f"{path}: no {what} column (found columns: {', '.join(table) or 'none'})")
    try:
        return np.asarray(table[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise SourceError(f"{path}: the {what} column {key!r} holds values that are not numbers") from None


def _centers(path: Path, table: Mapping[str, Any], corner: bool) -> dict[str, np.ndarray]:
    x = _column(path, table, _X_NAMES, "x coordinate")
    y = _column(path, table, _Y_NAMES, "y coordinate")
    if corner:
        x = x + _column(path, table, ("width",), "box width") / 2
        y = y + _column(path, table, ("height",), "box height") / 2
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise SourceError(
            f"{path}: {int(bad.sum())} picks have NaN or infinite coordinates "
            f"(first at row {int(np.argmax(bad)) + 1})"
        )
    centers = np.stack([y, x], axis=1) if len(x) else np.empty((0, 2))
    image_key = next((k for k in table if k in _IMAGE_NAMES), None)
    if image_key is None:
        return {path.stem: centers}
    images = np.array([micrograph_stem(str(name)) for name in table[image_key]])
    return {str(stem): centers[images == stem] for stem in dict.fromkeys(images.tolist())}
