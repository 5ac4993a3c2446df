"""Hash-chained audit log: verification, tamper detection (API and CLI), no way to alter it through the API."""
from __future__ import annotations

import sqlite3

from api_helpers import ADMIN, upload
from typer.testing import CliRunner


def _some_activity(client, examiner, scans):
    for n in ("a1", "b1"):
        assert upload(client, examiner, scans[n], name=f"{n}.x3p").status_code == 201
    client.get("/v1/exhibits/1/original", headers=examiner)


def test_chain_verifies_and_detects_an_edited_row(client, examiner, scans, settings):
    _some_activity(client, examiner, scans)
    ok = client.get("/v1/audit/verify", headers=ADMIN).json()
    assert ok["ok"] and ok["rows"] >= 5 and ok["first_bad_seq"] is None and len(ok["head_hash"]) == 64
    rows = client.get("/v1/audit", headers=ADMIN).json()["items"]
    assert rows[0]["prev_hash"] == "0" * 64
    assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, len(rows)))

    db = sqlite3.connect(settings.data_dir / "ballistic.db")
    # the database itself refuses updates and deletes of audit rows
    for sql in ("UPDATE audit_log SET actor='mallory' WHERE seq=3", "DELETE FROM audit_log WHERE seq=3"):
        try:
            db.execute(sql)
            raise AssertionError(f"{sql} was allowed")
        except sqlite3.DatabaseError as e:
            assert "append-only" in str(e)
    # someone with file access drops the guard and edits row 3
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET actor='key:9:mallory' WHERE seq=3")
    db.commit()
    db.close()
    bad = client.get("/v1/audit/verify", headers=ADMIN).json()
    assert not bad["ok"] and bad["first_bad_seq"] == 3 and "edited" in bad["reason"] and bad["rows"] == 2

    # the CLI says the same and exits non-zero
    from api.cli import app

    res = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 1 and '"first_bad_seq": 3' in res.output


def test_deleted_row_is_detected(client, examiner, scans, settings):
    _some_activity(client, examiner, scans)
    db = sqlite3.connect(settings.data_dir / "ballistic.db")
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute("DELETE FROM audit_log WHERE seq=2")
    db.commit()
    db.close()
    bad = client.get("/v1/audit/verify", headers=ADMIN).json()
    assert not bad["ok"] and bad["first_bad_seq"] == 3


def test_cli_verify_ok(client, examiner, scans, settings):
    _some_activity(client, examiner, scans)
    from api.cli import app

    res = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 0 and '"ok": true' in res.output


def test_no_endpoint_alters_the_audit_log(client, examiner, scans):
    _some_activity(client, examiner, scans)
    before = client.get("/v1/audit", headers=ADMIN).json()["items"]
    # examiner: no access at all
    assert client.get("/v1/audit", headers=examiner).status_code == 403
    assert client.get("/v1/audit/verify", headers=examiner).status_code == 403
    # no write method exists on the audit resource, for anyone
    for h in (examiner, ADMIN):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/v1/audit", "/v1/audit/1", "/v1/audit/verify"):
                r = client.request(method, path, headers=h, json={"seq": 1, "actor": "x"})
                assert r.status_code in (404, 405), (method, path, r.status_code)
    spec = client.get("/openapi.json").json()["paths"]
    for path, ops in spec.items():
        if path.startswith("/v1/audit"):
            assert set(ops) == {"get"}, (path, ops)
    after = client.get("/v1/audit", headers=ADMIN).json()["items"]
    assert after == before
    assert client.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
