"""The correlation job: original -> preprocessed surface -> descriptor -> index -> top-K -> re-rank.

* cartridge case, 3D (x3p): ``preprocess_cartridge`` -> breech-face descriptor -> partition
  ``breech_face|calibre|firing-pin`` -> top ``RERANK_K`` -> ``compare_pair`` (CMC), with the log10
  likelihood ratio of the configured calibration; on RAW scans the firing-pin impression is found
  and extracted too and compared with the re-ranked candidates' (region ``firing_pin``);
* cartridge case, 2D image (PNG/TIFF): ``ballistic.cartridge.image2d.preprocess_image`` -> the same descriptor
  and CMC comparison in its own partition (``breech_face_2d``), never mixed with 3D scans;
* bullet (a set of land scans): land signatures -> bullet descriptor (its own index) -> top
  ``RERANK_K`` -> ``bullet_score`` (SAM), see :mod:`api.bullets`.

Every job stores a :class:`ballistic.retrieval.record.SearchRecord` of its search with the job.

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
from api.jsonable import jsonable
from api.db import session_scope, utcnow
from api.errors import job_error, job_retryable
from api.db.models import Candidate, Exhibit, Job, LandScan

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
    calibre: str | None = None
    firing_pin_shape: str | None = None
    land_count: int | None = None
    firing_pin_path: str | None = None


def _view(e: Exhibit) -> _ExhibitView:
    return _ExhibitView(e.id, f"{e.case.case_number}/{e.exhibit_ref}", e.original_sha256, e.media_type, e.spacing_um,
                        e.partition, e.region, e.exhibit_type, e.derived_path, e.calibre, e.firing_pin_shape,
                        e.land_count, e.firing_pin_path)


def load_original_surface(rt: "Runtime", sha256: str, media_type: str, spacing_um: float | None):
    from ballistic.io.image import read_image
    from ballistic.io.x3p import read_x3p

    from api.limits import max_scan_points

    path = rt.store.original_path(sha256)
    limit = max_scan_points(rt.settings)  # what fits the job memory budget (checked at upload too)
    if media_type == "x3p":
        return read_x3p(path, max_points=limit)
    return read_image(path, max_pixels=limit, spacing_um=spacing_um)


def _prepared(rt: "Runtime", exhibit_id: int, derived_path: str, label: str):
    from ballistic.cartridge.cmc.params import CMCParams, prepare
    from ballistic.io.x3p import read_x3p

    def make():
        surf = read_x3p(rt.store.resolve(derived_path), max_points=rt.settings.max_pixels)
        return prepare(surf, CMCParams(), name=label)

    return rt.prepared.get((exhibit_id, derived_path), make)


def _firing_pin_surface(rt: "Runtime", exhibit_id: int, path: str):
    """An extracted firing-pin impression read back from its x3p (tagged so it is not extracted again)."""
    from ballistic.cartridge.firing_pin import _EXTRACT_TAG
    from ballistic.io.x3p import read_x3p

    def make():
        s = read_x3p(rt.store.resolve(path), max_points=rt.settings.max_pixels)
        return s.with_heights(s.heights, preprocess=_EXTRACT_TAG + "stored")

    return rt.prepared.get((exhibit_id, path), make)


def _land_signatures(rt: "Runtime", exhibit_id: int, path: str):
    from api.bullets import load_signatures

    return rt.prepared.get((exhibit_id, path), lambda: load_signatures(rt.store.resolve(path)))


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
        retry = job_retryable(e) and attempts < max_attempts  # by the error's kind: api/errors.py
        msg = f"{type(e).__name__}: {e}"
        user_msg = job_error(e)  # the job's error is read by HTTP users; the library's text goes to log and audit
        log.warning("job %s attempt %s failed: %s\n%s", job_id, attempts, msg, traceback.format_exc())
        with session_scope(rt.session_factory) as s:
            status = "queued" if retry else "failed"
            s.execute(update(Job).where(Job.id == job_id).values(
                status=status, error=user_msg[:4000], updated_at=utcnow(), finished_at=None if retry else utcnow()))
            audit.append(s, actor=WORKER_ACTOR, action="job.retry" if retry else "job.failed", resource_type="job",
                         resource_id=job_id, detail={"exhibit_id": ex.id, "attempt": attempts, "error": msg[:500],
                                                     "user_error": user_msg[:500]})
        if retry:
            rt.enqueue(job_id, delay=rt.settings.job_retry_delay_s * attempts)
        return "queued" if retry else "failed"
    if ex.exhibit_type == "bullet":
        rt.bullet_retrieval.maybe_save()
    else:
        rt.retrieval.maybe_save()
    return "done" if n >= 0 else "failed"


def _correlate(rt: "Runtime", job_id: int, ex: _ExhibitView) -> int:
    if ex.exhibit_type == "bullet":
        return _correlate_bullet(rt, job_id, ex)
    if ex.exhibit_type != "cartridge_case":
        raise ValueError(f"exhibit type {ex.exhibit_type!r} cannot be correlated")
    return _correlate_cartridge(rt, job_id, ex)


# --------------------------------------------------------------------------- shared steps
def _write_x3p(rt: "Runtime", surface, rel: str, comment: str) -> None:
    from ballistic.io.x3p import write_x3p

    path = rt.store.resolve(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_x3p(surface, path, dtype="float32", comment=comment)


def _stored_pairs(rt: "Runtime", exhibit_id: int, regions: tuple[str, ...]) -> dict[tuple[int, int, str], dict]:
    """Pairs of this exhibit already stored, by (lo, hi, region)."""
    with rt.read_factory() as s:
        rows = s.execute(select(Candidate.id, Candidate.pair_lo, Candidate.pair_hi, Candidate.region,
                                Candidate.similarity, Candidate.cmc_count, Candidate.review_status,
                                Candidate.registration)
                         .where(Candidate.region.in_(regions),
                                or_(Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id == exhibit_id))).all()
    return {(r.pair_lo, r.pair_hi, r.region): {"id": r.id, "similarity": r.similarity, "cmc_count": r.cmc_count,
                                               "review_status": r.review_status, "registration": r.registration}
            for r in rows}


def _search_record(rt: "Runtime", retrieval, ex: _ExhibitView, state: dict, *, algorithm: str, params: dict,
                   n_scored: int, started_at: str, results: list, retrieval_params: dict, notes: str = ""):
    from ballistic.retrieval.record import SearchRecord, utc_now

    rec = SearchRecord(
        query=f"exhibit:{ex.id}:sha256:{ex.sha256}", index_snapshot_id=state["state_id"], partition=ex.partition,
        prefilter={"region": ex.region, "calibre": ex.calibre,
                   "firing_pin_shape": ex.firing_pin_shape if ex.exhibit_type != "bullet" else None,
                   "exclude_ids": [ex.id]},
        descriptor_version=retrieval.descriptor_version, algorithm_version=algorithm, cmc_params=params,
        k=rt.settings.rerank_k, n_eligible=state["n_eligible"], n_scored=min(n_scored, state["n_eligible"]),
        started_at=started_at, finished_at=utc_now(), index_seq=state["max_id"],
        descriptor={"space": retrieval.space, "transform": retrieval.transform_id, "dim": retrieval.dim,
                    "index_factory": rt.settings.index_factory, "index_metric": rt.settings.index_metric,
                    "disk_snapshot": state["disk_snapshot"], "n_in_partition": state["n_in_partition"]},
        retrieval_params=retrieval_params, results=jsonable(results), notes=notes)
    return rec


def _store(rt: "Runtime", job_id: int, ex: _ExhibitView, rows: list[dict], updates: list[dict], record,
           detail: dict) -> int:
    """Insert new pairs, re-score unreviewed ones, finish the job with its search record: one transaction."""
    stored = 0
    with session_scope(rt.session_factory) as s:
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
#: compare_firing_pins both ways (each impression registered onto the other), mean registered correlation
FIRING_PIN_ALGORITHM = "firing-pin-rotation-sym/1"


def _firing_pin(rt: "Runtime", ex: _ExhibitView, surface, raw_scan: bool) -> tuple[str | None, dict | None]:
    """Find and extract the firing-pin impression of a raw 3D scan; (derived path, info)."""
    from ballistic.cartridge.firing_pin import extract_firing_pin, find_firing_pin
    from ballistic.errors import FiringPinError

    if ex.media_type != "x3p":
        return None, None
    if not rt.settings.firing_pin:
        return None, {"found": False, "reason": "firing-pin comparison is switched off (BALLISTIC_FIRING_PIN)"}
    if not raw_scan:
        return None, {"found": False, "reason": "processed scan: the firing-pin aperture was masked out"}
    try:
        g = find_firing_pin(surface)
        fp = extract_firing_pin(surface, geometry=g)
    except FiringPinError as e:
        return None, {"found": False, "reason": str(e)[:500]}
    rel = rt.store.derived_relpath(ex.id, ex.sha256, "firing-pin")
    _write_x3p(rt, fp, rel, f"ballistic firing-pin impression of exhibit {ex.id}")
    info = {"found": True, **jsonable(fp.meta.get("firing_pin", {})), "preprocess": fp.meta.get("preprocess")}
    return rel, info


def _screen(rt: "Runtime", query, found: list[tuple[int, float]], others: dict) -> tuple[list, dict]:
    """Keep the ``rerank_k`` candidates of the descriptor shortlist that register best onto ``query`` over
    the full circle at the rotation-prior spacing (``ballistic.retrieval.search.RotationPrior``); the order of
    the result is the screen's. Candidates not processed yet keep their place behind the screened ones."""
    k = rt.settings.rerank_k
    if len(found) <= k:
        return found, {"used": False, "shortlist": len(found)}
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.retrieval.search import RotationPrior

    prior = RotationPrior(query, spacing_um=CMCParams().prior_spacing_um)
    scored, pending = [], []
    for cid, vscore in found:
        o = others.get(cid)
        if o is None or o.derived_path is None:
            pending.append((cid, vscore))
            continue
        _check_stop(rt)
        ncc, _ = prior.score(_prepared(rt, cid, o.derived_path, o.label))
        scored.append((float(ncc), cid, vscore))
    scored.sort(key=lambda t: -t[0])
    kept = [(cid, vscore) for _, cid, vscore in scored[:k]]
    return kept + pending[: max(0, k - len(kept))], {
        "used": True, "shortlist": len(found), "screened": len(scored), "kept": len(kept),
        "spacing_um": prior.spacing_um, "step_deg": float(prior.angles[1] - prior.angles[0])}


