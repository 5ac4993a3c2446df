"""Digests of the library's own source files, for cache keys of derived data.

A cache of computed results (preprocessed scans, comparison rows, descriptors) keyed only on
version strings and parameters survives an edit of the code that computed them and serves stale
results. Keying it also on :func:`source_digest` of the modules involved closes that trap.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["source_digest"]


def source_digest(*patterns: str) -> str:
    """sha256 (hex) of the ``ballistic`` source files matching ``patterns``, paths included.

    Parameters
    ----------
    *patterns : str
        Glob patterns relative to the ``ballistic`` package folder, e.g. ``"preprocess/*.py"``,
        ``"surface.py"``.

    Raises
    ------
    ValueError
        No pattern given, or a pattern matches no file (a renamed module would otherwise drop out
        of the key silently).
    """
    if not patterns:
        raise ValueError("source_digest needs at least one glob pattern (e.g. 'preprocess/*.py')")
    root = Path(__file__).resolve().parents[1]
    files: set[Path] = set()
    for pat in patterns:
        hit = sorted(root.glob(pat))
        if not hit:
            raise ValueError(f"source_digest: {pat!r} matches no file under {root}; fix the pattern")
        files.update(hit)
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()
