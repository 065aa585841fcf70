"""Where the offline data lives, the data layer's error type, and line-numbered file reading.

``resolve_data_dir(setting)`` picks ONE directory, in this order:

1. ``setting`` (``paths.data_dir`` of the config), when it is given (not None / ""). A relative
   setting is tried against the current directory, then against the repository root, so the
   config default ``../shared/data`` works from any working directory.
2. the environment variable ``BILEVEL_DATA_DIR``, when it is set;
3. ``<repository root>/../shared/data`` (the repository root is two levels above this package).

The first source that is *given* wins; if its directory does not exist, the error names all three
sources (a wrong explicit setting never silently falls back to another directory). Files are
read where they are: nothing is ever copied into the repository.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "BILEVEL_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


class DataError(ValueError):
    """Bad or missing input data. ``str(e)`` starts with ``<file>:<line>:`` when both are known."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


def resolve_data_dir(setting: str | os.PathLike | None = None) -> Path:
    """The data directory (absolute): explicit ``setting``, else ``$BILEVEL_DATA_DIR``, else
    ``../shared/data`` beside the repository root. Raises :class:`DataError` naming all three."""
    env = os.environ.get(ENV_VAR) or None
    if setting not in (None, ""):
        path = Path(setting).expanduser()
        tried = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
        source = f"setting {str(setting)!r} (tried {', '.join(str(p) for p in tried)})"
    elif env is not None:
        tried = [Path(env).expanduser()]
        source = f"${ENV_VAR}={env!r}"
    else:
        tried = [DEFAULT_DATA_DIR]
        source = f"default {DEFAULT_DATA_DIR}"
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    raise DataError(
        f"data directory not found: {source} does not exist. Sources, first given wins: "
        f"(1) an explicit setting (paths.data_dir): {setting!r}; "
        f"(2) ${ENV_VAR}: {env!r}; (3) the default {DEFAULT_DATA_DIR}"
    )


def find_file(directory: Path, name: str) -> Path:
    """``directory/name.gz`` if it exists, else ``directory/name``; DataError if neither does."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"file not found (also tried {name}.gz)", directory / name)


def find_gz_or_plain(path: Path) -> Path:
    """``path`` as given if it exists, else the same name with ``.gz`` added or removed (a data
    file may be kept gzipped or not); DataError naming both if neither exists."""
    path = Path(path)
    other = (
        path.with_name(path.name.removesuffix(".gz"))
        if path.suffix == ".gz"
        else (path.with_name(path.name + ".gz"))
    )
    for candidate in (path, other):
        if candidate.is_file():
            return candidate
    raise DataError(f"file not found (also tried {other.name})", path)


def open_binary(path: Path):
    """Open a file for reading bytes, gunzipping ``*.gz``; a missing file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(
    path: Path, encoding: str = "utf-8", keep_ends: bool = False
) -> Iterator[tuple[int, str]]:
    """``(line number from 1, decoded line)``, without its line terminator unless ``keep_ends``.
    Each line is decoded on its own, so a decoding error names its exact line; gzip failures
    name the line after the last good one."""
    path = Path(path)
    lineno = 0
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):  # noqa: B007 (lineno used below)
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    raise DataError(f"not valid {encoding} text ({e.reason})", path, lineno) from e
                if "\x00" in line:
                    column = line.index("\x00") + 1
                    raise DataError(
                        f"NUL byte at column {column} (a corrupted file?)", path, lineno
                    )
                yield lineno, (line if keep_ends else line.rstrip("\r\n"))
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"unreadable ({e})", path, lineno + 1) from e
