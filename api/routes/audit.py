"""``/v1/audit`` (admin): read and verify only. No endpoint creates, edits or deletes audit rows. HTTP only: the
work is :mod:`api.services.audit_log`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Admin, ReadSessionDep
from api.schemas import AuditPage, AuditVerifyPublic
from api.services import audit_log as svc

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/verify", response_model=AuditVerifyPublic, summary="Recompute the hash chain (admin)")
def verify(session: ReadSessionDep, who: Admin) -> AuditVerifyPublic:
    return svc.verify(session)


@router.get("", response_model=AuditPage, summary="Audit rows after a sequence number (admin)")
def list_audit(session: ReadSessionDep, who: Admin, after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditPage:
    return svc.list_audit(session, after_seq=after_seq, limit=limit)
