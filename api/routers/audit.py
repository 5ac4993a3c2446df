"""Audit log: read and verify only. No endpoint creates, edits or deletes audit rows directly."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.audit import verify_chain
from api.deps import Admin, ReadSessionDep
from api.models import AuditLog
from api.schemas import AuditEntryPublic, AuditPage, AuditVerifyPublic

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/verify", response_model=AuditVerifyPublic, summary="Recompute the hash chain (admin)")
def verify(session: ReadSessionDep, who: Admin) -> AuditVerifyPublic:
    return AuditVerifyPublic(**verify_chain(session).as_dict())


@router.get("", response_model=AuditPage, summary="Audit rows after a sequence number (admin)")
def list_audit(session: ReadSessionDep, who: Admin, after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> AuditPage:
    rows = session.execute(select(AuditLog).where(AuditLog.seq > after_seq).order_by(AuditLog.seq).limit(limit)
                           ).scalars()
    return AuditPage(items=[AuditEntryPublic.model_validate(r) for r in rows])
