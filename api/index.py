"""The service's vector indexes: descriptors, partitions, snapshots, consistency with the DB.

Two descriptor spaces, one :class:`Retrieval` each (vectors of different lengths never share an index):

* ``breech_face``: :func:`ballistic.retrieval.descriptor.breech_face_descriptor` of 3D scans (partition region
  ``breech_face``) and of 2D images (region ``breech_face_2d``), snapshots in ``index_dir``;
* ``bullet``: :func:`ballistic.bullet.descriptor.bullet_descriptor` of a bullet's land signatures (region
  ``bullet_lea``), snapshots in ``index_dir/bullet``.

The database is the source of truth: every exhibit's raw descriptor (float32 bytes),
its descriptor version and partition are stored there. The in-memory
:class:`ballistic.retrieval.index.VectorIndex` is a cache that is snapshotted and, at start-up,
loaded and compared with the DB (ids per partition, descriptor version, whitener); if
the snapshot is missing, stale or inconsistent it is rebuilt from the DB descriptors.
Each space only sees the exhibits whose stored descriptor version is its own.

:meth:`Retrieval.search_with_state` also names the exact vector set it searched (for the
job's :class:`ballistic.retrieval.record.SearchRecord`): ``state_id`` is a SHA-256 over the
descriptor version, transform, partition and the sorted ids present in the partition at
that moment, ``max_id`` the highest of those ids. A replay rebuilds the partition from the
DB descriptors of the exhibits of that partition with id <= ``max_id`` and checks that it
reaches the same ``state_id``; the on-disk snapshot id is reported too but older snapshots
are pruned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.db.models import Exhibit
from api.settings import Settings
from ballistic.io.atomic import atomic_write_bytes

__all__ = ["Retrieval", "region_for_media", "partition_for", "BULLET_REGION", "SPACES"]

BULLET_REGION = "bullet_lea"
SPACES = ("breech_face", "bullet")

log = logging.getLogger("ballistic.api.index")


def region_for_media(media_type: str) -> str:
    """3D topographies and 2D photographs are never compared with each other."""
    return "breech_face" if media_type == "x3p" else "breech_face_2d"


def partition_for(calibre: str | None, firing_pin_shape: str | None, region: str) -> str:
    from ballistic.retrieval.index import partition_key

    if region == BULLET_REGION:  # bullets: the calibre is the class partition; no firing pin
        firing_pin_shape = None
    return partition_key(calibre or None, firing_pin_shape or None, region=region)


class Retrieval:
    """Thread-safe wrapper of one VectorIndex plus the descriptor transform (one descriptor space)."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], *, space: str = "breech_face"):
        if space not in SPACES:
            raise ValueError(f"unknown descriptor space {space!r}; one of {SPACES}")
        self.settings = settings
        self.session_factory = session_factory
        self.space = space
        if space == "bullet":
            from ballistic.bullet import descriptor as bullet_descriptor

            self.descriptor_version: str = bullet_descriptor.BULLET_DESCRIPTOR_VERSION
            self.raw_dim: int = int(bullet_descriptor.BULLET_DESCRIPTOR_DIM)
            self.root = Path(settings.index_dir) / "bullet"
        else:
            from ballistic.retrieval import descriptor as bf_descriptor

            self.descriptor_version = bf_descriptor.DESCRIPTOR_VERSION
            self.raw_dim = int(bf_descriptor.DESCRIPTOR_DIM)
            self.root = Path(settings.index_dir)
        self._lock = threading.RLock()
        self.whitener = None
        self.transform_id = "raw"
        if settings.whitener_path and space == "breech_face":
            from ballistic.retrieval.descriptor import PCAWhitener

            wp = Path(settings.whitener_path)
            self.whitener = PCAWhitener.load(wp)
            self.transform_id = "pca:" + hashlib.sha256(wp.read_bytes()).hexdigest()[:16]
        self.dim = int(self.whitener.out_dim) if self.whitener is not None else self.raw_dim
        self.index = self._new_index()
        self.snapshot_id: str | None = None
        self._dirty = False
        self._last_save = 0.0
        self.last_load: dict[str, Any] = {}

    # ------------------------------------------------------------------ vectors
    def _new_index(self):
        from ballistic.retrieval.index import VectorIndex

        return VectorIndex(self.dim, factory=self.settings.index_factory, metric=self.settings.index_metric)

    @staticmethod
    def compute_descriptor(surface) -> np.ndarray:
        from ballistic.retrieval.descriptor import breech_face_descriptor

        v = np.asarray(breech_face_descriptor(surface), dtype=np.float32).ravel()
        if not np.all(np.isfinite(v)):
            raise ValueError("descriptor has non-finite values")
        return v

    def transform(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, dtype=np.float32).reshape(1, -1)
        if self.whitener is not None:
            x = np.asarray(self.whitener.transform(x), dtype=np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ index operations
    def add(self, exhibit_id: int, partition: str, raw: np.ndarray) -> None:
        vec = self.transform(raw)
        ids = np.asarray([exhibit_id], dtype=np.int64)
        with self._lock:
            if exhibit_id in self.index:
                self.index.remove(ids)
            self.index.add(ids, vec, partition=partition)
            self._dirty = True

    def remove(self, exhibit_id: int) -> None:
        with self._lock:
            if exhibit_id in self.index:
                self.index.remove(np.asarray([exhibit_id], dtype=np.int64))
                self._dirty = True

    def search(self, raw: np.ndarray, k: int, partition: str, *, exclude: int | None = None) -> list[tuple[int, float]]:
        return self.search_with_state(raw, k, partition, exclude=exclude)[0]

    def search_with_state(self, raw: np.ndarray, k: int, partition: str, *,
                          exclude: int | None = None) -> tuple[list[tuple[int, float]], dict]:
        """Top ``k`` of ``partition`` (``exclude`` left out) and the state searched (module notes)."""
        q = self.transform(raw)
        with self._lock:
            members = self.index.ids(partition)
            n = int(members.size)
            if n:
                scores, ids = self.index.search(q, min(k + 1, n), partition=partition)
            snapshot = self.snapshot_id
        h = hashlib.sha256(f"{self.descriptor_version}|{self.transform_id}|{partition}|".encode())
        h.update(np.ascontiguousarray(np.sort(members), dtype="<i8").tobytes())
        excluded = exclude is not None and bool(np.isin(exclude, members))
        state = {"state_id": "ids:" + h.hexdigest()[:40], "n_in_partition": n, "n_eligible": n - int(excluded),
                 "max_id": int(members.max()) if n else None, "disk_snapshot": snapshot}
        if not n:
            return [], state
        out = [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) != exclude]
        return out[:k], state

    def count(self, partition: str) -> int:
        with self._lock:
            return self.index.count(partition)

    def __contains__(self, exhibit_id: int) -> bool:
        with self._lock:
            return exhibit_id in self.index

    def __len__(self) -> int:
        with self._lock:
            return len(self.index)

    # ------------------------------------------------------------------ persistence
    @property
    def _vectors_dir(self) -> Path:
        return self.root / "vectors"

    @property
    def _manifest(self) -> Path:
        return self.root / "manifest.json"

    def _manifest_expect(self) -> dict:
        return {"descriptor_version": self.descriptor_version, "transform": self.transform_id, "dim": self.dim,
                "factory": self.settings.index_factory, "metric": self.settings.index_metric}

    def save(self, *, force: bool = False) -> str | None:
        with self._lock:
            if not (self._dirty or force):
                return self.snapshot_id
            self.root.mkdir(parents=True, exist_ok=True)
            snap = self.index.save(self._vectors_dir)
            manifest = {**self._manifest_expect(), "snapshot_id": snap, "count": len(self.index),
                        "saved_at": time.time()}
            atomic_write_bytes(self._manifest, json.dumps(manifest).encode())
            self.snapshot_id, self._dirty, self._last_save = snap, False, time.monotonic()
            return snap

    def maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.settings.index_save_interval_s:
            try:
                self.save()
            except Exception:  # a failed snapshot is rebuilt from the DB at the next start
                log.exception("index snapshot failed")

    def _db_items(self, session: Session) -> list[tuple[int, str, bytes]]:
        rows = session.execute(
            select(Exhibit.id, Exhibit.partition, Exhibit.descriptor)
            .where(Exhibit.descriptor.is_not(None), Exhibit.descriptor_version == self.descriptor_version)
            .order_by(Exhibit.id)).all()
        return [(int(i), p, d) for i, p, d in rows]

    def _db_membership(self, session: Session) -> dict[str, set[int]]:
        rows = session.execute(
            select(Exhibit.id, Exhibit.partition)
            .where(Exhibit.descriptor.is_not(None), Exhibit.descriptor_version == self.descriptor_version)).all()
        out: dict[str, set[int]] = {}
        for i, p in rows:
            out.setdefault(p, set()).add(int(i))
        return out

    def consistency(self, session: Session) -> dict:
        """Compare the in-memory index with the DB: counts per partition and id membership."""
        db = self._db_membership(session)
        with self._lock:
            idx_parts = {p: self.index.count(p) for p in self.index.partitions()}
            missing = [i for ids in db.values() for i in ids if i not in self.index]
            n = len(self.index)
        db_n = sum(len(v) for v in db.values())
        counts_ok = all(idx_parts.get(p, 0) == len(v) for p, v in db.items()) and \
            all(c == len(db.get(p, ())) for p, c in idx_parts.items() if c)
        return {"space": self.space, "consistent": not missing and n == db_n and counts_ok, "index_count": n,
                "db_count": db_n,
                "missing_from_index": missing[:20], "partitions": {p: len(v) for p, v in db.items()},
                "snapshot_id": self.snapshot_id, "descriptor_version": self.descriptor_version,
                "transform": self.transform_id, "dim": self.dim}

    def load_or_rebuild(self) -> dict:
        """Start-up: load the snapshot if it matches the DB, otherwise rebuild it from DB descriptors."""
        reason = None
        loaded = None
        try:
            manifest = json.loads(self._manifest.read_text()) if self._manifest.is_file() else None
        except (OSError, ValueError):
            manifest = None
        if manifest is None:
            reason = "no snapshot"
        elif any(manifest.get(k) != v for k, v in self._manifest_expect().items()):
            reason = "snapshot built with another descriptor/transform/factory"
        else:
            try:
                from ballistic.retrieval.index import VectorIndex

                loaded = VectorIndex.load(self._vectors_dir)
            except Exception as e:  # corrupt or half-written snapshot
                reason = f"snapshot unreadable: {type(e).__name__}: {e}"
        with self.session_factory() as s:
            if loaded is not None:
                with self._lock:
                    self.index, self.snapshot_id = loaded, getattr(loaded, "snapshot_id", None)
                c = self.consistency(s)
                if c["consistent"]:
                    self.last_load = {"action": "loaded", **c}
                    return self.last_load
                reason = (f"snapshot stale: index has {c['index_count']} vectors, DB has {c['db_count']} "
                          f"descriptors")
            items = self._db_items(s)
        from ballistic.retrieval.index import VectorIndex

        def gen():
            for i, p, d in items:
                yield i, p, self.transform(np.frombuffer(d, dtype=np.float32))[0]

        t0 = time.perf_counter()
        idx = VectorIndex.rebuild(self.dim, gen(), factory=self.settings.index_factory,
                                  metric=self.settings.index_metric)
        with self._lock:
            self.index, self._dirty = idx, True
        self.save(force=True)
        with self.session_factory() as s:
            c = self.consistency(s)
        self.last_load = {"action": "rebuilt", "reason": reason, "seconds": round(time.perf_counter() - t0, 3), **c}
        log.info("%s vector index rebuilt (%s): %d vectors", self.space, reason, c["index_count"])
        return self.last_load
