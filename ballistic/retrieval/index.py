"""Partitioned FAISS vector index with stable ids and atomic, verifiable snapshots.

One FAISS index per partition (calibre x firing-pin shape x region, see
:func:`partition_key`), each wrapped in ``IndexIDMap2`` so that results carry
the caller's stable int64 ids, never FAISS row positions. The index type is a
FAISS factory string (``"Flat"`` exact; ``"HNSW32"``; ``"IVF4096,PQ32x4fs,RFlat"``
IVF-PQ with exact re-ranking of the shortlist).

Training. Factories that need training (IVF, PQ) keep the vectors of a
partition in an exact "pending" buffer, searched by brute force, until the
index holds enough of them (:attr:`VectorIndex.min_train`) or :meth:`train` is
called; one trained template is then cloned for every partition, so small
partitions cost no extra training.

Removal. Where the FAISS index supports ``remove_ids`` (Flat, IVF) vectors are
removed; elsewhere (HNSW, refine) the id becomes a tombstone filtered out of
results, and the partition is compacted (rebuilt from its reconstructed
vectors) when tombstones pass a quarter of it or the id is added again.

Snapshots. :meth:`VectorIndex.save` writes ``DIR/snapshots/<id>/`` (manifest
with SHA-256 of every file, one ``.faiss`` and id list per partition) into a
temporary folder, fsyncs, renames it into place, then atomically replaces
``DIR/CURRENT``. An interrupted save leaves ``CURRENT`` pointing at the previous
complete snapshot. :meth:`VectorIndex.load` verifies every checksum and raises
:class:`IndexStateError` on anything corrupt or incompatible.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np

from ballistic.errors import IndexStateError
from ballistic.io.atomic import atomic_write_bytes, fsync_dir, write_synced

__all__ = ["INDEX_FORMAT", "VectorIndex", "IndexSearch", "ShardState", "partition_key", "merge_topk"]

INDEX_FORMAT = "ballistic-vector-index/1"
_KEEP_SNAPSHOTS = 2


def _norm_part(x: str | None) -> str:
    if x is None:
        return "any"
    s = re.sub(r"[^a-z0-9._]+", "-", str(x).strip().lower()).strip("-")
    return s or "any"


def partition_key(calibre: str | None = None, firing_pin_shape: str | None = None, *,
                  region: str = "breech_face") -> str:
    """Normalised partition name: ``"region|calibre|firing-pin-shape"``.

    Lower case, runs of other characters than ``a-z0-9._`` become ``-``; ``None``
    (unknown) becomes ``"any"``. E.g. ``partition_key("9mm Luger", "Hemispherical")
    == "breech_face|9mm-luger|hemispherical"``.
    """
    return "|".join((_norm_part(region), _norm_part(calibre), _norm_part(firing_pin_shape)))


def _min_train_for(factory: str) -> int:
    """Training-set size FAISS asks for (39 points per centroid) for the coarse quantiser and PQ codebooks."""
    n = 0
    m = re.search(r"IVF(\d+)", factory)
    if m:
        n = max(n, 39 * int(m.group(1)))
    for pm in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        bits = int(pm.group(2)) if pm.group(2) else 8
        n = max(n, 39 * (1 << bits))
    return max(n, 1000)


class _Partition:
    __slots__ = ("index", "ids", "pending_ids", "pending_vecs", "tombstones", "removable")

    def __init__(self, dim: int) -> None:
        self.index = None                                  # faiss.IndexIDMap2 once trained
        self.ids = np.empty(0, dtype=np.int64)             # sorted live ids (index + pending)
        self.pending_ids = np.empty(0, dtype=np.int64)
        self.pending_vecs = np.empty((0, dim), dtype=np.float32)
        self.tombstones = np.empty(0, dtype=np.int64)      # sorted ids still inside .index but removed
        self.removable = True


def _sorted_insert(a: np.ndarray, new: np.ndarray) -> np.ndarray:
    new = np.sort(new)
    return np.insert(a, np.searchsorted(a, new), new)


def _isin_sorted(values: np.ndarray, sorted_arr: np.ndarray) -> np.ndarray:
    if sorted_arr.size == 0 or values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_arr, values), sorted_arr.size - 1)
    return sorted_arr[pos] == values


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def merge_topk(res: list[tuple[np.ndarray, np.ndarray]], nq: int, k: int, metric: str):
    """Merge per-part top-k lists into one: best score first (``ip`` higher, ``l2`` lower), stable
    over the parts in order, ids ``-1`` (and the worst score) where there are fewer than k results.

    Parameters
    ----------
    res : list of (scores, ids)
        Each ``scores`` (nq, k_i) float and ``ids`` (nq, k_i) int64, ``-1`` for no result.
    nq, k : int
    metric : {"ip", "l2"}

    Returns
    -------
    scores : ndarray of float32, shape (nq, k)
    ids : ndarray of int64, shape (nq, k)
    """
    worst = -np.inf if metric == "ip" else np.inf
    if not res:
        return np.full((nq, k), worst, np.float32), np.full((nq, k), -1, np.int64)
    D = np.concatenate([r[0] for r in res], axis=1)
    I = np.concatenate([r[1] for r in res], axis=1)
    key = -D if metric == "ip" else D
    key = np.where(I < 0, np.inf, key)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    D = np.take_along_axis(D, order, axis=1)
    I = np.take_along_axis(I, order, axis=1)
    if D.shape[1] < k:
        pad = k - D.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=worst)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    D = np.where(I < 0, worst, D).astype(np.float32)
    return D, I.astype(np.int64)


def _stored_view(idmap) -> np.ndarray | None:
    """The vectors of an ``IndexIDMap2`` as its FAISS index holds them, without a copy: float32 (n, d) for
    ``Flat``, float16 for ``SQfp16``; None for any other index (graphs, lists, codes that need decoding). Valid
    while the index is not changed."""
    inner = faiss.downcast_index(idmap.index)
    n, d = int(inner.ntotal), int(inner.d)
    if isinstance(inner, faiss.IndexFlat):
        return faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d), np.float32)
    if isinstance(inner, faiss.IndexScalarQuantizer) and inner.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        if not n:
            return np.zeros((0, d), np.float16)
        return faiss.rev_swig_ptr(inner.codes.data(), n * inner.code_size).view(np.float16).reshape(n, d)
    return None


def _row_lists(scores, ids, rows, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results ranked by their best query row (``scores`` best first) as per-row top-k lists: each result in
    its own row, in score order; (nq, k) scores (-inf) and ids (-1) where a row has fewer."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= nq):
        raise ValueError(f"scan returned rows outside the {nq} query rows ({int(rows.min())}..{int(rows.max())})")
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    order = np.argsort(rows, kind="stable")
    r = rows[order]
    col = np.arange(r.size) - np.searchsorted(r, r)
    ok = col < k
    D[r[ok], col[ok]] = np.asarray(scores, np.float32)[order][ok]
    I[r[ok], col[ok]] = np.asarray(ids, np.int64)[order][ok]
    return D, I


@dataclass(frozen=True)
class ShardState:
    """Position of one shard (or of a whole :class:`VectorIndex`) when it answered: database ``seq`` (``None``
    for an index that is not kept from a database) and the snapshot it was built on; how many vectors were
    eligible there and how long its search took."""

    shard: str
    seq: int | None
    snapshot: str | None
    eligible: int
    seconds: float = 0.0         # FAISS search time inside the shard (not part of the state)


@dataclass
class IndexSearch:
    """Answer of :meth:`VectorIndex.query` and :meth:`~ballistic.retrieval.sharded.ShardedIndex.query`.

    ``scores``/``ids`` as :meth:`VectorIndex.search`. ``seq``: the database position every shard answered
    at (``None`` for a plain index). ``eligible``: vectors in the searched partition(s). ``shards``: each
    shard's state. ``members``: sorted ids present in the searched partition(s) when asked for
    (``members=True``), else ``None``. ``state_id``: hash of (shard, snapshot, seq) of every shard asked.
    """

    scores: np.ndarray
    ids: np.ndarray
    seq: int | None
    eligible: int
    shards: list[ShardState]
    members: np.ndarray | None = field(default=None, repr=False)

    @property
    def state_id(self) -> str:
        body = json.dumps([[s.shard, s.snapshot, s.seq] for s in sorted(self.shards, key=lambda s: s.shard)],
                          separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:20]


def _npy_bytes(a: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _npy_load(b: bytes) -> np.ndarray:
    import io
    return np.load(io.BytesIO(b), allow_pickle=False)


class VectorIndex:
    """Partitioned FAISS index of L2-normalised descriptors with stable int64 ids.

    Parameters
    ----------
    dim : int
        Vector length.
    factory : str, keyword-only
        FAISS ``index_factory`` string, e.g. ``"Flat"`` (exact), ``"HNSW32"``,
        ``"IVF4096,PQ32x4fs,RFlat"``. Wrapped in ``IndexIDMap2``.
    metric : {"ip", "l2"}, keyword-only
        Inner product (cosine for normalised vectors; scores: higher is better) or
        squared L2 distance (scores: lower is better).
    min_train : int, optional, keyword-only
        For factories that need training: train automatically once this many
        vectors wait in the pending buffers. Default: 39 per IVF centroid / PQ code
        (FAISS's own advice), at least 1000.
    nprobe, ef_search, k_factor : int, optional, keyword-only
        Search-time settings for IVF (``nprobe``), HNSW (``efSearch``) and refine
        (``k_factor``: shortlist = k_factor * k re-ranked exactly). ``None`` keeps
        FAISS's default.

    Attributes
    ----------
    snapshot_id : str or None
        Content hash of the snapshot this index was last saved as or loaded from;
        ``None`` after any change.
    meta : dict
        JSON-serialisable information stored with the snapshot (descriptor name...).
    attachments : dict of str -> bytes
        Small files stored (and checksummed) with the snapshot, e.g. the
        :class:`~ballistic.retrieval.descriptor.PCAWhitener` the vectors went through.
    """

    def __init__(self, dim: int, *, factory: str = "Flat", metric: str = "ip", min_train: int | None = None,
                 nprobe: int | None = None, ef_search: int | None = None, k_factor: int | None = None) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric must be 'ip' (inner product) or 'l2', got {metric!r}")
        self.dim = int(dim)
        self.factory = str(factory)
        self.metric = metric
        self._faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            probe = faiss.index_factory(self.dim, self.factory, self._faiss_metric)
        except RuntimeError as e:
            raise ValueError(f"FAISS cannot build factory {factory!r} for dim {dim}: "
                             f"{str(e).splitlines()[0]}; see the faiss index_factory documentation") from e
        self.needs_training = not probe.is_trained
        self.min_train = int(min_train) if min_train is not None else _min_train_for(self.factory)
        self.nprobe, self.ef_search, self.k_factor = nprobe, ef_search, k_factor
        self._template = None if self.needs_training else probe
        self._parts: dict[str, _Partition] = {}
        self._lock = threading.RLock()
        self.snapshot_id: str | None = None
        self.meta: dict = {}
        self.attachments: dict[str, bytes] = {}

    # ------------------------------------------------------------------ helpers
    def _check_vectors(self, vectors, what: str) -> np.ndarray:
        V = np.asarray(vectors)
        if V.ndim == 1:
            V = V[None, :]
        if V.ndim != 2 or V.shape[1] != self.dim:
            raise ValueError(f"{what}: expected vectors of shape (n, {self.dim}), got {np.shape(vectors)}; "
                             "the index dimension is fixed when it is created")
        if not np.issubdtype(V.dtype, np.number):
            raise ValueError(f"{what}: vectors must be numbers, got dtype {V.dtype}")
        V = np.ascontiguousarray(V, dtype=np.float32)
        bad = ~np.isfinite(V).all(axis=1)
        if bad.any():
            raise ValueError(f"{what}: {int(bad.sum())} vector(s) contain NaN or infinity (first at row "
                             f"{int(np.flatnonzero(bad)[0])}); recompute those descriptors")
        return V

    @staticmethod
    def _check_ids(ids, n: int | None = None) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim == 0:
            a = a[None]
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise ValueError(f"ids must be a 1-D array of integers, got shape {a.shape} dtype {a.dtype}")
        a = a.astype(np.int64)
        if n is not None and a.size != n:
            raise ValueError(f"got {a.size} ids for {n} vectors; give one id per vector")
        if (a < 0).any():
            raise ValueError("ids must be >= 0 (-1 marks 'no result' in search output)")
        return a

    def _new_index(self):
        idx = faiss.IndexIDMap2(faiss.clone_index(self._template))
        return idx

    def _tune(self, idx) -> None:
        inner = faiss.downcast_index(idx.index)
        if self.k_factor is not None and isinstance(inner, faiss.IndexRefine):
            inner.k_factor = float(self.k_factor)
        base = faiss.downcast_index(inner.base_index) if isinstance(inner, faiss.IndexRefine) else inner
        if self.nprobe is not None:
            try:
                faiss.extract_index_ivf(base).nprobe = int(self.nprobe)
            except (RuntimeError, AttributeError):
                pass
        if self.ef_search is not None and hasattr(base, "hnsw"):
            base.hnsw.efSearch = int(self.ef_search)

    def _train_template(self, sample: np.ndarray) -> None:
        t = faiss.index_factory(self.dim, self.factory, self._faiss_metric)
        t.train(sample)
        self._template = t

    def _flush_pending(self, part: _Partition) -> None:
        if self._template is None or (part.pending_ids.size == 0 and part.index is not None):
            return
        if part.index is None:
            part.index = self._new_index()
            self._tune(part.index)
        if part.pending_ids.size:
            part.index.add_with_ids(part.pending_vecs, part.pending_ids)
            part.pending_ids = np.empty(0, dtype=np.int64)
            part.pending_vecs = np.empty((0, self.dim), dtype=np.float32)

    def _maybe_train(self) -> None:
        if self._template is not None:
            return
        total = sum(p.pending_ids.size for p in self._parts.values())
        if total >= self.min_train:
            self.train()

    def _compact(self, part: _Partition) -> None:
        """Rebuild a partition without its tombstones (from reconstructed vectors)."""
        if part.tombstones.size == 0 or part.index is None:
            return
        # bulk: the id map gives each stored row's id, reconstruct_n the rows (HNSW, refine, Flat store them)
        stored = faiss.vector_to_array(part.index.id_map).astype(np.int64)
        keep = ~_isin_sorted(stored, part.tombstones)
        vecs = part.index.index.reconstruct_n(0, part.index.ntotal)[keep] if keep.any() else \
            np.empty((0, self.dim), np.float32)
        part.index = self._new_index()
        self._tune(part.index)
        if keep.any():
            part.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), stored[keep])
        part.tombstones = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ public API
    def train(self, sample: np.ndarray | None = None) -> None:
        """Train the index type on ``sample`` (n, dim), or on all pending vectors; then index them.

        No-op for factories that need no training.
        """
        with self._lock:
            if not self.needs_training:
                return
            if sample is None:
                pend = [p.pending_vecs for p in self._parts.values() if p.pending_ids.size]
                if not pend:
                    raise ValueError("train(): no vectors added yet; pass a sample of vectors")
                sample = np.concatenate(pend)
            sample = self._check_vectors(sample, "train")
            if sample.shape[0] < 2:
                raise ValueError("train(): need at least 2 training vectors")
            self._train_template(sample)
            for part in self._parts.values():
                self._flush_pending(part)
            self.snapshot_id = None

    @property
    def is_trained(self) -> bool:
        return self._template is not None

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, partition: str = "any") -> None:
        """Add vectors under stable ids to one partition.

        Parameters
        ----------
        ids : array_like of int, shape (n,)
            Non-negative, unique across the whole index (all partitions).
        vectors : array_like of float, shape (n, dim)
            Finite; for ``metric="ip"`` they should be L2-normalised.
        partition : str, keyword-only
            Partition name (see :func:`partition_key`).

        Raises
        ------
        ValueError
            Wrong shape, NaN/inf, duplicate ids (within the batch or already indexed).
        """
        V = self._check_vectors(vectors, "add")
        ids = self._check_ids(ids, V.shape[0])
        if not isinstance(partition, str) or not partition:
            raise ValueError(f"partition must be a non-empty string (see partition_key), got {partition!r}")
        if ids.size == 0:
            return
        u, c = np.unique(ids, return_counts=True)
        if (c > 1).any():
            raise ValueError(f"add: duplicate ids within the batch, e.g. {int(u[c > 1][0])}")
        with self._lock:
            for name, p in self._parts.items():
                hit = _isin_sorted(ids, p.ids)
                if hit.any():
                    raise ValueError(f"add: id {int(ids[hit][0])} is already in partition {name!r}; "
                                     "remove it first or use a new id")
            part = self._parts.get(partition)
            if part is None:
                part = self._parts[partition] = _Partition(self.dim)
            if part.tombstones.size and _isin_sorted(ids, part.tombstones).any():
                self._compact(part)
            if self._template is not None:
                self._flush_pending(part)
                part.index.add_with_ids(V, ids)
            else:
                part.pending_ids = np.concatenate([part.pending_ids, ids])
                part.pending_vecs = np.concatenate([part.pending_vecs, V])
            part.ids = _sorted_insert(part.ids, ids)
            self.snapshot_id = None
            self._maybe_train()

    def remove(self, ids) -> int:
        """Remove ids (from whichever partition holds them); returns how many were present."""
        ids = np.unique(self._check_ids(ids))
        n = 0
        with self._lock:
            for part in self._parts.values():
                hit = ids[_isin_sorted(ids, part.ids)]
                if hit.size == 0:
                    continue
                n += hit.size
                part.ids = np.setdiff1d(part.ids, hit, assume_unique=True)
                pend = _isin_sorted(part.pending_ids, hit)
                was_pending = np.sort(part.pending_ids[pend])
                if pend.any():
                    part.pending_ids = part.pending_ids[~pend]
                    part.pending_vecs = part.pending_vecs[~pend]
                in_index = hit[~_isin_sorted(hit, was_pending)] if part.index is not None else hit[:0]
                if in_index.size == 0:
                    continue
                if part.removable:
                    try:
                        part.index.remove_ids(faiss.IDSelectorBatch(in_index))
                    except RuntimeError:
                        part.removable = False
                if not part.removable:
                    part.tombstones = np.union1d(part.tombstones, in_index)
                    if part.tombstones.size > max(16, part.ids.size // 4):
                        self._compact(part)
            self.snapshot_id = None
        return n

    def search(self, queries: np.ndarray, k: int, *, partition: str | None = "any",
               scan=None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query.

        Parameters
        ----------
        queries : array_like of float, shape (nq, dim) or (dim,)
        k : int
            Results per query.
        partition : str or None, keyword-only
            Search this partition only; ``None`` searches all and merges.
        scan : callable, optional, keyword-only
            For queries that are the rows of one expanded query (e.g.
            :meth:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor.query_vectors`): ``scan(queries, stored,
            k) -> (scores, positions, rows)`` ranks stored vectors (float32 or float16 (n, dim)) by their best
            row, as :meth:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor.scan` does. Partitions whose
            vectors lie in memory as stored (``Flat`` float32, ``SQfp16`` float16, inner product, and vectors
            pending training) are then scored by it instead of by FAISS, and each result appears once, in the
            row of ``queries`` it scored best with (other rows hold fewer than ``k``): merged per id
            (:func:`~ballistic.retrieval.search.best_per_id`) the answer is the row search's. Other partitions
            are searched row by row as without it.

        Returns
        -------
        scores : ndarray of float32, shape (nq, k)
            Inner products (higher first) or squared L2 distances (lower first);
            ``-inf`` (ip) / ``inf`` (l2) where there are fewer than k results.
        ids : ndarray of int64, shape (nq, k)
            Stable ids; -1 where there are fewer than k results.
        """
        Q = self._check_vectors(queries, "search")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        with self._lock:
            if partition is None:
                parts = list(self._parts.values())
            else:
                parts = [self._parts[partition]] if partition in self._parts else []
            res = [self._scan_part(p, Q, k, scan) if scan is not None and self._scannable(p)
                   else self._search_part(p, Q, k) for p in parts]
        return merge_topk(res, Q.shape[0], k, self.metric)

    def query(self, queries: np.ndarray, k: int, *, partition: str | None = "any",
              members: bool = False, scan=None) -> IndexSearch:
        """:meth:`search` with the state searched: an :class:`IndexSearch` (one pseudo-shard ``"index"`` at
        this snapshot; ``members``: the sorted ids of ``partition``, all when ``None``)."""
        import time
        t = time.perf_counter()
        D, I = self.search(queries, k, partition=partition, scan=scan)
        seconds = time.perf_counter() - t
        eligible = len(self) if partition is None else self.count(partition)
        return IndexSearch(D, I, None, eligible, [ShardState("index", None, self.snapshot_id, eligible, seconds)],
                           self.ids(partition) if members else None)

    def _search_part(self, part: _Partition, Q: np.ndarray, k: int):
        out = []
        if part.pending_ids.size:
            if self.metric == "ip":
                S = Q @ part.pending_vecs.T
            else:
                S = ((Q[:, None, :] - part.pending_vecs[None, :, :]) ** 2).sum(-1)
            kk = min(k, S.shape[1])
            key = -S if self.metric == "ip" else S
            o = np.argsort(key, axis=1, kind="stable")[:, :kk]
            out.append((np.take_along_axis(S, o, axis=1).astype(np.float32), part.pending_ids[o]))
        if part.index is not None and part.index.ntotal:
            kk = min(part.index.ntotal, k + int(part.tombstones.size))
            D, I = part.index.search(Q, kk)
            if part.tombstones.size:
                dead = _isin_sorted(I, part.tombstones)
                I = np.where(dead, -1, I)
            out.append((D, I))
        return merge_topk(out, Q.shape[0], k, self.metric)

    def _scannable(self, part: _Partition) -> bool:
        # Flat and SQfp16 remove ids outright (no tombstones); an index not yet trained holds its vectors pending
        return self.metric == "ip" and not part.tombstones.size and (
            part.index is None or _stored_view(part.index) is not None)

    def _scan_part(self, part: _Partition, Q: np.ndarray, k: int, scan):
        """A partition scored by ``scan`` over its stored vectors (read in place, never copied)."""
        out = []
        if part.pending_ids.size:
            s, pos, row = scan(Q, part.pending_vecs, k)
            out.append(_row_lists(s, part.pending_ids[pos], row, Q.shape[0], k))
        if part.index is not None and part.index.ntotal:
            s, pos, row = scan(Q, _stored_view(part.index), k)
            id_map = faiss.rev_swig_ptr(part.index.id_map.data(), part.index.ntotal)      # read in place
            out.append(_row_lists(s, id_map[pos], row, Q.shape[0], k))
        return merge_topk(out, Q.shape[0], k, self.metric)

    def __len__(self) -> int:
        return int(sum(p.ids.size for p in self._parts.values()))

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None,
                          k_factor: int | None = None) -> None:
        """Change the search-time settings (IVF ``nprobe``, HNSW ``efSearch``, refine ``k_factor``; None keeps
        one) of every partition now and of those made later; the stored vectors are untouched."""
        with self._lock:
            for name, v in (("nprobe", nprobe), ("ef_search", ef_search), ("k_factor", k_factor)):
                if v is not None:
                    if int(v) < 1:
                        raise ValueError(f"{name} must be >= 1, got {v}")
                    setattr(self, name, int(v))
            for p in self._parts.values():
                if p.index is not None:
                    self._tune(p.index)

    def faiss_nbytes(self) -> int:
        """Bytes of the FAISS indexes of every partition as serialised (codes, id maps, graph or lists; vectors
        still pending training not counted): divided by ``len(self)``, the memory a vector costs."""
        return int(sum(faiss.serialize_index(p.index).size for p in self._parts.values() if p.index is not None))

    def count(self, partition: str) -> int:
        """Number of live vectors in ``partition`` (0 when it does not exist)."""
        p = self._parts.get(partition)
        return 0 if p is None else int(p.ids.size)

    def partitions(self) -> list[str]:
        """Names of the partitions holding at least one vector, sorted."""
        return sorted(n for n, p in self._parts.items() if p.ids.size)

    def __contains__(self, id) -> bool:
        a = np.asarray([id], dtype=np.int64)
        return any(_isin_sorted(a, p.ids)[0] for p in self._parts.values())

    def ids(self, partition: str | None = None) -> np.ndarray:
        """Sorted live ids of one partition, or of all (``None``)."""
        if partition is not None:
            p = self._parts.get(partition)
            return np.empty(0, np.int64) if p is None else p.ids.copy()
        return np.sort(np.concatenate([p.ids for p in self._parts.values()] + [np.empty(0, np.int64)]))

    def __repr__(self) -> str:
        return (f"VectorIndex(dim={self.dim}, factory={self.factory!r}, metric={self.metric!r}, n={len(self)}, "
                f"partitions={len(self.partitions())}, snapshot_id={self.snapshot_id!r})")

    # ------------------------------------------------------------------ persistence
    def _files(self) -> tuple[dict, dict[str, bytes]]:
        files: dict[str, bytes] = {}
        parts = {}
        for i, name in enumerate(sorted(self._parts)):
            p = self._parts[name]
            if p.ids.size == 0:
                continue
            entry = {"count": int(p.ids.size)}
            if p.tombstones.size:
                files[f"p{i}.tombstones.npy"] = _npy_bytes(p.tombstones)
                entry["tombstones"] = f"p{i}.tombstones.npy"
            files[f"p{i}.ids.npy"] = _npy_bytes(p.ids)
            entry["ids"] = f"p{i}.ids.npy"
            if p.index is not None:
                files[f"p{i}.faiss"] = faiss.serialize_index(p.index).tobytes()
                entry["faiss"] = f"p{i}.faiss"
            if p.pending_ids.size:
                files[f"p{i}.pending_ids.npy"] = _npy_bytes(p.pending_ids)
                files[f"p{i}.pending_vecs.npy"] = _npy_bytes(p.pending_vecs)
                entry["pending"] = [f"p{i}.pending_ids.npy", f"p{i}.pending_vecs.npy"]
            parts[name] = entry
        if self._template is not None and self.needs_training:
            files["template.faiss"] = faiss.serialize_index(self._template).tobytes()
        for name, data in self.attachments.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("p") and name[1:2].isdigit():
                raise ValueError(f"attachment name {name!r}: use letters, digits, '_', '.', '-' and do not "
                                 "start with p<digit>")
            files["att." + name] = bytes(data)
        manifest = {
            "format": INDEX_FORMAT, "faiss_version": faiss.__version__,
            "dim": self.dim, "factory": self.factory, "metric": self.metric, "min_train": self.min_train,
            "nprobe": self.nprobe, "ef_search": self.ef_search, "k_factor": self.k_factor,
            "trained": self._template is not None, "partitions": parts,
            "attachments": sorted(self.attachments), "meta": self.meta,
            "sha256": {n: _sha256(b) for n, b in sorted(files.items())},
        }
        return manifest, files

    def save(self, directory) -> str:
        """Write an atomic snapshot under ``directory``; returns its id (a content hash).

        Layout: ``directory/snapshots/<id>/{manifest.json, p<i>.faiss, p<i>.ids.npy, ...}``
        and ``directory/CURRENT`` naming the live snapshot. Files are written to a
        temporary folder and fsynced, the folder renamed into place, then
        ``CURRENT`` replaced atomically; a crash at any point leaves the previous
        snapshot loadable. The two newest snapshots are kept.
        """
        root = Path(directory)
        with self._lock:
            manifest, files = self._files()
            body = json.dumps(manifest, sort_keys=True, indent=1).encode()
            sid = _sha256(body)[:20]
            snaps = root / "snapshots"
            snaps.mkdir(parents=True, exist_ok=True)
            final = snaps / sid
            if not (final / "manifest.json").exists():
                tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=snaps))
                try:
                    for name, data in files.items():
                        write_synced(tmp / name, data)
                    write_synced(tmp / "manifest.json", body)
                    fsync_dir(tmp)
                    if final.exists():       # a partial folder of the same content: replace it
                        shutil.rmtree(final)
                    os.rename(tmp, final)
                    fsync_dir(snaps)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            atomic_write_bytes(root / "CURRENT", (sid + "\n").encode())
            self.snapshot_id = sid
            self._prune(root, sid)
            return sid

    @staticmethod
    def _prune(root: Path, keep: str) -> None:
        snaps = root / "snapshots"
        old = sorted((p for p in snaps.iterdir() if p.is_dir() and p.name != keep),
                     key=lambda p: p.stat().st_mtime, reverse=True)
        for p in old[_KEEP_SNAPSHOTS - 1:]:
            shutil.rmtree(p, ignore_errors=True)

    @classmethod
    def load(cls, directory, *, snapshot: str | None = None) -> "VectorIndex":
        """Load the snapshot named by ``directory/CURRENT`` (or ``snapshot``), verifying checksums.

        Raises
        ------
        IndexStateError
            Missing, partial, corrupt or incompatible snapshot.
        """
        root = Path(directory)
        try:
            sid = snapshot or (root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            raise IndexStateError(f"{root}: no CURRENT file; this is not a saved VectorIndex "
                                  "(save one with VectorIndex.save or rebuild it)") from None
        sdir = root / "snapshots" / sid
        try:
            body = (sdir / "manifest.json").read_bytes()
            man = json.loads(body)
        except (OSError, ValueError) as e:
            raise IndexStateError(f"{sdir}: manifest missing or unreadable ({e}); restore the folder or rebuild "
                                  "the index from stored descriptors (VectorIndex.rebuild)") from e
        if man.get("format") != INDEX_FORMAT:
            raise IndexStateError(f"{sdir}: format {man.get('format')!r}, this code reads {INDEX_FORMAT!r}; "
                                  "rebuild the index with VectorIndex.rebuild")
        if _sha256(body)[:20] != sid:
            raise IndexStateError(f"{sdir}: manifest does not match snapshot id {sid}; the snapshot is corrupt")
        data = {}
        for name, digest in man["sha256"].items():
            try:
                b = (sdir / name).read_bytes()
            except OSError as e:
                raise IndexStateError(f"{sdir}: file {name} missing ({e}); the snapshot is incomplete") from e
            if _sha256(b) != digest:
                raise IndexStateError(f"{sdir}: checksum mismatch for {name}; the snapshot is corrupt, "
                                      "load an older one or rebuild")
            data[name] = b
        try:
            self = cls(int(man["dim"]), factory=man["factory"], metric=man["metric"], min_train=man["min_train"],
                       nprobe=man.get("nprobe"), ef_search=man.get("ef_search"), k_factor=man.get("k_factor"))
            if man["trained"] and self.needs_training:
                self._template = faiss.deserialize_index(np.frombuffer(data["template.faiss"], dtype=np.uint8))
            for name, e in man["partitions"].items():
                p = _Partition(self.dim)
                p.ids = _npy_load(data[e["ids"]]).astype(np.int64)
                if "faiss" in e:
                    p.index = faiss.deserialize_index(np.frombuffer(data[e["faiss"]], dtype=np.uint8))
                    self._tune(p.index)
                if "pending" in e:
                    p.pending_ids = _npy_load(data[e["pending"][0]]).astype(np.int64)
                    p.pending_vecs = np.ascontiguousarray(_npy_load(data[e["pending"][1]]), dtype=np.float32)
                if "tombstones" in e:
                    p.tombstones = _npy_load(data[e["tombstones"]]).astype(np.int64)
                    p.removable = False
                n_index = (p.index.ntotal if p.index is not None else 0) - p.tombstones.size
                if p.ids.size != e["count"] or n_index + p.pending_ids.size != p.ids.size:
                    raise IndexStateError(f"{sdir}: partition {name!r} holds {n_index + p.pending_ids.size} "
                                          f"vectors but lists {p.ids.size} ids; the snapshot is inconsistent")
                if p.index is not None and p.index.d != self.dim:
                    raise IndexStateError(f"{sdir}: partition {name!r} has dim {p.index.d}, manifest says {self.dim}")
                self._parts[name] = p
            self.attachments = {n: data["att." + n] for n in man.get("attachments", [])}
            self.meta = dict(man.get("meta") or {})
        except IndexStateError:
            raise
        except (KeyError, ValueError, RuntimeError) as e:
            raise IndexStateError(f"{sdir}: cannot rebuild the index from the snapshot ({e}); rebuild it from "
                                  "stored descriptors (VectorIndex.rebuild)") from e
        self.snapshot_id = sid
        return self

    @classmethod
    def rebuild(cls, dim: int, items: Iterable[tuple[int, str, np.ndarray]], *, factory: str = "Flat",
                metric: str = "ip", batch: int = 65536, **kwargs) -> "VectorIndex":
        """Build an index from stored descriptors ``(id, partition, vector)``, in batches.

        With the same items, factory and settings the result answers searches as
        an index built incrementally in that order (identically for ``Flat``).
        Extra keyword arguments go to :class:`VectorIndex`.
        """
        self = cls(dim, factory=factory, metric=metric, **kwargs)
        buf: dict[str, tuple[list, list]] = {}

        def flush(name):
            ids, vecs = buf.pop(name)
            self.add(np.asarray(ids, dtype=np.int64), np.stack(vecs), partition=name)

        for id_, part, vec in items:
            b = buf.setdefault(part, ([], []))
            b[0].append(int(id_))
            b[1].append(np.asarray(vec, dtype=np.float32))
            if len(b[0]) >= batch:
                flush(part)
        for name in list(buf):
            flush(name)
        return self
