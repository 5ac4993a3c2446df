"""The workbench pages in-process (TestClient, real SQLite file, synthetic scans): sign-in, cookies and
CSRF, scope rules identical to the JSON API, search and pagination, pictures (audited), the review
through the JSON API's own logic, the dashboard and its benchmark folder, security headers."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from web_helpers import ADMIN, csrf_of, upload, web_login

from api.web import auth, charts, routes


def _cookie_headers(r) -> list[str]:
    return r.headers.get_list("set-cookie")


# --------------------------------------------------------------------------- sign-in
def test_pages_need_a_session_and_the_login_sets_strict_httponly_cookies(client, examiner):
    r = client.get("/web/exhibits", params={"case": "x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/web/login?next=%2Fweb%2Fexhibits%3Fcase%3Dx"
    page = client.get("/web/login")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    token = csrf_of(page.text)
    # no / wrong CSRF token: refused, nothing signed in
    r = client.post("/web/login", data={"api_key": examiner["X-API-Key"], "csrf_token": "forged"},
                    follow_redirects=False)
    assert r.status_code == 400 and auth.SESSION_COOKIE not in r.cookies
    token = csrf_of(r.text)
    r = client.post("/web/login", data={"api_key": "bk_wrong", "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 401 and "Invalid or revoked API key" in r.text
    token = csrf_of(r.text)
    r = client.post("/web/login", data={"api_key": examiner["X-API-Key"], "csrf_token": token,
                                        "next": "/web/exhibits?case=x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/web/exhibits?case=x"
    cookies = _cookie_headers(r)
    session = next(c for c in cookies if c.startswith(auth.SESSION_COOKIE + "="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert examiner["X-API-Key"] not in session  # the key itself never goes into the cookie
    assert any(c.startswith(auth.CSRF_COOKIE + "=") and "HttpOnly" in c for c in cookies)
    assert client.get("/web/exhibits").status_code == 200


def test_open_redirects_are_refused(client, examiner):
    page = client.get("/web/login")
    r = client.post("/web/login", data={"api_key": examiner["X-API-Key"], "csrf_token": csrf_of(page.text),
                                        "next": "//evil.example/web/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/web/exhibits"


def test_logout_needs_the_csrf_token_and_clears_the_session(client, examiner):
    web_login(client, examiner)
    page = client.get("/web/exhibits")
    assert client.post("/web/logout", data={"csrf_token": "nope"}, follow_redirects=False).status_code == 400
    r = client.post("/web/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/web/login"
    client.cookies.clear()
    assert client.get("/web/exhibits", follow_redirects=False).status_code == 303


def test_revoked_key_ends_its_browser_session_and_a_tampered_cookie_is_refused(client, examiner):
    web_login(client, examiner)
    assert client.get("/web/exhibits").status_code == 200
    raw = client.cookies.get(auth.SESSION_COOKIE)
    body, mac = raw.split(".")
    payload = json.loads(auth._unb64(body))
    payload["kid"] = 1  # the admin key's id
    client.cookies.set(auth.SESSION_COOKIE, auth._b64(json.dumps(payload).encode()) + "." + mac)
    assert client.get("/web/exhibits", follow_redirects=False).status_code == 303
    client.cookies.set(auth.SESSION_COOKIE, raw)
    keys = client.get("/v1/keys", headers=ADMIN).json()
    kid = next(k["id"] for k in keys if k["name"] == "Examiner Alice")
    assert client.post(f"/v1/keys/{kid}/revoke", headers=ADMIN).status_code == 200
    assert client.get("/web/exhibits", follow_redirects=False).status_code == 303


def test_sign_and_unsign():
    secret = b"s" * 32
    tok = auth.sign({"kid": 3, "iat": int(dt.datetime.now().timestamp())}, secret)
    assert auth.unsign(tok, secret)["kid"] == 3
    assert auth.unsign(tok, b"t" * 32) is None
    assert auth.unsign(tok, secret, max_age_s=-1) is None
    old = auth.sign({"kid": 3, "iat": 1}, secret)
    assert auth.unsign(old, secret) is None
    for bad in ("", "x", "a.b.c", tok + "x", "." + tok.split(".")[1]):
        assert auth.unsign(bad, secret) is None


# --------------------------------------------------------------------------- scopes
def test_intelligence_sees_dashboard_and_feed_never_evidence(client, intel, linked):
    web_login(client, intel)
    cid = client.get(f"/v1/exhibits/{linked['a1']}/candidates", headers=ADMIN).json()["items"][0]["id"]
    for url in ("/web/exhibits", f"/web/exhibits/{linked['a1']}", f"/web/exhibits/{linked['a1']}/relief.png",
                f"/web/candidates/{cid}", f"/web/candidates/{cid}/forward/reference.png",
                f"/web/candidates/{cid}/forward/aligned.png"):
        r = client.get(url)
        assert r.status_code == 403, url
        assert "image/png" not in r.headers["content-type"]
    page = client.get("/web/dashboard")
    assert page.status_code == 200 and "/web/exhibits" not in page.text and ".png" not in page.text
    assert client.get("/web/hits").status_code == 200
    # and no review either
    r = client.post(f"/web/candidates/{cid}/review", data={"decision": "confirmed", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 403
    assert client.get(f"/v1/candidates/{cid}/reviews", headers=ADMIN).json() == []


def test_login_lands_on_the_page_of_the_scope(client, examiner, intel):
    for key, dest in ((examiner, "/web/exhibits"), (intel, "/web/dashboard")):
        client.cookies.clear()
        page = client.get("/web/login")
        r = client.post("/web/login", data={"api_key": key["X-API-Key"], "csrf_token": csrf_of(page.text)},
                        follow_redirects=False)
        assert r.headers["location"] == dest
        assert client.get("/web/", follow_redirects=False).headers["location"] == dest


# --------------------------------------------------------------------------- exhibits
def test_exhibit_search_filters_and_pages(client, examiner, scans, monkeypatch):
    for i, (n, data) in enumerate(scans.items()):
        r = upload(client, examiner, data, name=f"{n}.x3p", exhibit_ref=f"EX-{n}", case_number=f"2024-{i:04d}",
                   agency="Metro PD" if i % 2 else "County SO", recovery_date=f"2024-0{i + 1}-10",
                   calibre="9mm" if i < 4 else ".40")
        assert r.status_code == 201
    web_login(client, examiner)

    def total(**params) -> int:
        page = client.get("/web/exhibits", params=params)
        assert page.status_code == 200
        return int(re.search(r'data-testid="total">(\d+) exhibit', page.text).group(1))

    assert total() == 6
    assert total(case="0003") == 1
    assert total(agency="metro") == 3           # substring, case-insensitive
    assert total(calibre=".40") == 2
    assert total(exhibit="ex-a") == 3
    assert total(date_from="2024-02-01", date_to="2024-04-30") == 3
    assert total(case="%") == 0                 # LIKE wildcards are literal
    bad = client.get("/web/exhibits", params={"date_from": "yesterday"})
    assert bad.status_code == 200 and "not a date" in bad.text
    monkeypatch.setattr(routes, "PAGE_SIZE", 4)
    p2 = client.get("/web/exhibits", params={"page": 2})
    assert "page 2 of 2" in p2.text and p2.text.count("/web/exhibits/") == 2
    # htmx asks for the table only
    part = client.get("/web/exhibits", params={"agency": "county"},
                      headers={"HX-Request": "true", "HX-Target": "results"})
    assert "<html" not in part.text and "3 exhibits" in part.text


def test_exhibit_page_lists_ranked_candidates_and_pictures_are_audited(client, examiner, linked):
    web_login(client, examiner)
    page = client.get(f"/web/exhibits/{linked['a1']}")
    assert page.status_code == 200
    ranked = re.findall(r'href="/web/candidates/(\d+)\?from=(\d+)"', page.text)
    api = client.get(f"/v1/exhibits/{linked['a1']}/candidates", headers=examiner).json()["items"]
    assert [int(c) for c, _ in ranked] == [c["id"] for c in api]  # the JSON API's ranking
    assert api[0]["candidate"]["id"] == linked["a2"]
    for view in ("processed", "original"):
        r = client.get(f"/web/exhibits/{linked['a1']}/relief.png", params={"view": view})
        assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert r.headers["cache-control"] == "no-store"
    assert client.get("/web/exhibits/999999").status_code == 404
    rows = client.get("/v1/audit", headers=ADMIN, params={"limit": 1000}).json()["items"]
    views = [json.loads(a["detail"])["view"] for a in rows if a["action"] == "evidence.read_view"]
    assert views == ["relief-processed", "relief-original"]
    assert client.get("/v1/audit/verify", headers=ADMIN).json()["ok"]


# --------------------------------------------------------------------------- comparison and review
def test_comparison_view_and_review_use_the_json_api_logic(client, examiner, intel, linked):
    web_login(client, examiner)
    cand = client.get(f"/v1/exhibits/{linked['a1']}/candidates", headers=examiner,
                      params={"include_explanation": True}).json()["items"][0]
    cid = cand["id"]
    direction = "forward" if cand["reference_exhibit_id"] == linked["a1"] else "backward"
    page = client.get(f"/web/candidates/{cid}", params={"from": linked["a1"]})
    assert page.status_code == 200
    cells = json.loads(re.search(r'<script type="application/json" id="cells-data">(.*?)</script>', page.text,
                                 re.S).group(1))
    src = cand["explanation"][direction]["cells"]
    assert len(cells) == len(src) and [c["cmc"] for c in cells] == [c["cmc"] for c in src]
    assert cells[0]["x0"] == 2 * src[0]["x0_px"] and cells[0]["size"] == 2 * src[0]["size_px"]
    assert f"/web/candidates/{cid}/{direction}/reference.png" in page.text
    for which in ("reference", "aligned"):
        r = client.get(f"/web/candidates/{cid}/{direction}/{which}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from PIL import Image
    import io

    ref = Image.open(io.BytesIO(client.get(f"/web/candidates/{cid}/{direction}/reference.png").content))
    tgt = Image.open(io.BytesIO(client.get(f"/web/candidates/{cid}/{direction}/aligned.png").content))
    assert ref.size == tgt.size  # one frame: the candidate is warped onto the reference grid
    assert client.get(f"/web/candidates/{cid}/sideways/reference.png").status_code == 404

    # a forged token records nothing
    r = client.post(f"/web/candidates/{cid}/review", data={"decision": "confirmed", "csrf_token": "x"})
    assert r.status_code == 400
    assert client.get(f"/v1/candidates/{cid}/reviews", headers=examiner).json() == []
    r = client.post(f"/web/candidates/{cid}/review", data={"decision": "maybe", "csrf_token": csrf_of(page.text)})
    assert r.status_code == 422
    form = page.text.split('class="review"')[1]
    r = client.post(f"/web/candidates/{cid}/review", follow_redirects=False,
                    data={"decision": "confirmed", "comment": "  same source  ", "csrf_token": csrf_of(form),
                          "from": str(linked["a1"])})
    assert r.status_code == 303
    assert r.headers["location"] == f"/web/candidates/{cid}?from={linked['a1']}&reviewed=confirmed"
    reviews = client.get(f"/v1/candidates/{cid}/reviews", headers=examiner).json()
    assert [(x["decision"], x["comment"], x["examiner"]) for x in reviews] == [("confirmed", "same source",
                                                                                "Examiner Alice")]
    feed = client.get("/v1/hits/feed", headers=intel).json()["items"]
    assert [(f["candidate_id"], f["kind"]) for f in feed] == [(cid, "hit")]
    # htmx: the decision panel comes back as a fragment; withdrawing appends a retraction
    r = client.post(f"/web/candidates/{cid}/review", headers={"HX-Request": "true", "HX-Target": "decision"},
                    data={"decision": "rejected", "comment": "on reflection", "csrf_token": csrf_of(form)})
    assert r.status_code == 200 and "<html" not in r.text and "Recorded: rejected" in r.text
    assert [f["kind"] for f in client.get("/v1/hits/feed", headers=intel).json()["items"]] == ["hit", "retraction"]
    actions = [a["action"] for a in client.get("/v1/audit", headers=ADMIN, params={"limit": 1000}).json()["items"]]
    assert actions.count("candidate.review") == 2 and "web.login" in actions
    assert client.get("/v1/audit/verify", headers=ADMIN).json()["ok"]


def test_second_look_panel_on_the_comparison_page(client, examiner, intel, linked):
    web_login(client, examiner)
    cid = client.get(f"/v1/exhibits/{linked['a1']}/candidates", headers=examiner).json()["items"][0]["id"]
    page = client.get(f"/web/candidates/{cid}")
    assert f'hx-get="/web/candidates/{cid}/second-look"' in page.text
    r = client.get(f"/web/candidates/{cid}/second-look", headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<html" not in r.text, r.text[:300]
    assert 'data-testid="second-look"' in r.text and "found the stored comparison" in r.text
    full = client.get(f"/web/candidates/{cid}/second-look")          # without htmx: a page of its own
    assert full.status_code == 200 and "<html" in full.text and "Second look" in full.text
    assert client.get("/web/candidates/99999/second-look").status_code == 404
    img = client.get(f"/web/candidates/{cid}/second-look.png")
    assert img.status_code == 200 and img.content[:4] == b"\x89PNG"
    assert f"/web/candidates/{cid}/second-look.png" in r.text
    actions = [a["action"] for a in client.get("/v1/audit", headers=ADMIN, params={"limit": 1000}).json()["items"]]
    assert actions.count("evidence.second_look") == 2


def test_likelihood_ratio_is_shown_when_stored():
    class Row:
        log10_lr, log10_lr_low, log10_lr_high, calibration_id = 3.2, 2.5, 3.9, "cal-1"

    assert routes._lr(Row()) == {"log10": 3.2, "low": 2.5, "high": 3.9, "calibration": "cal-1"}
    assert routes._lr(object(), {"log10_lr": -1.0})["log10"] == -1.0

    class Public:  # the JSON API's CandidatePublic shape
        log10_lr, log10_lr_interval, calibration = 2.0, [1.5, 2.4], {"id": "fadul-2024"}

    assert routes._lr(Public()) == {"log10": 2.0, "low": 1.5, "high": 2.4, "calibration": "fadul-2024"}
    assert routes._lr(object(), {}) is None


# --------------------------------------------------------------------------- dashboard
def test_dashboard_series_hits_and_benchmark_folder(client, examiner, linked, tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    png = (tmp_path / "data").glob("**/*.png")  # any PNG will do as a plot
    web_login(client, examiner)
    client.get(f"/web/exhibits/{linked['a1']}/relief.png")
    plot = next(png).read_bytes()
    (bench / "run_hist.png").write_bytes(plot)
    (bench / "run_roc.png").write_bytes(plot)
    (bench / "run.json").write_text(json.dumps({"pairs": 3, "auc": 0.97, "eer": 0.1, "algorithm": "cmc/1",
                                                "plots": ["elsewhere/run_hist.png", "elsewhere/run_roc.png"]}))
    (bench / "unrelated.json").write_text("[1, 2]")
    (bench / "secret.txt").write_text("no")
    cand = client.get(f"/v1/exhibits/{linked['a1']}/candidates", headers=examiner,
                      params={"include_explanation": True}).json()["items"][0]
    client.post(f"/v1/candidates/{cand['id']}/review", json={"decision": "confirmed"}, headers=examiner)

    page = client.get("/web/dashboard")
    assert "No benchmark folder configured" in page.text and routes.BENCH_DIR_ENV in page.text
    monkeypatch.setenv(routes.BENCH_DIR_ENV, str(bench))
    page = client.get("/web/dashboard")
    assert page.status_code == 200
    assert 'data-testid="n-hits">1<' in page.text and 'data-testid="n-series">1<' in page.text
    assert "<svg" in page.text and "bar-hit" in page.text and 'class="edge"' in page.text
    assert "/web/dashboard/bench/run_hist.png" in page.text and "0.97" in page.text
    assert client.get("/web/dashboard/bench/run_roc.png").content == plot
    for bad in ("secret.txt", "..%2Frun.json", "nothing.png"):
        assert client.get(f"/web/dashboard/bench/{bad}").status_code == 404
    # the series view is cached per feed head: a new confirmation shows at once
    other = client.get(f"/v1/exhibits/{linked['b1']}/candidates", headers=examiner).json()["items"][0]
    assert other["id"] != cand["id"]
    client.post(f"/v1/candidates/{other['id']}/review", json={"decision": "confirmed"}, headers=examiner)
    page = client.get("/web/dashboard")
    assert 'data-testid="n-hits">2<' in page.text
    series = client.get("/v1/series", headers=examiner).json()["items"]
    assert f'data-testid="n-series">{len(series)}<' in page.text
    assert all(s["id"] in page.text for s in series)


def test_charts_bucket_and_escape():
    t = dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)
    unit, b = charts.bucket_hits([(t, "hit"), (t + dt.timedelta(days=2), "retraction")], today=t.date())
    assert unit == "day" and len(b) == 30 and b[-3:] == [(dt.date(2024, 3, 1), 1, 0), (dt.date(2024, 3, 2), 0, 0),
                                                           (dt.date(2024, 3, 3), 0, 1)]
    unit, b = charts.bucket_hits([(t, "hit"), (t + dt.timedelta(days=400), "hit")])
    assert unit == "month" and b[0] == (dt.date(2024, 3, 1), 1, 0) and len(b) == 14 and sum(x[1] for x in b) == 2
    svg = charts.series_graph_svg([{"id": "S1", "nodes": [{"id": 1, "label": "<script>", "case": "a"},
                                                          {"id": 2, "label": "b&c", "case": "b"}],
                                    "edges": [{"a": 1, "b": 2, "cmc": 9, "candidate_id": 5}]}])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "b&amp;c" in svg


# --------------------------------------------------------------------------- assets and headers
def test_static_assets_are_shipped_and_pages_carry_a_strict_csp(client, examiner):
    js = client.get("/web/static/htmx.min.js")
    assert js.status_code == 200 and js.text.startswith("var htmx=")
    assert client.get("/web/static/htmx.LICENSE.txt").status_code == 200
    assert client.get("/web/static/compare.js").status_code == 200
    page = client.get("/web/login")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert "/web/" not in json.dumps(client.get("/openapi.json").json()["paths"])  # not part of the JSON API


@pytest.mark.parametrize("path", ["/", "/web", "/web/"])
def test_entry_points_redirect(client, path):
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303
