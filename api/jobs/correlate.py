"""The correlation job: original -> preprocessed surface -> descriptor (stored + logged) -> the library's one
search path (index, rotation screen, re-rank) -> candidates and a search record.

* cartridge case, 3D (x3p): ``preprocess_cartridge`` -> breech-face descriptor -> partition
  ``breech_face|calibre|firing-pin`` -> :meth:`ballistic.retrieval.search.Retriever.query` (``SHORTLIST_K``
  descriptor neighbours screened by the full-circle rotation prior, the best ``RERANK_K`` compared with
  ``compare_pair``, pairs compared before kept) with the log10 likelihood ratio of the configured
  calibration; on RAW scans the firing-pin impression is found and extracted too and compared with the
  re-ranked candidates' (region ``firing_pin``);
* cartridge case, 2D image (PNG/TIFF): ``ballistic.cartridge.image2d.preprocess_image`` -> the same descriptor
  and search in its own partition (``breech_face_2d``), never mixed with 3D scans;
* bullet (a set of land scans): land signatures -> bullet descriptor (its own space) -> the same search path
  (no rotation screen) with the bullet comparison (:class:`BulletComparison`: SAM and the phase test).

Every job stores a :class:`ballistic.retrieval.record.SearchRecord` of its search with the job.

Job state lives in the DB (queued / running / done / failed, attempts, error); the queue only carries job
ids. A job is *claimed* by an atomic ``UPDATE ... WHERE status='queued'``, so a job id delivered twice runs
once. Every step is idempotent: the derived surface is rewritten atomically, the descriptor overwritten (and
logged again), candidate pairs already stored are kept (unique pair + region), so a job interrupted anywhere
(crash, kill -9, a worker stopped over its memory limit) is simply run again after the start-up sweep.
"""
from __future__ import annotations

import gc
import logging
import traceback
from dataclasses import dataclass

import numpy as np
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from api import audit
from api.db import session_scope, utcnow
from api.db.models import Candidate, Exhibit, Job, LandScan
from api.errors import job_error, job_retryable
from api.jobs.context import JobContext, JobInterrupted
from api.jobs.fetch import LandSet, StoredFiringPins, StoredLands, StoredSurfaces
from api.jsonable import jsonable

__all__ = ["run_correlation_job", "load_original_surface", "BulletComparison", "FIRING_PIN_ALGORITHM",
           "WORKER_ACTOR", "fail_job"]

log = logging.getLogger("ballistic.api.jobs")
WORKER_ACTOR = "system:worker"

#: compare_firing_pins both ways (each impression registered onto the other), mean registered correlation
FIRING_PIN_ALGORITHM = "firing-pin-rotation-sym/1"


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
    calibre: str | None = None
    firing_pin_shape: str | None = None
    land_count: int | None = None
    firing_pin_path: str | None = None


def _view(e: Exhibit) -> _ExhibitView:
    return _ExhibitView(e.id, f"{e.case.case_number}/{e.exhibit_ref}", e.original_sha256, e.media_type, e.spacing_um,
                        e.partition, e.region, e.exhibit_type, e.derived_path, e.calibre, e.firing_pin_shape,
                        e.land_count, e.firing_pin_path)


def load_original_surface(ctx: JobContext, sha256: str, media_type: str, spacing_um: float | None):
    from api.limits import max_scan_points

    # what fits the job memory budget (checked at upload too)
    return ctx.store.read_original(sha256, media_type, spacing_um, max_points=max_scan_points(ctx.settings))


