"""Helpers of the workbench tests (imported by name: pytest puts this folder on sys.path). The service-test
helpers (tests/api/api_helpers.py) are reused."""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_helpers import ADMIN, make_settings, new_key, run_jobs, synthetic_scans, upload  # noqa: E402

__all__ = ["ADMIN", "make_settings", "new_key", "run_jobs", "synthetic_scans", "upload", "web_login", "csrf_of"]


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def web_login(client, headers: dict[str, str]) -> None:
    """Sign the TestClient in through the login form (cookies stay in the client)."""
    page = client.get("/web/login")
    assert page.status_code == 200
    r = client.post("/web/login", data={"api_key": headers["X-API-Key"], "csrf_token": csrf_of(page.text)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
