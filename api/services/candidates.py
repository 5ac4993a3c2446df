"""Ranked candidate lists (per region, or breech face and firing pin fused) with likelihood ratios, review
depth and the search record, one candidate with its explanation, and the explanation figure of a candidate
(breech face, firing pin, bullet). Called by ``api.routes.candidates`` and the web pages."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
from pathlib import Path

from sqlalchemy import case as sql_case
from sqlalchemy import func, or_, select
from sqlalchemy.orm import aliased

from api import audit
from api.db.models import Candidate, Case, Exhibit, Job
from api.errors import Conflict, NotFound
from api.schemas import CandidateList, CandidatePublic, ReviewDepth, SecondLookPublic
from api.services.exhibits import exhibit_row
from api.services.serializers import candidate_public

__all__ = ["REGIONS", "FIGURE_VERSION", "list_candidates", "get_candidate", "candidate_figure", "second_look",
           "second_look_figure"]

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


def _comparable(rt, session, ex: Exhibit) -> int:
    """Exhibits the query can be compared with now: the others of its partition with a descriptor of the current
    version (what its descriptor space indexes)."""
    from api.index import space_of

    version = rt.spaces[space_of(ex.exhibit_type)].descriptor_version
    return int(session.execute(select(func.count(Exhibit.id)).where(
        Exhibit.partition == ex.partition, Exhibit.descriptor.is_not(None), Exhibit.id != ex.id,
        Exhibit.descriptor_version == version)).scalar_one())


def list_candidates(rt, session, exhibit_id: int, *, region: str | None = None, calibre: str | None = None,
                    firing_pin_shape: str | None = None, land_count: int | None = None, twist: str | None = None,
                    agency: str | None = None, role: str | None = None, date_from: dt.date | None = None,
                    date_to: dt.date | None = None, min_score: float | None = None,
                    review_status: str | None = None, include_explanation: bool = False,
                    limit: int = 50) -> CandidateList:
    """An exhibit's candidates, highest score first, with ``review_depth`` (calibrated breech-face lists) and the
    search record of the exhibit's latest job. Light unless ``include_explanation``."""
    ex = exhibit_row(session, exhibit_id)
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
        d = cal.review_depth(_comparable(rt, session, ex), rt.settings.rerank_k)
        depth = ReviewDepth(**d) if d else None
        calib = cal.describe()
    record, verified = _latest_record(session, exhibit_id)
    return CandidateList(exhibit_id=exhibit_id, region=region, items=items, review_depth=depth, calibration=calib,
                         search_record=record, search_record_verified=verified)


def get_candidate(session, candidate_id: int, *, include_explanation: bool = True) -> CandidatePublic:
    """One candidate pair, seen from its reference exhibit."""
    c = session.get(Candidate, candidate_id)
    if c is None:
        raise NotFound(f"candidate {candidate_id} not found")
    return candidate_public(c, c.exhibit_a_id, 0, explain=include_explanation)


def _label(e: Exhibit) -> str:
    return f"{e.case.case_number}/{e.exhibit_ref}"


def _breech_faces(rt, a: Exhibit, b: Exhibit):
    """The pair's preprocessed breech faces as stored (``derived_path``), each also prepared for comparison:
    ``(surface_a, surface_b, prepared_a, prepared_b, params)``; 409 while either is not available yet."""
    from ballistic.cartridge.cmc.params import CMCParams, prepare
    from ballistic.io.x3p import read_x3p

    if not a.derived_path or not b.derived_path:
        raise Conflict("the preprocessed surfaces are not available yet")
    sa = read_x3p(rt.store.resolve(a.derived_path), max_points=rt.settings.max_pixels)
    sb = read_x3p(rt.store.resolve(b.derived_path), max_points=rt.settings.max_pixels)
    p = CMCParams()
    return sa, sb, prepare(sa, p, name=_label(a)), prepare(sb, p, name=_label(b)), p