def _correlate_cartridge(rt: "Runtime", job_id: int, ex: _ExhibitView) -> int:
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION, compare_pair
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.cartridge.firing_pin import FIRING_PIN_THRESHOLD, compare_firing_pins
    from ballistic.errors import FiringPinError
    from ballistic.retrieval.record import utc_now

    started = utc_now()
    # 1. preprocess the original and keep the result as an x3p beside it
    surface = load_original_surface(rt, ex.sha256, ex.media_type, ex.spacing_um)
    if ex.media_type == "x3p":
        pre = preprocess_cartridge(surface, kind=rt.settings.preprocess_kind)
    else:
        from ballistic.cartridge.image2d import preprocess_image

        pre = preprocess_image(surface, spacing_um=ex.spacing_um)
    info = str(pre.meta.get("preprocess", ""))
    pre = pre.with_heights(pre.heights, source=ex.label)
    rel = rt.store.derived_relpath(ex.id, ex.sha256)
    _write_x3p(rt, pre, rel, f"ballistic preprocessed exhibit {ex.id}")
    _check_stop(rt)
    fp_rel, fp_info = _firing_pin(rt, ex, surface, info.startswith("raw:"))
    del surface
    _check_stop(rt)
    # 2. descriptor, stored with its version in the DB (the source of truth for the index)
    raw = rt.retrieval.compute_descriptor(pre)
    with session_scope(rt.session_factory) as s:
        e = s.get(Exhibit, ex.id)
        e.derived_path, e.preprocess_info = rel, info
        e.descriptor, e.descriptor_version, e.descriptor_dim = raw.tobytes(), rt.retrieval.descriptor_version, raw.size
        e.firing_pin_path, e.firing_pin_info = fp_rel, fp_info
    rt.prepared.drop(ex.id)
    # 3. index and search the exhibit's partition
    rt.retrieval.add(ex.id, ex.partition, raw)
    shortlist_k = max(rt.settings.shortlist_k, rt.settings.rerank_k)
    found, state = rt.retrieval.search_with_state(raw, shortlist_k, ex.partition, exclude=ex.id)
    ids = [i for i, _ in found]
    done = _stored_pairs(rt, ex.id, (ex.region, "firing_pin"))
    with rt.read_factory() as s:
        others = {e.id: _view(e) for e in s.execute(select(Exhibit).where(Exhibit.id.in_(ids))).scalars()} if ids \
            else {}
    query = _prepared(rt, ex.id, rel, ex.label)
    # 3b. screen: the descriptor shortlist re-ordered by the full-circle coarse registration (the rotation
    # prior of the CMC comparison, ~10 ms a pair); its best rerank_k go on to the CMC comparison
    found, screen = _screen(rt, query, found, others)
    # 4. re-rank with the CMC comparison (likelihood ratio where a calibration of this region is configured)
    cal = rt.calibration if (rt.calibration is not None and ex.region == rt.calibration.region) else None
    rows, results = [], []
    for cid, vscore in found:
        o = others.get(cid)
        key = (min(ex.id, cid), max(ex.id, cid), ex.region)
        res = {"exhibit_id": cid, "vector_score": vscore}
        if key in done:
            results.append({**res, "similarity": done[key]["similarity"], "cmc_count": done[key]["cmc_count"],
                            "compared": "earlier"})
            continue
        if o is None or o.derived_path is None:
            results.append({**res, "similarity": None, "compared": "not yet processed"})
            continue
        _check_stop(rt)
        r = compare_pair(query, _prepared(rt, cid, o.derived_path, o.label))
        reg = r.registration
        row = dict(exhibit_a_id=ex.id, exhibit_b_id=cid, pair_lo=key[0], pair_hi=key[1],
                   region=ex.region, vector_score=float(vscore), similarity=float(r.similarity),
                   cmc_count=int(r.cmc_count), identification=bool(r.identification),
                   registration={"angle_deg": float(reg.angle_deg), "dy_um": float(reg.dy_um),
                                 "dx_um": float(reg.dx_um), "ncc": float(reg.ncc)},
                   explanation=jsonable(r.to_dict()), algorithm_version=ALGORITHM_VERSION,
                   descriptor_version=rt.retrieval.descriptor_version, job_id=job_id)
        if cal is not None:
            row["log10_lr"], row["log10_lr_low"], row["log10_lr_high"] = cal.lr(row["similarity"])
            row["calibration_id"] = cal.id
        rows.append(row)
        results.append({**res, "similarity": row["similarity"], "cmc_count": row["cmc_count"], "compared": "now",
                        "log10_lr": row.get("log10_lr")})
    # 5. firing pins of the re-ranked candidates (raw scans where the crater was found on both sides)
    fp_compared, fp_notes = 0, []
    if fp_rel is not None:
        qfp = _firing_pin_surface(rt, ex.id, fp_rel)
        for cid, vscore in found:
            o = others.get(cid)
            key = (min(ex.id, cid), max(ex.id, cid), "firing_pin")
            if o is None or o.firing_pin_path is None or key in done:
                continue
            _check_stop(rt)
            ofp = _firing_pin_surface(rt, cid, o.firing_pin_path)
            try:  # compare_firing_pins registers b onto a and is not symmetric: both ways, mean score
                fwd, bwd = compare_firing_pins(qfp, ofp), compare_firing_pins(ofp, qfp)
            except FiringPinError as e:
                fp_notes.append(f"{cid}: {e}")
                continue
            if not (np.isfinite(fwd.score) and np.isfinite(bwd.score)):
                fp_notes.append(f"{cid}: too little shared measured area "
                                f"({min(fwd.overlap_mm2, bwd.overlap_mm2):.3f} mm^2)")
                continue
            score = 0.5 * (fwd.score + bwd.score)
            fp_compared += 1

            def _dir(fr):
                return {"score": fr.score, "angle_deg": fr.angle_deg, "dy_um": fr.dy_um, "dx_um": fr.dx_um,
                        "coarse_ncc": fr.coarse_ncc, "angular_z": fr.angular_z, "overlap_mm2": fr.overlap_mm2}

            rows.append(dict(
                exhibit_a_id=ex.id, exhibit_b_id=cid, pair_lo=key[0], pair_hi=key[1], region="firing_pin",
                vector_score=float(vscore), similarity=float(score), cmc_count=None,
                identification=bool(score >= FIRING_PIN_THRESHOLD),
                registration={"angle_deg": fwd.angle_deg, "dy_um": fwd.dy_um, "dx_um": fwd.dx_um,
                              "ncc": fwd.coarse_ncc},
                explanation=jsonable({"algorithm": FIRING_PIN_ALGORITHM, "score": score,
                                       "forward": _dir(fwd), "backward": _dir(bwd),
                                       "threshold": FIRING_PIN_THRESHOLD,
                                       "note": ("score = mean of the registered correlations of the two firing-pin "
                                                "impressions, each registered onto the other (forward: target onto "
                                                "reference). Weak evidence on the real pairs measured; the threshold "
                                                "is a normalisation scale, not a validated decision rule")}),
                algorithm_version=FIRING_PIN_ALGORITHM, descriptor_version=rt.retrieval.descriptor_version,
                job_id=job_id))
    scored = sum(1 for r in results if r.get("similarity") is not None)
    record = _search_record(
        rt, rt.retrieval, ex, state, algorithm=ALGORITHM_VERSION, params=CMCParams().as_dict(), n_scored=scored,
        started_at=started, results=results,
        retrieval_params={"rerank_k": rt.settings.rerank_k, "shortlist_k": shortlist_k, "screen": screen,
                          "preprocess": info, "calibration_id": cal.id if cal is not None else None,
                          "firing_pin": {"enabled": bool(rt.settings.firing_pin), "algorithm": FIRING_PIN_ALGORITHM,
                                         "query_found": fp_rel is not None, "compared": fp_compared}},
        notes="; ".join(([f"firing pin: {fp_info['reason']}"] if fp_info and not fp_info.get("found") else [])
                        + [f"firing pin vs {n}" for n in fp_notes])[:2000])
    return _store(rt, job_id, ex, rows, [], record,
                  {"searched": len(found), "descriptor_version": rt.retrieval.descriptor_version,
                   "algorithm": ALGORITHM_VERSION, "firing_pin_compared": fp_compared})