# --------------------------------------------------------------------------- the job's life
def run_correlation_job(ctx: JobContext, job_id: int) -> str:
    """Run one job to completion (or failure); returns the final status, or 'skipped' if not claimable."""
    from ballistic.errors import SearchCancelled

    with session_scope(ctx.session_factory) as s:
        now = utcnow()
        res = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                        .values(status="running", attempts=Job.attempts + 1, started_at=now, updated_at=now))
        if res.rowcount != 1:
            return "skipped"
        job = s.get(Job, job_id)
        ex = _view(s.get(Exhibit, job.exhibit_id))
        attempts, max_attempts = job.attempts, job.max_attempts
    try:
        n = _correlate(ctx, job_id, ex)
    except (JobInterrupted, SearchCancelled):
        with session_scope(ctx.session_factory) as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                      .values(status="queued", updated_at=utcnow(), error="interrupted by shutdown; will resume"))
        return "queued"
    except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
        from ballistic.errors import ScaleOutConfigError, ShardUnavailableError

        if isinstance(e, MemoryError):
            # the job's arrays live on in its traceback's frames, and the address space the allocator keeps
            # may stay at the limit after they are freed: release both before anything else allocates (a
            # MemoryError while recording the failure aborted the worker and the job was retried)
            traceback.clear_frames(e.__traceback__)
            e.__traceback__ = None
            gc.collect()
            ctx.on_memory_error()
            trace = ""
        else:
            trace = traceback.format_exc()
        retry = job_retryable(e) and attempts < max_attempts  # by the error's kind: api/errors.py
        if isinstance(e, ShardUnavailableError) and not isinstance(e, ScaleOutConfigError):
            _reopen_spaces(ctx)          # a shard lost for good: the retry starts them again
        log.warning("job %s attempt %s failed: %s: %s\n%s", job_id, attempts, type(e).__name__, e, trace)
        status = fail_job(ctx.session_factory, job_id, e, retry=retry, attempt=attempts, exhibit_id=ex.id)
        if retry:
            ctx.enqueue(job_id, delay=ctx.settings.job_retry_delay_s * attempts)
        return status
    if ctx.saves_snapshots:
        ctx.spaces["bullet" if ex.exhibit_type == "bullet" else "breech_face"].maybe_save()
    return "done" if n >= 0 else "failed"


def _reopen_spaces(ctx: JobContext) -> None:
    for sp in ctx.spaces.values():
        try:
            sp.reopen()
        except Exception:  # noqa: BLE001 - the retry fails again, with its own error, if this did not help
            log.exception("reopening the %s index failed", sp.space)


def fail_job(session_factory, job_id: int, e: BaseException | str, *, retry: bool, attempt: int,
             exhibit_id: int | None = None, user_msg: str | None = None) -> str:
    """Record a failed attempt: back to 'queued' (``retry``) or 'failed', with the user's words for it
    (:func:`api.errors.job_error`) on the job and the library's own message in the audit row."""
    msg = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    user_msg = user_msg or (msg if isinstance(e, str) else job_error(e))
    status = "queued" if retry else "failed"
    with session_scope(session_factory) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            status=status, error=user_msg[:4000], updated_at=utcnow(), finished_at=None if retry else utcnow()))
        audit.append(s, actor=WORKER_ACTOR, action="job.retry" if retry else "job.failed", resource_type="job",
                     resource_id=job_id, detail={"exhibit_id": exhibit_id, "attempt": attempt, "error": msg[:500],
                                                 "user_error": user_msg[:500]})
    return status


def _correlate(ctx: JobContext, job_id: int, ex: _ExhibitView) -> int:
    if ex.exhibit_type == "bullet":
        return _correlate_bullet(ctx, job_id, ex)
    if ex.exhibit_type != "cartridge_case":
        raise ValueError(f"exhibit type {ex.exhibit_type!r} cannot be correlated")
    return _correlate_cartridge(ctx, job_id, ex)


