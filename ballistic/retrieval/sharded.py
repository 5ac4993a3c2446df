"""Scale-out of candidate retrieval: a sharded FAISS index and distributed CMC re-ranking, on Ray or in-process.

The national database (the service's SQL database) is the single source of
truth. This module sees it through a :class:`RowSource`: a callable returning
the descriptor rows ``(seq, id, partition, vector)`` written after a given
``seq`` (``vector=None`` deletes the id). Everything else is derived state that
can be thrown away and rebuilt from it.

:class:`ShardedIndex` splits the vectors into shards, each a
:class:`~ballistic.retrieval.index.VectorIndex` (same factory, same metric, so scores from
different shards are comparable), either

* ``shard_by="id"``: ``n_shards`` shards by a stable hash (splitmix64) of the
  exhibit id, every query goes to every shard; or
* ``shard_by="partition"``: one shard per class partition listed in
  ``partitions`` (see :func:`~ballistic.retrieval.index.partition_key`) plus a catch-all
  shard ``"*"`` for any other; a query in one partition goes to one shard.

A query is fanned out to the shards, each returns its top ``k`` and the driver
merges them (ordering exactly as :meth:`VectorIndex.search`), so a
``"Flat"`` sharded index answers exactly as one ``VectorIndex`` over the same
vectors. Each shard keeps itself current: before answering it pulls the rows
written since its ``seq`` (``sync=True``, the default); if the shards end up at
different ``seq`` (rows arriving during the fan-out) the lagging ones are
asked again up to the highest, so one answer always reflects one database
position (:attr:`~ballistic.retrieval.index.IndexSearch.seq`).

Durability. :meth:`ShardedIndex.save` writes each shard's atomic, checksummed
snapshot (:meth:`VectorIndex.save`) with the ``seq`` it reflects under
``snapshot_root/<shard>/``. A shard that starts (or restarts) loads its
snapshot and replays the rows after that ``seq`` from the :class:`RowSource`; a
missing, corrupt or foreign snapshot is rebuilt from the rows (from seq 0).
On a multi-node cluster ``snapshot_root`` must be storage every node reads
(a shared mount), and the row source must be reachable from every node.

Re-ranking is not here: :class:`ballistic.retrieval.search.Retriever` searches this index (or a plain
:class:`VectorIndex`) and compares the shortlist on the same executor, the one search path of the library
and the service.

Executors
---------
Where the shards live is the executor's business (:mod:`ballistic.retrieval.executor`, chosen by a
setting): ``backend="local"`` (the embedded default) keeps them as objects in this process, no Ray import;
``backend="ray"`` makes them Ray actors (``max_restarts``: Ray restarts a dead shard, which reloads and
replays; calls in flight are retried), with token authentication, loopback / private addresses and no
dashboard (the executor's notes). Same code path otherwise. A shard that stays unreachable (actor dead
for good, node lost and no room to restart it, timeout after ``retries``) raises
:class:`ShardUnavailableError`: a search never returns a list silently missing a shard. Several indexes
may share one executor (``executor=``; each ``name`` keeps its shards apart); the re-ranking that follows
a search runs on the same executor in :class:`ballistic.retrieval.search.Retriever`.

Example::

    src = SQLiteRowSource("rows.sqlite")           # or the service's own RowSource over its DB
    with ShardedIndex(64, src, "state/shards", n_shards=4, backend="ray",
                      ray=RaySettings(address=None, num_cpus=4)) as idx:
        hits = idx.query(q, k=100, partition=partition_key("9mm Luger", "hemispherical"))
        idx.save()
"""
from __future__ import annotations

import hashlib
import itertools
import os
import re
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from ballistic.errors import IndexStateError, ScaleOutConfigError, ScaleOutError, ShardUnavailableError
from ballistic.retrieval.executor import Executor, RaySettings, make_executor
from ballistic.retrieval.index import IndexSearch, ShardState, VectorIndex, merge_topk

__all__ = ["Row", "RowSource", "SQLiteRowSource", "ShardMap", "ShardedIndex"]


# ---------------------------------------------------------------------------------------------------- rows
class Row(NamedTuple):
    """One descriptor row of the database: ``vector=None`` deletes ``id``; a later row for the same id
    replaces it (new vector and/or partition)."""

    seq: int
    id: int
    partition: str
    vector: np.ndarray | None


