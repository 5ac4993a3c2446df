"""API keys: create (the secret is returned once), list, revoke. Called by ``api.routes.keys`` and by
``ballistic keys ...``."""
from __future__ import annotations

from sqlalchemy import select

from api import audit
from api.db import utcnow
from api.db.models import ApiKey
from api.errors import NotFound
from api.schemas import KeyCreated, KeyPublic
from api.security import hash_key, new_key

__all__ = ["issue_key", "revoke", "create_key", "list_keys", "revoke_key"]


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


def create_key(session, who, *, name: str, scope: str) -> KeyCreated:
    """A new key (committed); its secret is in the answer, once."""
    k, raw = issue_key(session, name=name, scope=scope, actor=who.actor)
    session.commit()
    return KeyCreated(**KeyPublic.model_validate(k).model_dump(), key=raw)


def list_keys(session) -> list[KeyPublic]:
    return [KeyPublic.model_validate(k) for k in session.execute(select(ApiKey).order_by(ApiKey.id)).scalars()]


def revoke_key(session, who, key_id: int) -> KeyPublic:
    k = session.get(ApiKey, key_id)
    if k is None:
        raise NotFound(f"key {key_id} not found")
    if revoke(session, k, actor=who.actor):
        session.commit()
    return KeyPublic.model_validate(k)
