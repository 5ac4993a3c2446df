"""The correlation job: original -> preprocessed surface -> descriptor -> index -> top-K -> CMC re-rank.

Job state lives in the DB (queued / running / done / failed, attempts, error); the
queue (huey) only carries job ids. A job is *claimed* by an atomic
``UPDATE ... WHERE status='queued'``, so a job id delivered twice runs once. Every
step is idempotent: the derived surface is rewritten atomically, the descriptor is
overwritten, the index entry is replaced and candidate pairs already stored are
skipped (unique pair + region), so a job interrupted anywhere (crash, kill -9) is
simply run again after the start-up sweep.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from api import audit
from api.db import session_scope, utcnow
from api.models import Candidate, Exhibit, Job

if TYPE_CHECKING:  # pragma: no cover
    from api.runtime import Runtime

__all__ = ["run_correlation_job", "PreparedCache", "load_original_surface", "JobInterrupted"]

log = logging.getLogger("ballistic.api.jobs")
WORKER_ACTOR = "system:worker"


class JobInterrupted(Exception):
    """The service is shutting down; the job goes back to 'queued' and runs after the restart."""


class PreparedCache:
    """LRU of PreparedSurface objects (resampled, centred) for re-ranking, keyed by exhibit id."""

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

    def drop(self, exhibit_id: int) -> None:
        with self._lock:
            for k in [k for k in self._d if k[0] == exhibit_id]:
                del self._d[k]


@dataclass
class _ExhibitView:
    id: int
    label: str
    sha256: str
    media_type: str
    spacing_um: float | None
    partition: str
    region: str
    exhibit_type: str
    derived_path: str | None


def _view(e: Exhibit) -> _ExhibitView:
    return _ExhibitView(e.id, f"{e.case.case_number}/{e.exhibit_ref}", e.original_sha256, e.media_type, e.spacing_um,
                        e.partition, e.region, e.exhibit_type, e.derived_path)


def load_original_surface(rt: "Runtime", sha256: str, media_type: str, spacing_um: float | None):
    from ballistic.io import read_image, read_x3p

    path = rt.store.original_path(sha256)
    if media_type == "x3p":
        return read_x3p(path, max_points=rt.settings.max_pixels)
    return read_image(path, max_pixels=rt.settings.max_pixels, spacing_um=spacing_um)


def _prepared(rt: "Runtime", exhibit_id: int, derived_path: str, label: str):
    from ballistic.compare import CMCParams, prepare
    from ballistic.io import read_x3p

    def make():
        surf = read_x3p(rt.store.resolve(derived_path), max_points=rt.settings.max_pixels)
        return prepare(surf, CMCParams(), name=label)

    return rt.prepared.get((exhibit_id, derived_path), make)


def _check_stop(rt: "Runtime") -> None:
    if rt.stopping.is_set():
        raise JobInterrupted("service shutting down")


def run_correlation_job(rt: "Runtime", job_id: int) -> str:
    """Run one job to completion (or failure); returns the final status, or 'skipped' if not claimable."""
    with session_scope(rt.session_factory) as s:
        now = utcnow()
        res = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                        .values(status="running", attempts=Job.attempts + 1, started_at=now, updated_at=now))
        if res.rowcount != 1:
            return "skipped"
        job = s.get(Job, job_id)
        ex = _view(s.get(Exhibit, job.exhibit_id))
        attempts, max_attempts = job.attempts, job.max_attempts
    try:
        n = _correlate(rt, job_id, ex)
    except JobInterrupted:
        with session_scope(rt.session_factory) as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                      .values(status="queued", updated_at=utcnow(), error="interrupted by shutdown; will resume"))
        return "queued"
    except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
        permanent = isinstance(e, (ValueError, TypeError, FileNotFoundError))
        retry = not permanent and attempts < max_attempts
        msg = f"{type(e).__name__}: {e}"
        log.warning("job %s attempt %s failed: %s\n%s", job_id, attempts, msg, traceback.format_exc())
        with session_scope(rt.session_factory) as s:
            status = "queued" if retry else "failed"
            s.execute(update(Job).where(Job.id == job_id).values(
                status=status, error=msg[:4000], updated_at=utcnow(), finished_at=None if retry else utcnow()))
            audit.append(s, actor=WORKER_ACTOR, action="job.retry" if retry else "job.failed", resource_type="job",
                         resource_id=job_id, detail={"exhibit_id": ex.id, "attempt": attempts, "error": msg[:500]})
        if retry:
            rt.enqueue(job_id, delay=rt.settings.job_retry_delay_s * attempts)
        return "queued" if retry else "failed"
    rt.retrieval.maybe_save()
    return "done" if n >= 0 else "failed"


def _correlate(rt: "Runtime", job_id: int, ex: _ExhibitView) -> int:
    from ballistic.correlate import ALGORITHM_VERSION, compare_pair
    from ballistic.io import write_x3p
    from ballistic.preprocess import preprocess_cartridge

    if ex.exhibit_type != "cartridge_case":
        raise ValueError("only cartridge cases (breech face) are correlated in this version; bullet land "
                         "comparison is not available yet")
    # 1. preprocess the original and keep the result as an x3p beside it
    surface = load_original_surface(rt, ex.sha256, ex.media_type, ex.spacing_um)
    pre = preprocess_cartridge(surface, kind=rt.settings.preprocess_kind)
    pre = pre.with_heights(pre.heights, source=ex.label)
    rel = rt.store.derived_relpath(ex.id, ex.sha256)
    path = rt.store.resolve(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_x3p(pre, path, dtype="float32", comment=f"ballistic preprocessed exhibit {ex.id}")
    _check_stop(rt)
    # 2. descriptor, stored with its version in the DB (the source of truth for the index)
    raw = rt.retrieval.compute_descriptor(pre)
    with session_scope(rt.session_factory) as s:
        e = s.get(Exhibit, ex.id)
        e.derived_path, e.preprocess_info = rel, str(pre.meta.get("preprocess", ""))
        e.descriptor, e.descriptor_version, e.descriptor_dim = raw.tobytes(), rt.retrieval.descriptor_version, raw.size
    rt.prepared.drop(ex.id)
    # 3. index and search the exhibit's partition
    rt.retrieval.add(ex.id, ex.partition, raw)
    found = rt.retrieval.search(raw, rt.settings.rerank_k, ex.partition, exclude=ex.id)
    ids = [i for i, _ in found]
    with session_scope(rt.session_factory) as s:
        done_pairs = {(c.pair_lo, c.pair_hi) for c in s.execute(
            select(Candidate.pair_lo, Candidate.pair_hi).where(
                Candidate.region == ex.region,
                or_(Candidate.exhibit_a_id == ex.id, Candidate.exhibit_b_id == ex.id))).all()}
        others = {e.id: _view(e) for e in s.execute(select(Exhibit).where(Exhibit.id.in_(ids))).scalars()} if ids \
            else {}
    # 4. re-rank with the CMC comparison
    query = _prepared(rt, ex.id, rel, ex.label)
    rows = []
    for cid, vscore in found:
        o = others.get(cid)
        if o is None or o.derived_path is None or (min(ex.id, cid), max(ex.id, cid)) in done_pairs:
            continue
        _check_stop(rt)
        r = compare_pair(query, _prepared(rt, cid, o.derived_path, o.label))
        reg = r.registration
        rows.append(dict(exhibit_a_id=ex.id, exhibit_b_id=cid, pair_lo=min(ex.id, cid), pair_hi=max(ex.id, cid),
                         region=ex.region, vector_score=float(vscore), similarity=float(r.similarity),
                         cmc_count=int(r.cmc_count), identification=bool(r.identification),
                         registration={"angle_deg": float(reg.angle_deg), "dy_um": float(reg.dy_um),
                                       "dx_um": float(reg.dx_um), "ncc": float(reg.ncc)},
                         explanation=_jsonable(r.to_dict()), algorithm_version=ALGORITHM_VERSION,
                         descriptor_version=rt.retrieval.descriptor_version, job_id=job_id))
    # 5. store candidates and finish the job in one transaction
    stored = 0
    with session_scope(rt.session_factory) as s:
        for row in rows:
            try:
                with s.begin_nested():
                    s.add(Candidate(**row))
                stored += 1
            except IntegrityError:  # the other exhibit's job stored this pair meanwhile
                pass
        s.execute(update(Job).where(Job.id == job_id).values(
            status="done", error=None, candidates_found=stored, finished_at=utcnow(), updated_at=utcnow()))
        audit.append(s, actor=WORKER_ACTOR, action="job.done", resource_type="job", resource_id=job_id,
                     detail={"exhibit_id": ex.id, "candidates_stored": stored, "searched": len(found),
                             "descriptor_version": rt.retrieval.descriptor_version,
                             "algorithm": ALGORITHM_VERSION})
    return stored


def _jsonable(x):
    """Plain JSON types only (numpy scalars and non-finite floats become JSON-safe)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