# --------------------------------------------------------------------------- bullets
def _bullet_lands(rt: "Runtime", exhibit_id: int, *, extract: bool) -> tuple[dict[int, list], dict[int, str], list]:
    """Signatures of a bullet's lands, ``{land_index: [Signature]}``, and ``{land_index: sha256}`` of those
    lands. With ``extract``, lands without current signatures get them (stored on disk and in the DB)."""
    from ballistic.bullet.signature import land_signatures
    from ballistic.errors import BulletError
    from ballistic.io.x3p import read_x3p

    from api.bullets import BULLET_ALGORITHM_VERSION, save_signatures
    from api.limits import max_scan_points

    step = float(rt.settings.bullet_step_um)
    with rt.read_factory() as s:
        lands = [(l.id, l.land_index, l.original_sha256, l.signature_path, l.signature_info)
                 for l in s.execute(select(LandScan).where(LandScan.exhibit_id == exhibit_id)
                                    .order_by(LandScan.land_index)).scalars()]
    sigs: dict[int, list] = {}
    shas: dict[int, str] = {}
    errors = []
    for lid, idx, sha, path, info in lands:
        # current: extracted at this step by this bullet algorithm, and still on disk
        current = bool(path and info and info.get("step_um") == step
                       and info.get("algorithm") == BULLET_ALGORITHM_VERSION and rt.store.resolve(path).is_file())
        if not current:
            if not extract:
                continue
            _check_stop(rt)
            try:
                surf = read_x3p(rt.store.original_path(sha), max_points=max_scan_points(rt.settings))
                land = land_signatures(surf, step_um=step)
            except BulletError as e:
                errors.append(f"land {idx}: {e}")
                new_path = None
                new_info = {"step_um": step, "algorithm": BULLET_ALGORITHM_VERSION, "error": str(e)[:500]}
            else:
                new_path = f"derived/{sha[:2]}/{exhibit_id}-{sha[:16]}-lea{step:g}.npz"
                save_signatures(rt.store.resolve(new_path), land)
                new_info = {"step_um": step, "algorithm": BULLET_ALGORITHM_VERSION, "signatures": len(land),
                            "spacing_um": float(land[0].spacing_um),
                            "low_confidence": sum(bool(x.low_confidence) for x in land),
                            "quality_median": jsonable(float(np.nanmedian([x.quality for x in land]))),
                            "crosscuts_um": [round(float(x.meta.get("crosscut_um", float("nan"))), 1) for x in land],
                            "striae_rotated_deg": jsonable(land[0].meta.get("striae_rotated_deg"))}
            with session_scope(rt.session_factory) as s:
                s.execute(update(LandScan).where(LandScan.id == lid).values(signature_path=new_path,
                                                                          signature_info=new_info))
            path, info = new_path, new_info
        if path and not info.get("error"):
            sigs[idx] = _land_signatures(rt, exhibit_id, path)
            shas[idx] = sha
    return sigs, shas, errors