def _render_figure(rt, session, c: Candidate, a: Exhibit, b: Exhibit, path: Path) -> None:
    from ballistic.io.x3p import read_x3p

    if c.region == "bullet_lea":
        from api.bullets import bullet_figure, current_lands

        step = rt.settings.bullet_step_um
        la, _ = current_lands(session, rt.store, a.id, step)
        lb, _ = current_lands(session, rt.store, b.id, step)
        if not la or not lb:
            raise Conflict("the land signatures are not available yet")
        with _FIGURE_LOCK:  # written atomically (viz.render.save_figure)
            bullet_figure(la, lb, c.explanation, path, labels=(_label(a), _label(b)))
        return
    if c.region == "firing_pin":
        from ballistic.viz.explain import firing_pin_figure

        if not a.firing_pin_path or not b.firing_pin_path:
            raise Conflict("the firing-pin impressions are not available")
        sa = read_x3p(rt.store.resolve(a.firing_pin_path), max_points=rt.settings.max_pixels)
        sb = read_x3p(rt.store.resolve(b.firing_pin_path), max_points=rt.settings.max_pixels)
        with _FIGURE_LOCK:  # the stored registration puts the target (exhibit b) on the reference (exhibit a)
            firing_pin_figure(sa, sb, c.registration or {}, path, score=c.similarity, labels=(_label(a), _label(b)))
        return
    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.viz.explain import explanation_figure

    sa, sb, pa, pb, p = _breech_faces(rt, a, b)
    r = compare_pair(pa, pb, p)
    with _FIGURE_LOCK:  # the stored likelihood ratio of the pair (calibrated regions) goes into the header
        explanation_figure(sa, sb, r, path, log10_lr=c.log10_lr,  # written atomically (viz.render.save_figure)
                           log10_lr_interval=(c.log10_lr_low, c.log10_lr_high) if c.log10_lr is not None else None,
                           calibration_id=c.calibration_id)


def candidate_figure(rt, session, who, candidate_id: int) -> Path:
    """The candidate's explanation figure (rendered once, cached under ``derived/figures``); the read is audited
    (``evidence.read_figure``, committed on ``session``)."""
    with rt.read_factory() as rs:
        c = rs.get(Candidate, candidate_id)
        if c is None:
            raise NotFound(f"candidate {candidate_id} not found")
        a, b = c.exhibit_a, c.exhibit_b
        tag = re.sub(r"[^A-Za-z0-9._-]", "_", c.algorithm_version)
        if (c.registration or {}).get("lands_key"):  # a bullet pair scored again on more lands
            tag += "-" + str(c.registration["lands_key"])[:12]
        if c.region in ("breech_face", "breech_face_2d"):  # figure layout version and the LR it shows
            tag += f"-{FIGURE_VERSION}-" + re.sub(r"[^A-Za-z0-9._-]", "_", c.calibration_id or "nolr")[:40]
        elif c.region == "firing_pin":
            tag += "-fp2"                     # registered with the library's warp (translation included)
        path = rt.store.root / "derived" / "figures" / f"candidate-{c.id}-{tag}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _render_figure(rt, rs, c, a, b, path)
    audit.append(session, actor=who.actor, action="evidence.read_figure", resource_type="candidate",
                 resource_id=candidate_id, detail={"exhibits": [a.id, b.id]})
    session.commit()
    return path


_SECOND_LOOK_NOTE = ("registered by the whole-circle search at the coarse spacing (register_thorough); no likelihood "
                     "ratio: the calibration was fitted on the standard search, and a wider search also finds higher "
                     "chance correlations between different sources. The stored comparison is not changed.")


def _second_look_path(rt, c: Candidate, suffix: str) -> Path:
    """Cache file of a candidate's second look: keyed on the comparison code and on the two surfaces compared
    (a re-normalised exhibit gets another ``derived_path``)."""
    import hashlib

    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION

    tag = re.sub(r"[^A-Za-z0-9._-]", "_", ALGORITHM_VERSION)
    surfaces = hashlib.sha256(f"{c.exhibit_a.derived_path}|{c.exhibit_b.derived_path}".encode()).hexdigest()[:12]
    return rt.store.root / "derived" / "second_look" / f"candidate-{c.id}-{tag}-{surfaces}{suffix}"


