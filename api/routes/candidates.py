"""``/v1/exhibits/{id}/candidates`` and ``/v1/candidates/{id}``: ranked candidate lists, one candidate with its
explanation, its figure. HTTP only: the work is :mod:`api.services.candidates`."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import EvidenceReader, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.schemas import CandidateList, CandidatePublic, ErrorPublic, SecondLookPublic
from api.services import candidates as svc
from api.services.candidates import REGIONS

router = APIRouter(tags=["candidates"])
_ERR = {"model": ErrorPublic}


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
    return svc.list_candidates(rt, session, exhibit_id, region=region, calibre=calibre,
                               firing_pin_shape=firing_pin_shape, land_count=land_count, twist=twist, agency=agency,
                               role=role, date_from=date_from, date_to=date_to, min_score=min_score,
                               review_status=review_status, include_explanation=include_explanation, limit=limit)


@router.get("/v1/candidates/{candidate_id}", response_model=CandidatePublic, responses={404: _ERR},
            summary="One candidate pair, seen from its reference exhibit, with its explanation")
def get_candidate(candidate_id: IdPath, session: ReadSessionDep, who: EvidenceReader,
                  include_explanation: bool = True) -> CandidatePublic:
    return svc.get_candidate(session, candidate_id, include_explanation=include_explanation)


@router.get("/v1/candidates/{candidate_id}/figure.png", response_class=FileResponse,
            responses={404: _ERR, 409: _ERR, 200: {"content": {"image/png": {}}, "description": "PNG figure"}},
            summary="Explanation figure: reference, aligned target, overlay, CMC cells (audited)")
def candidate_figure(candidate_id: IdPath, rt: RuntimeDep, session: SessionDep, who: EvidenceReader) -> FileResponse:
    return FileResponse(svc.candidate_figure(rt, session, who, candidate_id), media_type="image/png")


@router.get("/v1/candidates/{candidate_id}/second-look", response_model=SecondLookPublic,
            responses={404: _ERR, 409: _ERR},
            summary="The pair compared again with the thorough registration search (audited; nothing stored changes)")
def candidate_second_look(candidate_id: IdPath, rt: RuntimeDep, session: SessionDep,
                          who: EvidenceReader) -> SecondLookPublic:
    """For a breech-face pair whose registration the examiner doubts (scans from other kits or upstream
    pipelines): the whole circle is searched again at the coarse spacing (2-3 s the first time, cached after).
    Reports the CMC counts and pose it finds beside the stored comparison's; gives no likelihood ratio."""
    return svc.second_look(rt, session, who, candidate_id)


@router.get("/v1/candidates/{candidate_id}/second-look/figure.png", response_class=FileResponse,
            responses={404: _ERR, 409: _ERR, 200: {"content": {"image/png": {}}, "description": "PNG figure"}},
            summary="Explanation figure of the second look (thorough registration; audited)")
def candidate_second_look_figure(candidate_id: IdPath, rt: RuntimeDep, session: SessionDep,
                                 who: EvidenceReader) -> FileResponse:
    return FileResponse(svc.second_look_figure(rt, session, who, candidate_id), media_type="image/png")
