"""Correlation jobs as the API shows them: state (durable in the DB), the job's search record, a new run of
an exhibit's correlation. Called by ``api.routes.jobs``; the jobs themselves run in :mod:`api.jobs`."""
from __future__ import annotations

import json

from sqlalchemy import select

from api import audit
from api.db.models import Job
from api.errors import Conflict, NotFound, Unprocessable
from api.schemas import JobCreate, JobPublic
from api.services.exhibits import exhibit_row

__all__ = ["get_job", "list_jobs", "create_job"]


def get_job(session, job_id: int) -> JobPublic:
    """The job with its search record (``search_record``)."""
    j = session.get(Job, job_id)
    if j is None:
        raise NotFound(f"job {job_id} not found")
    out = JobPublic.model_validate(j)
    out.search_record = json.loads(j.search_record_json) if j.search_record_json else None
    return out


def list_jobs(session, *, status: str | None = None, exhibit_id: int | None = None, limit: int = 100) -> list[JobPublic]:
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if exhibit_id:
        q = q.where(Job.exhibit_id == exhibit_id)
    return [JobPublic.model_validate(j) for j in session.execute(q.order_by(Job.id.desc()).limit(limit)).scalars()]


def create_job(rt, session, who, body: JobCreate) -> JobPublic:
    """Queue the correlation of an exhibit again (409 when one is pending)."""
    e = exhibit_row(session, body.exhibit_id)
    if e.exhibit_type not in ("cartridge_case", "bullet"):
        raise Unprocessable(f"exhibits of type {e.exhibit_type!r} are not correlated")
    busy = session.execute(select(Job.id).where(Job.exhibit_id == e.id, Job.status.in_(("queued", "running")))
                           ).scalar()
    if busy is not None:
        raise Conflict({"reason": "a job for this exhibit is already pending", "job_id": busy})
    j = Job(exhibit_id=e.id, kind="correlate", status="queued", max_attempts=rt.settings.job_max_attempts)
    session.add(j)
    session.flush()
    audit.append(session, actor=who.actor, action="job.create", resource_type="job", resource_id=j.id,
                 detail={"exhibit_id": e.id})
    session.commit()
    rt.enqueue(j.id)
    return JobPublic.model_validate(j)
