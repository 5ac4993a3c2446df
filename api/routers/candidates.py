"""Ranked candidate lists (per region) and the explanation figure of a candidate."""
from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import threading
from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse
from sqlalchemy import case as sql_case
from sqlalchemy import or_, select
from sqlalchemy.orm import aliased

from api import audit
from api.deps import EvidenceReader, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.models import Candidate, Case, Exhibit
from api.schemas import CandidateList, CandidatePublic, ErrorPublic
from api.views import candidate_public

router = APIRouter(tags=["candidates"])
_ERR = {"model": ErrorPublic}
_FIGURE_LOCK = threading.Lock()  # matplotlib's pyplot state is not thread-safe


@router.get("/v1/exhibits/{exhibit_id}/candidates", response_model=CandidateList, responses={404: _ERR},
            summary="Ranked candidates of an exhibit (highest CMC similarity first), with explanation data")
def list_candidates(
        exhibit_id: IdPath, session: ReadSessionDep, who: EvidenceReader,
        region: Annotated[Optional[str], Query(max_length=50, description="default: the exhibit's region")] = None,
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
        include_explanation: bool = True,
        limit: Annotated[int, Query(ge=1, le=500)] = 50) -> CandidateList:
    ex = session.get(Exhibit, exhibit_id)
    if ex is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
    region = region or ex.region
    other = aliased(Exhibit)
    other_id = sql_case((Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id), else_=Candidate.exhibit_a_id)
    q = (select(Candidate).join(other, other.id == other_id).join(Case, Case.id == other.case_id)
         .where(or_(Candidate.exhibit_a_id == exhibit_id, Candidate.exhibit_b_id == exhibit_id),
                Candidate.region == region))
    for col, val in ((other.calibre, calibre), (other.firing_pin_shape, firing_pin_shape),
                     (other.land_count, land_count), (other.twist, twist), (Case.agency, agency),
                     (other.role, role), (Candidate.review_status, review_status)):
        if val is not None:
            q = q.where(col == val)
    if date_from is not None:
        q = q.where(other.recovery_date >= date_from)
    if date_to is not None:
        q = q.where(other.recovery_date <= date_to)
    if min_score is not None:
        q = q.where(Candidate.similarity >= min_score)
    rows = session.execute(q.order_by(Candidate.similarity.desc(), Candidate.id).limit(limit)).scalars().unique().all()
    return CandidateList(exhibit_id=exhibit_id, region=region,
                         items=[candidate_public(c, exhibit_id, i + 1, explain=include_explanation)
                                for i, c in enumerate(rows)])


@router.get("/v1/candidates/{candidate_id}", response_model=CandidatePublic, responses={404: _ERR},
            summary="One candidate pair, seen from its reference exhibit")
def get_candidate(candidate_id: IdPath, session: ReadSessionDep, who: EvidenceReader,
                  include_explanation: bool = True) -> CandidatePublic:
    c = session.get(Candidate, candidate_id)
    if c is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} not found")
    return candidate_public(c, c.exhibit_a_id, 0, explain=include_explanation)


def _render_figure(rt, c: Candidate, a: Exhibit, b: Exhibit, path) -> None:
    from ballistic.compare import CMCParams, prepare
    from ballistic.correlate import compare_pair
    from ballistic.explain import explanation_figure
    from ballistic.io import read_x3p

    if not a.derived_path or not b.derived_path:
        raise HTTPException(status.HTTP_409_CONFLICT, "the preprocessed surfaces are not available yet")
    sa = read_x3p(rt.store.resolve(a.derived_path), max_points=rt.settings.max_pixels)
    sb = read_x3p(rt.store.resolve(b.derived_path), max_points=rt.settings.max_pixels)
    la, lb = f"{a.case.case_number}/{a.exhibit_ref}", f"{b.case.case_number}/{b.exhibit_ref}"
    p = CMCParams()
    r = compare_pair(prepare(sa, p, name=la), prepare(sb, p, name=lb), p)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.png")
    with _FIGURE_LOCK:
        explanation_figure(sa, sb, r, tmp)
    os.replace(tmp, path)


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
        path = rt.store.root / "derived" / "figures" / f"candidate-{c.id}-{tag}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _render_figure(rt, c, a, b, path)
    audit.append(session, actor=who.actor, action="evidence.read_figure", resource_type="candidate",
                 resource_id=candidate_id, detail={"exhibits": [a.id, b.id]})
    session.commit()
    return FileResponse(path, media_type="image/png")
