"""Fixtures of the workbench tests (helpers in web_helpers.py)."""
from __future__ import annotations

import pytest
from web_helpers import make_settings, new_key, run_jobs, synthetic_scans, upload


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
