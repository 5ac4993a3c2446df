"""Examiner review of a candidate. A confirmation links the two exhibits (and so their cases) and
appends a 'hit' event to the intelligence feed; withdrawing a confirmation appends a 'retraction'."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from api import audit
from api.deps import EvidenceReader, IdPath, ReadSessionDep, Reviewer, SessionDep
from api.models import Candidate, HitEvent, Review
from api.schemas import ErrorPublic, ReviewCreate, ReviewPublic

router = APIRouter(prefix="/v1/candidates", tags=["reviews"])
_ERR = {"model": ErrorPublic}


@router.post("/{candidate_id}/review", response_model=ReviewPublic, status_code=status.HTTP_201_CREATED,
             responses={404: _ERR}, summary="Record an examiner's decision on a candidate")
def review_candidate(candidate_id: IdPath, body: ReviewCreate, session: SessionDep, who: Reviewer) -> ReviewPublic:
    audit.serialize(session)  # feed events must commit in sequence order (PostgreSQL)
    c = session.get(Candidate, candidate_id)
    if c is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} not found")
    prior = c.review_status
    r = Review(candidate_id=c.id, decision=body.decision, comment=body.comment, examiner=who.name, key_id=who.key_id)
    session.add(r)
    c.review_status = body.decision
    session.flush()
    ev = None
    if body.decision == "confirmed" and prior != "confirmed":
        kind = "hit"
    elif prior == "confirmed" and body.decision != "confirmed":
        kind = "retraction"
    else:
        kind = None
    if kind:
        ev = HitEvent(kind=kind, candidate_id=c.id, region=c.region, review_id=r.id, exhibit_a_id=c.exhibit_a_id,
                      exhibit_b_id=c.exhibit_b_id, score=c.similarity, cmc_count=c.cmc_count, confirmed_by=who.name)
        session.add(ev)
        session.flush()
    audit.append(session, actor=who.actor, action="candidate.review", resource_type="candidate", resource_id=c.id,
                 detail={"decision": body.decision, "prior": prior, "review_id": r.id, "region": c.region,
                         "score": c.similarity, "log10_lr": c.log10_lr, "calibration_id": c.calibration_id,
                         "feed_seq": ev.seq if ev else None, "feed_kind": kind,
                         "exhibits": [c.exhibit_a_id, c.exhibit_b_id]})
    session.commit()
    out = ReviewPublic.model_validate(r)
    out.feed_seq = ev.seq if ev else None
    return out


@router.get("/{candidate_id}/reviews", response_model=list[ReviewPublic], responses={404: _ERR},
            summary="Review history of a candidate (oldest first)")
def list_reviews(candidate_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> list[ReviewPublic]:
    if session.get(Candidate, candidate_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"candidate {candidate_id} not found")
    rows = session.execute(select(Review).where(Review.candidate_id == candidate_id).order_by(Review.id)).scalars()
    return [ReviewPublic.model_validate(r) for r in rows]
