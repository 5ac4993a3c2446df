"""Issue 12, first hour of a new user: keys from the command line, the bootstrap key banner and file,
`audit verify` that says which database it checked, `compare` that creates its output folders, `ingest`
that checks the server and the key first and groups scans into cases. Each test failed on main at 7dd266b."""
from __future__ import annotations

import json
import stat

import pytest
from api_helpers import ADMIN, make_settings, synthetic_breech_face, upload, x3p_bytes
from typer.testing import CliRunner

runner = CliRunner()


def _cli(args, **kw):
    from api.cli import app

    return runner.invoke(app, args, **kw)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A service on tmp/data (TestClient) and a current folder elsewhere: the CLI must find the database the
    way `serve` does (BALLISTIC_DATA_DIR), not by the current folder."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    s = make_settings(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with TestClient(create_app(s)) as c:
        yield s, c


def test_keys_cli_creates_lists_and_revokes_keys_on_the_serve_database(served):
    s, c = served
    env = {"BALLISTIC_DATA_DIR": str(s.data_dir)}
    r = _cli(["keys", "create", "--scope", "examiner", "--name", "Examiner Alice", "--quiet"], env=env)
    assert r.exit_code == 0, r.output
    exam = r.stdout.strip()
    assert exam.startswith("bk_") and len(exam.splitlines()) == 1
    assert c.get("/v1/exhibits", headers={"X-API-Key": exam}).status_code == 200
    r = _cli(["keys", "create", "--scope", "intelligence", "--name", "Analyst Bob", "--data-dir", str(s.data_dir)])
    assert r.exit_code == 0 and "intelligence key" in r.stdout and "shown once" in r.stdout, r.output
    intel = r.stdout.strip().splitlines()[-1]
    assert c.get("/v1/hits/feed", headers={"X-API-Key": intel}).status_code == 200
    assert c.get("/v1/exhibits", headers={"X-API-Key": intel}).status_code == 403
    listing = _cli(["keys", "list"], env=env)
    assert listing.exit_code == 0 and "Examiner Alice" in listing.stdout and "Analyst Bob" in listing.stdout
    assert exam not in listing.output and intel not in listing.output  # never the secrets
    kid = next(int(line.split()[0]) for line in listing.stdout.splitlines() if "Examiner Alice" in line)
    r = _cli(["keys", "revoke", str(kid)], env=env)
    assert r.exit_code == 0 and "revoked" in r.stdout
    assert c.get("/v1/exhibits", headers={"X-API-Key": exam}).status_code == 401
    # audited like the JSON route, and the chain holds
    log = c.get("/v1/audit", headers=ADMIN).json()["items"]
    assert [e["action"] for e in log if e["actor"].startswith("cli:")] == ["key.create", "key.create", "key.revoke"]
    assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
    bad = _cli(["keys", "create", "--scope", "superuser", "--name", "x"], env=env)
    assert bad.exit_code == 2 and "scope" in bad.output


