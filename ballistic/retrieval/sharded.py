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
position (:attr:`ShardedSearch.seq`).

Durability. :meth:`ShardedIndex.save` writes each shard's atomic, checksummed
snapshot (:meth:`VectorIndex.save`) with the ``seq`` it reflects under
``snapshot_root/<shard>/``. A shard that starts (or restarts) loads its
snapshot and replays the rows after that ``seq`` from the :class:`RowSource`; a
missing, corrupt or foreign snapshot is rebuilt from the rows (from seq 0).
On a multi-node cluster ``snapshot_root`` must be storage every node reads
(a shared mount), and the row source must be reachable from every node.

Re-ranking. :meth:`ShardedIndex.rerank` compares a query with candidates by
:func:`ballistic.cartridge.cmc.pair.compare_pair` (numba, one core a pair) in batches:
Ray tasks on the cluster's workers, or processes / this process locally.

Backends: one class, two executors
----------------------------------
``backend="local"`` (the embedded default): shards are objects in this process,
re-ranking runs here (``workers=1``) or in a local process pool. Nothing to set
up, no Ray import. ``backend="ray"``: shards are Ray actors (``max_restarts``:
Ray restarts a dead shard, which reloads and replays; calls in flight are
retried, ``max_task_retries``), re-ranking batches are Ray tasks (retried,
``task_retries``). Same code path otherwise. A shard that stays unreachable
(actor dead for good, node lost and no room to restart it, timeout after
``retries``) raises :class:`ShardUnavailableError`: a search never returns a
list silently missing a shard.

Ray security (settings in :class:`RaySettings`)
-----------------------------------------------
Ray runs arbitrary code for anyone who can reach its ports, so:

