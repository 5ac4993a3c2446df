"""The same service code on PostgreSQL (the production option). Runs when BALLISTIC_TEST_POSTGRES_URL
names a server and a maintenance database whose user may create databases, e.g.
postgresql+psycopg://postgres@127.0.0.1:55432/postgres; each test gets a fresh database of its own
(so xdist workers never share one). ``.ci/run`` starts a throwaway server and sets the URL and
BALLISTIC_REQUIRE_POSTGRES=1, under which a missing URL fails instead of skipping."""
from __future__ import annotations

import os

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs, upload
from fastapi.testclient import TestClient

URL = os.environ.get("BALLISTIC_TEST_POSTGRES_URL")
if not URL and os.environ.get("BALLISTIC_REQUIRE_POSTGRES") == "1":
    raise RuntimeError("BALLISTIC_REQUIRE_POSTGRES=1 but BALLISTIC_TEST_POSTGRES_URL is not set")
pytestmark = pytest.mark.skipif(not URL, reason="set BALLISTIC_TEST_POSTGRES_URL to run against PostgreSQL")


@pytest.fixture
def pg_url():
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ballistic_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_full_flow_on_postgres(tmp_path, pg_url, scans):
    from api.main import create_app

    s = make_settings(tmp_path, database_url=pg_url)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner", "PG Examiner")
        intel = new_key(c, "intelligence")
        ids = {}
        for n in ("a1", "a2", "b1"):
            r = upload(c, ex, scans[n], name=f"{n}.x3p", case_number=f"K-{n}", recovery_date="2024-05-01")
            assert r.status_code == 201, r.text
            ids[n] = r.json()["id"]
        assert upload(c, ex, scans["a1"], name="again.x3p").status_code == 409
        run_jobs(c)
        top = c.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=ex).json()["items"][0]
        assert top["candidate"]["id"] == ids["a2"]
        assert c.get(top["explanation_url"], headers=ex).json()["explanation"]["forward"]["cells"]
        assert c.post(f"/v1/candidates/{top['id']}/review", headers=ex,
                      json={"decision": "confirmed"}).status_code == 201
        f1 = c.get("/v1/hits/feed", headers=intel)
        assert [i["candidate_id"] for i in f1.json()["items"]] == [top["id"]]
        assert c.get("/v1/hits/feed", headers={**intel, "If-None-Match": f1.headers["etag"]}).status_code == 304
        assert len(c.get("/v1/series", headers=intel).json()["items"]) == 1
        assert c.get("/v1/export/i2.csv", headers=intel).status_code == 200
        st = c.get("/v1/status", headers=ADMIN).json()
        assert st["index"]["consistent"] and st["jobs"]["done"] == 3
        assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]

    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    eng = create_engine(pg_url)
    with pytest.raises(DBAPIError, match="append-only"):
        with eng.begin() as conn:
            conn.execute(text("UPDATE audit_log SET actor='x' WHERE seq=2"))
    with eng.begin() as conn:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(text("UPDATE audit_log SET detail='{}' WHERE seq=4"))
    eng.dispose()
    with TestClient(create_app(s)) as c:
        v = c.get("/v1/audit/verify", headers=ADMIN).json()
        assert not v["ok"] and v["first_bad_seq"] == 4


def test_migration_matches_models_on_postgres(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from api.db import Base, make_engine, upgrade

    eng = make_engine(pg_url)
    upgrade(eng)
    with eng.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    eng.dispose()
