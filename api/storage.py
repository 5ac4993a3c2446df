"""Write-once, content-addressed evidence store.

Originals live at ``<evidence_dir>/originals/ab/cd/<sha256>`` (read-only). A new
original is streamed into ``<evidence_dir>/tmp``, fsynced, then *hard-linked* to its
final name: ``link`` fails rather than replace an existing file, so nothing stored is
ever overwritten (an existing file of the same name has the same content by
construction and is kept). The directory is fsynced after the link. Derived
surfaces (preprocessed x3p) go to ``<evidence_dir>/derived/``; they can be recomputed.

An original is on disk before the database says it exists, so a crash between the two leaves an
original that no exhibit or land row names. The start-up reconciliation (``Runtime.reconcile_originals``)
moves such files to ``<evidence_dir>/quarantine/`` (never deleting them) and records them in the
start-up report and the audit log.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ballistic.errors import LimitError
from ballistic.io.atomic import fsync_dir as _fsync_dir

__all__ = ["EvidenceStore", "StagedFile", "UploadTooLarge", "sniff_media_type"]

CHUNK = 1 << 20


class UploadTooLarge(LimitError):
    """An upload is larger than ``max_upload_bytes`` (HTTP 413)."""


def sniff_media_type(head: bytes) -> str | None:
    """x3p (a zip), png or tiff from the first bytes; None for anything else."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "x3p"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


@dataclass
class StagedFile:
    path: Path
    sha256: str
    size: int
    head: bytes

    def discard(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class EvidenceStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.originals = self.root / "originals"
        self.derived = self.root / "derived"
        self.quarantine = self.root / "quarantine"
        for d in (self.tmp, self.originals, self.derived):
            d.mkdir(parents=True, exist_ok=True)

    def clean_staging(self) -> int:
        """Remove upload staging files a crash left behind (call at start-up, before serving)."""
        n = 0
        for p in self.tmp.iterdir():
            if p.is_file() and p.name.startswith("upload-"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    # ------------------------------------------------------------------ originals
    def original_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.originals / sha256[:2] / sha256[2:4] / sha256

    def stage(self, src: BinaryIO, max_bytes: int) -> StagedFile:
        """Stream ``src`` into a temporary file, hashing it; :class:`UploadTooLarge` past ``max_bytes``."""
        tmp = self.tmp / f"upload-{secrets.token_hex(8)}"
        h, size, head = hashlib.sha256(), 0, b""
        try:
            with open(tmp, "xb") as f:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(f"upload is larger than max_upload_bytes={max_bytes}",
                                             limit="max_upload_bytes", maximum=max_bytes)
                    if len(head) < 16:
                        head += chunk[: 16 - len(head)]
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StagedFile(tmp, h.hexdigest(), size, head)

    def commit_original(self, staged: StagedFile) -> Path:
        """Give the staged file its content-addressed name without ever overwriting; returns the path."""
        final = self.original_path(staged.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                os.link(staged.path, final)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: exclusive create + copy
                self._copy_exclusive(staged.path, final)
            os.chmod(final, 0o444)
        except FileExistsError:
            pass  # same name = same content; the stored file stays untouched
        finally:
            staged.discard()
        _fsync_dir(final.parent)
        return final

    @staticmethod
    def _copy_exclusive(src: Path, dst: Path) -> None:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError if present
        try:
            with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
                fd = -1
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            if fd != -1:
                os.close(fd)
            dst.unlink(missing_ok=True)
            raise

    def iter_originals(self):
        """``(sha256, path)`` of every file in the originals tree that has a content-address name."""
        for p in self.originals.glob("??/??/*"):
            name = p.name
            if p.is_file() and len(name) == 64 and name[:2] == p.parent.parent.name and \
                    name[2:4] == p.parent.name and all(c in "0123456789abcdef" for c in name):
                yield name, p

    def quarantine_original(self, sha256: str) -> Path:
        """Move an original that no database row names out of the originals tree, into
        ``quarantine/`` (kept, read-only; a second one of the same name gets a suffix). Returns its new path."""
        src = self.original_path(sha256)
        self.quarantine.mkdir(parents=True, exist_ok=True)
        dst = self.quarantine / sha256
        n = 1
        while dst.exists():
            dst = self.quarantine / f"{sha256}.{n}"
            n += 1
        os.rename(src, dst)
        _fsync_dir(self.quarantine)
        _fsync_dir(src.parent)
        return dst

    def verify_original(self, sha256: str) -> bool:
        p = self.original_path(sha256)
        if not p.is_file():
            return False
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
        return h.hexdigest() == sha256

    # ------------------------------------------------------------------ derived
    def read_original(self, sha256: str, media_type: str, spacing_um: float | None, *, max_points: int):
        """The stored original as a Surface, through the typed readers (x3p, or PNG/TIFF with ``spacing_um``),
        refusing more than ``max_points`` points (:func:`api.limits.max_scan_points`)."""
        from ballistic.io.image import read_image
        from ballistic.io.x3p import read_x3p

        path = self.original_path(sha256)
        if media_type == "x3p":
            return read_x3p(path, max_points=max_points)
        return read_image(path, max_pixels=max_points, spacing_um=spacing_um)

    def derived_relpath(self, exhibit_id: int, sha256: str, what: str = "preprocessed") -> str:
        return f"derived/{sha256[:2]}/{exhibit_id}-{sha256[:16]}-{what}.x3p"

    def resolve(self, relpath: str) -> Path:
        p = (self.root / relpath).resolve()
        if self.root.resolve() not in p.parents:
            raise ValueError(f"path escapes the evidence folder: {relpath!r}")
        return p
