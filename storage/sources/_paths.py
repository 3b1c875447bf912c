"""Turning the many ways users name their files into one sorted list, and recording what was read."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from storage.errors import SourceNotFoundError

__all__ = ["PathsLike", "file_record", "resolve_paths"]

#: One path, a glob pattern, a directory, or a list/tuple of those.
PathsLike = str | os.PathLike[str] | list[Any] | tuple[Any, ...]

_GLOB_CHARS = frozenset("*?[")


def _resolve_one(item: str | os.PathLike[str], suffixes: frozenset[str] | None) -> list[Path]:
    text = os.fspath(item)
    if isinstance(text, bytes):  # pragma: no cover - os.fspath of a bytes path
        text = os.fsdecode(text)
    if isinstance(item, str) and _GLOB_CHARS & set(text) and not Path(text).exists():
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise SourceNotFoundError(f"no files match {text!r}")
        return matches
    path = Path(text)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes)
        )
        if not files:
            wanted = "" if suffixes is None else f" with suffix {', '.join(sorted(suffixes))}"
            raise SourceNotFoundError(f"{path}: directory holds no files{wanted}")
        return files
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such file")
    return [path]


def resolve_paths(
    paths: PathsLike,
    *,
    suffixes: Iterable[str] | None = None,
) -> list[Path]:
    """Turn one path, a glob, a directory, or a list of those into a list of files.

    Parameters
    ----------
    paths : str, path-like, or list/tuple of them
        A file; a glob pattern (a string holding ``*``, ``?`` or ``[``), whose matches are sorted; a directory,
        whose files with a suffix in `suffixes` are sorted by name; or a list/tuple of those, resolved one by one
        with their order kept.
    suffixes : iterable of str, optional
        File suffixes (``".tif"``, case-insensitive) a directory's files must have; every file when None.

    Returns
    -------
    list of pathlib.Path
        The files, as given (relative paths stay relative).

    Raises
    ------
    SourceNotFoundError
        A file does not exist, a glob matches nothing, or a directory holds no matching file.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.tif", "a.tif", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in resolve_paths(folder, suffixes=[".tif"])]
    ['a.tif', 'b.tif']
    >>> [p.name for p in resolve_paths(str(folder / "*.t*"))]
    ['a.tif', 'b.tif', 'notes.txt']
    """
    wanted = None if suffixes is None else frozenset(s.lower() for s in suffixes)
    items = list(paths) if isinstance(paths, list | tuple) else [paths]
    if not items:
        raise SourceNotFoundError("no files given: the list of paths is empty")
    resolved: list[Path] = []
    for item in items:
        resolved.extend(_resolve_one(item, wanted))
    return resolved


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a source file for provenance attrs: absolute path, size in bytes, modification time.

    Parameters
    ----------
    path : str or path-like
        An existing file.

    Returns
    -------
    dict
        ``{"path": str, "size": int, "mtime": float}``, JSON-clean.

    Raises
    ------
    SourceNotFoundError
        The file does not exist.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.bin"
    >>> _ = path.write_bytes(b"12345")
    >>> record = file_record(path)
    >>> record["size"], sorted(record)
    (5, ['mtime', 'path', 'size'])
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SourceNotFoundError(f"{p}: no such file") from None
    return {"path": str(p.absolute()), "size": int(st.st_size), "mtime": float(st.st_mtime)}
