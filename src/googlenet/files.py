"""Writing files safely: a temporary file beside the destination, flushed to disk, then a rename, then the
folder flushed too.

A crash, a power cut or a full disk mid-write leaves the previous file intact, and a destination that cannot be written
(a missing permission, a path through a file) is a user error naming the path, not a traceback.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from googlenet.errors import GoogLeNetError


class OutputError(GoogLeNetError):
    """A destination file or folder that cannot be written."""


def writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) if needed; raise OutputError if it cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"cannot write to output folder {folder}: {error.strerror or error}") from None
    return folder


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` for a temporary file beside ``path``, then rename it over ``path``. The file's
    bytes reach the disk before the rename, and the rename before this returns: a rename alone can be
    reordered by the filesystem, leaving an empty file after a power cut."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except IsADirectoryError:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: it is a folder") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder: the rename is as durable as they make it
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
