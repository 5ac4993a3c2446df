"""Ranked candidate lists (per region, or breech face and firing pin fused) with likelihood ratios, review
depth and the search record, and the explanation figure of a candidate (breech face, firing pin, bullet)."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
from typing import Annotated, Literal, Optional

import numpy as np
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from sqlalchemy import case as sql_case
from sqlalchemy import or_, select
from sqlalchemy.orm import aliased

from api import audit
from api.deps import EvidenceReader, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.models import Candidate, Case, Exhibit, Job
from api.schemas import CandidateList, CandidatePublic, ErrorPublic, ReviewDepth
from api.views import candidate_public

router = APIRouter(tags=["candidates"])
_ERR = {"model": ErrorPublic}
_FIGURE_LOCK = threading.Lock()  # matplotlib's pyplot state is not thread-safe
FIGURE_VERSION = "fig2"  # both directions, legend, scale bars, colour bar, LR (cached figures of fig1 are redrawn)


REGIONS = ("breech_face", "breech_face_2d", "firing_pin", "bullet_lea", "fused")


def _latest_record(session, exhibit_id: int) -> tuple[dict | None, bool | None]:
    from ballistic.errors import SearchRecordError
    from ballistic.retrieval.record import SearchRecord

    text = session.execute(select(Job.search_record_json).where(Job.exhibit_id == exhibit_id, Job.status == "done",
                                                                Job.search_record_json.is_not(None))
                           .order_by(Job.id.desc()).limit(1)).scalar()
    if text is None:
        return None, None
    d = json.loads(text)
    try:
        SearchRecord.from_dict(dict(d))
        return d, True
    except SearchRecordError:
        return d, False


@router.get("/v1/exhibits/{exhibit_id}/candidates", response_model=CandidateList, responses={404: _ERR},
            summary="Ranked candidates of an exhibit (highest score first); explanations per candidate")
def list_candidates(
        exhibit_id: IdPath, rt: RuntimeDep, session: ReadSessionDep, who: EvidenceReader,
        region: Annotated[Optional[Literal[REGIONS]], Query(  # type: ignore[valid-type]
            description=("default: the exhibit's region (breech_face, breech_face_2d or bullet_lea); firing_pin: "
                         "the firing-pin comparisons of a raw scan; fused: breech face and firing pin combined "
                         "(fuse_scores, normalised mode), ranked by fused_score"))] = None,
        calibre: Annotated[Optional[str], Query(max_length=50)] = None,
        firing_pin_shape: Annotated[Optional[str], Query(max_length=50)] = None,
        land_count: Annotated[Optional[int], Query(ge=0, le=64)] = None,
        twist: Annotated[Optional[str], Query(pattern="^(left|right)$")] = None,
        agency: Annotated[Optional[str], Query(max_length=200)] = None,
        role: Annotated[Optional[str], Query(pattern="^(evidence|test_fire)$")] = None,
        date_from: Annotated[Optional[dt.date], Query(description="other exhibit recovered on/after")] = None,
        date_to: Annotated[Optional[dt.date], Query(description="other exhibit recovered on/before")] = None,
        min_score: Annotated[Optional[float], Query(ge=-1e9, le=1e9)] = None,
        review_status: Annotated[Optional[str],
                                 Query(pattern="^(unreviewed|confirmed|rejected|inconclusive)$")] = None,
        include_explanation: Annotated[bool, Query(description=(
            "add each pair's full explanation (cells of both directions, ~10 KB a pair); by default the list is "
            "light and the explanation is fetched per candidate at its explanation_url"))] = False,
        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> CandidateList:
    """Each item carries its score (and, for calibrated breech faces, ``log10_lr`` with its interval). The
    list says how deep to review for recall 0.95 / 0.99 at the current database size (``review_depth``,
    calibrated breech-face lists) and shows the search record of the exhibit's latest job. Light by default:
    a candidate's explanation comes with ``GET /v1/candidates/{id}`` (its ``explanation_url``)."""
    ex = session.get(Exhibit, exhibit_id)
    if ex is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
    region = region or ex.region
    fused = region == "fused"
    base_region = ex.region if fused else region
    other = aliased(Exhibit)
    other_id = sql_case((Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id), else_=Candidate.exhibit_a_id)
    q = (select(Candidate).join(other, other.id == other_id).join(Case, Case.id == other.case_id)
         .where(or_(Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id == exhibit_id),
                Candidate.region == base_region))
    for col, val in ((other.calibre, calibre), (other.firing_pin_shape, firing_pin_shape),
                     (other.land_count, land_count), (other.twist, twist), (Case.agency, agency),
                     (other.role, role), (Candidate.review_status, review_status)):
        if val is not None:
            q = q.where(col == val)
    if date_from is not None:
        q = q.where(other.recovery_date >= date_from)
    if date_to is not None:
        q = q.where(other.recovery_date <= date_to)
    if fused:
        from ballistic.cartridge.firing_pin import fuse_scores

        fp = {(r.pair_lo, r.pair_hi): r.similarity for r in session.execute(
            select(Candidate.pair_lo, Candidate.pair_hi, Candidate.similarity).where(
                Candidate.region == "firing_pin",
                or_(Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id == exhibit_id))).all()}
        scored = []
        for c in session.execute(q).scalars().unique():
            f = fp.get((c.pair_lo, c.pair_hi))
            v = fuse_scores(c.similarity, f)
            if min_score is None or v >= min_score:
                scored.append((v, f, c))
        scored.sort(key=lambda t: (-t[0], t[2].id))
        items = [candidate_public(c, exhibit_id, i + 1, explain=include_explanation, fused=v, firing_pin=f)
                 for i, (v, f, c) in enumerate(scored[:limit])]
    else:
        if min_score is not None:
            q = q.where(Candidate.similarity >= min_score)
        rows = session.execute(q.order_by(Candidate.similarity.desc(), Candidate.id).limit(limit)
                               ).scalars().unique().all()
        items = [candidate_public(c, exhibit_id, i + 1, explain=include_explanation) for i, c in enumerate(rows)]
    cal = rt.calibration
    depth = calib = None
    if cal is not None and region == cal.region and region == ex.region:
        retr = rt.bullet_retrieval if ex.exhibit_type == "bullet" else rt.retrieval
        n = retr.count(ex.partition) - (1 if ex.id in retr else 0)
        d = cal.review_depth(n, rt.settings.rerank_k)
        depth = ReviewDepth(**d) if d else None
        calib = cal.describe()
    record, verified = _latest_record(session, exhibit_id)
    return CandidateList(exhibit_id=exhibit_id, region=region, items=items, review_depth=depth, calibration=calib,
                         search_record=record, search_record_verified=verified)


