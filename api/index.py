"""The service's vector indexes: one :class:`DescriptorSpace` per descriptor space, each the library's
:class:`~ballistic.retrieval.sharded.ShardedIndex` kept current from the database's descriptor log, searched by
the library's one search path (:class:`~ballistic.retrieval.search.Retriever`).

Two descriptor spaces (vectors of different lengths never share an index):

* ``breech_face``: the breech-face descriptor model of ``Settings.descriptor``
  (:func:`ballistic.retrieval.registry.default_descriptor`: the rotation-searched polar descriptor unless
  ``BALLISTIC_DESCRIPTOR`` names another (``polar``; ``learned``, polar where it cannot load);
  its version, e.g. ``bf-learned/1?weights=<sha256>``, is what a change is detected by), or a fitted whitener on top, of 3D scans (partition region ``breech_face``) and of 2D images (region
  ``breech_face_2d``);
* ``bullet``: :class:`~ballistic.bullet.descriptor.BulletDescriptor` of a bullet's land signatures (region
  ``bullet_lea``).

The database is the source of truth. Every descriptor a job computes is stored on its exhibit (float32 bytes,
with the model's version) and appended, in the same transaction, to the descriptor log (``descriptor_rows``).
:class:`DescriptorLog` serves that log to the index as the library's row source (rows of one space and one
descriptor version, whitened on the way): every shard loads its snapshot and replays the rows written after
it, and every synced search first applies what is new, so any number of processes (the API process, each
worker process, Ray actors on other nodes) see the same vectors. Snapshots live under
``INDEX_DIR/<space>/<key>/`` (key: descriptor version, transform, factory, metric, shards); a new
descriptor version starts an empty index, and the exhibits with older descriptors get jobs at start-up.

At start-up :meth:`DescriptorSpace.open` loads the snapshots, replays the log and compares the index with the
exhibits table (ids per partition, and no shard ahead of the log); on any difference it rebuilds from the log.

Executors: ``BALLISTIC_BACKEND=local`` (default) keeps the shards in the process and runs the re-ranking
there, never importing Ray; ``BALLISTIC_BACKEND=ray`` with ``BALLISTIC_RAY_ADDRESS`` puts the shards and the
re-ranking of the worker processes on a Ray cluster (:mod:`ballistic.retrieval.executor`: token auth, loopback or
private addresses only, no dashboard). The API process always uses the local executor.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from api.db.models import DescriptorRow, Exhibit
from api.settings import Settings

__all__ = ["BULLET_REGION", "SPACES", "region_for_media", "partition_for", "space_of", "DescriptorLog",
           "DescriptorSpace", "make_executor"]

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


def space_of(exhibit_type: str) -> str:
    """The descriptor space of an exhibit type."""
    return "bullet" if exhibit_type == "bullet" else "breech_face"


# ------------------------------------------------------------------------------------------- the log
_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str):
    """One read engine per database URL and process (row sources run in worker processes and Ray actors)."""
    with _ENGINES_LOCK:
        e = _ENGINES.get(url)
        if e is None:
            from api.db import make_engine
            e = _ENGINES[url] = make_engine(url, immediate=False)
        return e


class DescriptorLog:
    """The descriptor log of one space and descriptor version as the library's
    :class:`~ballistic.retrieval.sharded.RowSource`: rows ``(seq, exhibit id, partition, vector)`` with
    ``seq > after_seq`` (and ``<= upto``), ascending; vectors whitened when a whitener is given.

    Holds only the database URL, the names and the whitener, so it pickles to worker processes and Ray
    actors (which must reach the database).
    """

    def __init__(self, database_url: str, space: str, version: str, whitener=None) -> None:
        self.database_url = str(database_url)
        self.space = space
        self.version = version
        self.whitener = whitener

    def __call__(self, after_seq: int, upto: int | None = None):
        from ballistic.retrieval.sharded import Row

        q = (select(DescriptorRow.seq, DescriptorRow.exhibit_id, DescriptorRow.partition, DescriptorRow.dim,
                    DescriptorRow.vector)
             .where(DescriptorRow.space == self.space, DescriptorRow.version == self.version,
                    DescriptorRow.seq > int(after_seq)).order_by(DescriptorRow.seq))
        if upto is not None:
            q = q.where(DescriptorRow.seq <= int(upto))
        with _engine(self.database_url).connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for seq, eid, part, dim, vec in rows:
            v = None if vec is None else np.frombuffer(vec, dtype=np.float32, count=dim)
            if v is not None and self.whitener is not None:
                v = np.asarray(self.whitener.transform(v[None, :]), dtype=np.float32)[0]
            out.append(Row(int(seq), int(eid), part, v))
        return out

    def head(self) -> int:
        """Highest seq of this space and version (0 when none)."""
        with _engine(self.database_url).connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(DescriptorRow.seq), 0)).where(
                DescriptorRow.space == self.space, DescriptorRow.version == self.version)).scalar_one())

    def __repr__(self) -> str:
        return f"DescriptorLog(space={self.space!r}, version={self.version!r})"


def make_executor(settings: Settings, *, backend: str | None = None):
    """The executor the settings name (``backend`` overrides): local (in this process, no Ray import) or Ray
    at ``RAY_ADDRESS`` with the token from ``RAY_TOKEN_PATH`` (or ``RAY_AUTH_TOKEN`` in the environment)."""
    from ballistic.retrieval.executor import LocalExecutor, RayExecutor, RaySettings

    backend = backend or settings.backend
    if backend == "local":
        return LocalExecutor(1)
    return RayExecutor(RaySettings(address=settings.ray_address,
                                   auth_token_path=str(settings.ray_token_path) if settings.ray_token_path else None,
                                   namespace=settings.ray_namespace, call_timeout_s=settings.ray_call_timeout_s))


# ------------------------------------------------------------------------------------------- one space
class DescriptorSpace:
    """One descriptor space: its model, version and transform, the sharded index kept from the log, and the
    one search path over it (:meth:`retriever`)."""

    def __init__(self, settings: Settings, space: str = "breech_face", *, executor=None) -> None:
        if space not in SPACES:
            raise ValueError(f"unknown descriptor space {space!r}; one of {SPACES}")
        from ballistic.retrieval.descriptor import descriptor_version
        from ballistic.retrieval.executor import LocalExecutor

        self.settings = settings
        self.space = space
        self.whitener = None
        self.transform_id = "raw"
        if space == "bullet":
            from ballistic.bullet.descriptor import BulletDescriptor

            self.model = BulletDescriptor()
        else:
            from ballistic.retrieval.registry import default_descriptor

            self.model = default_descriptor(settings.descriptor)
            if settings.whitener_path:
                from ballistic.retrieval.descriptor import PCAWhitener

                wp = Path(settings.whitener_path)
                if hasattr(self.model, "query_vectors"):
                    raise ValueError(f"{self.model.name} searches rotations by query expansion and is indexed raw: "
                                     "unset BALLISTIC_WHITENER_PATH (or choose BALLISTIC_DESCRIPTOR=polar to whiten)")
                self.whitener = PCAWhitener.load(wp)
                fitted_on = getattr(self.whitener, "descriptor", None)
                if self.whitener.in_dim != int(self.model.dim) or (fitted_on and fitted_on != self.model.name):
                    raise ValueError(f"whitener {wp} was fitted on {fitted_on or 'unnamed'} descriptors of length "
                                     f"{self.whitener.in_dim}; the service describes with {self.model.name} "
                                     f"({self.model.dim}): refit it or unset BALLISTIC_WHITENER_PATH")
                self.transform_id = "pca:" + hashlib.sha256(wp.read_bytes()).hexdigest()[:16]
        self.descriptor_version: str = descriptor_version(self.model)
        self.raw_dim = int(self.model.dim)
        self.dim = int(self.whitener.out_dim) if self.whitener is not None else self.raw_dim
        self.rows = DescriptorLog(settings.database_url, space, self.descriptor_version, self.whitener)
        key = hashlib.sha256(f"{self.descriptor_version}|{self.transform_id}|{settings.index_factory}|"
                             f"{settings.index_metric}|{settings.index_shards}".encode()).hexdigest()[:16]
        self.root = Path(settings.index_dir) / space / key
        self.executor = executor if executor is not None else LocalExecutor(1)
        self.index = None
        self._lock = threading.RLock()
        self._dirty = False
        self._last_save = 0.0
        self.last_load: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifetime
    def _open_index(self):
        from ballistic.retrieval.sharded import ShardedIndex

        return ShardedIndex(self.dim, self.rows, self.root, n_shards=self.settings.index_shards,
                            factory=self.settings.index_factory, metric=self.settings.index_metric,
                            index_kwargs={"nprobe": self.settings.index_nprobe,
                                          "ef_search": self.settings.index_ef_search},
                            executor=self.executor, name=self.space)

    def open(self, *, check: bool = True) -> dict:
        """Load the snapshots and replay the log; with ``check``, compare with the exhibits table and rebuild
        from the log on any difference. Returns the load report (``action`` loaded / rebuilt, ``reason``)."""
        t0 = time.perf_counter()
        with self._lock:
            self.index = self._open_index()
            info = self.index.info()
        loaded = all(v.get("loaded_snapshot") for v in info.values())
        errors = [f"{n}: {v['snapshot_error']}" for n, v in info.items() if v.get("snapshot_error")]
        replayed = int(sum(v.get("replayed_on_start", 0) for v in info.values()))
        reason = None if loaded else ("; ".join(errors) or "no snapshot")
        if check:
            c = self.consistency()
            if not c["consistent"]:
                reason = (f"snapshot stale: index has {c['index_count']} vectors, DB has {c['db_count']} descriptors"
                          + (f", a shard is at seq {c['seq']} but the log ends at {c['log_head']}"
                             if c.get("ahead") else ""))
                return self.rebuild(reason, t0=t0)
        else:
            c = {}
        if not loaded:
            self._dirty = True
            self.save()
        elif replayed:
            self._dirty = True       # the snapshot is behind the log: the next save brings it up
        self.last_load = {"action": "loaded" if loaded else "rebuilt", "reason": reason, "replayed": replayed,
                          "seconds": round(time.perf_counter() - t0, 3), **c}
        return self.last_load

    def rebuild(self, reason: str, *, t0: float | None = None) -> dict:
        """Drop the snapshots and build every shard again from the log."""
        t0 = time.perf_counter() if t0 is None else t0
        with self._lock:
            if self.index is not None:
                self.index.close()
            shutil.rmtree(self.root, ignore_errors=True)
            self.index = self._open_index()
        self._dirty = True
        self.save()
        c = self.consistency()
        self.last_load = {"action": "rebuilt", "reason": reason, "replayed": c["index_count"],
                          "seconds": round(time.perf_counter() - t0, 3), **c}
        log.info("%s vector index rebuilt (%s): %d vectors", self.space, reason, c["index_count"])
        return self.last_load

    def close(self) -> None:
        with self._lock:
            if self.index is not None:
                self.index.close()
                self.index = None

    def reopen(self) -> None:
        """Start the shards again (from their snapshots + the log): after a shard was lost for good on a
        cluster, so that the job's retry finds a whole index."""
        with self._lock:
            if self.index is not None:
                try:
                    self.index.close()
                except Exception:  # noqa: BLE001 - its actors may be gone already
                    pass
            self.index = self._open_index()

    # ------------------------------------------------------------------ vectors
    def describe(self, x) -> np.ndarray:
        """The raw descriptor of a preprocessed surface (breech face) or of a bullet's signatures, float32."""
        from ballistic.errors import DescriptorError

        v = np.asarray(self.model(x), dtype=np.float32).ravel()
        if not np.all(np.isfinite(v)):
            raise DescriptorError("descriptor has non-finite values")
        return v

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """The vector as indexed (whitened when a whitener is set), shape (dim,)."""
        x = np.asarray(raw, dtype=np.float32).reshape(1, -1)
        if self.whitener is not None:
            x = np.asarray(self.whitener.transform(x), dtype=np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)[0]

    def log_row(self, exhibit_id: int, partition: str, raw: np.ndarray) -> DescriptorRow:
        """The descriptor log row of a new descriptor (the caller adds it in the transaction that stores it)."""
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        self._dirty = True
        return DescriptorRow(exhibit_id=exhibit_id, space=self.space, version=self.descriptor_version,
                             partition=partition, dim=int(raw.size), vector=raw.tobytes())

    def retriever(self, fetch, *, params, compare=None):
        """The library's one search path over this space's index, on this space's executor."""
        from ballistic.retrieval.search import Retriever

        return Retriever(self.index, fetch, descriptor=self.model, whitener=self.whitener, params=params,
                         executor=self.executor, compare=compare, transform_id=self.transform_id)

    # ------------------------------------------------------------------ persistence
    def save(self, *, force: bool = False) -> dict | None:
        """Snapshot every shard (atomic) at the log position it reached."""
        with self._lock:
            if self.index is None or not (self._dirty or force):
                return None
            self.index.sync()
            out = self.index.save()
            self._dirty, self._last_save = False, time.monotonic()
            return out

    def maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.settings.index_save_interval_s:
            try:
                self.save()
            except Exception:  # a failed snapshot is replayed from the log at the next start
                log.exception("%s index snapshot failed", self.space)

    def _db_membership(self, session) -> dict[str, set[int]]:
        rows = session.execute(
            select(Exhibit.id, Exhibit.partition)
            .where(Exhibit.descriptor.is_not(None), Exhibit.descriptor_version == self.descriptor_version)).all()
        out: dict[str, set[int]] = {}
        for i, p in rows:
            out.setdefault(p, set()).add(int(i))
        return out

    def consistency(self, session=None) -> dict:
        """Bring the index to the log's head and compare it with the exhibits table: ids per partition, and no
        shard ahead of the log (a snapshot of another, or a restored, database)."""
        from api.db import make_sessionmaker

        if session is None:
            with make_sessionmaker(_engine(self.settings.database_url))() as s:
                return self.consistency(s)
        db = self._db_membership(session)
        head = self.rows.head()
        with self._lock:
            self.index.sync()
            state = self.index.state()
            counts = self.index.counts()
            held = set(int(i) for i in self.index.ids(None))
        seq = max((int(s["seq"]) for s in state.values()), default=0)
        db_ids = set().union(*db.values()) if db else set()
        missing = sorted(db_ids - held)
        extra = sorted(held - db_ids)
        counts_ok = all(counts.get(p, 0) == len(v) for p, v in db.items()) and \
            all(c == len(db.get(p, ())) for p, c in counts.items() if c)
        ahead = seq > head
        return {"space": self.space, "consistent": not missing and not extra and counts_ok and not ahead,
                "index_count": len(held), "db_count": len(db_ids), "missing_from_index": missing[:20],
                "not_in_db": extra[:20], "partitions": {p: len(v) for p, v in db.items()}, "seq": seq,
                "log_head": head, "ahead": ahead,
                "snapshot_id": {n: s["snapshot"] for n, s in state.items()},
                "descriptor_version": self.descriptor_version, "transform": self.transform_id, "dim": self.dim,
                "shards": len(state), "backend": self.executor.backend}
