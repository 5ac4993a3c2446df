"""``/v1/jobs``: correlation job state and a new run. HTTP only: the work is :mod:`api.services.jobs`."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Query, status

from api.deps import EvidenceReader, ExaminerWrite, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.schemas import ErrorPublic, JobCreate, JobPublic
from api.services import jobs as svc

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_ERR = {"model": ErrorPublic}


@router.get("/{job_id}", response_model=JobPublic, responses={404: _ERR}, summary="Job state")
def get_job(job_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> JobPublic:
    """With the job's search record (``search_record``): what its database search was computed from
    (index state, partition and filters, descriptor, algorithm and parameter versions, K, eligible and
    scored counts, results), so that it can be replayed and checked."""
    return svc.get_job(session, job_id)


@router.get("", response_model=list[JobPublic], summary="List jobs (newest first)")
def list_jobs(session: ReadSessionDep, who: EvidenceReader,
              status_: Annotated[Optional[str], Query(alias="status", pattern="^(queued|running|done|failed)$")] = None,
              exhibit_id: Annotated[Optional[int], Query(ge=1, le=2**62)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobPublic]:
    return svc.list_jobs(session, status=status_, exhibit_id=exhibit_id, limit=limit)


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED,
             responses={404: _ERR, 409: _ERR, 422: _ERR}, summary="Run the correlation of an exhibit again")
def create_job(body: JobCreate, rt: RuntimeDep, session: SessionDep, who: ExaminerWrite) -> JobPublic:
    return svc.create_job(rt, session, who, body)
