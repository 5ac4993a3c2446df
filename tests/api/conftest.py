"""Fixtures of the service tests: a real SQLite DB file in tmp_path, TestClient, keys, synthetic scans."""
from __future__ import annotations

import pytest
from api_helpers import ADMIN, make_settings, new_key, synthetic_scans


@pytest.fixture(scope="session")
def scans() -> dict[str, bytes]:
    return synthetic_scans()


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def admin() -> dict[str, str]:
    return dict(ADMIN)


@pytest.fixture
def examiner(client) -> dict[str, str]:
    return new_key(client, "examiner", "Examiner Alice")


@pytest.fixture
def intel(client) -> dict[str, str]:
    return new_key(client, "intelligence", "Analyst Bob")
