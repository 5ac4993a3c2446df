"""kill -9 of ``ballistic serve`` during a bulk ingest, then restart: no acknowledged exhibit is lost,
no job is stuck, the vector index matches the database and the audit chain verifies."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time

import pytest
from api_helpers import synthetic_breech_face, x3p_bytes

pytestmark = pytest.mark.slow

ADMIN = "bk_crash-test-admin-key"


def _wait_idle(c, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.get("/v1/status").json()
        if st["jobs"]["queued"] == 0 and st["jobs"]["running"] == 0:
            return st
        time.sleep(0.5)
    raise AssertionError(f"jobs still pending after {timeout}s: {st['jobs']}")


def test_kill9_during_ingest_then_restart(tmp_path):
    from api.ingest import ingest_directory
    from api.process import ServerProcess

    scans = tmp_path / "scans"
    scans.mkdir()
    for src in range(7):
        for k, angle in enumerate((0.0, 35.0 + 20 * src)):
            (scans / f"s{src}-{k}.x3p").write_bytes(x3p_bytes(synthetic_breech_face(100 + src, angle=angle)))
    files = sorted(scans.glob("*.x3p"))
    data = tmp_path / "data"
    env = {"BALLISTIC_RERANK_K": "4", "BALLISTIC_INDEX_SAVE_INTERVAL_S": "0"}

    srv = ServerProcess(data, admin_key=ADMIN, workers=1, env=env, log=tmp_path / "server1.log").start()
    with srv.client() as c:
        exam = c.post("/v1/keys", json={"name": "crash examiner", "scope": "examiner"}).json()["key"]

    acked: list[dict] = []
    done = threading.Event()

    def ingest():
        try:
            ingest_directory(scans, api_url=srv.url, api_key=exam, calibre="9mm", concurrency=2, files=files,
                             progress=False, timeout=30, on_result=lambda r: r["status"] == "created" and
                             acked.append(r))
        finally:
            done.set()

    t = threading.Thread(target=ingest, daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 6 and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.05)
    srv.kill()  # SIGKILL mid-ingest (uploads in flight, correlation jobs queued / running)
    t.join(60)
    n_acked = len(acked)
    assert 6 <= n_acked < len(files), f"kill came too late or too early: {n_acked} acknowledged"

    # restart on the same data
    srv2 = ServerProcess(data, admin_key=ADMIN, workers=1, env=env, log=tmp_path / "server2.log").start()
    try:
        with srv2.client(exam) as c:
            for r in acked:  # every acknowledged exhibit is there, byte for byte
                e = c.get(f"/v1/exhibits/{r['exhibit_id']}")
                assert e.status_code == 200 and e.json()["original_sha256"] == r["sha256"]
                blob = c.get(f"/v1/exhibits/{r['exhibit_id']}/original").content
                assert hashlib.sha256(blob).hexdigest() == r["sha256"]
        with srv2.client() as c:
            st = _wait_idle(c)
            print("after restart:", n_acked, "acknowledged;", st["startup"])
            # the crash left correlation work pending, and the start-up sweep picked it up
            assert st["startup"]["requeued_jobs"] >= 1
            assert st["jobs"]["failed"] == 0 and st["jobs"]["done"] >= n_acked
            assert st["index"]["consistent"], st["index"]
            assert st["index"]["index_count"] == st["exhibits"]
        # finish the ingest: what was committed but never acknowledged comes back as a duplicate, not twice
        # (through the real CLI: ballistic ingest DIR)
        report = tmp_path / "ingest.json"
        cli = subprocess.run([sys.executable, "-m", "api.cli", "ingest", str(scans), "--api-url", srv2.url,
                              "--api-key", exam, "--calibre", "9mm", "--report", str(report)],
                             capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        res = json.loads(report.read_text())
        assert len(res) == len(files)
        assert {r["status"] for r in res} <= {"created", "duplicate"}
        assert sum(r["status"] == "duplicate" for r in res) >= n_acked
        with srv2.client() as c:
            st = _wait_idle(c)
            assert st["exhibits"] == len(files)
            assert st["jobs"]["failed"] == 0 and st["jobs"]["queued"] == st["jobs"]["running"] == 0
            assert st["index"]["consistent"] and st["index"]["index_count"] == len(files)
            v = c.get("/v1/audit/verify").json()
            assert v["ok"], v
            # each synthetic pair found each other
            for r in res:
                items = c.get(f"/v1/exhibits/{r['exhibit_id']}/candidates",
                              params={"include_explanation": False}).json()["items"]
                src = r["file"].split("-")[0]
                assert items and items[0]["candidate"]["exhibit_ref"].split("-")[0] == src, (r, items[:2])
    finally:
        srv2.stop()
    # the CLI verifies the same chain offline
    out = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify", "--data-dir", str(data)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
