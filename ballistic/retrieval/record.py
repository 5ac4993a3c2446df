"""Replayable record of one database search (one correlation request).

A :class:`SearchRecord` says exactly what a candidate list was computed from, so
that the search can be replayed later and its result checked, and so that a
reviewer can tell how much of the database was actually looked at:

* **index state**: the snapshot id of the index (or the index search's state id,
  :attr:`ballistic.retrieval.index.IndexSearch.state_id`, or :func:`partition_state_id`), with the database position
  (``index_seq``) and, for a sharded index, each shard's snapshot and seq;
* **what was searched**: the partition and any pre-filter settings (calibre,
  firing-pin shape, excluded ids, date range...), ``k`` of the first stage, the
  number of exhibits eligible in the partition (``n_eligible``) and how many
  were compared by the CMC re-ranker (``n_scored``);
* **how**: descriptor version (and whitener), comparison algorithm version
  (:data:`ballistic.cartridge.cmc.pair.ALGORITHM_VERSION`), its parameters
  (:meth:`ballistic.cartridge.cmc.params.CMCParams.as_dict`), retrieval parameters;
* **when and with what**: start and end timestamps (UTC ISO 8601), library and
  key dependency versions;
* optionally the **results** (candidate id, scores) so a replay can be compared.

Serialisation is canonical JSON (sorted keys, no whitespace, no NaN): the
:meth:`SearchRecord.content_hash` (SHA-256 of it) is stable across processes,
machines and Python versions. :meth:`SearchRecord.replay_hash` covers only the
inputs (not timestamps, results or counts): two runs of the same search on the
same index state share it. :meth:`SearchRecord.from_dict` refuses a record
whose stored ``content_hash`` does not match its content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ballistic.errors import SearchRecordError

__all__ = ["RECORD_FORMAT", "SearchRecord", "utc_now", "partition_state_id", "whitener_id"]

RECORD_FORMAT = "ballistic-search-record/1"

#: fields that describe the outcome of the search rather than its inputs (left out of replay_hash)
_OUTCOME = ("started_at", "finished_at", "results", "n_scored", "n_eligible", "index_seq_reached", "notes")


def utc_now() -> str:
    """Current time, UTC, ISO 8601 with microseconds and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def partition_state_id(descriptor_version: str, transform: str, partition: str | None, ids) -> str:
    """Name of the exact vector set a search saw: ``"ids:"`` + SHA-256 (40 hex) over the descriptor version,
    the vector transform, the partition and the sorted ids present in it. A replay that rebuilds the
    partition from stored descriptors reaches the same id exactly when it holds the same vectors' ids."""
    h = hashlib.sha256(f"{descriptor_version}|{transform}|{partition}|".encode())
    h.update(np.ascontiguousarray(np.sort(np.asarray(ids, dtype=np.int64)), dtype="<i8").tobytes())
    return "ids:" + h.hexdigest()[:40]


def whitener_id(whitener) -> str:
    """Short content hash of a :class:`~ballistic.retrieval.descriptor.PCAWhitener` (mean, components,
    eigenvalues, eps): two indexes whitened alike share it."""
    h = hashlib.sha256()
    for a in (whitener.mean, whitener.components, whitener.eigenvalues):
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    h.update(repr(float(whitener.eps)).encode())
    return h.hexdigest()[:16]


