"""Exhibit submission: write-once content-addressed originals, duplicates, 4xx reasons, access control."""
from __future__ import annotations

import hashlib
import os
import stat

from api_helpers import ADMIN, malformed_x3p, png_bytes, upload


def test_health_and_docs(client):
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/exhibits" in spec["paths"] and "/v1/hits/feed" in spec["paths"]


def test_upload_stores_original_write_once(client, examiner, scans, settings):
    r = upload(client, examiner, scans["a1"], name="a1.x3p", case_number="K-1", exhibit_ref="E1",
               role="evidence", recovery_date="2024-03-01", place_text="Main St", lat=52.1, lon=4.3)
    assert r.status_code == 201, r.text
    ex = r.json()
    sha = hashlib.sha256(scans["a1"]).hexdigest()
    assert ex["original_sha256"] == sha and ex["original_size"] == len(scans["a1"])
    assert ex["media_type"] == "x3p" and ex["region"] == "breech_face"
    assert ex["partition"] == "breech_face|9mm|any"
    assert ex["case"]["case_number"] == "K-1" and ex["job"]["status"] == "queued"
    stored = settings.evidence_dir / "originals" / sha[:2] / sha[2:4] / sha
    assert stored.read_bytes() == scans["a1"]
    assert not os.stat(stored).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only
    assert list((settings.evidence_dir / "tmp").iterdir()) == []  # no staging leftovers
    # download = the same bytes, and the read is audited
    d = client.get(f"/v1/exhibits/{ex['id']}/original", headers=examiner)
    assert d.status_code == 200 and d.content == scans["a1"] and d.headers["x-content-sha256"] == sha
    log = client.get("/v1/audit", headers=ADMIN).json()["items"]
    assert [e["action"] for e in log][-2:] == ["exhibit.create", "evidence.read_original"]


def test_duplicate_upload_is_409_with_existing_id(client, examiner, scans):
    first = upload(client, examiner, scans["a1"], name="a1.x3p").json()
    r = upload(client, examiner, scans["a1"], name="other-name.x3p", case_number="K-9")
    assert r.status_code == 409
    assert r.json()["detail"]["existing_exhibit_id"] == first["id"]
    assert client.get("/v1/exhibits", headers=examiner).json()["total"] == 1


