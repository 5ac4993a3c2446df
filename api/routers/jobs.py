"""Correlation jobs: durable state in the DB, delivered by huey."""
from __future__ import annotations

import json
from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select

from api import audit
from api.deps import EvidenceReader, ExaminerWrite, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.models import Exhibit, Job
from api.schemas import ErrorPublic, JobCreate, JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_ERR = {"model": ErrorPublic}


@router.get("/{job_id}", response_model=JobPublic, responses={404: _ERR}, summary="Job state")
def get_job(job_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> JobPublic:
    """With the job's search record (``search_record``): what its database search was computed from
    (index state, partition and filters, descriptor, algorithm and parameter versions, K, eligible and
    scored counts, results), so that it can be replayed and checked."""
    j = session.get(Job, job_id)
    if j is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    out = JobPublic.model_validate(j)
    out.search_record = json.loads(j.search_record_json) if j.search_record_json else None
    return out


@router.get("", response_model=list[JobPublic], summary="List jobs (newest first)")
def list_jobs(session: ReadSessionDep, who: EvidenceReader,
              status_: Annotated[Optional[str], Query(alias="status", pattern="^(queued|running|done|failed)$")] = None,
              exhibit_id: Annotated[Optional[int], Query(ge=1, le=2**62)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobPublic]:
    q = select(Job)
    if status_:
        q = q.where(Job.status == status_)
    if exhibit_id:
        q = q.where(Job.exhibit_id == exhibit_id)
    return [JobPublic.model_validate(j) for j in session.execute(q.order_by(Job.id.desc()).limit(limit)).scalars()]


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED,
             responses={404: _ERR, 409: _ERR, 422: _ERR}, summary="Run the correlation of an exhibit again")
def create_job(body: JobCreate, rt: RuntimeDep, session: SessionDep, who: ExaminerWrite) -> JobPublic:
    e = session.get(Exhibit, body.exhibit_id)
    if e is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {body.exhibit_id} not found")
    if e.exhibit_type not in ("cartridge_case", "bullet"):
        raise HTTPException(422, f"exhibits of type {e.exhibit_type!r} are not correlated")
    busy = session.execute(select(Job.id).where(Job.exhibit_id == e.id, Job.status.in_(("queued", "running")))
                           ).scalar()
    if busy is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, {"reason": "a job for this exhibit is already pending",
                                                       "job_id": busy})
    j = Job(exhibit_id=e.id, kind="correlate", status="queued", max_attempts=rt.settings.job_max_attempts)
    session.add(j)
    session.flush()
    audit.append(session, actor=who.actor, action="job.create", resource_type="job", resource_id=j.id,
                 detail={"exhibit_id": e.id})
    session.commit()
    rt.enqueue(j.id)
    return JobPublic.model_validate(j)
