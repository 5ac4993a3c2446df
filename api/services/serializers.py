"""ORM -> response-model conversion shared by routers."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Candidate, Exhibit, Job, LandScan
from api.schemas import CandidatePublic, ExhibitPublic, ExhibitSummary, JobPublic, LandPublic


def latest_job(session: Session, exhibit_id: int) -> Job | None:
    return session.execute(select(Job).where(Job.exhibit_id == exhibit_id).order_by(Job.id.desc()).limit(1)
                           ).scalar_one_or_none()


def exhibit_public(session: Session, e: Exhibit) -> ExhibitPublic:
    j = latest_job(session, e.id)
    out = ExhibitPublic.model_validate(e)
    out.job = JobPublic.model_validate(j) if j is not None else None
    if e.exhibit_type == "bullet":
        lands = session.execute(select(LandScan).where(LandScan.exhibit_id == e.id).order_by(LandScan.land_index))
        out.lands = [LandPublic.model_validate(x) for x in lands.scalars()]
    return out


def candidate_public(c: Candidate, for_exhibit: int, rank: int, *, explain: bool,
                     fused: float | None = None, firing_pin: float | None = None) -> CandidatePublic:
    other = c.exhibit_b if c.exhibit_a_id == for_exhibit else c.exhibit_a
    interval = [c.log10_lr_low, c.log10_lr_high] if c.log10_lr is not None and c.log10_lr_low is not None else None
    return CandidatePublic(
        id=c.id, rank=rank, region=c.region, exhibit_id=for_exhibit, candidate=ExhibitSummary.model_validate(other),
        score=c.similarity, cmc_count=c.cmc_count, log10_lr=c.log10_lr, log10_lr_interval=interval,
        calibration_id=c.calibration_id, fused_score=fused, firing_pin_score=firing_pin,
        identification=c.identification, vector_score=c.vector_score,
        reference_exhibit_id=c.exhibit_a_id, target_exhibit_id=c.exhibit_b_id, registration=c.registration,
        review_status=c.review_status, algorithm_version=c.algorithm_version,
        descriptor_version=c.descriptor_version, created_at=c.created_at,
        figure_url=f"/v1/candidates/{c.id}/figure.png", explanation_url=f"/v1/candidates/{c.id}",
        explanation=c.explanation if explain else None)