def test_bad_inputs_are_4xx_with_reasons_and_lose_nothing(tmp_path, scans):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api_helpers import make_settings, new_key

    s = make_settings(tmp_path, max_upload_bytes=len(scans["a1"]) + 10, max_pixels=200_000)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        good = upload(c, ex, scans["a1"], name="a1.x3p")
        assert good.status_code == 201
        sha = good.json()["original_sha256"]

        r = upload(c, ex, b"GIF89a not a scan at all", name="x.gif")
        assert r.status_code == 415 and "x3p" in r.json()["detail"]
        r = upload(c, ex, malformed_x3p(), name="broken.x3p")
        assert r.status_code == 422 and r.json()["detail"].startswith("not a readable x3p file: 'broken.x3p'")
        assert "main.xml" in r.json()["detail"]
        r = upload(c, ex, scans["a1"][: len(scans["a1"]) // 2], name="truncated.x3p")
        assert r.status_code == 422 and "not a readable x3p file" in r.json()["detail"]
        r = upload(c, ex, b"", name="empty.x3p")
        assert r.status_code == 422
        r = upload(c, ex, scans["b1"] + b"\0" * 200, name="big.x3p")  # over max_upload_bytes
        assert r.status_code == 413 and "uploads are limited to" in r.json()["detail"]
        r = upload(c, ex, png_bytes(600, 600, seed=None), name="huge.png")  # 360k pixels > max_pixels
        assert r.status_code == 413 and r.json()["detail"].startswith("file too large for this service: the "
                                                                      "image is 600 x 600 pixels")
        assert "max_pixels" not in r.json()["detail"]
        r = upload(c, ex, png_bytes(), name="b.png", exhibit_type="bullet")
        assert r.status_code == 422
        r = upload(c, ex, scans["b1"], name="b1.x3p", firearm_serial="X1")  # serial on evidence
        assert r.status_code == 422
        r = upload(c, ex, scans["b1"], name="b1.x3p", lat=91, lon=0)
        assert r.status_code == 422
        # a 2D image is accepted in its own region
        r = upload(c, ex, png_bytes(), name="photo.png", spacing_um=3.0)
        assert r.status_code == 201 and r.json()["region"] == "breech_face_2d"

        # nothing already stored was lost or altered
        assert c.get("/v1/exhibits", headers=ex).json()["total"] == 2
        assert c.get(f"/v1/exhibits/{good.json()['id']}/original", headers=ex).content == scans["a1"]
        originals = [p for p in (s.evidence_dir / "originals").rglob("*") if p.is_file()]
        assert len(originals) == 2 and any(p.name == sha for p in originals)
        assert list((s.evidence_dir / "tmp").iterdir()) == []


def test_declared_body_too_large_is_refused_before_reading(tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api_helpers import ADMIN_KEY, make_settings

    with TestClient(create_app(make_settings(tmp_path, max_upload_bytes=4096))) as c:
        r = c.post("/v1/exhibits", headers={"X-API-Key": ADMIN_KEY, "content-length": str(50 << 20)},
                   content=b"x" * 10)
        assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_scopes(client, examiner, intel, scans, admin):
    # no key / bad key
    assert client.get("/v1/exhibits").status_code == 401
    assert client.get("/v1/exhibits", headers={"X-API-Key": "bk_nope"}).status_code == 401
    ex = upload(client, examiner, scans["a1"], name="a1.x3p").json()
    # intelligence: no uploads, no evidence files, no exhibit or candidate data
    assert upload(client, intel, scans["b1"], name="b1.x3p").status_code == 403
    assert client.get(f"/v1/exhibits/{ex['id']}/original", headers=intel).status_code == 403
    assert client.get(f"/v1/exhibits/{ex['id']}", headers=intel).status_code == 403
    assert client.get(f"/v1/exhibits/{ex['id']}/candidates", headers=intel).status_code == 403
    assert client.get("/v1/candidates/1/figure.png", headers=intel).status_code == 403
    assert client.post("/v1/candidates/1/review", headers=intel, json={"decision": "confirmed"}).status_code == 403
    # ...but the feed, series and exports
    assert client.get("/v1/hits/feed", headers=intel).status_code == 200
    assert client.get("/v1/series", headers=intel).status_code == 200
    assert client.get("/v1/export/i2.csv", headers=intel).status_code == 200
    # examiner: no keys, no audit
    assert client.post("/v1/keys", headers=examiner, json={"name": "x", "scope": "admin"}).status_code == 403
    assert client.get("/v1/audit/verify", headers=examiner).status_code == 403
    # the bearer form works too
    assert client.get("/v1/exhibits", headers={"Authorization": f"Bearer {examiner['X-API-Key']}"}).status_code == 200


def test_revoked_key_is_refused(client, admin):
    r = client.post("/v1/keys", headers=admin, json={"name": "temp", "scope": "examiner"}).json()
    h = {"X-API-Key": r["key"]}
    assert client.get("/v1/exhibits", headers=h).status_code == 200
    assert client.post(f"/v1/keys/{r['id']}/revoke", headers=admin).json()["revoked_at"]
    assert client.get("/v1/exhibits", headers=h).status_code == 401
    keys = client.get("/v1/keys", headers=admin).json()
    assert all("key" not in k for k in keys)


def test_bootstrap_admin_key_printed_once_and_stored_hashed(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from api.security import hash_key

    s = Settings(data_dir=tmp_path / "d", run_worker=False)
    app = create_app(s)
    with TestClient(app) as c:
        key = app.state.runtime.bootstrap_key
        assert key and key in capsys.readouterr().out
        assert c.get("/v1/keys", headers={"X-API-Key": key}).status_code == 200
    import sqlite3

    db = sqlite3.connect(s.data_dir / "ballistic.db")
    assert db.execute("select key_hash from api_keys").fetchall() == [(hash_key(key),)]
    db.close()
    app2 = create_app(Settings(data_dir=tmp_path / "d", run_worker=False))
    with TestClient(app2):
        assert app2.state.runtime.bootstrap_key is None  # not issued twice
    assert key not in capsys.readouterr().out


def test_bullet_lands_one_by_one_and_several_at_once(client, examiner, scans):
    """Lands uploaded one by one under the same reference join one bullet exhibit and its one queued job;
    several lands can come in one request; positions are checked; a land is never stored twice."""
    meta = dict(case_number="B-1", exhibit_ref="bullet-1", exhibit_type="bullet", land_count=6, twist="right")
    r = upload(client, examiner, scans["c1"], name="l3.x3p", land_index=3, **meta)
    assert r.status_code == 201, r.text
    b = r.json()
    assert b["exhibit_type"] == "bullet" and b["land_count"] == 6 and b["region"] == "bullet_lea"
    assert b["partition"] == "bullet_lea|9mm|any" and b["job"]["status"] == "queued"
    assert [x["land_index"] for x in b["lands"]] == [3]
    r2 = upload(client, examiner, scans["b1"], name="l4.x3p", **meta)  # no land_index: the next free one
    assert r2.status_code == 201 and r2.json()["id"] == b["id"] and r2.json()["job"]["id"] == b["job"]["id"]
    assert [x["land_index"] for x in r2.json()["lands"]] == [3, 4]
    assert upload(client, examiner, scans["b2"], name="x.x3p", land_index=3, **meta).status_code == 409  # taken
    assert upload(client, examiner, scans["c1"], name="again.x3p", land_index=5, **meta).status_code == 409  # dup
    assert upload(client, examiner, scans["b2"], name="l9.x3p", land_index=9, **meta).status_code == 422  # > 6
    # several files in one request, positions given
    files = [("file", ("l1.x3p", scans["a1"], "application/octet-stream")),
             ("file", ("l2.x3p", scans["a2"], "application/octet-stream"))]
    r3 = client.post("/v1/exhibits", headers=examiner, files=files,
                     data={"case_number": "B-2", "exhibit_ref": "bullet-2", "agency": "NFFP-Test", "calibre": "9mm",
                           "exhibit_type": "bullet", "land_indexes": "2, 5"})
    assert r3.status_code == 201, r3.text
    assert [(x["land_index"], x["original_filename"]) for x in r3.json()["lands"]] == [(2, "l1.x3p"), (5, "l2.x3p")]
    # a cartridge case is one file; land positions are for bullets
    r4 = client.post("/v1/exhibits", headers=examiner, files=[("file", ("a.x3p", scans["a3"], "x")),
                                                              ("file", ("b.x3p", scans["b2"], "x"))],
                     data={"case_number": "C", "exhibit_ref": "c", "agency": "A"})
    assert r4.status_code == 422
    assert upload(client, examiner, scans["a3"], name="a3.x3p", land_index=1).status_code == 422
    # add by id; download a land (audited)
    r5 = client.post(f"/v1/exhibits/{b['id']}/lands", headers=examiner, data={"land_index": "6"},
                     files=[("file", ("l6.x3p", scans["a3"], "application/octet-stream"))])
    assert r5.status_code == 201 and [x["land_index"] for x in r5.json()["lands"]] == [3, 4, 6]
    assert client.get(f"/v1/exhibits/{b['id']}/lands/4/original", headers=examiner).content == scans["b1"]
    assert client.get(f"/v1/exhibits/{b['id']}/lands/2/original", headers=examiner).status_code == 404
    # a pending job is not duplicated
    assert client.post("/v1/jobs", headers=examiner, json={"exhibit_id": b["id"]}).status_code == 409
    # these synthetic breech faces are no land engraved areas: the job fails and says why, per land
    client.app.state.runtime.run_pending_inline()
    e = client.get(f"/v1/exhibits/{b['id']}", headers=examiner).json()
    assert e["job"]["status"] == "failed" and "no land of this bullet yields a signature" in e["job"]["error"]
    assert all("striation" in x["signature_info"]["error"] for x in e["lands"])


def test_staging_leftovers_are_removed_at_start(tmp_path):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api_helpers import make_settings

    s = make_settings(tmp_path)
    (s.evidence_dir / "tmp").mkdir(parents=True)
    (s.evidence_dir / "tmp" / "upload-deadbeef").write_bytes(b"half an upload")
    app = create_app(s)
    with TestClient(app):
        assert app.state.runtime.startup_report["staging_files_removed"] == 1
    assert not (s.evidence_dir / "tmp" / "upload-deadbeef").exists()


def test_store_never_overwrites_and_works_without_hard_links(tmp_path, monkeypatch):
    import io

    from api.storage import EvidenceStore

    st = EvidenceStore(tmp_path / "ev")
    p = st.commit_original(st.stage(io.BytesIO(b"first"), 100))
    sha = p.name
    assert p.read_bytes() == b"first" and st.verify_original(sha)
    # a staged file that claims the same name (impossible by hashing, forced here) leaves the stored one as is
    staged = st.stage(io.BytesIO(b"other"), 100)
    staged.sha256 = sha
    st.commit_original(staged)
    assert p.read_bytes() == b"first" and not staged.path.exists()

    def no_links(*a):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    q = st.commit_original(st.stage(io.BytesIO(b"second"), 100))
    assert q.read_bytes() == b"second" and st.verify_original(q.name)
    assert not os.stat(q).st_mode & stat.S_IWUSR
