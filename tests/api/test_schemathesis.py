"""Property-based API fuzzing against the OpenAPI schema (schemathesis): no input may cause a 5xx.

Seeded (derandomized) and bounded so that it runs in well under two minutes. The app runs on a
real SQLite file with one processed pair of exhibits, so ids 1 and 2 hit real objects.
(The schema is loaded at import, not through ``schemathesis.pytest.from_fixture``, whose lazy
mode reads a private pytest attribute that pytest 9 no longer has.)"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from api_helpers import ADMIN, make_settings, run_jobs, synthetic_scans, upload  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from api.main import create_app  # noqa: E402

_TMP = Path(tempfile.mkdtemp(prefix="ballistic-fuzz-"))
APP = create_app(make_settings(_TMP))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def live_app():
    from fastapi.testclient import TestClient

    scans = synthetic_scans()
    try:
        with TestClient(APP) as c:  # runs the lifespan (migrations, index, runtime) for the whole module
            for n in ("a1", "a2"):
                assert upload(c, ADMIN, scans[n], name=f"{n}.x3p").status_code == 201
            run_jobs(c)
            yield APP
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(headers=ADMIN, checks=[not_a_server_error])
