"""Append-only, hash-chained audit log.

Each row stores ``prev_hash`` (the previous row's hash; 64 zeros for the first row)
and ``hash = sha256(prev_hash + canonical_json(row))`` where the canonical JSON holds
every other column (sorted keys, no whitespace, UTF-8). Editing, deleting or
re-ordering any row breaks the chain at that row, which :func:`verify_chain` reports.

Appends happen in the caller's transaction, so an action and its audit row commit
or roll back together. The chain stays linear because appends are serialised:
SQLite transactions are ``BEGIN IMMEDIATE`` (see :mod:`api.db`), PostgreSQL takes a
transaction-scoped advisory lock, and ``prev_hash`` is UNIQUE as a last resort.
Nothing in the service updates or deletes audit rows (ORM guards plus database
triggers installed by the migration).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from api.db.models import AuditLog

__all__ = ["GENESIS", "append", "serialize", "canonical_json", "row_hash", "verify_chain", "ChainReport"]

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x62616C6C  # "ball"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _row_payload(seq: int, ts: str, actor: str, action: str, resource_type: str, resource_id: str,
                 detail: str) -> dict:
    return {"seq": seq, "ts": ts, "actor": actor, "action": action, "resource_type": resource_type,
            "resource_id": resource_id, "detail": detail}


def row_hash(prev_hash: str, payload: dict) -> str:
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode("utf-8")).hexdigest()


def serialize(session: Session) -> None:
    """Take the audit lock now (PostgreSQL; SQLite write transactions are already exclusive), e.g. before
    inserting a feed event so that feed sequence numbers commit in order."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})


def append(session: Session, *, actor: str, action: str, resource_type: str, resource_id: Any,
           detail: dict | None = None) -> AuditLog:
    """Add one audit row to the current transaction (flushed, not committed)."""
    serialize(session)  # re-entrant within the transaction
    last = session.execute(select(AuditLog.seq, AuditLog.hash).order_by(AuditLog.seq.desc()).limit(1)).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    ts = dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
    det = canonical_json(detail or {})
    payload = _row_payload(seq, ts, str(actor), str(action), str(resource_type), str(resource_id), det)
    row = AuditLog(seq=seq, ts=ts, actor=payload["actor"], action=payload["action"],
                   resource_type=payload["resource_type"], resource_id=payload["resource_id"], detail=det,
                   prev_hash=prev, hash=row_hash(prev, payload))
    session.add(row)
    session.flush()
    return row


@dataclass
class ChainReport:
    ok: bool
    rows: int
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def verify_chain(session: Session, *, batch: int = 1000) -> ChainReport:
    """Recompute the chain from the first row; report the first row that does not verify."""
    prev, expected_seq, n, last_seq = GENESIS, 1, 0, None
    after = 0
    while True:
        rows = session.execute(
            select(AuditLog.seq, AuditLog.ts, AuditLog.actor, AuditLog.action, AuditLog.resource_type,
                   AuditLog.resource_id, AuditLog.detail, AuditLog.prev_hash, AuditLog.hash)
            .where(AuditLog.seq > after).order_by(AuditLog.seq).limit(batch)).all()
        if not rows:
            break
        for r in rows:
            if r.seq != expected_seq:
                return ChainReport(False, n, last_seq, prev, r.seq,
                                   f"sequence gap: expected row {expected_seq}, found {r.seq} (rows deleted?)")
            if r.prev_hash != prev:
                return ChainReport(False, n, last_seq, prev, r.seq,
                                   "prev_hash does not match the previous row's hash (row removed or inserted)")
            h = row_hash(r.prev_hash, _row_payload(r.seq, r.ts, r.actor, r.action, r.resource_type, r.resource_id,
                                                   r.detail))
            if h != r.hash:
                return ChainReport(False, n, last_seq, prev, r.seq, "row content does not match its hash (edited)")
            prev, last_seq, expected_seq, n = r.hash, r.seq, r.seq + 1, n + 1
        after = rows[-1].seq
    return ChainReport(True, n, last_seq, prev if n else None)
