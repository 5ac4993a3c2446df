"""The one atomic file writer of the library: a reader sees the old file or the new one, never half.

Write to a temporary file in the destination folder, flush and fsync it, rename it over the
destination (``os.replace``), then fsync the folder so the rename itself survives a crash.

* :func:`atomic_write_bytes` - bytes in memory (PNGs, JSON, whiteners, calibrations, x3p files);
* :func:`atomic_write` - the same, the content streamed by a callable (large ``.npy`` caches);
* :func:`write_synced` and :func:`fsync_dir` - the pieces, for a folder of files that is written
  in a temporary folder and renamed into place as a whole (index snapshots).
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "write_synced", "fsync_dir"]


def _default_mode() -> int:
    """0666 less the process umask: what ``open(path, "w")`` creates (mkstemp's own files are 0600)."""
    try:
        with open("/proc/self/status") as fh:  # Linux: read the umask without changing it
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (brief, under a lock)
        um = os.umask(0o022)
        os.umask(um)
    return 0o666 & ~um


_UMASK_LOCK = threading.Lock()


def fsync_dir(folder: Path) -> None:
    """fsync a folder (POSIX) so a rename in it is durable; a no-op where that is not possible."""
    if os.name != "posix":
        return
    try:
        dfd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` (no rename) and fsync it: a file inside a temporary folder that
    will be renamed into place as a whole (then :func:`fsync_dir` the folder)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, mode: int | None = None) -> Path:
    """Write a file atomically and durably, its content produced by ``write(file_object)``;
    returns the path.

    ``mode`` (keyword-only), when given, is set on the temporary file before anything is written, so the
    file never exists with wider permissions (e.g. ``0o600`` for a secret); by default the file gets the
    permissions ``open()`` would give it (0666 less the process umask).

    Raises FileNotFoundError with a hint when the destination folder does not exist.
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {dest}: folder {parent} does not exist - create it first")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    try:
        if os.name == "posix":
            os.fchmod(fd, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(parent)
    return dest


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns the path (``mode`` as in :func:`atomic_write`).

    Raises FileNotFoundError with a hint when the destination folder does not exist.
    """
    return atomic_write(path, lambda fh: fh.write(data), mode=mode)
