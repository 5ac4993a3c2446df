"""``/v1/health`` (liveness) and ``/v1/status`` (admin). HTTP only: the work is :mod:`api.services.status`."""
from __future__ import annotations

from fastapi import APIRouter

from api.deps import Admin, ReadSessionDep, RuntimeDep
from api.schemas import StatusPublic
from api.services import status as svc

router = APIRouter(tags=["system"])


@router.get("/v1/health", summary="Liveness (no key needed)")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/status", response_model=StatusPublic, summary="Jobs, exhibits, index consistency and the job "
                                                                "workers (admin)")
def service_status(rt: RuntimeDep, session: ReadSessionDep, who: Admin) -> StatusPublic:
    return svc.service_status(rt, session)