def test_keys_and_audit_cli_say_where_they_looked_when_there_is_no_database(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BALLISTIC_DATA_DIR", raising=False)
    for args in (["keys", "list"], ["audit", "verify"], ["keys", "create", "--scope", "examiner", "--name", "x"]):
        r = _cli(args)
        assert r.exit_code == 2, (args, r.output)
        assert str(tmp_path / "ballistic-data" / "ballistic.db") in r.output and "BALLISTIC_DATA_DIR" in r.output


def test_audit_verify_finds_the_serve_database_and_names_it(served, scans):
    s, c = served
    assert upload(c, ADMIN, scans["a1"], name="a1.x3p").status_code == 201
    r = _cli(["audit", "verify"], env={"BALLISTIC_DATA_DIR": str(s.data_dir)})
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["rows"] >= 2 and rep["database"] == str(s.data_dir / "ballistic.db")
    assert "verified" in r.output


def test_bootstrap_admin_key_is_a_banner_and_a_0600_file(tmp_path, capsys):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings

    s = Settings(data_dir=tmp_path / "d", run_worker=False)
    app = create_app(s)
    with TestClient(app):
        key = app.state.runtime.bootstrap_key
    out = capsys.readouterr().out
    lines = out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.strip() == key)
    assert lines[at - 3].startswith("=====") and "BOOTSTRAP ADMIN API KEY" in lines[at - 2]
    assert any(x.startswith("=====") for x in lines[at + 1:])
    f = s.data_dir / "bootstrap-admin-key.txt"
    assert str(f) in out and "ballistic keys create --scope examiner" in out
    assert f.read_text().strip() == key
    assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_compare_creates_the_folders_of_its_outputs(tmp_path):
    from ballistic.cli import app

    a, b = tmp_path / "a.x3p", tmp_path / "b.x3p"
    a.write_bytes(x3p_bytes(synthetic_breech_face(1)))
    b.write_bytes(x3p_bytes(synthetic_breech_face(1, angle=30.0)))
    js, fig = tmp_path / "out" / "deep" / "ab.json", tmp_path / "figs" / "ab.png"
    r = runner.invoke(app, ["compare", str(a), str(b), "--json", str(js), "--figure", str(fig)])
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["cmc_count"] >= 1
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ingest_checks_server_and_key_first_and_groups_scans_into_cases(tmp_path):
    """Against a real `ballistic serve`: one clear message (exit 2, nothing uploaded) for a server that is not
    there, a wrong key or an intelligence key; cases by folder and by a CSV column."""
    import subprocess
    import sys

    from api.process import ServerProcess, free_port

    scans = tmp_path / "scans"
    for folder, seeds in (("case-A", (1, 2)), ("case-B", (3,))):
        (scans / folder).mkdir(parents=True)
        for k in seeds:
            (scans / folder / f"s{k}.x3p").write_bytes(x3p_bytes(synthetic_breech_face(k)))
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in (4, 5, 6):
        (flat / f"s{k}.x3p").write_bytes(x3p_bytes(synthetic_breech_face(k)))
    (flat / "labels.csv").write_text("scan,incident\ns4,INC-7\ns5,INC-7\ns6,INC-9\n")

    def ingest(*args, key):
        return subprocess.run([sys.executable, "-m", "api.cli", "ingest", *map(str, args), "--api-key", key,
                               "--calibre", "9mm"], capture_output=True, text=True, timeout=300)

    nobody = f"http://127.0.0.1:{free_port()}"
    r = ingest(scans, "--case-by", "folder", "--api-url", nobody, key="bk_whatever")
    assert r.returncode == 2 and "cannot reach the service at " + nobody in r.stderr, r.stderr
    assert r.stderr.count("\n") <= 2 and "s1.x3p" not in r.stderr  # one message, no per-file errors

    admin = "bk_first-hour-admin-key"
    with ServerProcess(tmp_path / "data", admin_key=admin, env={"BALLISTIC_RERANK_K": "4"},
                       log=tmp_path / "server.log") as srv:
        with srv.client() as c:
            intel = c.post("/v1/keys", json={"name": "intel", "scope": "intelligence"}).json()["key"]
            exam = c.post("/v1/keys", json={"name": "exam", "scope": "examiner"}).json()["key"]
        r = ingest(scans, "--api-url", srv.url, key="bk_wrong")
        assert r.returncode == 2 and "API key was refused" in r.stderr and "ballistic keys create" in r.stderr
        r = ingest(scans, "--api-url", srv.url, key=intel)
        assert r.returncode == 2 and "may not submit exhibits" in r.stderr
        with srv.client() as c:
            assert c.get("/v1/exhibits").json()["total"] == 0  # nothing was tried
        r = ingest(scans, "--case-by", "folder", "--api-url", srv.url, key=exam)
        assert r.returncode == 0, r.stdout + r.stderr
        r = ingest(flat, "--labels", flat / "labels.csv", "--case-column", "incident", "--api-url", srv.url,
                   key=exam)
        assert r.returncode == 0, r.stdout + r.stderr
        with srv.client() as c:
            items = c.get("/v1/exhibits").json()["items"]
        cases = {}
        for e in items:
            cases.setdefault(e["case"]["case_number"], set()).add(e["exhibit_ref"])
        assert cases == {"case-A": {"s1", "s2"}, "case-B": {"s3"}, "INC-7": {"s4", "s5"}, "INC-9": {"s6"}}


def test_candidate_lists_are_light_and_explanations_come_per_candidate(client, examiner, scans):
    from api_helpers import run_jobs

    ids = [upload(client, examiner, scans[n], name=f"{n}.x3p", exhibit_ref=n).json()["id"] for n in ("a1", "a2", "b1")]
    run_jobs(client)
    light = client.get(f"/v1/exhibits/{ids[0]}/candidates", headers=examiner)
    full = client.get(f"/v1/exhibits/{ids[0]}/candidates", headers=examiner, params={"include_explanation": True})
    items = light.json()["items"]
    assert items and all(i["explanation"] is None for i in items)
    assert all(i["explanation"] for i in full.json()["items"])
    assert len(light.content) * 3 < len(full.content), (len(light.content), len(full.content))
    for i, f in zip(items, full.json()["items"]):
        one = client.get(i["explanation_url"], headers=examiner).json()
        assert one["id"] == i["id"] and one["explanation"] == f["explanation"]


def test_feed_items_carry_the_likelihood_ratio_with_interval_and_calibration(client, examiner, intel, scans):
    from api_helpers import run_jobs

    a1, a2 = (upload(client, examiner, scans[n], name=f"{n}.x3p", exhibit_ref=n).json()["id"] for n in ("a1", "a2"))
    run_jobs(client)
    cand = next(i for i in client.get(f"/v1/exhibits/{a1}/candidates", headers=examiner).json()["items"]
                if i["candidate"]["id"] == a2)
    assert cand["log10_lr"] is not None and cand["calibration_id"]
    assert client.post(f"/v1/candidates/{cand['id']}/review", headers=examiner,
                       json={"decision": "confirmed"}).status_code == 201
    hit = client.get("/v1/hits/feed", headers=intel).json()["items"][0]
    assert hit["candidate_id"] == cand["id"]
    assert hit["log10_lr"] == cand["log10_lr"] and hit["log10_lr_interval"] == cand["log10_lr_interval"]
    assert hit["calibration_id"] == cand["calibration_id"]
    lo, hi = hit["log10_lr_interval"]
    assert lo <= hit["log10_lr"] <= hi