@router.get("/v1/candidates/{candidate_id}", response_model=CandidatePublic, responses={404: _ERR},
            summary="One candidate pair, seen from its reference exhibit, with its explanation")
def get_candidate(candidate_id: IdPath, session: ReadSessionDep, who: EvidenceReader,
                  include_explanation: bool = True) -> CandidatePublic:
    c = session.get(Candidate, candidate_id)
    if c is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} not found")
    return candidate_public(c, c.exhibit_a_id, 0, explain=include_explanation)


def _render_figure(rt, c: Candidate, a: Exhibit, b: Exhibit, path) -> None:
    if c.region == "bullet_lea":
        return _bullet_figure(rt, c, a, b, path)
    if c.region == "firing_pin":
        return _firing_pin_figure(rt, c, a, b, path)
    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.cartridge.cmc.params import CMCParams, prepare
    from ballistic.io.x3p import read_x3p
    from ballistic.viz.explain import explanation_figure

    if not a.derived_path or not b.derived_path:
        raise HTTPException(status.HTTP_409_CONFLICT, "the preprocessed surfaces are not available yet")
    sa = read_x3p(rt.store.resolve(a.derived_path), max_points=rt.settings.max_pixels)
    sb = read_x3p(rt.store.resolve(b.derived_path), max_points=rt.settings.max_pixels)
    la, lb = f"{a.case.case_number}/{a.exhibit_ref}", f"{b.case.case_number}/{b.exhibit_ref}"
    p = CMCParams()
    r = compare_pair(prepare(sa, p, name=la), prepare(sb, p, name=lb), p)
    with _FIGURE_LOCK:  # the stored likelihood ratio of the pair (calibrated regions) goes into the header
        explanation_figure(sa, sb, r, path, log10_lr=c.log10_lr,  # written atomically (viz.render.save_figure)
                           log10_lr_interval=(c.log10_lr_low, c.log10_lr_high) if c.log10_lr is not None else None,
                           calibration_id=c.calibration_id)


