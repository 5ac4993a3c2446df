"""Examiner review of a candidate. A confirmation links the two exhibits (and so their cases) and
appends a 'hit' event to the intelligence feed; withdrawing a confirmation appends a 'retraction'.
Called by ``api.routes.reviews`` and the web pages (one decision, feed event and audit row, one commit)."""
from __future__ import annotations

from sqlalchemy import select

from api import audit
from api.db.models import Candidate, HitEvent, Review
from api.errors import NotFound
from api.schemas import ReviewCreate, ReviewPublic

__all__ = ["review_candidate", "list_reviews"]


def review_candidate(session, who, candidate_id: int, body: ReviewCreate) -> ReviewPublic:
    """Record ``who``'s decision on the candidate (committed)."""
    audit.serialize(session)  # feed events must commit in sequence order (PostgreSQL)
    c = session.get(Candidate, candidate_id)
    if c is None:
        raise NotFound(f"candidate {candidate_id} not found")
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


def list_reviews(session, candidate_id: int) -> list[ReviewPublic]:
    """Review history of a candidate, oldest first."""
    if session.get(Candidate, candidate_id) is None:
        raise NotFound(f"candidate {candidate_id} not found")
    rows = session.execute(select(Review).where(Review.candidate_id == candidate_id).order_by(Review.id)).scalars()
    return [ReviewPublic.model_validate(r) for r in rows]
