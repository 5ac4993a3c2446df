"""``/v1/keys`` (admin): create (the secret is returned once), list, revoke. HTTP only: the work is
:mod:`api.services.keys`."""
from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import Admin, IdPath, ReadSessionDep, SessionDep
from api.schemas import ErrorPublic, KeyCreate, KeyCreated, KeyPublic
from api.services import keys as svc

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", response_model=KeyCreated, status_code=status.HTTP_201_CREATED, summary="Create an API key",
             description='Body: `{"name": "Examiner Alice", "scope": "examiner"}` (scope: examiner, intelligence '
                         "or admin). The response's `key` is the secret, shown once; only its SHA-256 is stored.")
def create_key(body: KeyCreate, session: SessionDep, who: Admin) -> KeyCreated:
    return svc.create_key(session, who, name=body.name, scope=body.scope)


@router.get("", response_model=list[KeyPublic], summary="List API keys (never their secrets)")
def list_keys(session: ReadSessionDep, who: Admin) -> list[KeyPublic]:
    return svc.list_keys(session)


@router.post("/{key_id}/revoke", response_model=KeyPublic, responses={404: {"model": ErrorPublic}},
             summary="Revoke an API key")
def revoke_key(key_id: IdPath, session: SessionDep, who: Admin) -> KeyPublic:
    return svc.revoke_key(session, who, key_id)
