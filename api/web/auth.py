"""Browser sessions of the workbench: an API key typed once into a form, then a signed cookie.

The cookie never holds the key itself. It holds the key's id, a fragment of its SHA-256 (so a
cookie is bound to that key), a CSRF token and its issue time, signed with HMAC-SHA256
(stdlib ``hmac``: the same construction as itsdangerous, without the dependency). Every request
loads the key again, so a revoked key ends its browser sessions at once, and the scope is the
key's current one: the permission table is :data:`api.security.PERMISSIONS`, exactly as for the
JSON API.

Cookies: ``ballistic_session`` (HttpOnly, SameSite=Strict, Path=/, ``Secure`` when the request
came over https) and ``ballistic_csrf`` (same flags). Every POST form carries the CSRF token in a
hidden field; it must equal the cookie and the token inside the signed session (double submit
plus binding). The login form gets its own token before there is a session.

Logging out ends the session on the server, not only in the browser: the session's id (SHA-256 of the
signed token) is recorded in ``service_state`` (key ``web_session_ended:<id>``, value its expiry), and a
cookie whose session ended is refused like a forged one. Rows past their expiry are pruned at each logout.

The signing secret is ``BALLISTIC_WEB_SECRET`` when set (at least 32 characters), otherwise a
random one created on first use and kept in the ``service_state`` table (key
``web_session_secret``), so sessions survive a restart and every process on one database agrees.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import Principal
from api.db.models import ApiKey, Setting
from api.security import allowed, hash_key

__all__ = ["SESSION_COOKIE", "CSRF_COOKIE", "SESSION_MAX_AGE_S", "WebSession", "sign", "unsign", "secret_for",
           "current_session", "end_session", "session_id", "new_session_cookie", "check_csrf", "set_cookie",
           "clear_cookies"]

SESSION_COOKIE = "ballistic_session"
CSRF_COOKIE = "ballistic_csrf"
SESSION_MAX_AGE_S = int(os.environ.get("BALLISTIC_WEB_SESSION_MAX_AGE_S", 8 * 3600))
_SECRET_KEY = "web_session_secret"
_CONTEXT = b"ballistic-web-session.v1."


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign(payload: dict[str, Any], secret: bytes) -> str:
    body = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    mac = hmac.new(secret, _CONTEXT + body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(token: str | None, secret: bytes, *, max_age_s: int = SESSION_MAX_AGE_S) -> dict[str, Any] | None:
    """The payload of a token signed with ``secret`` and issued less than ``max_age_s`` ago, else None."""
    if not token or len(token) > 2000 or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    good = hmac.new(secret, _CONTEXT + body.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), good):
            return None
        payload = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    if not isinstance(payload, dict):
        return None
    iat = payload.get("iat")
    if not isinstance(iat, int) or not (0 <= time.time() - iat < max_age_s):
        return None
    return payload


def secret_for(rt) -> bytes:
    """The signing secret (env, else the DB row, created once); cached on the runtime."""
    cached = getattr(rt, "_web_secret", None)
    if cached:
        return cached
    env = os.environ.get("BALLISTIC_WEB_SECRET")
    if env:
        if len(env) < 32:
            raise RuntimeError("BALLISTIC_WEB_SECRET must be at least 32 characters")
        value = env
    else:
        with rt.read_factory() as s:
            row = s.get(Setting, _SECRET_KEY)
            value = row.value if row else None
        if value is None:
            try:
                with rt.session_factory() as s:
                    s.add(Setting(key=_SECRET_KEY, value=secrets.token_urlsafe(48)))
                    s.commit()
            except IntegrityError:  # another request created it first
                pass
            with rt.read_factory() as s:
                value = s.get(Setting, _SECRET_KEY).value
    rt._web_secret = hashlib.sha256(b"ballistic-web:" + value.encode()).digest()
    return rt._web_secret


@dataclass(frozen=True)
class WebSession:
    principal: Principal
    csrf: str

    def can(self, permission: str) -> bool:
        return allowed(self.principal.scope, permission)


_ENDED = "web_session_ended:"


def session_id(token: str) -> str:
    """Server-side name of a signed session token (never the token itself)."""
    return hashlib.sha256(b"ballistic-web-session-id:" + token.encode()).hexdigest()[:40]


def current_session(request: Request) -> WebSession | None:
    """The signed-in key of this browser request (re-checked against the DB), or None (also when the
    session was ended by a logout)."""
    rt = request.app.state.runtime
    token = request.cookies.get(SESSION_COOKIE)
    payload = unsign(token, secret_for(rt))
    if payload is None:
        return None
    kid, kh, csrf = payload.get("kid"), payload.get("kh"), payload.get("csrf")
    if not isinstance(kid, int) or not isinstance(kh, str) or not isinstance(csrf, str):
        return None
    with rt.read_factory() as s:
        k = s.get(ApiKey, kid)
        if k is None or k.revoked_at is not None or not hmac.compare_digest(k.key_hash[:24], kh):
            return None
        if s.get(Setting, _ENDED + session_id(token)) is not None:
            return None
        return WebSession(Principal(k.id, k.name, k.scope), csrf)


def end_session(rt, request: Request) -> None:
    """Record that this request's session is over (logout), so its cookie is refused from now on, even if
    the browser (or whoever copied the cookie) sends it again; expired records are pruned."""
    token = request.cookies.get(SESSION_COOKIE)
    payload = unsign(token, secret_for(rt))
    if payload is None:
        return
    now = int(time.time())
    with rt.session_factory() as s:
        for row in s.execute(select(Setting).where(Setting.key.startswith(_ENDED))).scalars().all():
            if not row.value.isdigit() or int(row.value) < now:
                s.delete(row)
        key = _ENDED + session_id(token)
        if s.get(Setting, key) is None:
            s.add(Setting(key=key, value=str(int(payload["iat"]) + SESSION_MAX_AGE_S)))
        s.commit()


def login_key(request: Request, raw: str) -> ApiKey | None:
    """The live key whose secret is ``raw`` (same lookup as the JSON API's header check)."""
    raw = (raw or "").strip()
    if not raw or len(raw) > 200:
        return None
    with request.app.state.runtime.read_factory() as s:
        k = s.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(raw))).scalar_one_or_none()
    return None if k is None or k.revoked_at is not None else k


def new_session_cookie(rt, key: ApiKey) -> tuple[str, str]:
    """(signed session token, its CSRF token) for a fresh login."""
    csrf = secrets.token_urlsafe(24)
    token = sign({"kid": key.id, "kh": key.key_hash[:24], "csrf": csrf, "iat": int(time.time()),
                  "n": secrets.token_hex(4)}, secret_for(rt))
    return token, csrf


def check_csrf(request: Request, form_token: str | None, session: WebSession | None) -> bool:
    """Form token == CSRF cookie, and == the token bound in the session when there is one."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not form_token or not cookie or not hmac.compare_digest(form_token, cookie):
        return False
    return session is None or hmac.compare_digest(form_token, session.csrf)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def set_cookie(response, request: Request, name: str, value: str, max_age: int = SESSION_MAX_AGE_S) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict",
                        secure=_secure(request))


def clear_cookies(response, request: Request) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=_secure(request))