@runtime_checkable
class RowSource(Protocol):
    """The database's descriptor log as seen by the index: rows with ``seq > after_seq``, ascending seq.

    Must be picklable (it is shipped to the Ray actors, which call it on start and restart) and cheap to
    call when nothing is new (every synced search calls it once per shard). ``seq`` is a strictly
    increasing integer (e.g. an autoincrement key or a commit sequence) starting above 0.
    Optional ``upto`` bounds the answer to ``seq <= upto``.
    """

    def __call__(self, after_seq: int, upto: int | None = None) -> Iterable[Row | tuple]:
        ...


class SQLiteRowSource:
    """A :class:`RowSource` over an append-only SQLite table (embedded deployments, tests, benchmarks).

    Table ``name(seq INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER, partition TEXT, dim INTEGER,
    vector BLOB NULL)``, WAL journal. The service's database implements the same protocol over its
    own tables. Holds only the path, so it pickles to other processes and nodes (which must see the
    same file).
    """

    def __init__(self, path, *, table: str = "descriptor_rows") -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise ValueError(f"table name {table!r}: letters, digits and '_' only")
        self.path = str(path)
        self.table = table
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                        "id INTEGER NOT NULL, partition TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30.0)

    def append(self, ids, vectors, *, partition: str | Sequence[str] = "any") -> int:
        """Append rows (``vectors`` (n, dim), or ``None`` for deletions); returns the last seq."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        parts = [partition] * ids.size if isinstance(partition, str) else list(partition)
        if len(parts) != ids.size:
            raise ValueError(f"{len(parts)} partitions for {ids.size} ids")
        if vectors is None:
            recs = [(int(i), p, 0, None) for i, p in zip(ids, parts)]
        else:
            V = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
            if V.shape[0] != ids.size:
                raise ValueError(f"{V.shape[0]} vectors for {ids.size} ids")
            recs = [(int(i), p, V.shape[1], V[j].tobytes()) for j, (i, p) in enumerate(zip(ids, parts))]
        with self._connect() as con:
            con.executemany(f"INSERT INTO {self.table} (id, partition, dim, vector) VALUES (?, ?, ?, ?)", recs)
            return int(con.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.table}").fetchone()[0])

    def delete(self, ids, *, partition: str = "any") -> int:
        """Append deletion rows for ``ids``; returns the last seq."""
        return self.append(ids, None, partition=partition)

    def head(self) -> int:
        """Highest seq written (0 when empty)."""
        with self._connect() as con:
            return int(con.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {self.table}").fetchone()[0])

    def __call__(self, after_seq: int, upto: int | None = None) -> list[Row]:
        q = f"SELECT seq, id, partition, dim, vector FROM {self.table} WHERE seq > ?"
        args: list = [int(after_seq)]
        if upto is not None:
            q += " AND seq <= ?"
            args.append(int(upto))
        with self._connect() as con:
            rows = con.execute(q + " ORDER BY seq", args).fetchall()
        return [Row(int(s), int(i), p, None if v is None else np.frombuffer(v, dtype=np.float32, count=d))
                for s, i, p, d, v in rows]

    def __repr__(self) -> str:
        return f"SQLiteRowSource({self.path!r}, table={self.table!r})"


def _as_row(r) -> Row:
    seq, id_, part, vec = r
    if not isinstance(part, str) or not part:
        raise ValueError(f"row seq={seq}: partition must be a non-empty string, got {part!r}")
    return Row(int(seq), int(id_), part, None if vec is None else np.asarray(vec, dtype=np.float32))


def _accepts_upto(source) -> bool:
    import inspect
    try:
        sig = inspect.signature(source)
    except (TypeError, ValueError):
        return False
    ps = list(sig.parameters.values())
    return any(p.kind == p.VAR_POSITIONAL for p in ps) or \
        sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in ps) >= 2


def _read_rows(source: RowSource, after: int, upto: int | None) -> list[Row]:
    raw = source(after, upto) if upto is not None and _accepts_upto(source) else source(after)
    rows = [_as_row(r) for r in raw]
    prev = after
    for r in rows:
        if r.seq <= prev:
            raise ScaleOutError(f"row source returned seq {r.seq} after {prev}: rows must come in strictly "
                                "increasing seq, all above the asked seq")
        prev = r.seq
    if upto is not None:
        rows = [r for r in rows if r.seq <= upto]
    return rows


# ---------------------------------------------------------------------------------------------------- shard map
def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class ShardMap:
    """Which shard holds a vector: by a stable hash of its id, or by its partition.

    ``by="id"``: shards ``"h0of4"``..``"h3of4"``; ``by="partition"``: one shard per name in
    ``partitions`` (named after it) and ``"*"`` for every other partition.
    """

    by: str = "id"
    n_shards: int = 2
    partitions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.by not in ("id", "partition"):
            raise ScaleOutConfigError(f"shard_by must be 'id' or 'partition', got {self.by!r}")
        if self.by == "id" and not (isinstance(self.n_shards, (int, np.integer)) and self.n_shards >= 1):
            raise ScaleOutConfigError(f"n_shards must be a positive integer, got {self.n_shards!r}")
        if self.by == "partition" and (len(set(self.partitions)) != len(self.partitions) or "*" in self.partitions):
            raise ScaleOutConfigError("partitions must be distinct partition keys (and not '*')")
        object.__setattr__(self, "partitions", tuple(self.partitions))

    @property
    def names(self) -> list[str]:
        if self.by == "id":
            return [f"h{i}of{self.n_shards}" for i in range(self.n_shards)]
        return list(self.partitions) + ["*"]

    def shard_of(self, ids, partitions) -> list[str]:
        """Shard names of ``ids`` (int array) in ``partitions`` (one string per id)."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if self.by == "id":
            h = (_splitmix64(ids) % np.uint64(self.n_shards)).astype(np.int64)
            names = self.names
            return [names[i] for i in h]
        known = set(self.partitions)
        return [p if p in known else "*" for p in partitions]

    def shards_for(self, partition: str | None) -> list[str]:
        """Shards a search of ``partition`` (``None`` = all) must ask."""
        if self.by == "id" or partition is None:
            return self.names
        return [partition if partition in self.partitions else "*"]

    def as_dict(self) -> dict:
        return {"by": self.by, "n_shards": int(self.n_shards) if self.by == "id" else len(self.names),
                "partitions": list(self.partitions)}


