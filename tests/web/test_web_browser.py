"""End to end in a real browser: ``ballistic serve`` as a subprocess, real Fadul scans through the JSON
API, then headless Chromium (Debian's /usr/bin/chromium driven by Playwright) signs in as an examiner,
opens the exhibit and its top candidate, confirms the hit with a comment; the intelligence key then
sees it in the feed (JSON API and its own browser session). Screenshots go to ``tmp_path/screenshots``
and are copied to ``out/screenshots/`` (git-ignored).

Skips only when /usr/bin/chromium (or the playwright package) is absent AND BALLISTIC_REQUIRE_BROWSER
is not 1; ``.ci/run`` installs Chromium and sets it to 1, so CI cannot skip silently.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "bk_browser-test-admin-key-0123456789"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: scan -> (case number, agency, role, recovery date, place, firearm serial)
EXHIBITS = {
    "Fadul 1-1": ("CR-2024-0101", "Metro PD", "evidence", "2024-03-02", "Harbour Rd car park", None),
    "Fadul 1-2": ("CR-2024-0207", "Metro PD", "evidence", "2024-05-11", "Main St 14", None),
    "Fadul 2-1": ("LAB-TF-0002", "National FFP", "test_fire", "2024-01-20", None, "RUGER-P95-2"),
}


def _require_browser():
    required = os.environ.get("BALLISTIC_REQUIRE_BROWSER") == "1"
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package is not installed (pip install playwright; its browsers are "
                       "not needed)")
    if missing:
        msg = "; ".join(missing)
        if required:
            pytest.fail(f"BALLISTIC_REQUIRE_BROWSER=1 but {msg}")
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, shared_data):
    """A real ``ballistic serve`` on a free port, a fresh data dir, a known admin key and a benchmark folder
    written by ``ballistic bench cartridge`` (4 Fadul scans)."""
    _require_browser()
    bench = tmp_path / "bench"
    bench.mkdir()
    fadul = shared_data / "cartridge" / "fadul"
    # both commands run this checkout's code, whatever the venv's editable install points at
    pypath = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = dict(os.environ, PYTHONPATH=pypath, BALLISTIC_ADMIN_KEY=ADMIN_KEY, BALLISTIC_RERANK_K="5",
               BALLISTIC_WEB_BENCH_DIR=str(bench), BALLISTIC_JOB_RETRY_DELAY_S="0.2")
    exe = Path(sys.executable).with_name("ballistic")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "api.cli"]
    r = subprocess.run(cmd + ["bench", "cartridge", str(fadul), "--labels", str(fadul / "labels.csv"), "--limit", "4",
                              "--workers", "1", "--json", str(bench / "fadul.json")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd + ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                                   "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start in 90 s"
            time.sleep(0.3)
        yield base, fadul
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _upload_and_wait(base: str, fadul: Path) -> tuple[dict, dict, dict[str, int]]:
    from api.ingest import upload_file

    admin = {"X-API-Key": ADMIN_KEY}
    with httpx.Client(base_url=base, timeout=60) as c:
        keys = {}
        for scope, name in (("examiner", "Examiner Erin"), ("intelligence", "Analyst Ivan")):
            r = c.post("/v1/keys", json={"name": name, "scope": scope}, headers=admin)
            assert r.status_code == 201, r.text
            keys[scope] = {"X-API-Key": r.json()["key"]}
        c.headers.update(keys["examiner"])
        ids, jobs = {}, []
        for scan, (case, agency, role, date, place, serial) in EXHIBITS.items():
            meta = {"case_number": case, "exhibit_ref": scan, "agency": agency, "role": role, "calibre": "9mm",
                    "recovery_date": date, "exhibit_type": "cartridge_case"}
            if place:
                meta["place_text"] = place
            if serial:
                meta["firearm_serial"] = serial
            res = upload_file(c, fadul / f"{scan}.x3p", meta)
            assert res["status"] == "created", res
            ids[scan] = res["exhibit_id"]
            jobs.append(res["job_id"])
        deadline = time.monotonic() + 150
        while True:
            st = [c.get(f"/v1/jobs/{j}").json()["status"] for j in jobs]
            if all(s in ("done", "failed") for s in st) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert st == ["done"] * len(jobs), st
    return keys["examiner"], keys["intelligence"], ids


def _shot(page, folder: Path, name: str) -> Path:
    p = folder / f"{name}.png"
    page.screenshot(path=str(p), full_page=True)
    return p


def test_examiner_confirms_hit_in_browser_and_intelligence_sees_it(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, fadul = server
    examiner, intel, ids = _upload_and_wait(base, fadul)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    problems: list[str] = []
    comment = "Breech-face marks agree over the congruent cells; same slide. (browser test)"

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROME_ARGS,
            viewport={"width": 1400, "height": 1000})
        ctx.set_default_timeout(30_000)
        page = ctx.new_page()
        watching = [True]  # off for the deliberate 403 navigations at the end

        def on_console(m):
            if m.type == "error" and watching[0]:
                problems.append(f"console error on {page.url}: {m.text} at {m.location.get('url')}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        # sign in as the examiner
        page.goto(f"{base}/web/exhibits")
        expect(page).to_have_url(f"{base}/web/login?next=%2Fweb%2Fexhibits")
        page.fill("#api_key", examiner["X-API-Key"])
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/web/exhibits")
        expect(page.get_by_test_id("user")).to_contain_text("Examiner Erin")
        cookies = {c["name"]: c for c in ctx.cookies()}
        assert cookies["ballistic_session"]["httpOnly"] and cookies["ballistic_session"]["sameSite"] == "Strict"
        assert examiner["X-API-Key"] not in cookies["ballistic_session"]["value"]
        expect(page.get_by_test_id("total")).to_contain_text("3 exhibits")
        # live search (htmx) narrows the list
        page.fill("input[name=case]", "0207")
        expect(page.get_by_test_id("total")).to_contain_text("1 exhibit")
        _shot(page, shots, "01_exhibit_search")
        page.click("text=Fadul 1-2")
        page.goto(f"{base}/web/exhibits/{ids['Fadul 1-1']}")

        # the exhibit: relief images and ranked candidates, the true mate on top
        expect(page.get_by_test_id("job-status")).to_have_text("done")
        page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        rows = page.get_by_test_id("candidates").locator("tbody tr")
        expect(rows.first).to_contain_text("Fadul 1-2")
        _shot(page, shots, "02_exhibit")

        # the comparison view of the top candidate
        rows.first.get_by_test_id("open-candidate").click()
        page.wait_for_selector("#compare[data-ready='1']")
        cmc = int(page.get_by_test_id("cmc").inner_text())
        assert cmc >= 6
        _shot(page, shots, "03_compare_side_by_side")
        # synchronised zoom: a wheel on the left canvas changes the one shared transform
        s0 = page.evaluate("() => window.ballisticViewer.state.scale")
        page.get_by_test_id("cv-ref").hover()
        page.mouse.wheel(0, -600)
        page.wait_for_function(f"() => window.ballisticViewer.state.scale > {s0} * 1.5")
        page.get_by_test_id("cv-tgt").hover()
        page.mouse.down()
        page.mouse.move(700, 300)
        page.mouse.up()
        _shot(page, shots, "04_compare_zoomed")
        # wipe mode with the slider, then overlay
        page.check("input[name=mode][value=wipe]")
        page.get_by_test_id("mix").fill("40")
        expect(page.get_by_test_id("cv-mix")).to_be_visible()
        page.click("#zoom-fit")
        _shot(page, shots, "05_compare_wipe")
        page.check("input[name=mode][value=blend]")
        page.get_by_test_id("mix").fill("50")
        _shot(page, shots, "06_compare_overlay")
        page.check("input[name=mode][value=side]")

        # confirm with a comment (htmx form; same review logic as POST /v1/candidates/{id}/review)
        page.get_by_test_id("comment").fill(comment)
        page.get_by_test_id("confirm").click()
        expect(page.get_by_test_id("review-done")).to_contain_text("confirmed")
        expect(page.get_by_test_id("history")).to_contain_text(comment)
        _shot(page, shots, "07_compare_confirmed")
        cand_id = int(page.url.split("/web/candidates/")[1].split("?")[0])

        # sign out, sign in as intelligence: dashboard and feed, no evidence
        page.click("text=Sign out")
        expect(page).to_have_url(f"{base}/web/login")
        page.fill("#api_key", intel["X-API-Key"])
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{base}/web/dashboard")
        expect(page.get_by_test_id("n-hits")).to_have_text("1")
        expect(page.get_by_test_id("series")).to_contain_text("CR-2024-0101")
        page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("[data-testid=bench] img").count() == 2
        _shot(page, shots, "08_dashboard_intelligence")
        page.goto(f"{base}/web/hits")
        feed = page.get_by_test_id("feed")
        expect(feed).to_contain_text("Fadul 1-1")
        expect(feed).to_contain_text("Fadul 1-2")
        expect(feed).to_contain_text("Examiner Erin")
        assert page.locator("text=compare").count() == 0  # no link into evidence for this scope
        _shot(page, shots, "09_hits_feed_intelligence")
        watching[0] = False
        r = page.goto(f"{base}/web/candidates/{cand_id}")
        assert r.status == 403
        r = page.goto(f"{base}/web/exhibits/{ids['Fadul 1-1']}/relief.png")
        assert r.status == 403
        ctx.close()

    with httpx.Client(base_url=base, timeout=30) as c:
        items = c.get("/v1/hits/feed", headers=intel).json()["items"]
        assert [(i["candidate_id"], i["kind"], i["confirmed_by"]) for i in items] == [(cand_id, "hit", "Examiner Erin")]
        assert {e["exhibit_ref"] for e in items[0]["exhibits"]} == {"Fadul 1-1", "Fadul 1-2"}
        reviews = c.get(f"/v1/candidates/{cand_id}/reviews", headers=examiner).json()
        assert [(r["decision"], r["comment"], r["examiner"]) for r in reviews] == [
            ("confirmed", comment, "Examiner Erin")]
        assert c.get("/v1/audit/verify", headers={"X-API-Key": ADMIN_KEY}).json()["ok"]
        actions = [a["action"] for a in c.get("/v1/audit", headers={"X-API-Key": ADMIN_KEY},
                                             params={"limit": 1000}).json()["items"]]
        assert "candidate.review" in actions and "evidence.read_view" in actions and "web.login" in actions

    out = REPO / "out" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(shots.glob("*.png")):
        shutil.copy2(f, out / f.name)
    assert not problems, problems  # no script error, no CSP violation, no failed request