def _bullet_figure(rt, c: Candidate, a: Exhibit, b: Exhibit, path) -> None:
    from api.bullets import bullet_figure
    from api.pipeline import _bullet_lands

    la, _, _ = _bullet_lands(rt, a.id, extract=False)
    lb, _, _ = _bullet_lands(rt, b.id, extract=False)
    if not la or not lb:
        raise HTTPException(status.HTTP_409_CONFLICT, "the land signatures are not available yet")
    with _FIGURE_LOCK:  # written atomically (viz.render.save_figure)
        bullet_figure(la, lb, c.explanation, path, labels=(f"{a.case.case_number}/{a.exhibit_ref}",
                                                            f"{b.case.case_number}/{b.exhibit_ref}"))


def _firing_pin_figure(rt, c: Candidate, a: Exhibit, b: Exhibit, path) -> None:
    """Reference impression, target impression turned by the registered angle, both shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.ndimage as ndi
    from ballistic.io.x3p import read_x3p
    from ballistic.viz.render import save_figure, shade

    if not a.firing_pin_path or not b.firing_pin_path:
        raise HTTPException(status.HTTP_409_CONFLICT, "the firing-pin impressions are not available")
    sa = read_x3p(rt.store.resolve(a.firing_pin_path), max_points=rt.settings.max_pixels)
    sb = read_x3p(rt.store.resolve(b.firing_pin_path), max_points=rt.settings.max_pixels)
    reg = c.registration or {}
    ang = float(reg.get("angle_deg") or 0.0)
    # the stored registration puts the target (exhibit b) on the reference (exhibit a); scipy turns clockwise
    # for positive angles in display coordinates, the library counter-clockwise: the sign follows compare
    hb = sb.heights
    rot = ndi.rotate(np.where(np.isfinite(hb), hb, 0.0), ang, reshape=False, order=1, cval=0.0)
    mrot = ndi.rotate(np.isfinite(hb).astype(float), ang, reshape=False, order=1, cval=0.0) > 0.5
    sb_rot = sb.with_heights(np.where(mrot, rot, np.nan))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, s_, t in ((axes[0], sa, f"{a.case.case_number}/{a.exhibit_ref} (reference)"),
                      (axes[1], sb_rot, f"{b.case.case_number}/{b.exhibit_ref} turned {ang:.1f} deg")):
        ax.imshow(shade(s_, z_factor=5.0), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(t, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"firing pin: registered correlation {c.similarity:.3f} (mean of both directions; weak evidence, "
                 f"provisional threshold)", fontsize=10)
    fig.tight_layout()
    with _FIGURE_LOCK:
        save_figure(fig, path, dpi=100)


@router.get("/v1/candidates/{candidate_id}/figure.png", response_class=FileResponse,
            responses={404: _ERR, 409: _ERR, 200: {"content": {"image/png": {}}, "description": "PNG figure"}},
            summary="Explanation figure: reference, aligned target, overlay, CMC cells (audited)")
def candidate_figure(candidate_id: IdPath, rt: RuntimeDep, session: SessionDep, who: EvidenceReader) -> FileResponse:
    with rt.read_factory() as rs:
        c = rs.get(Candidate, candidate_id)
        if c is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} not found")
        a, b = c.exhibit_a, c.exhibit_b
        tag = re.sub(r"[^A-Za-z0-9._-]", "_", c.algorithm_version)
        if (c.registration or {}).get("lands_key"):  # a bullet pair scored again on more lands
            tag += "-" + str(c.registration["lands_key"])[:12]
        if c.region in ("breech_face", "breech_face_2d"):  # figure layout version and the LR it shows
            tag += f"-{FIGURE_VERSION}-" + re.sub(r"[^A-Za-z0-9._-]", "_", c.calibration_id or "nolr")[:40]
        path = rt.store.root / "derived" / "figures" / f"candidate-{c.id}-{tag}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _render_figure(rt, c, a, b, path)
    audit.append(session, actor=who.actor, action="evidence.read_figure", resource_type="candidate",
                 resource_id=candidate_id, detail={"exhibits": [a.id, b.id]})
    session.commit()
    return FileResponse(path, media_type="image/png")
