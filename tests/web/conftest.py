"""Fixtures of the workbench tests. The service-test helpers (tests/api/api_helpers.py) are reused."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_helpers import ADMIN, make_settings, new_key, run_jobs, synthetic_scans, upload  # noqa: E402

__all__ = ["ADMIN", "make_settings", "new_key", "run_jobs", "upload", "web_login", "csrf_of"]


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


@pytest.fixture(scope="session")
def scans() -> dict[str, bytes]:
    return synthetic_scans()


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


@pytest.fixture
def examiner(client) -> dict[str, str]:
    return new_key(client, "examiner", "Examiner Alice")


@pytest.fixture
def intel(client) -> dict[str, str]:
    return new_key(client, "intelligence", "Analyst Bob")


@pytest.fixture
def linked(client, examiner, scans) -> dict[str, int]:
    """Three synthetic exhibits (a1 and a2 from one source, b1 another), correlated."""
    ids = {}
    for i, n in enumerate(("a1", "a2", "b1")):
        r = upload(client, examiner, scans[n], name=f"{n}.x3p", exhibit_ref=f"EX-{n}", case_number=f"CASE-{n}",
                   agency="Metro PD" if n != "b1" else "County SO", recovery_date=f"2024-0{i + 1}-15")
        assert r.status_code == 201, r.text
        ids[n] = r.json()["id"]
    run_jobs(client)
    return ids