# --------------------------------------------------------------------------- shared steps
def _write_x3p(ctx: JobContext, surface, rel: str, comment: str) -> None:
    from ballistic.io.x3p import write_x3p

    path = ctx.store.resolve(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_x3p(surface, path, dtype="float32", comment=comment)


def _stored_pairs(ctx: JobContext, exhibit_id: int, regions: tuple[str, ...]) -> dict[tuple[int, int, str], dict]:
    """Pairs of this exhibit already stored, by (lo, hi, region)."""
    with ctx.read_factory() as s:
        rows = s.execute(select(Candidate.id, Candidate.pair_lo, Candidate.pair_hi, Candidate.region,
                                Candidate.similarity, Candidate.cmc_count, Candidate.review_status,
                                Candidate.registration)
                         .where(Candidate.region.in_(regions),
                                or_(Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id == exhibit_id))).all()
    return {(r.pair_lo, r.pair_hi, r.region): {"id": r.id, "similarity": r.similarity, "cmc_count": r.cmc_count,
                                               "review_status": r.review_status, "registration": r.registration}
            for r in rows}


def _store_descriptor(ctx: JobContext, space, ex: _ExhibitView, raw: np.ndarray, **exhibit_values) -> None:
    """The exhibit's descriptor (and other results) and its descriptor-log row, in one transaction; the index
    of every process picks the row up at its next synced search."""
    with session_scope(ctx.session_factory) as s:
        audit.serialize(s)  # PostgreSQL: log rows commit in seq order (SQLite writers are serialised anyway)
        e = s.get(Exhibit, ex.id)
        for k, v in exhibit_values.items():
            setattr(e, k, v)
        e.descriptor, e.descriptor_version, e.descriptor_dim = raw.tobytes(), space.descriptor_version, raw.size
        s.add(space.log_row(ex.id, ex.partition, raw))


def _search_record(ctx: JobContext, space, ex: _ExhibitView, res, *, algorithm: str, params: dict, started_at: str,
                   results: list, retrieval_params: dict, notes: str = ""):
    from ballistic.retrieval.record import SearchRecord, utc_now

    n_scored = sum(1 for r in results if r.get("similarity") is not None)
    return SearchRecord(
        query=f"exhibit:{ex.id}:sha256:{ex.sha256}", index_snapshot_id=res.state_id, partition=ex.partition,
        prefilter={"region": ex.region, "calibre": ex.calibre,
                   "firing_pin_shape": ex.firing_pin_shape if ex.exhibit_type != "bullet" else None,
                   "exclude_ids": [ex.id]},
        descriptor_version=res.descriptor_version, algorithm_version=algorithm, cmc_params=params,
        k=ctx.settings.rerank_k, n_eligible=res.n_eligible, n_scored=min(n_scored, res.n_eligible),
        started_at=started_at, finished_at=utc_now(), index_seq=res.max_id, shards=res.shards(),
        descriptor={"space": space.space, "transform": res.transform_id, "dim": space.dim,
                    "index_factory": ctx.settings.index_factory, "index_metric": ctx.settings.index_metric,
                    "index_nprobe": ctx.settings.index_nprobe, "index_ef_search": ctx.settings.index_ef_search,
                    "disk_snapshot": {s["shard"]: s["snapshot"] for s in res.shards()},
                    "n_in_partition": res.n_in_partition, "backend": space.executor.backend,
                    "search": "ballistic.retrieval.search.Retriever.query"},
        retrieval_params=retrieval_params, results=jsonable(results), notes=notes)


def _store(ctx: JobContext, job_id: int, ex: _ExhibitView, rows: list[dict], updates: list[dict], record,
           detail: dict) -> int:
    """Insert new pairs, re-score unreviewed ones, finish the job with its search record: one transaction."""
    stored = 0
    with session_scope(ctx.session_factory) as s:
        for row in rows:
            try:
                with s.begin_nested():
                    s.add(Candidate(**row))
                stored += 1
            except IntegrityError:  # the other exhibit's job stored this pair meanwhile
                pass
        for u in updates:
            cid = u.pop("id")
            res = s.execute(update(Candidate).where(Candidate.id == cid, Candidate.review_status == "unreviewed")
                            .values(**u))
            stored += res.rowcount
        s.execute(update(Job).where(Job.id == job_id).values(
            status="done", error=None, candidates_found=stored, finished_at=utcnow(), updated_at=utcnow(),
            search_record_json=record.to_json(), search_record_hash=record.content_hash()))
        audit.append(s, actor=WORKER_ACTOR, action="job.done", resource_type="job", resource_id=job_id,
                     detail={"exhibit_id": ex.id, "candidates_stored": stored, **detail,
                             "search_record_hash": record.content_hash()})
    return stored


# --------------------------------------------------------------------------- cartridge cases (3D and 2D)
def _firing_pin(ctx: JobContext, ex: _ExhibitView, surface, raw_scan: bool) -> tuple[str | None, dict | None]:
    """Find and extract the firing-pin impression of a raw 3D scan; (derived path, info)."""
    from ballistic.cartridge.firing_pin import extract_firing_pin, find_firing_pin
    from ballistic.errors import FiringPinError

    if ex.media_type != "x3p":
        return None, None
    if not ctx.settings.firing_pin:
        return None, {"found": False, "reason": "firing-pin comparison is switched off (BALLISTIC_FIRING_PIN)"}
    if not raw_scan:
        return None, {"found": False, "reason": "processed scan: the firing-pin aperture was masked out"}
    try:
        g = find_firing_pin(surface)
        fp = extract_firing_pin(surface, geometry=g)
    except FiringPinError as e:
        return None, {"found": False, "reason": str(e)[:500]}
    rel = ctx.store.derived_relpath(ex.id, ex.sha256, "firing-pin")
    _write_x3p(ctx, fp, rel, f"ballistic firing-pin impression of exhibit {ex.id}")
    info = {"found": True, **jsonable(fp.meta.get("firing_pin", {})), "preprocess": fp.meta.get("preprocess")}
    return rel, info


def _compare_firing_pins(ctx: JobContext, job_id: int, ex: _ExhibitView, space, candidates, done: dict):
    """Firing pins of the re-ranked candidates (raw scans where the crater was found on both sides), both ways."""
    from ballistic.cartridge.firing_pin import FIRING_PIN_THRESHOLD, compare_firing_pins
    from ballistic.errors import FiringPinError

    fetch = StoredFiringPins(ctx.settings.database_url, str(ctx.store.root), ctx.settings.max_pixels,
                             ctx.settings.prepared_cache_size)
    qfp = fetch(ex.id)
    rows, notes = [], []
    for c in candidates:
        key = (min(ex.id, c.id), max(ex.id, c.id), "firing_pin")
        if key in done:
            continue
        ofp = fetch(c.id)
        if ofp is None:
            continue
        ctx.check_stop()
        try:  # compare_firing_pins registers b onto a and is not symmetric: both ways, mean score
            fwd, bwd = compare_firing_pins(qfp, ofp), compare_firing_pins(ofp, qfp)
        except FiringPinError as e:
            notes.append(f"{c.id}: {e}")
            continue
        if not (np.isfinite(fwd.score) and np.isfinite(bwd.score)):
            notes.append(f"{c.id}: too little shared measured area ({min(fwd.overlap_mm2, bwd.overlap_mm2):.3f} mm^2)")
            continue
        score = 0.5 * (fwd.score + bwd.score)

        def _dir(fr):
            return {"score": fr.score, "angle_deg": fr.angle_deg, "dy_um": fr.dy_um, "dx_um": fr.dx_um,
                    "coarse_ncc": fr.coarse_ncc, "angular_z": fr.angular_z, "overlap_mm2": fr.overlap_mm2}

        rows.append(dict(
            exhibit_a_id=ex.id, exhibit_b_id=c.id, pair_lo=key[0], pair_hi=key[1], region="firing_pin",
            vector_score=float(c.descriptor_score), similarity=float(score), cmc_count=None,
            identification=bool(score >= FIRING_PIN_THRESHOLD),
            registration={"angle_deg": fwd.angle_deg, "dy_um": fwd.dy_um, "dx_um": fwd.dx_um, "ncc": fwd.coarse_ncc},
            explanation=jsonable({"algorithm": FIRING_PIN_ALGORITHM, "score": score,
                                  "forward": _dir(fwd), "backward": _dir(bwd), "threshold": FIRING_PIN_THRESHOLD,
                                  "note": ("score = mean of the registered correlations of the two firing-pin "
                                           "impressions, each registered onto the other (forward: target onto "
                                           "reference). Weak evidence on the real pairs measured; the threshold "
                                           "is a normalisation scale, not a validated decision rule")}),
            algorithm_version=FIRING_PIN_ALGORITHM, descriptor_version=space.descriptor_version, job_id=job_id))
    return rows, notes


def _correlate_cartridge(ctx: JobContext, job_id: int, ex: _ExhibitView) -> int:
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.retrieval.record import utc_now
    from ballistic.retrieval.search import CMCComparison, RetrievalParams, query_variants

    started = utc_now()
    space = ctx.spaces["breech_face"]
    # 1. preprocess the original and keep the result as an x3p beside it
    surface = load_original_surface(ctx, ex.sha256, ex.media_type, ex.spacing_um)
    if ex.media_type == "x3p":
        pre = preprocess_cartridge(surface, kind=ctx.settings.preprocess_kind)
    else:
        from ballistic.cartridge.image2d import preprocess_image

        pre = preprocess_image(surface, spacing_um=ex.spacing_um)
    info = str(pre.meta.get("preprocess", ""))
    pre = pre.with_heights(pre.heights, source=ex.label)
    rel = ctx.store.derived_relpath(ex.id, ex.sha256)
    _write_x3p(ctx, pre, rel, f"ballistic preprocessed exhibit {ex.id}")
    ctx.check_stop()
    fp_rel, fp_info = _firing_pin(ctx, ex, surface, info.startswith("raw:"))
    del surface
    ctx.check_stop()
    # 2. descriptor, stored with its version in the DB and logged for the index (the DB is the source of truth)
    raw = space.describe(pre)
    _store_descriptor(ctx, space, ex, raw, derived_path=rel, preprocess_info=info, firing_pin_path=fp_rel,
                      firing_pin_info=fp_info)
    # 3. the one search path: descriptor shortlist of SHORTLIST_K in the exhibit's partition, screened by the
    # coarse registration (the rotation prior of the CMC comparison; near the descriptor's pose of each candidate
    # with a rotation-searching descriptor and POSE_WINDOW_DEG, else over the full circle), the best
    # RERANK_K compared with compare_pair (pairs compared before are kept, not redone)
    cmc = CMCParams()
    shortlist_k = max(ctx.settings.shortlist_k, ctx.settings.rerank_k)
    params = RetrievalParams(k=shortlist_k, screen_k=0, cmc_k=ctx.settings.rerank_k, prior=True,
                             prior_spacing_um=cmc.prior_spacing_um, workers=1, cmc=cmc,
                             pose_window_deg=ctx.settings.pose_window_deg or None)
    done = _stored_pairs(ctx, ex.id, (ex.region, "firing_pin"))

    def known(cid: int):
        d = done.get((min(ex.id, cid), max(ex.id, cid), ex.region))
        return None if d is None else {"score": d["similarity"], "similarity": d["similarity"],
                                       "summary": {"similarity": d["similarity"], "cmc_count": d["cmc_count"]}}

    fetch = StoredSurfaces(ctx.settings.database_url, str(ctx.store.root), ctx.settings.max_pixels,
                           ctx.settings.prepared_cache_size)
    query = fetch(ex.id)
    # the comparisons are stored and shown with their likelihood ratio: always the full circle
    retriever = space.retriever(fetch, params=params, compare=CMCComparison(cmc, details=True, accepts_hint=False))
    # the preprocessed scan described about centres near its own (the phase descriptor's query variants)
    variants = query_variants(space.model, pre) if space.whitener is None else None
    res = retriever.query(query, partition=ex.partition, exclude=[ex.id], vector=space.transform(raw),
                          variants=variants, known=known, stop=ctx.stop)
    top = res.candidates[:params.cmc_k]
    # 4. the compared pairs, with the likelihood ratio where a calibration of this region is configured
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION

    cal = ctx.calibration if (ctx.calibration is not None and ex.region == ctx.calibration.region) else None
    rows, results = [], []
    for c in top:
        r = {"exhibit_id": c.id, "vector_score": c.descriptor_score}
        if c.compared == "earlier":
            results.append({**r, "similarity": c.outcome["similarity"], "cmc_count": c.cmc_count,
                            "compared": "earlier"})
            continue
        if c.compared != "now":
            results.append({**r, "similarity": None, "compared": "not yet processed"})
            continue
        o = c.outcome
        key = (min(ex.id, c.id), max(ex.id, c.id), ex.region)
        row = dict(exhibit_a_id=ex.id, exhibit_b_id=c.id, pair_lo=key[0], pair_hi=key[1], region=ex.region,
                   vector_score=float(c.descriptor_score), similarity=float(o["similarity"]),
                   cmc_count=int(o["cmc_count"]), identification=bool(o["identification"]),
                   registration=o["registration"], explanation=jsonable(o["detail"]),
                   algorithm_version=ALGORITHM_VERSION, descriptor_version=space.descriptor_version, job_id=job_id)
        if cal is not None:
            row["log10_lr"], row["log10_lr_low"], row["log10_lr_high"] = cal.lr(row["similarity"])
            row["calibration_id"] = cal.id
        rows.append(row)
        results.append({**r, "similarity": row["similarity"], "cmc_count": row["cmc_count"], "compared": "now",
                        "log10_lr": row.get("log10_lr")})
    # 5. firing pins of the re-ranked candidates
    fp_rows, fp_notes = ([], []) if fp_rel is None else _compare_firing_pins(ctx, job_id, ex, space, top, done)
    rows += fp_rows
    screened = [c for c in res.candidates if np.isfinite(c.prior_ncc)]
    screen = {"used": "prior" in res.seconds, "shortlist": len(res.candidates)}
    if screen["used"]:
        hinted = params.pose_window_deg is not None and any(np.isfinite(c.descriptor_angle_deg)
                                                            for c in res.candidates)
        screen.update(screened=len(screened), kept=sum(1 for c in top if np.isfinite(c.prior_ncc)),
                      spacing_um=params.prior_spacing_um, step_deg=params.prior_step_deg,
                      mirror=bool(params.cmc.mirror),
                      # the window about each candidate's descriptor pose it searched (None: the full circle)
                      pose_window_deg=params.pose_window_deg if hinted else None)
    record = _search_record(
        ctx, space, ex, res, algorithm=ALGORITHM_VERSION, params=cmc.as_dict(), started_at=started,
        results=results,
        retrieval_params={"rerank_k": ctx.settings.rerank_k, "shortlist_k": shortlist_k, "screen": screen,
                          "preprocess": info, "calibration_id": cal.id if cal is not None else None,
                          "firing_pin": {"enabled": bool(ctx.settings.firing_pin), "algorithm": FIRING_PIN_ALGORITHM,
                                         "query_found": fp_rel is not None, "compared": len(fp_rows)}},
        notes="; ".join(([f"firing pin: {fp_info['reason']}"] if fp_info and not fp_info.get("found") else [])
                        + [f"firing pin vs {n}" for n in fp_notes])[:2000])
    return _store(ctx, job_id, ex, rows, [], record,
                  {"searched": len(top), "descriptor_version": space.descriptor_version,
                   "algorithm": ALGORITHM_VERSION, "firing_pin_compared": len(fp_rows)})


# --------------------------------------------------------------------------- bullets
@dataclass(frozen=True)
class BulletComparison:
    """The bullet comparison as the search path's re-rank stage (:class:`~ballistic.retrieval.search.PairComparison`):
    :func:`api.bullets.compare_bullets` (SAM over the phase, the phase test) of two :class:`~api.jobs.fetch.LandSet`.
    The ranking score is the SAM; bullets of different land counts are not compared (``status``
    ``incompatible``)."""

    @property
    def version(self) -> str:
        from api.bullets import BULLET_ALGORITHM_VERSION

        return BULLET_ALGORITHM_VERSION

    def prepare(self, query: LandSet) -> LandSet:
        return query

    def __call__(self, query: LandSet, candidate: LandSet) -> dict:
        from api.bullets import compare_bullets, land_positions_count

        try:
            n = land_positions_count(query.land_count, query.sigs, candidate.land_count, candidate.sigs)
        except ValueError as e:
            return {"score": None, "status": "incompatible", "note": str(e)}
        b = compare_bullets(query.sigs, candidate.sigs, n)
        return {"score": b["sam"], "similarity": b["sam"], "detail": b,
                "summary": {"similarity": b["sam"], "identification": b["identification"], "phase": b["phase"],
                            "lands_compared": b["lands_compared"]}}


def _bullet_lands(ctx: JobContext, exhibit_id: int) -> tuple[dict[int, list], dict[int, str], list]:
    """Signatures of a bullet's lands, ``{land_index: [Signature]}``, and ``{land_index: sha256}`` of those
    lands; lands without current signatures get them (stored on disk and in the DB)."""
    from ballistic.bullet.signature import land_signatures
    from ballistic.errors import BulletError
    from ballistic.io.x3p import read_x3p

    from api.bullets import (BULLET_ALGORITHM_VERSION, land_rows, load_signatures, save_signatures,
                             signatures_current)
    from api.limits import max_scan_points

    step = float(ctx.settings.bullet_step_um)
    with ctx.read_factory() as s:
        lands = land_rows(s, exhibit_id)
    sigs: dict[int, list] = {}
    shas: dict[int, str] = {}
    errors = []
    for lid, idx, sha, path, info in lands:
        if not signatures_current(ctx.store, path, info, step):
            ctx.check_stop()
            try:
                surf = read_x3p(ctx.store.original_path(sha), max_points=max_scan_points(ctx.settings))
                land = land_signatures(surf, step_um=step)
            except BulletError as e:
                errors.append(f"land {idx}: {e}")
                new_path = None
                new_info = {"step_um": step, "algorithm": BULLET_ALGORITHM_VERSION, "error": str(e)[:500]}
            else:
                new_path = f"derived/{sha[:2]}/{exhibit_id}-{sha[:16]}-lea{step:g}.npz"
                save_signatures(ctx.store.resolve(new_path), land)
                new_info = {"step_um": step, "algorithm": BULLET_ALGORITHM_VERSION, "signatures": len(land),
                            "spacing_um": float(land[0].spacing_um),
                            "low_confidence": sum(bool(x.low_confidence) for x in land),
                            "quality_median": jsonable(float(np.nanmedian([x.quality for x in land]))),
                            "crosscuts_um": [round(float(x.meta.get("crosscut_um", float("nan"))), 1) for x in land],
                            "striae_rotated_deg": jsonable(land[0].meta.get("striae_rotated_deg"))}
            with session_scope(ctx.session_factory) as s:
                s.execute(update(LandScan).where(LandScan.id == lid).values(signature_path=new_path,
                                                                          signature_info=new_info))
            path, info = new_path, new_info
        if path and not info.get("error"):
            sigs[idx] = load_signatures(ctx.store.resolve(path))
            shas[idx] = sha
    return sigs, shas, errors


def _correlate_bullet(ctx: JobContext, job_id: int, ex: _ExhibitView) -> int:
    from ballistic.bullet.sam import BULLET_PHASE_ALPHA, BULLET_SAM_THRESHOLD
    from ballistic.retrieval.record import utc_now
    from ballistic.retrieval.search import RetrievalParams

    from api.bullets import BULLET_ALGORITHM_VERSION, lands_key

    started = utc_now()
    space = ctx.spaces["bullet"]
    sigs, shas, errors = _bullet_lands(ctx, ex.id)
    if not sigs:
        raise ValueError("no land of this bullet yields a signature: " + ("; ".join(errors) or "no land scans"))
    raw = space.describe([x for idx in sorted(sigs) for x in sigs[idx]])
    _store_descriptor(ctx, space, ex, raw, preprocess_info=(
        f"bullet: {len(sigs)} land(s) with signatures every {ctx.settings.bullet_step_um:g} um"
        + (f"; {len(errors)} land(s) failed" if errors else "")))
    done = _stored_pairs(ctx, ex.id, (ex.region,))
    fetch = StoredLands(ctx.settings.database_url, str(ctx.store.root), float(ctx.settings.bullet_step_um),
                        ctx.settings.prepared_cache_size)
    query = LandSet(sigs, ex.land_count, shas)
    keys: dict[int, str] = {}
    notes = list(errors)

    def known(cid: int):
        """A stored pair scored on the same land sets by this algorithm, or a reviewed one (kept as scored)."""
        lo, hi = min(ex.id, cid), max(ex.id, cid)
        prior = done.get((lo, hi, ex.region))
        if prior is None:
            return None
        other = fetch(cid)
        oshas = other.shas if other is not None else {}
        keys[cid] = lands_key(shas if lo == ex.id else oshas, oshas if lo == ex.id else shas)
        if (prior["registration"] or {}).get("lands_key") == keys[cid]:
            return {"score": prior["similarity"], "similarity": prior["similarity"], "status": "earlier",
                    "summary": {"similarity": prior["similarity"]}}
        if prior["review_status"] != "unreviewed":
            notes.append(f"{cid}: reviewed pair kept as scored on its earlier lands")
            return {"score": prior["similarity"], "similarity": prior["similarity"], "reviewed": True,
                    "summary": {"similarity": prior["similarity"]}}
        return None

    params = RetrievalParams(k=ctx.settings.rerank_k, screen_k=0, cmc_k=ctx.settings.rerank_k, prior=False, workers=1)
    retriever = space.retriever(fetch, params=params, compare=BulletComparison())
    res = retriever.query(query, partition=ex.partition, exclude=[ex.id], vector=space.transform(raw), known=known,
                          stop=ctx.stop)
    rows, updates, results = [], [], []
    for c in res.candidates:
        r = {"exhibit_id": c.id, "vector_score": c.descriptor_score}
        if c.compared == "earlier":
            how = "earlier (reviewed)" if c.outcome.get("reviewed") else "earlier"
            results.append({**r, "similarity": c.outcome["similarity"], "compared": how})
            continue
        if c.compared == "unavailable":
            results.append({**r, "similarity": None, "compared": "not yet processed"})
            continue
        if c.compared != "now":
            notes.append(f"{c.id}: {c.outcome.get('note')}")
            results.append({**r, "similarity": None, "compared": c.compared})
            continue
        b = c.outcome["detail"]
        lo, hi = min(ex.id, c.id), max(ex.id, c.id)
        other = fetch(c.id)
        key = keys.get(c.id) or lands_key(shas if lo == ex.id else other.shas, other.shas if lo == ex.id else shas)
        vals = dict(vector_score=float(c.descriptor_score), similarity=b["sam"], cmc_count=None,
                    identification=b["identification"],
                    registration={"phase": b["phase"], "lands_compared": b["lands_compared"], "lands_key": key,
                                  "phase_p_value": b["phase_p_value"]},
                    explanation=b["explanation"], algorithm_version=BULLET_ALGORITHM_VERSION,
                    descriptor_version=space.descriptor_version, job_id=job_id)
        prior = done.get((lo, hi, ex.region))
        if prior is not None:  # a bullet gained a land: score again (unreviewed only, checked in the update)
            # keep the stored orientation: exhibit_a stays the reference of the stored comparison
            updates.append({"id": prior["id"], **vals, "exhibit_a_id": ex.id, "exhibit_b_id": c.id})
        else:
            rows.append(dict(exhibit_a_id=ex.id, exhibit_b_id=c.id, pair_lo=lo, pair_hi=hi, region=ex.region, **vals))
        results.append({**r, "similarity": b["sam"], "phase": b["phase"], "lands_compared": b["lands_compared"],
                        "compared": "now"})
    record = _search_record(
        ctx, space, ex, res, algorithm=BULLET_ALGORITHM_VERSION,
        params={"land_signatures": {"step_um": float(ctx.settings.bullet_step_um)}, "land_features": "defaults",
                "land_score": "ccf", "sam_threshold": BULLET_SAM_THRESHOLD,
                "phase_test_alpha": BULLET_PHASE_ALPHA},
        started_at=started, results=results,
        retrieval_params={"rerank_k": ctx.settings.rerank_k, "lands": {str(k): v for k, v in sorted(shas.items())}},
        notes="; ".join(notes)[:2000])
    return _store(ctx, job_id, ex, rows, updates, record,
                  {"searched": len(res.candidates), "descriptor_version": space.descriptor_version,
                   "algorithm": BULLET_ALGORITHM_VERSION, "lands": sorted(sigs)})