def _correlate_bullet(rt: "Runtime", job_id: int, ex: _ExhibitView) -> int:
    from ballistic.bullet.descriptor import bullet_descriptor
    from ballistic.bullet.sam import BULLET_PHASE_ALPHA, BULLET_SAM_THRESHOLD
    from ballistic.retrieval.record import utc_now

    from api.bullets import BULLET_ALGORITHM_VERSION, compare_bullets, land_positions_count, lands_key

    started = utc_now()
    br = rt.bullet_retrieval
    sigs, shas, errors = _bullet_lands(rt, ex.id, extract=True)
    if not sigs:
        raise ValueError("no land of this bullet yields a signature: " + ("; ".join(errors) or "no land scans"))
    raw = np.asarray(bullet_descriptor([x for idx in sorted(sigs) for x in sigs[idx]]), dtype=np.float32)
    if not np.all(np.isfinite(raw)):
        raise ValueError("bullet descriptor has non-finite values")
    with session_scope(rt.session_factory) as s:
        e = s.get(Exhibit, ex.id)
        e.descriptor, e.descriptor_version, e.descriptor_dim = raw.tobytes(), br.descriptor_version, raw.size
        e.preprocess_info = (f"bullet: {len(sigs)} land(s) with signatures every {rt.settings.bullet_step_um:g} um"
                             + (f"; {len(errors)} land(s) failed" if errors else ""))
    br.add(ex.id, ex.partition, raw)
    found, state = br.search_with_state(raw, rt.settings.rerank_k, ex.partition, exclude=ex.id)
    ids = [i for i, _ in found]
    done = _stored_pairs(rt, ex.id, (ex.region,))
    with rt.read_factory() as s:
        others = {e.id: _view(e) for e in s.execute(select(Exhibit).where(Exhibit.id.in_(ids))).scalars()} if ids \
            else {}
    rows, updates, results, notes = [], [], [], list(errors)
    for cid, vscore in found:
        o = others.get(cid)
        res = {"exhibit_id": cid, "vector_score": vscore}
        if o is None:
            continue
        osigs, oshas, _ = _bullet_lands(rt, cid, extract=False)
        lo, hi = min(ex.id, cid), max(ex.id, cid)
        key = lands_key(shas if lo == ex.id else oshas, oshas if lo == ex.id else shas)
        prior = done.get((lo, hi, ex.region))
        if prior is not None and (prior["registration"] or {}).get("lands_key") == key:
            results.append({**res, "similarity": prior["similarity"], "compared": "earlier"})
            continue
        if prior is not None and prior["review_status"] != "unreviewed":
            notes.append(f"{cid}: reviewed pair kept as scored on its earlier lands")
            results.append({**res, "similarity": prior["similarity"], "compared": "earlier (reviewed)"})
            continue
        if not osigs:
            results.append({**res, "similarity": None, "compared": "not yet processed"})
            continue
        try:
            n = land_positions_count(ex.land_count, sigs, o.land_count, osigs)
        except ValueError as e:
            notes.append(f"{cid}: {e}")
            results.append({**res, "similarity": None, "compared": "incompatible"})
            continue
        _check_stop(rt)
        b = compare_bullets(sigs, osigs, n)
        vals = dict(vector_score=float(vscore), similarity=b["sam"], cmc_count=None,
                    identification=b["identification"],
                    registration={"phase": b["phase"], "lands_compared": b["lands_compared"], "lands_key": key,
                                  "phase_p_value": b["phase_p_value"]},
                    explanation=b["explanation"], algorithm_version=BULLET_ALGORITHM_VERSION,
                    descriptor_version=br.descriptor_version, job_id=job_id)
        if prior is not None:  # a bullet gained a land: score again (unreviewed only, checked in the update)
            # keep the stored orientation: exhibit_a stays the reference of the stored comparison
            updates.append({"id": prior["id"], **vals, "exhibit_a_id": ex.id, "exhibit_b_id": cid})
        else:
            rows.append(dict(exhibit_a_id=ex.id, exhibit_b_id=cid, pair_lo=lo, pair_hi=hi, region=ex.region, **vals))
        results.append({**res, "similarity": b["sam"], "phase": b["phase"], "lands_compared": b["lands_compared"],
                        "compared": "now"})
    scored = sum(1 for r in results if r.get("similarity") is not None)
    record = _search_record(
        rt, br, ex, state, algorithm=BULLET_ALGORITHM_VERSION,
        params={"land_signatures": {"step_um": float(rt.settings.bullet_step_um)}, "land_features": "defaults",
                "land_score": "ccf", "sam_threshold": BULLET_SAM_THRESHOLD,
                "phase_test_alpha": BULLET_PHASE_ALPHA},
        n_scored=scored, started_at=started, results=results,
        retrieval_params={"rerank_k": rt.settings.rerank_k, "lands": {str(k): v for k, v in sorted(shas.items())}},
        notes="; ".join(notes)[:2000])
    return _store(rt, job_id, ex, rows, updates, record,
                  {"searched": len(found), "descriptor_version": br.descriptor_version,
                   "algorithm": BULLET_ALGORITHM_VERSION, "lands": sorted(sigs)})


