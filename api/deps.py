"""FastAPI dependencies (Annotated style): runtime, settings, DB sessions, the caller's API key."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import ApiKey
from api.runtime import Runtime
from api.security import allowed, hash_key
from api.settings import Settings

__all__ = ["RuntimeDep", "SettingsDep", "SessionDep", "ReadSessionDep", "Principal", "CurrentKey",
           "ExaminerWrite", "EvidenceReader", "Reviewer", "IntelReader", "Admin", "IdPath"]


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(rt: RuntimeDep) -> Settings:
    return rt.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    """Read-write session; the handler commits. (SQLite: each transaction is BEGIN IMMEDIATE,
    so handlers open it only when they are ready to write.)"""
    with rt.session_factory() as s:
        yield s


def get_read_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.read_factory() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (bk_...)")
bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str
    scope: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}"


def get_current_key(rt: RuntimeDep, x_api_key: Annotated[str | None, Security(api_key_header)] = None,
                    auth: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> Principal:
    raw = x_api_key or (auth.credentials if auth else None)
    if not raw:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send it in the X-API-Key header",
                            headers={"WWW-Authenticate": "Bearer"})
    if len(raw) > 200:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    with rt.read_factory() as s:  # short transaction of its own, closed before the handler runs
        k = s.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(raw))).scalar_one_or_none()
    if k is None or k.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return Principal(k.id, k.name, k.scope)


CurrentKey = Annotated[Principal, Depends(get_current_key)]


def require(permission: str):
    def dep(p: CurrentKey) -> Principal:
        if not allowed(p.scope, permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"the '{p.scope}' scope does not allow this ({permission} is required)")
        return p

    dep.__name__ = f"require_{permission.replace(':', '_')}"
    return dep


ExaminerWrite = Annotated[Principal, Depends(require("exhibits:write"))]
EvidenceReader = Annotated[Principal, Depends(require("evidence:read"))]
Reviewer = Annotated[Principal, Depends(require("review"))]
IntelReader = Annotated[Principal, Depends(require("intel:read"))]
Admin = Annotated[Principal, Depends(require("admin"))]


#: Path ids: positive and within a signed 64-bit integer on every backend.
IdPath = Annotated[int, Path(ge=1, le=2**62, description="numeric id")]