def _safe_dirname(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "shard"
    return f"{s[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------------- one shard
class _Shard:
    """One shard: a VectorIndex kept current from the row source, snapshotted under its own folder.

    The same class runs in-process (local backend) and as a Ray actor (its constructor is what Ray
    re-runs when it restarts the actor: load the snapshot, replay newer rows).
    """

    def __init__(self, name: str, shard_map: ShardMap, row_source: RowSource, snapshot_dir: str | None, dim: int,
                 index_kwargs: dict) -> None:
        self.name = name
        self.shard_map = shard_map
        self.row_source = row_source
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.dim = int(dim)
        self.index_kwargs = dict(index_kwargs)
        self.started = time.time()
        self.pid = os.getpid()
        self.loaded_snapshot: str | None = None
        self.snapshot_error: str | None = None
        self.base_snapshot: str | None = None
        self.seq = 0
        self.replayed = 0
        self._lock = threading.RLock()
        self.index = self._load()
        self.replayed = self.sync()

    # ------------------------------------------------------------------ state
    def _fresh(self) -> VectorIndex:
        return VectorIndex(self.dim, **self.index_kwargs)

    def _load(self) -> VectorIndex:
        if self.snapshot_dir is None or not (self.snapshot_dir / "CURRENT").exists():
            return self._fresh()
        try:
            idx = VectorIndex.load(self.snapshot_dir)
            m = idx.meta
            want = {"shard": self.name, "shard_map": self.shard_map.as_dict()}
            got = {"shard": m.get("shard"), "shard_map": m.get("shard_map")}
            if got != want or idx.dim != self.dim or idx.factory != self.index_kwargs.get("factory", "Flat") \
                    or idx.metric != self.index_kwargs.get("metric", "ip"):
                raise IndexStateError(f"snapshot is of {got}, dim {idx.dim}, factory {idx.factory!r}, metric "
                                      f"{idx.metric!r}; this shard is {want}")
            self.seq = int(m["seq"])
        except (IndexStateError, KeyError, ValueError, TypeError) as e:
            # the database is the source of truth: rebuild from all rows
            self.snapshot_error = f"{type(e).__name__}: {e}"
            self.seq = 0
            return self._fresh()
        self.loaded_snapshot = self.base_snapshot = idx.snapshot_id
        return idx

    def sync(self, upto: int | None = None) -> int:
        """Apply rows written after ``self.seq`` (up to ``upto``); returns how many rows were read."""
        with self._lock:
            if upto is not None and upto <= self.seq:
                return 0
            rows = _read_rows(self.row_source, self.seq, upto)
            if not rows:
                return 0
            ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
            owner = self.shard_map.shard_of(ids, [r.partition for r in rows])
            final: dict[int, Row | None] = {}
            for r, o in zip(rows, owner):            # last write wins, in seq order
                final[r.id] = r if (o == self.name and r.vector is not None) else None
            touched = np.fromiter(final, dtype=np.int64, count=len(final))
            present = touched[np.isin(touched, self.index.ids(), assume_unique=True)]
            if present.size:
                self.index.remove(present)
            by_part: dict[str, tuple[list, list]] = {}
            for i, r in final.items():
                if r is not None:
                    if r.vector.shape != (self.dim,):
                        raise ScaleOutError(f"row seq={r.seq} id={i}: vector of shape {r.vector.shape}, the index "
                                            f"dimension is {self.dim}")
                    b = by_part.setdefault(r.partition, ([], []))
                    b[0].append(i)
                    b[1].append(r.vector)
            for part, (pid, vecs) in by_part.items():
                self.index.add(np.asarray(pid, dtype=np.int64), np.stack(vecs), partition=part)
            self.seq = rows[-1].seq
            return len(rows)

    # ------------------------------------------------------------------ calls
    def search(self, queries: np.ndarray, k: int, partition: str | None, sync: bool, upto: int | None,
               members: bool = False, scan=None) -> dict:
        with self._lock:
            if sync or upto is not None:
                self.sync(upto)
            t = time.perf_counter()
            D, I = self.index.search(queries, k, partition=partition, scan=scan)
            seconds = time.perf_counter() - t
            eligible = len(self.index) if partition is None else self.index.count(partition)
            return {"shard": self.name, "scores": D, "ids": I, "eligible": int(eligible), "seq": self.seq,
                    "snapshot": self.base_snapshot, "seconds": seconds,
                    "members": self.index.ids(partition) if members else None}

    def ids(self, partition: str | None) -> np.ndarray:
        with self._lock:
            return self.index.ids(partition)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {p: self.index.count(p) for p in self.index.partitions()}

    def save(self) -> dict:
        if self.snapshot_dir is None:
            raise ScaleOutConfigError("this index has no snapshot_root; give one to save snapshots")
        with self._lock:
            self.index.meta.update({"shard": self.name, "shard_map": self.shard_map.as_dict(), "seq": self.seq})
            sid = self.index.save(self.snapshot_dir)
            self.base_snapshot = sid
            return self.state()

    def state(self) -> dict:
        with self._lock:
            return {"shard": self.name, "seq": self.seq, "snapshot": self.base_snapshot, "n": len(self.index)}

    def info(self) -> dict:
        """State plus where and how this shard (re)started."""
        node = None
        ray = sys.modules.get("ray")             # only meaningful inside a Ray actor: never import Ray here
        try:
            if ray is not None and ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except Exception:                       # noqa: BLE001 - informational only
            node = None
        with self._lock:
            return {**self.state(), "pid": self.pid, "node_id": node, "started": self.started,
                    "loaded_snapshot": self.loaded_snapshot, "snapshot_error": self.snapshot_error,
                    "replayed_on_start": self.replayed, "partitions": self.index.partitions(),
                    "index_bytes": _index_bytes(self.index)}

    def ping(self) -> str:
        return self.name


def _index_bytes(idx: VectorIndex) -> int:
    """Bytes of the serialised FAISS indexes (+ pending buffers): the memory the vectors take."""
    import faiss
    n = 0
    for p in idx._parts.values():                # noqa: SLF001 - same package
        if p.index is not None:
            n += int(faiss.serialize_index(p.index).size)
        n += int(p.pending_vecs.nbytes + p.pending_ids.nbytes + p.ids.nbytes)
    return n


# ---------------------------------------------------------------------------------------------------- the index
_INDEX_NAMES = itertools.count(1)


class ShardedIndex:
    """A :class:`~ballistic.retrieval.index.VectorIndex` split into shards, kept current from a :class:`RowSource`.

    Parameters
    ----------
    dim : int
        Vector length.
    row_source : RowSource
        The database's descriptor rows (picklable for ``backend="ray"``).
    snapshot_root : path or None
        Folder of the shards' snapshots (``None``: no snapshots, every start replays all rows).
    shard_by : {"id", "partition"}, keyword-only
        See :class:`ShardMap`.
    n_shards : int, keyword-only
        Shards for ``shard_by="id"``.
    partitions : sequence of str, keyword-only
        Partitions with a shard of their own for ``shard_by="partition"``.
    factory, metric : keyword-only
        As :class:`VectorIndex` (the same for every shard, so scores merge); ``index_kwargs`` more.
    executor : Executor, optional, keyword-only
        Where the shards live (:mod:`ballistic.retrieval.executor`), shared with other indexes and with the
        :class:`~ballistic.retrieval.search.Retriever` that re-ranks; closing the index then stops only its
        own shards. Default: one made from ``backend`` / ``ray_address`` / ``ray``, closed with the index.
    backend : {"local", "ray"}, keyword-only
        Executor to make when none is given: in-process (default, no Ray import) or Ray.
    ray_address : str, optional, keyword-only
        Shorthand for ``RaySettings(address=...)``.
    ray : RaySettings, optional, keyword-only
    name : str, optional, keyword-only
        Keeps this index's shards apart from other indexes' on a shared executor (default: a counter).
    """

    def __init__(self, dim: int, row_source: RowSource, snapshot_root=None, *, shard_by: str = "id",
                 n_shards: int = 2, partitions: Sequence[str] = (), factory: str = "Flat", metric: str = "ip",
                 index_kwargs: dict | None = None, executor: Executor | None = None, backend: str = "local",
                 ray_address: str | None = None, ray: RaySettings | None = None, name: str | None = None) -> None:
        if not callable(row_source):
            raise ScaleOutConfigError("row_source must be callable: row_source(after_seq) -> rows")
        VectorIndex(dim, factory=factory, metric=metric, **(index_kwargs or {}))     # validate settings early
        self.dim = int(dim)
        self.metric = metric
        self.shard_map = ShardMap(shard_by, int(n_shards), tuple(partitions))
        self.row_source = row_source
        self.snapshot_root = None if snapshot_root is None else Path(snapshot_root)
        self._index_kwargs = {"factory": factory, "metric": metric, **(index_kwargs or {})}
        self.name = name or f"index{next(_INDEX_NAMES)}"
        if executor is not None:
            if backend != "local" or ray_address is not None or ray is not None:
                raise ScaleOutConfigError("give either an executor or backend / ray settings, not both")
            self._ex, self._own_executor = executor, False
        else:
            self._ex, self._own_executor = make_executor(backend, ray=ray, address=ray_address), True
        self._keys = {n: f"{self.name}:{n}" for n in self.shard_map.names}
        try:
            for n, key in self._keys.items():
                sdir = None if self.snapshot_root is None else str(self.snapshot_root / _safe_dirname(n))
                self._ex.start(key, _Shard, (n, self.shard_map, row_source, sdir, self.dim, self._index_kwargs))
            self._call({n: ("ping", ()) for n in self.shard_map.names})      # wait until every shard is up
        except BaseException:
            self.close()
            raise

    def _call(self, calls: dict[str, tuple[str, tuple]]) -> dict:
        out = self._ex.call({self._keys[n]: c for n, c in calls.items()})
        return {k.rsplit(":", 1)[-1]: v for k, v in out.items()}

    @property
    def backend(self) -> str:
        return self._ex.backend

    @property
    def executor(self) -> Executor:
        return self._ex

    @property
    def shard_names(self) -> list[str]:
        return self.shard_map.names

    # ------------------------------------------------------------------ search
    def query(self, queries, k: int, *, partition: str | None = "any", sync: bool = True,
              members: bool = False, scan=None) -> IndexSearch:
        """Fan the queries out to the shards holding ``partition`` (``None``: all partitions), merge top ``k``.

        With ``sync`` (default) each shard first applies the rows written since it last looked, and the
        answer reflects one database position for all shards. With ``members`` the answer carries the
        sorted ids present in the searched partition(s) at that position (:attr:`IndexSearch.members`).
        ``scan`` is passed to every shard's :meth:`VectorIndex.search` (it must pickle for the Ray backend).

        Raises
        ------
        ShardUnavailableError
            A shard did not answer after the configured retries.
        """
        Q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {np.shape(queries)}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        names = self.shard_map.shards_for(partition)
        res = self._call({n: ("search", (Q, int(k), partition, sync, None, members, scan)) for n in names})
        if sync:
            top = max(r["seq"] for r in res.values())
            lag = [n for n, r in res.items() if r["seq"] < top]
            if lag:        # rows arrived during the fan-out: bring the lagging shards to the same position
                res.update(self._call({n: ("search", (Q, int(k), partition, False, top, members, scan))
                                       for n in lag}))
        seqs = {r["seq"] for r in res.values()}
        D, I = merge_topk([(res[n]["scores"], res[n]["ids"]) for n in names], Q.shape[0], int(k), self.metric)
        states = [ShardState(n, int(res[n]["seq"]), res[n]["snapshot"], int(res[n]["eligible"]),
                             float(res[n]["seconds"])) for n in names]
        mem = np.sort(np.concatenate([res[n]["members"] for n in names])) if members else None
        return IndexSearch(D, I, max(seqs) if sync else min(seqs), sum(s.eligible for s in states), states, mem)

    def search(self, queries, k: int, *, partition: str | None = "any", sync: bool = True):
        """As :meth:`VectorIndex.search`: ``(scores, ids)``, merged over the shards (see :meth:`query`)."""
        r = self.query(queries, k, partition=partition, sync=sync)
        return r.scores, r.ids

    # ------------------------------------------------------------------ maintenance
    def sync(self) -> int:
        """Bring every shard to the database head; returns the seq reached."""
        self._call({n: ("sync", ()) for n in self.shard_names})
        return max(s["seq"] for s in self.state().values())

    def save(self) -> dict[str, dict]:
        """Snapshot every shard (atomic, checksummed); returns ``{shard: {seq, snapshot, n}}``."""
        return self._call({n: ("save", ()) for n in self.shard_names})

    def state(self) -> dict[str, dict]:
        """``{shard: {seq, snapshot, n}}``."""
        return self._call({n: ("state", ()) for n in self.shard_names})

    def info(self) -> dict[str, dict]:
        """:meth:`state` plus process, Ray node, restart details and index bytes of every shard."""
        return self._call({n: ("info", ()) for n in self.shard_names})

    def ids(self, partition: str | None = None) -> np.ndarray:
        """Sorted ids held now (no sync) in ``partition``, all when ``None``."""
        names = self.shard_map.shards_for(partition)
        res = self._call({n: ("ids", (partition,)) for n in names})
        return np.sort(np.concatenate([res[n] for n in names] + [np.empty(0, np.int64)]))

    def counts(self) -> dict[str, int]:
        """Vectors per partition held now (no sync), over every shard."""
        out: dict[str, int] = {}
        for c in self._call({n: ("counts", ()) for n in self.shard_names}).values():
            for p, v in c.items():
                out[p] = out.get(p, 0) + int(v)
        return out

    def restart_shard(self, name: str) -> None:
        """Kill one shard's in-memory state; it comes back from its snapshot plus replayed rows.

        Ray: the actor is killed and Ray restarts it (counts against ``max_restarts``). Local: rebuilt now.
        """
        if name not in self.shard_names:
            raise KeyError(f"no shard {name!r}; shards are {self.shard_names}")
        self._ex.restart(self._keys[name])

    def __len__(self) -> int:
        return int(sum(s["n"] for s in self.state().values()))

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the shards (and the executor, when this index made it)."""
        if self._own_executor:
            self._ex.close()
        else:
            self._ex.stop(list(self._keys.values()))

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedIndex(dim={self.dim}, backend={self.backend!r}, shards={self.shard_names}, "
                f"factory={self._index_kwargs['factory']!r}, metric={self.metric!r})")
