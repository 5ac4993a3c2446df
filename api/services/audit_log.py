"""The audit log as the API shows it: rows after a sequence number, and the hash chain verified. Read only:
no service writes audit rows on request (they are written by the actions they record, :mod:`api.audit`)."""
from __future__ import annotations

from sqlalchemy import select

from api.audit import verify_chain
from api.db.models import AuditLog
from api.schemas import AuditEntryPublic, AuditPage, AuditVerifyPublic

__all__ = ["verify", "list_audit"]


def verify(session) -> AuditVerifyPublic:
    return AuditVerifyPublic(**verify_chain(session).as_dict())


def list_audit(session, *, after_seq: int = 0, limit: int = 100) -> AuditPage:
    rows = session.execute(select(AuditLog).where(AuditLog.seq > after_seq).order_by(AuditLog.seq).limit(limit)
                           ).scalars()
    return AuditPage(items=[AuditEntryPublic.model_validate(r) for r in rows])
