"""``/v1/candidates/{id}/review(s)``: an examiner's decision on a candidate and the review history. HTTP only:
the work is :mod:`api.services.reviews`."""
from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import EvidenceReader, IdPath, ReadSessionDep, Reviewer, SessionDep
from api.schemas import ErrorPublic, ReviewCreate, ReviewPublic
from api.services import reviews as svc

router = APIRouter(prefix="/v1/candidates", tags=["reviews"])
_ERR = {"model": ErrorPublic}


@router.post("/{candidate_id}/review", response_model=ReviewPublic, status_code=status.HTTP_201_CREATED,
             responses={404: _ERR}, summary="Record an examiner's decision on a candidate")
def review_candidate(candidate_id: IdPath, body: ReviewCreate, session: SessionDep, who: Reviewer) -> ReviewPublic:
    return svc.review_candidate(session, who, candidate_id, body)


@router.get("/{candidate_id}/reviews", response_model=list[ReviewPublic], responses={404: _ERR},
            summary="Review history of a candidate (oldest first)")
def list_reviews(candidate_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> list[ReviewPublic]:
    return svc.list_reviews(session, candidate_id)