def second_look(rt, session, who, candidate_id: int) -> SecondLookPublic:
    """The candidate's breech faces compared again with the thorough registration search
    (:func:`ballistic.cartridge.cmc.register.register_thorough`, ~2-3 s): for a pair an examiner believes the
    standard search mis-registered (other kit, other upstream pipeline). Computed once per algorithm version
    and cached beside the figures, with its explanation figure (:func:`second_look_figure`); every read is
    audited (``evidence.second_look``). The stored comparison, its rank and its likelihood ratio stay as they
    are."""
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION, compare_pair
    from ballistic.io.atomic import atomic_write_bytes
    from ballistic.viz.explain import explanation_figure

    with rt.read_factory() as rs:
        c = rs.get(Candidate, candidate_id)
        if c is None:
            raise NotFound(f"candidate {candidate_id} not found")
        if c.region != "breech_face":
            raise Conflict(f"a second look re-registers 3D breech faces; this candidate is a {c.region} pair")
        a, b = c.exhibit_a, c.exhibit_b
        stored = {"cmc_count": c.cmc_count, "identification": c.identification, "similarity": c.similarity,
                  "registration": {**(c.registration or {}),
                                   "mirrored": bool((c.explanation or {}).get("mirrored", False))},
                  "algorithm_version": c.algorithm_version}
        path = _second_look_path(rt, c, ".json")
        if path.is_file():
            out = json.loads(path.read_text())
        else:
            sa, sb, pa, pb, p = _breech_faces(rt, a, b)
            r = compare_pair(pa, pb, p, search="thorough")
            path.parent.mkdir(parents=True, exist_ok=True)
            with _FIGURE_LOCK:          # no LR in the header: the calibration is of the standard search
                explanation_figure(sa, sb, r, _second_look_path(rt, c, ".png"))
            reg = r.registration
            out = {"search": r.search, "algorithm_version": ALGORITHM_VERSION, "cmc_count": r.cmc_count,
                   "cmc_forward": r.high[0].count, "cmc_backward": r.high[1].count,
                   "identification": r.identification, "similarity": r.similarity,
                   "registration": {"angle_deg": reg.angle_deg, "dy_um": reg.dy_um, "dx_um": reg.dx_um,
                                    "ncc": reg.ncc, "mirrored": reg.mirrored},
                   "model_score": r.model_score, "seconds": r.seconds}
            atomic_write_bytes(path, json.dumps(out).encode())      # last: its presence means both are there
    old = stored["registration"] or {}
    turn = abs((out["registration"]["angle_deg"] - float(old.get("angle_deg", 0.0)) + 180.0) % 360.0 - 180.0)
    moved = "angle_deg" in old and (turn > 3.0 or old["mirrored"] != out["registration"]["mirrored"])
    audit.append(session, actor=who.actor, action="evidence.second_look", resource_type="candidate",
                 resource_id=candidate_id, detail={"exhibits": [a.id, b.id], "cmc_count": out["cmc_count"],
                                                   "stored_cmc_count": stored["cmc_count"]})
    session.commit()
    return SecondLookPublic(candidate_id=candidate_id, reference_exhibit_id=a.id, target_exhibit_id=b.id,
                            pose_changed=moved, stored=stored, note=_SECOND_LOOK_NOTE,
                            figure_url=f"/v1/candidates/{candidate_id}/second-look/figure.png", **out)


def second_look_figure(rt, session, who, candidate_id: int) -> Path:
    """The explanation figure of the candidate's second look (computed with it when missing; audited as a
    figure read, ``evidence.read_figure`` with ``second_look``)."""
    with rt.read_factory() as rs:
        c = rs.get(Candidate, candidate_id)
        if c is None:
            raise NotFound(f"candidate {candidate_id} not found")
        ids = [c.exhibit_a_id, c.exhibit_b_id]
        png, done = _second_look_path(rt, c, ".png"), _second_look_path(rt, c, ".json")
    if not png.is_file() or not done.is_file():
        done.unlink(missing_ok=True)           # the figure is drawn with the result: compute both again
        second_look(rt, session, who, candidate_id)
    audit.append(session, actor=who.actor, action="evidence.read_figure", resource_type="candidate",
                 resource_id=candidate_id, detail={"exhibits": ids, "second_look": True})
    session.commit()
    return png
