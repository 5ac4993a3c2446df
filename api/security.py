"""API keys: random tokens shown once, stored as SHA-256 hashes, each with one scope.

Scopes and what they may do:

========== =====================================================================
examiner   submit exhibits and jobs, read exhibits, candidates, figures and
           original files, review candidates, read hits / series / exports
intelligence  read the hits feed, series and exports only
admin      everything, plus API keys and audit-log verification
========== =====================================================================
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["KEY_PREFIX", "new_key", "hash_key", "PERMISSIONS", "allowed"]

KEY_PREFIX = "bk_"

#: permission -> scopes that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    "exhibits:write": frozenset({"examiner", "admin"}),
    "evidence:read": frozenset({"examiner", "admin"}),
    "review": frozenset({"examiner", "admin"}),
    "intel:read": frozenset({"examiner", "intelligence", "admin"}),
    "admin": frozenset({"admin"}),
}


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def allowed(scope: str, permission: str) -> bool:
    return scope in PERMISSIONS[permission]


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
