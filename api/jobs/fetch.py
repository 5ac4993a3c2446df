"""What the search's tasks fetch: an exhibit's stored preprocessed surface (prepared for the CMC comparison),
its firing-pin impression, a bullet's land signatures.

Each ``fetch(id)`` is a small picklable object (database URL, evidence folder, limits): the one search path
(:class:`ballistic.retrieval.search.Retriever`) calls it in its tasks, in this process or in Ray workers on
other nodes (which must reach the database and the evidence storage). Per process, what was read is kept
in an LRU keyed by the file and its modification time. ``None`` means "not available yet" (the exhibit's
own job has not stored it): the candidate is listed, never compared.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from api.db.models import Exhibit

__all__ = ["PreparedCache", "prepared_views_path", "StoredSurfaces", "StoredFiringPins", "StoredLands", "LandSet"]


class PreparedCache:
    """LRU of objects read from the evidence store (prepared surfaces, signatures), per process."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, factory):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        v = factory()
        if self.size:
            with self._lock:
                self._d[key] = v
                while len(self._d) > self.size:
                    self._d.popitem(last=False)
        return v


_CACHES: dict[tuple, PreparedCache] = {}
_ROWS: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


def _cache(kind: str, root: str, size: int) -> PreparedCache:
    with _LOCK:
        c = _CACHES.get((kind, root))
        if c is None:
            c = _CACHES[(kind, root)] = PreparedCache(size)
        return c


def _exhibit(database_url: str, exhibit_id: int) -> tuple | None:
    """(label, derived_path, firing_pin_path, land_count) of an exhibit, from the database (kept per process
    once its surface is stored: the paths of a stored exhibit do not change)."""
    key = (database_url, int(exhibit_id))
    got = _ROWS.get(key)
    if got is not None:
        return got
    from api.db import make_sessionmaker
    from api.index import _engine

    with make_sessionmaker(_engine(database_url))() as s:
        e = s.get(Exhibit, int(exhibit_id))
        if e is None:
            return None
        row = (f"{e.case.case_number}/{e.exhibit_ref}", e.derived_path, e.firing_pin_path, e.land_count)
    if row[1] is not None:
        _ROWS[key] = row
    return row


def _resolve(evidence_dir: str, rel: str) -> Path:
    from api.storage import EvidenceStore

    return EvidenceStore(Path(evidence_dir)).resolve(rel)   # refuses a path that leaves the evidence folder


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@dataclass(frozen=True)
class _StoredFile:
    """``fetch(id)`` of a file an exhibit's job stored (its path in the exhibits table), read once per process
    and version of the file; None while there is none."""

    database_url: str
    evidence_dir: str
    max_points: int
    cache_size: int = 256
    _column = 1          # which path of _exhibit()'s row

    def _read(self, path: Path, label: str):
        raise NotImplementedError

    def __call__(self, exhibit_id: int):
        row = _exhibit(self.database_url, exhibit_id)
        if row is None or row[self._column] is None:
            return None
        rel = row[self._column]
        path = _resolve(self.evidence_dir, rel)
        stamp = _mtime(path)
        if stamp is None:
            return None
        return _cache(type(self).__name__, self.evidence_dir, self.cache_size).get(
            (int(exhibit_id), rel, stamp), lambda: self._read(path, row[0]))


def prepared_views_path(path: Path) -> Path:
    """Where the prepared comparison views of a stored preprocessed scan are kept: beside it."""
    return path.with_name(path.name + ".prepared.npz")


class StoredSurfaces(_StoredFile):
    """``fetch(id)``: the exhibit's preprocessed breech face, prepared for the CMC comparison
    (:class:`~ballistic.cartridge.cmc.params.PreparedSurface`), or None when not processed yet.

    The prepared views are stored beside the scan (:func:`prepared_views_path`) the first time they are made
    - by the exhibit's own job, or by the first search that fetches an exhibit stored before they existed -
    and loaded from there afterwards (2.5 ms instead of 31 ms to read and prepare the scan, medians of the real
    sets: a shortlist of 200 candidates that are not in memory costs 0.5 s instead of 6.1 s on one worker;
    ``benchmarks/bench_prepared_views.py``). Views made with other settings or
    code, or from an older version of the scan, are made again; a store that cannot be written is only read.
    """

    _column = 1

    def _read(self, path: Path, label: str):
        from ballistic.cartridge.cmc.params import CMCParams, load_or_prepare
        from ballistic.io.x3p import read_x3p

        return load_or_prepare(prepared_views_path(path), lambda: read_x3p(path, max_points=self.max_points),
                               CMCParams(), source=path, name=label)


class StoredFiringPins(_StoredFile):
    """``fetch(id)``: the exhibit's extracted firing-pin impression, or None when it has none."""

    _column = 2

    def _read(self, path: Path, label: str):
        from ballistic.cartridge.firing_pin import _EXTRACT_TAG
        from ballistic.io.x3p import read_x3p

        s = read_x3p(path, max_points=self.max_points)   # tagged so that it is not extracted again
        return s.with_heights(s.heights, preprocess=_EXTRACT_TAG + "stored")


@dataclass
class LandSet:
    """A bullet as the comparison sees it: signatures by land position, the recorded land count, the lands'
    sha256 by position (they name the land set a pair was scored on)."""

    sigs: dict[int, list]
    land_count: int | None
    shas: dict[int, str]


@dataclass(frozen=True)
class StoredLands:
    """``fetch(id)``: a bullet's current land signatures (:class:`LandSet`), or None when it has none yet."""

    database_url: str
    evidence_dir: str
    step_um: float
    cache_size: int = 256

    def __call__(self, exhibit_id: int):
        from api.bullets import current_lands, load_signatures
        from api.db import make_sessionmaker
        from api.index import _engine
        from api.storage import EvidenceStore

        store = EvidenceStore(Path(self.evidence_dir))
        cache = _cache("lands", self.evidence_dir, self.cache_size)

        def load(rel):
            path = store.resolve(rel)
            return cache.get((int(exhibit_id), rel, _mtime(path)), lambda: load_signatures(path))

        with make_sessionmaker(_engine(self.database_url))() as s:
            e = s.get(Exhibit, int(exhibit_id))
            if e is None:
                return None
            land_count = e.land_count
            sigs, shas = current_lands(s, store, int(exhibit_id), self.step_um, load=load)
        return LandSet(sigs, land_count, shas) if sigs else None