def _canon(x: Any, where: str = "record") -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, tuples to lists, keys to str; NaN/inf refused."""
    if isinstance(x, dict):
        return {str(k): _canon(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canon(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, np.ndarray):
        return _canon(x.tolist(), where)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if not math.isfinite(f):
            raise SearchRecordError(f"{where}: {f} is not a finite number; store None for a missing score")
        return f
    if x is None or isinstance(x, str):
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _canon(dataclasses.asdict(x), where)
    raise SearchRecordError(f"{where}: {type(x).__name__} cannot be stored in a search record")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _versions() -> dict:
    import faiss
    import numba

    import ballistic
    return {"ballistic": ballistic.__version__, "faiss": faiss.__version__, "numpy": np.__version__,
            "numba": numba.__version__}


@dataclass
class SearchRecord:
    """Everything needed to replay one search and to judge its coverage. See the module docstring.

    Attributes
    ----------
    query : str
        The query exhibit (its id / evidence hash).
    index_snapshot_id : str
        Snapshot id of the :class:`~ballistic.retrieval.index.VectorIndex`, or a sharded index's state id.
    partition : str or None
        Partition searched (``None``: all).
    prefilter : dict
        Pre-filter settings (calibre, firing-pin shape, excluded ids...).
    descriptor_version : str
        Descriptor model name (e.g. :attr:`PolarFFTDescriptor.name`), plus whitener if any in ``descriptor``.
    algorithm_version : str
        :data:`ballistic.cartridge.cmc.pair.ALGORITHM_VERSION`.
    cmc_params : dict
        :meth:`CMCParams.as_dict` of the re-ranking.
    k : int
        First-stage candidates.
    n_eligible : int
        Exhibits in the searched partition(s) when the search ran.
    n_scored : int
        Candidates compared by the CMC re-ranker.
    started_at, finished_at : str
        UTC ISO 8601.
    index_seq : int or None
        Database position the index reflected.
    shards : list of dict
        Per shard ``{shard, snapshot, seq}`` for a sharded index.
    descriptor : dict
        More descriptor settings (whitener name / dimension...).
    retrieval_params : dict
        Other settings of the search (stage-2 prior, cmc_k...).
    results : list of dict
        Optional ranked candidates ``{id, score, similarity, cmc_count...}``.
    library_versions : dict
        Versions of ballistic and of the libraries that change scores.
    """

    query: str
    index_snapshot_id: str
    partition: str | None
    descriptor_version: str
    algorithm_version: str
    cmc_params: dict
    k: int
    n_eligible: int
    n_scored: int
    started_at: str
    finished_at: str
    prefilter: dict = field(default_factory=dict)
    index_seq: int | None = None
    shards: list = field(default_factory=list)
    descriptor: dict = field(default_factory=dict)
    retrieval_params: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    library_versions: dict = field(default_factory=_versions)
    notes: str = ""
    format: str = RECORD_FORMAT

    def __post_init__(self) -> None:
        if self.format != RECORD_FORMAT:
            raise SearchRecordError(f"format {self.format!r}; this code reads {RECORD_FORMAT!r}")
        for name in ("query", "index_snapshot_id", "descriptor_version", "algorithm_version", "started_at",
                     "finished_at"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise SearchRecordError(f"{name} must be a non-empty string, got {v!r}")
        for name in ("k", "n_eligible", "n_scored"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise SearchRecordError(f"{name} must be a non-negative integer, got {v!r}")
            setattr(self, name, int(v))
        if self.k < 1:
            raise SearchRecordError(f"k must be >= 1, got {self.k}")
        if self.n_scored > self.n_eligible:
            raise SearchRecordError(f"n_scored={self.n_scored} exceeds the {self.n_eligible} eligible exhibits")
        when = {}
        for name in ("started_at", "finished_at"):
            try:
                when[name] = datetime.fromisoformat(getattr(self, name).replace("Z", "+00:00"))
            except ValueError as e:
                raise SearchRecordError(f"{name}: not an ISO 8601 timestamp ({e})") from e
            if when[name].tzinfo is None:
                raise SearchRecordError(f"{name}: give a time zone (UTC, e.g. utc_now())")
        if when["finished_at"] < when["started_at"]:
            raise SearchRecordError("finished_at is before started_at")
        if not isinstance(self.cmc_params, dict):
            raise SearchRecordError("cmc_params must be a dict (CMCParams.as_dict())")
        # normalise every nested value now so that equality, hashing and JSON agree
        for name in ("cmc_params", "prefilter", "shards", "descriptor", "retrieval_params", "results",
                     "library_versions"):
            setattr(self, name, _canon(getattr(self, name), name))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def for_search(cls, *, query: str, search, partition: str | None, descriptor_version: str, cmc_params,
                   k: int, n_scored: int, started_at: str, finished_at: str | None = None,
                   **kwargs) -> "SearchRecord":
        """Build from an :class:`~ballistic.retrieval.index.IndexSearch` (state id, seq, shards, eligible count).

        ``cmc_params``: a :class:`~ballistic.cartridge.cmc.params.CMCParams` or its dict; the algorithm version is
        :data:`ballistic.cartridge.cmc.pair.ALGORITHM_VERSION` unless given.
        """
        from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
        params = cmc_params.as_dict() if hasattr(cmc_params, "as_dict") else dict(cmc_params)
        kwargs.setdefault("algorithm_version", ALGORITHM_VERSION)
        return cls(query=query, index_snapshot_id=search.state_id, partition=partition,
                   descriptor_version=descriptor_version, cmc_params=params, k=k,
                   n_eligible=search.eligible, n_scored=n_scored, started_at=started_at,
                   finished_at=finished_at or utc_now(), index_seq=search.seq,
                   shards=[{"shard": s.shard, "snapshot": s.snapshot, "seq": s.seq} for s in search.shards],
                   **kwargs)

    # ------------------------------------------------------------------ serialisation
    def _body(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of every field."""
        return hashlib.sha256(_dumps(_canon(self._body())).encode()).hexdigest()

    def replay_hash(self) -> str:
        """SHA-256 (hex) of the inputs only (no timestamps, counts, results or notes)."""
        body = {k: v for k, v in self._body().items() if k not in _OUTCOME}
        return hashlib.sha256(_dumps(_canon(body)).encode()).hexdigest()

    def to_dict(self) -> dict:
        """JSON-ready dict, with ``content_hash``."""
        d = _canon(self._body())
        d["content_hash"] = self.content_hash()
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact), with ``content_hash``."""
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "SearchRecord":
        """Read a record; verifies ``content_hash`` when present.

        Raises
        ------
        SearchRecordError
            Unknown format, missing or unknown fields, bad values, or a hash that does not match.
        """
        if not isinstance(d, dict):
            raise SearchRecordError(f"expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        stored = d.pop("content_hash", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SearchRecordError(f"unknown field(s) {unknown}; written by a newer version?")
        if d.get("format", RECORD_FORMAT) != RECORD_FORMAT:
            raise SearchRecordError(f"format {d.get('format')!r}; this code reads {RECORD_FORMAT!r}")
        try:
            rec = cls(**d)
        except TypeError as e:
            raise SearchRecordError(f"incomplete search record: {e}") from e
        if stored is not None and stored != rec.content_hash():
            raise SearchRecordError("content_hash does not match the record's content: it was altered or damaged")
        return rec

    @classmethod
    def from_json(cls, text: str | bytes) -> "SearchRecord":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise SearchRecordError(f"not JSON: {e}") from e
        return cls.from_dict(d)

    def same_search(self, other: "SearchRecord") -> bool:
        """True when ``other`` replays this search: same inputs (:meth:`replay_hash`)."""
        return self.replay_hash() == other.replay_hash()
