"""API keys (admin): create (the secret is returned once), list, revoke."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select

from api import audit
from api.db import utcnow
from api.deps import Admin, IdPath, ReadSessionDep, SessionDep
from api.models import ApiKey
from api.schemas import ErrorPublic, KeyCreate, KeyCreated, KeyPublic
from api.security import hash_key, new_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def issue_key(session, *, name: str, scope: str, actor: str, via: str = "api") -> tuple[ApiKey, str]:
    """A new key (its row and audit row added to ``session``, not committed) and its secret, shown once.
    Used by ``POST /v1/keys`` and by ``ballistic keys create``."""
    raw = new_key()
    k = ApiKey(name=name, scope=scope, key_hash=hash_key(raw), prefix=raw[:10], created_by=actor)
    session.add(k)
    session.flush()
    audit.append(session, actor=actor, action="key.create", resource_type="api_key", resource_id=k.id,
                 detail={"name": k.name, "scope": k.scope, "prefix": k.prefix, **({"via": via} if via != "api" else {})})
    return k, raw


def revoke(session, k: ApiKey, *, actor: str) -> bool:
    """Revoke ``k`` (audited, not committed); False when it was revoked already."""
    if k.revoked_at is not None:
        return False
    k.revoked_at = utcnow()
    audit.append(session, actor=actor, action="key.revoke", resource_type="api_key", resource_id=k.id,
                 detail={"name": k.name, "scope": k.scope})
    return True


@router.post("", response_model=KeyCreated, status_code=status.HTTP_201_CREATED, summary="Create an API key",
             description='Body: `{"name": "Examiner Alice", "scope": "examiner"}` (scope: examiner, intelligence '
                         "or admin). The response's `key` is the secret, shown once; only its SHA-256 is stored.")
def create_key(body: KeyCreate, session: SessionDep, who: Admin) -> KeyCreated:
    k, raw = issue_key(session, name=body.name, scope=body.scope, actor=who.actor)
    session.commit()
    return KeyCreated(**KeyPublic.model_validate(k).model_dump(), key=raw)


@router.get("", response_model=list[KeyPublic], summary="List API keys (never their secrets)")
def list_keys(session: ReadSessionDep, who: Admin) -> list[KeyPublic]:
    return [KeyPublic.model_validate(k) for k in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars()]


@router.post("/{key_id}/revoke", response_model=KeyPublic, responses={404: {"model": ErrorPublic}},
             summary="Revoke an API key")
def revoke_key(key_id: IdPath, session: SessionDep, who: Admin) -> KeyPublic:
    k = session.get(ApiKey, key_id)
    if k is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"key {key_id} not found")
    if revoke(session, k, actor=who.actor):
        session.commit()
    return KeyPublic.model_validate(k)