* **token authentication** is always on. Ray 2.60 implements it natively
  (``RAY_AUTH_MODE=token``: every gRPC/HTTP request between Ray processes and
  drivers carries the shared token, requests without it are refused). This
  module sets ``RAY_AUTH_MODE=token`` and the token in this process's
  environment (inherited by the Ray processes it starts) before Ray starts:
  the token is ``RaySettings.auth_token``, else the file
  ``RaySettings.auth_token_path`` (``RAY_AUTH_TOKEN_PATH``), else an existing
  ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` in the environment, else Ray's
  default file ``~/.ray/auth_token``; an embedded cluster with none of these
  gets a fresh random 256-bit token that lives only in the process environment
  (never written to disk).
  Connecting to an existing cluster (``ray_address``) without a token is
  refused (:class:`ScaleOutConfigError`). Nodes of a cluster must be started
  with the same ``RAY_AUTH_MODE=token`` and token, e.g.
  ``RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/ballistic/ray_token ray start
  --head --node-ip-address=10.0.0.5 --include-dashboard=false`` (token file
  readable by the service user only); :func:`secure_ray_env` sets them for
  processes started from Python (``ray.cluster_utils.Cluster`` in the tests);
* **no dashboard** (``include_dashboard=False``; it is an unauthenticated-by-
  default HTTP job API in older Ray versions and is not needed here);
* **loopback binding**: the embedded cluster's node address is ``127.0.0.1``
  (``RaySettings.node_ip``), so GCS, raylets, object managers and workers
  listen on loopback only. Ray resolves ``127.0.0.1`` in a bootstrap address to
  the host's outward IP unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which
  this module sets for loopback use (it only changes how Ray picks the local
  node IP). For a real multi-node cluster set ``node_ip`` / ``ray start
  --node-ip-address`` to the private interface of each node and firewall the
  Ray ports to the cluster's own addresses;
* usage statistics off (``RAY_USAGE_STATS_ENABLED=0``).

Example::

    src = SQLiteRowSource("rows.sqlite")           # or the service's own RowSource over its DB
    with ShardedIndex(64, src, "state/shards", n_shards=4, backend="ray",
                      ray=RaySettings(address=None, num_cpus=4)) as idx:
        hits = idx.query(q, k=100, partition=partition_key("9mm Luger", "hemispherical"))
        ranked = idx.rerank(query_surface, hits.ids[0][:10], fetch)
        idx.save()
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from ballistic.errors import IndexStateError, RerankError, ScaleOutConfigError, ScaleOutError, ShardUnavailableError
from ballistic.retrieval.index import VectorIndex, merge_topk

__all__ = [
    "Row", "RowSource", "SQLiteRowSource",
    "ShardMap", "ShardedIndex", "ShardedSearch", "ShardState", "RerankHit",
    "RaySettings", "secure_ray_env", "loopback_node_args",
]


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
    def search(self, queries: np.ndarray, k: int, partition: str | None, sync: bool, upto: int | None) -> dict:
        with self._lock:
            if sync or upto is not None:
                self.sync(upto)
            t = time.perf_counter()
            D, I = self.index.search(queries, k, partition=partition)
            seconds = time.perf_counter() - t
            eligible = len(self.index) if partition is None else self.index.count(partition)
            return {"shard": self.name, "scores": D, "ids": I, "eligible": int(eligible), "seq": self.seq,
                    "snapshot": self.base_snapshot, "seconds": seconds}

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
        try:                                     # only meaningful inside a Ray actor
            import ray
            if ray.is_initialized():
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


# ---------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ShardState:
    """Position of one shard when it answered: database ``seq`` and the snapshot it was built on; how many
    vectors were eligible there and how long its search took."""

    shard: str
    seq: int
    snapshot: str | None
    eligible: int
    seconds: float = 0.0         # FAISS search time inside the shard (not part of the state)


@dataclass
class ShardedSearch:
    """Merged answer of a sharded search.

    ``scores``/``ids`` as :meth:`VectorIndex.search`. ``seq``: the database position every shard
    answered at. ``eligible``: vectors in the searched partition(s), all shards. ``state_id``: hash of
    (shard, snapshot, seq) for every shard asked, the index state to record with the search.
    """

    scores: np.ndarray
    ids: np.ndarray
    seq: int
    eligible: int
    shards: list[ShardState]

    @property
    def state_id(self) -> str:
        body = json.dumps([[s.shard, s.snapshot, s.seq] for s in sorted(self.shards, key=lambda s: s.shard)],
                          separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class RerankHit:
    """One re-ranked candidate: CMC similarity and count of :func:`~ballistic.cartridge.cmc.pair.compare_pair`."""

    id: int
    similarity: float
    cmc_count: int
    identification: bool
    summary: dict = field(repr=False, compare=False)


# ---------------------------------------------------------------------------------------------------- re-rank work
def _rerank_items(query, items: list[tuple[int, Any]], fetch, params) -> list[tuple]:
    """Compare ``query`` with each ``(id, surface-or-None)``; ``None`` means ``fetch(id)``."""
    from ballistic.cartridge.cmc.pair import compare_pair
    out = []
    for cid, surf in items:
        cand = fetch(cid) if surf is None else surf
        r = compare_pair(query, cand, params)
        out.append((int(cid), float(r.similarity), int(r.cmc_count), bool(r.identification), r.summary()))
    return out


def _rerank_task(query, items, fetch, params):
    """Ray task body: candidate surfaces given as object refs are fetched from the object store here."""
    import ray
    refs = [s for _, s in items if s is not None]
    got = iter(ray.get(refs)) if refs else iter(())
    items = [(cid, None if s is None else next(got)) for cid, s in items]
    return _rerank_items(query, items, fetch, params)


_POOL: dict = {}


def _pool_init(query, fetch, params):
    _POOL.update(query=query, fetch=fetch, params=params)


def _pool_batch(items):
    return _rerank_items(_POOL["query"], items, _POOL["fetch"], _POOL["params"])


# ---------------------------------------------------------------------------------------------------- Ray settings
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class RaySettings:
    """How to reach (or start) Ray, and the fault-tolerance knobs. See the module docstring.

    address : ``None`` starts an embedded single-node Ray bound to ``node_ip`` (loopback), always a new one
        (never one found running on the machine); else the GCS address ``host:port`` of a running cluster
        (started with token auth).
    auth_token, auth_token_path : the cluster's token (else ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``;
        an embedded cluster gets a random one when none is given).
    num_cpus, object_store_memory : size of the embedded cluster.
    node_ip : address the embedded node binds to (loopback by default).
    max_restarts : Ray restarts of a dead shard actor (each reloads its snapshot and replays rows).
    max_task_retries : retries of a shard call in flight when its actor died.
    task_retries : retries of a re-ranking batch whose worker or node died.
    call_timeout_s : one shard call; ``retries`` more attempts (with ``retry_wait_s`` pauses) after a timeout
        or an actor that is restarting, then :class:`ShardUnavailableError`.
    actor_options : extra ``.options(...)`` for the shard actors (``resources``, ``num_cpus``,
        ``scheduling_strategy``...). Defaults: ``num_cpus=0`` (a shard holds memory, it does not compute),
        ``scheduling_strategy="SPREAD"``.
    """

    address: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    auth_token_path: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    node_ip: str = "127.0.0.1"
    namespace: str = "ballistic"
    max_restarts: int = 3
    max_task_retries: int = 3
    task_retries: int = 3
    call_timeout_s: float = 60.0
    retries: int = 2
    retry_wait_s: float = 1.0
    actor_options: dict = field(default_factory=dict)


def _refresh_ray_auth_config() -> None:
    """Make an already imported Ray see the auth env vars we just set (Ray caches its config)."""
    import sys
    if "ray" not in sys.modules:
        return
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _default_token_file() -> bool:
    """Ray's own default token file (``ray get-auth-token --generate`` writes it)."""
    return (Path.home() / ".ray" / "auth_token").is_file()


def secure_ray_env(token: str | None = None, *, token_path: str | None = None, loopback: bool = True) -> dict:
    """Set this process's environment for a token-authenticated Ray (inherited by Ray processes it starts).

    Sets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` (``token``; else ``RAY_AUTH_TOKEN_PATH``=
    ``token_path``; else keeps an existing ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``; else a new random
    token), ``RAY_USAGE_STATS_ENABLED=0`` and, with ``loopback``, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (Ray then takes 127.0.0.1 as this node's address instead of resolving the outward IP).

    Returns the variables set (the token itself is not included).
    """
    env = os.environ
    out = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    if token is not None:
        if len(token) < 32:
            raise ScaleOutConfigError("Ray auth token too short: use at least 32 random characters")
        env["RAY_AUTH_TOKEN"] = token
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    elif token_path is not None:
        if not Path(token_path).is_file():
            raise ScaleOutConfigError(f"Ray auth token file {token_path} does not exist")
        env.pop("RAY_AUTH_TOKEN", None)
        env["RAY_AUTH_TOKEN_PATH"] = out["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    elif not env.get("RAY_AUTH_TOKEN") and not env.get("RAY_AUTH_TOKEN_PATH") and not _default_token_file():
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if loopback:
        out["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.update(out)
    import sys
    if loopback and "ray" in sys.modules:
        # ray_constants read the variable at import; a Ray imported earlier needs the same value here
        import ray._private.ray_constants as rc
        rc.ENABLE_RAY_CLUSTER = False
    _refresh_ray_auth_config()
    return out


def loopback_node_args(**kwargs) -> dict:
    """Arguments for ``ray.cluster_utils.Cluster`` nodes (``head_node_args`` / ``add_node``) bound to loopback,
    without dashboard; call :func:`secure_ray_env` first so the nodes start with token auth."""
    return {"node_ip_address": "127.0.0.1", "include_dashboard": False, **kwargs}


def _ray_or_fail():
    try:
        import ray
    except ImportError as e:
        raise ScaleOutConfigError("backend='ray' needs Ray: pip install 'ballistic[scale]'") from e
    return ray


# ---------------------------------------------------------------------------------------------------- executors
class _LocalExecutor:
    """Shards as objects in this process; re-ranking here or in a local process pool."""

    backend = "local"

    def __init__(self) -> None:
        self.shards: dict[str, _Shard] = {}
        self._args: dict[str, tuple] = {}

    def start(self, name: str, args: tuple) -> None:
        self._args[name] = args
        self.shards[name] = _Shard(*args)

    def restart(self, name: str) -> None:
        """Drop the shard's memory and start it again (snapshot + replay), as a restarted actor would."""
        self.shards[name] = _Shard(*self._args[name])

    def call(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        return {n: getattr(self.shards[n], m)(*a) for n, (m, a) in calls.items()}

    def rerank(self, query, items, fetch, params, workers: int, batch: int) -> list[tuple]:
        if workers <= 1 or len(items) <= batch:
            return _rerank_items(query, items, fetch, params)
        chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_init,
                                 initargs=(query, fetch, params)) as ex:
            return [x for part in ex.map(_pool_batch, chunks) for x in part]

    def close(self) -> None:
        self.shards.clear()


class _RayExecutor:
    """Shards as Ray actors (restartable), re-ranking batches as Ray tasks (retried)."""

    backend = "ray"

    def __init__(self, settings: RaySettings) -> None:
        self.s = settings
        ray = _ray_or_fail()
        self._started_ray = False
        self._connect(ray)
        self.ray = ray
        opts = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **settings.actor_options,
                "max_restarts": int(settings.max_restarts), "max_task_retries": int(settings.max_task_retries)}
        self._actor_cls = ray.remote(_Shard).options(**opts)
        self._task = ray.remote(_rerank_task).options(num_cpus=1, max_retries=int(settings.task_retries))
        self.handles: dict[str, Any] = {}

    def _connect(self, ray) -> None:
        s = self.s
        loop = s.address is None and s.node_ip in _LOOPBACK or \
            s.address is not None and s.address.rsplit(":", 1)[0].strip("[]") in _LOOPBACK
        have = s.auth_token or s.auth_token_path or os.environ.get("RAY_AUTH_TOKEN") \
            or os.environ.get("RAY_AUTH_TOKEN_PATH") or _default_token_file()
        if s.address is not None and not have:
            raise ScaleOutConfigError(
                f"refusing to connect to Ray at {s.address} without token authentication: give "
                "RaySettings.auth_token / auth_token_path or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH (the "
                "cluster must run with RAY_AUTH_MODE=token)")
        secure_ray_env(s.auth_token, token_path=s.auth_token_path, loopback=loop)
        from ray._raylet import AuthenticationMode, get_authentication_mode
        if get_authentication_mode() != AuthenticationMode.TOKEN:
            raise ScaleOutConfigError("Ray token authentication could not be enabled (RAY_AUTH_MODE=token "
                                      "was not taken); refusing to start Ray without it")
        if ray.is_initialized():
            return                               # the caller's connection (it must use the same settings)
        kw: dict = {"namespace": s.namespace, "log_to_driver": False, "configure_logging": False}
        if s.address is None:
            # "local" always starts a new private instance; None would attach to any Ray found running on
            # this machine (RAY_ADDRESS, /tmp/ray/ray_current_cluster, a gcs_server process): another user's
            kw.update(address="local", include_dashboard=False, num_cpus=s.num_cpus,
                      object_store_memory=s.object_store_memory)
            if s.node_ip not in _LOOPBACK:
                kw["_node_ip_address"] = s.node_ip
        else:
            kw["address"] = s.address
        ray.init(**kw)
        self._started_ray = True

    def start(self, name: str, args: tuple) -> None:
        self.handles[name] = self._actor_cls.remote(*args)

    def restart(self, name: str) -> None:
        """Kill the shard actor and let Ray restart it (reload snapshot + replay), as after a crash."""
        self.ray.kill(self.handles[name], no_restart=False)

    def call(self, calls: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
        ray = self.ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayTaskError
        pending = {n: getattr(self.handles[n], m).remote(*a) for n, (m, a) in calls.items()}
        out: dict[str, Any] = {}
        attempt: dict[str, int] = {n: 0 for n in calls}
        while pending:
            for name, ref in list(pending.items()):
                try:
                    out[name] = ray.get(ref, timeout=self.s.call_timeout_s)
                    del pending[name]
                    continue
                except RayTaskError as e:        # the shard's own code raised: surface that exception
                    raise e.as_instanceof_cause() from None
                except ActorDiedError as e:      # restarts used up, or unschedulable: for good
                    raise ShardUnavailableError(name, f"actor died and will not restart ({_short(e)})") from e
                except (RayActorError, GetTimeoutError) as e:
                    attempt[name] += 1
                    if attempt[name] > self.s.retries:
                        raise ShardUnavailableError(
                            name, f"no answer after {attempt[name]} attempts of {self.s.call_timeout_s:g} s "
                                  f"({type(e).__name__}: {_short(e)})") from e
                    if isinstance(e, GetTimeoutError):
                        ray.cancel(ref, force=False)
                    time.sleep(self.s.retry_wait_s)
                    m, a = calls[name]
                    pending[name] = getattr(self.handles[name], m).remote(*a)
        return out

    def rerank(self, query, items, fetch, params, workers: int, batch: int) -> list[tuple]:
        ray = self.ray
        from ray.exceptions import RayTaskError
        qref = ray.put(query)
        items = [(cid, None if s is None else ray.put(s)) for cid, s in items]
        chunks = [items[i:i + batch] for i in range(0, len(items), batch)]
        results: dict[int, list] = {}
        inflight: dict[Any, int] = {}
        nxt = 0
        while nxt < len(chunks) or inflight:
            while nxt < len(chunks) and len(inflight) < max(1, workers):
                inflight[self._task.remote(qref, chunks[nxt], fetch, params)] = nxt
                nxt += 1
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                j = inflight.pop(ref)
                try:
                    results[j] = ray.get(ref)
                except RayTaskError as e:
                    raise e.as_instanceof_cause() from None
                except ray.exceptions.RayError as e:
                    raise RerankError(f"re-ranking batch {j} lost after {self.s.task_retries} retries: "
                                      f"{type(e).__name__}: {_short(e)}") from e
        return [x for j in range(len(chunks)) for x in results[j]]

    def close(self) -> None:
        for h in self.handles.values():
            try:
                self.ray.kill(h, no_restart=True)
            except Exception:                   # noqa: BLE001 - best effort on shutdown
                pass
        self.handles.clear()
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._started_ray = False


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


# ---------------------------------------------------------------------------------------------------- the index
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
    backend : {"local", "ray"}, keyword-only
        Executor: in-process (default) or Ray.
    ray_address : str, optional, keyword-only
        Shorthand for ``RaySettings(address=...)``.
    ray : RaySettings, optional, keyword-only
    """

    def __init__(self, dim: int, row_source: RowSource, snapshot_root=None, *, shard_by: str = "id",
                 n_shards: int = 2, partitions: Sequence[str] = (), factory: str = "Flat", metric: str = "ip",
                 index_kwargs: dict | None = None, backend: str = "local", ray_address: str | None = None,
                 ray: RaySettings | None = None) -> None:
        if not callable(row_source):
            raise ScaleOutConfigError("row_source must be callable: row_source(after_seq) -> rows")
        VectorIndex(dim, factory=factory, metric=metric, **(index_kwargs or {}))     # validate settings early
        self.dim = int(dim)
        self.metric = metric
        self.shard_map = ShardMap(shard_by, int(n_shards), tuple(partitions))
        self.row_source = row_source
        self.snapshot_root = None if snapshot_root is None else Path(snapshot_root)
        self._index_kwargs = {"factory": factory, "metric": metric, **(index_kwargs or {})}
        if backend == "local":
            if ray_address is not None or ray is not None:
                raise ScaleOutConfigError("ray_address / ray settings given with backend='local'; use backend='ray'")
            self._ex: _LocalExecutor | _RayExecutor = _LocalExecutor()
        elif backend == "ray":
            settings = ray or RaySettings()
            if ray_address is not None:
                settings = RaySettings(**{**asdict(settings), "address": ray_address})
            self._ex = _RayExecutor(settings)
        else:
            raise ScaleOutConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
        try:
            for name in self.shard_map.names:
                sdir = None if self.snapshot_root is None else str(self.snapshot_root / _safe_dirname(name))
                self._ex.start(name, (name, self.shard_map, row_source, sdir, self.dim, self._index_kwargs))
            self._ex.call({n: ("ping", ()) for n in self.shard_map.names})   # wait until every shard is up
        except BaseException:
            self._ex.close()
            raise

    @property
    def backend(self) -> str:
        return self._ex.backend

    @property
    def shard_names(self) -> list[str]:
        return self.shard_map.names

    # ------------------------------------------------------------------ search
    def query(self, queries, k: int, *, partition: str | None = "any", sync: bool = True) -> ShardedSearch:
        """Fan the queries out to the shards holding ``partition`` (``None``: all partitions), merge top ``k``.

        With ``sync`` (default) each shard first applies the rows written since it last looked, and the
        answer reflects one database position for all shards.

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
        res = self._ex.call({n: ("search", (Q, int(k), partition, sync, None)) for n in names})
        if sync:
            top = max(r["seq"] for r in res.values())
            lag = [n for n, r in res.items() if r["seq"] < top]
            if lag:        # rows arrived during the fan-out: bring the lagging shards to the same position
                res.update(self._ex.call({n: ("search", (Q, int(k), partition, False, top)) for n in lag}))
        seqs = {r["seq"] for r in res.values()}
        D, I = merge_topk([(res[n]["scores"], res[n]["ids"]) for n in names], Q.shape[0], int(k), self.metric)
        states = [ShardState(n, int(res[n]["seq"]), res[n]["snapshot"], int(res[n]["eligible"]),
                             float(res[n]["seconds"])) for n in names]
        return ShardedSearch(D, I, max(seqs) if sync else min(seqs), sum(s.eligible for s in states), states)

    def search(self, queries, k: int, *, partition: str | None = "any", sync: bool = True):
        """As :meth:`VectorIndex.search`: ``(scores, ids)``, merged over the shards (see :meth:`query`)."""
        r = self.query(queries, k, partition=partition, sync=sync)
        return r.scores, r.ids

    # ------------------------------------------------------------------ maintenance
    def sync(self) -> int:
        """Bring every shard to the database head; returns the seq reached."""
        self._ex.call({n: ("sync", ()) for n in self.shard_names})
        return max(s["seq"] for s in self.state().values())

    def save(self) -> dict[str, dict]:
        """Snapshot every shard (atomic, checksummed); returns ``{shard: {seq, snapshot, n}}``."""
        return self._ex.call({n: ("save", ()) for n in self.shard_names})

    def state(self) -> dict[str, dict]:
        """``{shard: {seq, snapshot, n}}``."""
        return self._ex.call({n: ("state", ()) for n in self.shard_names})

    def info(self) -> dict[str, dict]:
        """:meth:`state` plus process, Ray node, restart details and index bytes of every shard."""
        return self._ex.call({n: ("info", ()) for n in self.shard_names})

    def restart_shard(self, name: str) -> None:
        """Kill one shard's in-memory state; it comes back from its snapshot plus replayed rows.

        Ray: the actor is killed and Ray restarts it (counts against ``max_restarts``). Local: rebuilt now.
        """
        if name not in self.shard_names:
            raise KeyError(f"no shard {name!r}; shards are {self.shard_names}")
        self._ex.restart(name)

    def __len__(self) -> int:
        return int(sum(s["n"] for s in self.state().values()))

    # ------------------------------------------------------------------ re-ranking
    def rerank(self, query, candidates: Iterable[int] | Mapping[int, Any], fetch: Callable | None = None, *,
               params=None, workers: int | None = None, batch: int | None = None) -> list[RerankHit]:
        """CMC-compare ``query`` with each candidate, spread over workers; best first.

        Parameters
        ----------
        query : Surface or PreparedSurface
        candidates : iterable of int, or mapping id -> Surface / PreparedSurface
            Ids (their surfaces come from ``fetch(id)``, run on the workers) or the surfaces themselves.
        fetch : callable, optional
            ``fetch(id) -> Surface | PreparedSurface``, picklable; needed when ``candidates`` are ids.
        params : CMCParams, optional
        workers : int, optional
            Batches in flight at once (Ray tasks of one CPU each, or local processes). Default: the
            Ray cluster's CPUs, or ``os.cpu_count()`` locally.
        batch : int, optional
            Candidates per task (default: spread evenly over 2 x workers tasks).

        Returns
        -------
        list of RerankHit
            By CMC similarity, highest first (ties keep candidate order).
        """
        from ballistic.cartridge.cmc.params import CMCParams
        params = params or CMCParams()
        if isinstance(candidates, Mapping):
            items = [(int(i), s) for i, s in candidates.items()]
        else:
            if fetch is None:
                raise ValueError("rerank: give fetch(id) or a mapping id -> surface")
            items = [(int(i), None) for i in candidates]
        if not items:
            return []
        if workers is None:
            if self.backend == "ray":
                workers = max(1, int(self._ex.ray.cluster_resources().get("CPU", 1)))
            else:
                workers = os.cpu_count() or 1
        workers = max(1, int(workers))
        if batch is None:
            batch = max(1, math.ceil(len(items) / (2 * workers)))
        rows = self._ex.rerank(query, items, fetch, params, workers, int(batch))
        hits = [RerankHit(i, s, c, d, summ) for i, s, c, d, summ in rows]
        order = sorted(range(len(hits)), key=lambda j: -hits[j].similarity)
        return [hits[j] for j in order]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the shards (and the Ray connection this index started)."""
        self._ex.close()

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"ShardedIndex(dim={self.dim}, backend={self.backend!r}, shards={self.shard_names}, "
                f"factory={self._index_kwargs['factory']!r}, metric={self.metric!r})")
