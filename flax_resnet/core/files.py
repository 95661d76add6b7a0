"""Files that appear complete or not at all, and errors that name the path. Plain Python.

Every file the project writes (weights, checkpoints' metadata, config.json, metrics, plots) goes
through `atomic_file` or `atomic_directory`: written under a temporary name in the same folder,
then renamed onto the target, so an interrupted write never leaves a half-written file. Checksums
(`folder_checksums`, `checksum_problem`) find files damaged after they were written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad input a user can fix: a setting, a file, a dataset. Its message is one line that says what
    is wrong and where; scripts print it and exit non-zero, without a traceback. Every expected
    failure of the packages is one of these."""


class PathError(InputError):
    """A file or directory that cannot be used; the message names the path and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = os.fspath(path), problem
        super().__init__(f"{self.path}: {problem}")


def summarize(items, limit: int = 5) -> str:
    """'a, b, c and 7 more': a list short enough for a one-line message."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path) -> Iterator[str]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PathError(path, f"folder {folder} does not exist")
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                         dir=folder)
    os.close(handle)
    try:
        yield temporary
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_directory(path) -> Iterator[str]:
    """Yield a temporary directory beside `path`; swap it in only if the block succeeds."""
    folder, base = os.path.split(os.path.abspath(path))
    temporary = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_current_umask())  # mkdtemp makes it private
        if os.path.lexists(path):
            retired = temporary + ".old"
            os.rename(path, retired)
            os.rename(temporary, path)
            shutil.rmtree(retired)
        else:
            os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def read_json_object(path, error: type[PathError] = PathError, about=None) -> dict[str, Any]:
    """The JSON object in file `path`; `error(path, problem)` if it cannot be read or is not an object.
    With `about` (a name the user gave), `error(about, problem)`, the problem naming the file."""
    name = None if about is None else os.path.basename(os.fspath(path))
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, ValueError) as failure:
        raise error(about or path, f"unreadable {name or 'JSON'} ({failure})") from None
    if not isinstance(value, dict):
        raise error(about or path, f"{name + ' ' if name else ''}is not a JSON object")
    return value


def write_json(path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    with atomic_file(path) as temporary:
        Path(temporary).write_text(json.dumps(value, indent=2) + "\n")


def write_text(path, text: str) -> None:
    """Write `text`, atomically."""
    with atomic_file(path) as temporary:
        Path(temporary).write_text(text)


# ---------------------------------------------------------------------------------------------
# Checksums: what a folder held when it was written, and whether it still does
# ---------------------------------------------------------------------------------------------

def file_checksum(path) -> dict[str, int]:
    """{'bytes': size, 'crc32': CRC-32 of the contents} of one file."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"bytes": size, "crc32": crc}


def folder_checksums(folder, *, exclude: tuple[str, ...] = ()) -> dict[str, dict[str, int]]:
    """`file_checksum` of every file under `folder`, by path relative to it."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): file_checksum(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name not in exclude}


def checksum_problem(folder, checksums: dict[str, dict[str, int]]) -> str | None:
    """What differs between the files under `folder` and `checksums` (from `folder_checksums`
    when they were written), naming the first damaged file; None if every one is intact."""
    for name, expected in checksums.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} of its {expected['bytes']} bytes"
        if file_checksum(path)["crc32"] != expected["crc32"]:
            return f"{name} is garbled (its CRC-32 is not the one written)"
    return None
