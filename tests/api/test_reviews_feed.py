"""Examiner review -> hits feed (cursor, ETag/304), series (union-find), i2 CSV and GraphML exports."""
from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET

import pytest
from api_helpers import run_jobs, upload


@pytest.fixture
def linked(client, examiner, scans):
    """Five exhibits in four cases, jobs run: a1~a2~a3 (one source), b1~b2 (another)."""
    meta = {"a1": dict(case_number="K-100", recovery_date="2024-01-05", place_text="Harbour Rd", lat=51.9, lon=4.5),
            "a2": dict(case_number="K-200", recovery_date="2024-02-11", place_text="Station Sq", lat=52.0, lon=4.4),
            "a3": dict(case_number="TF-1", role="test_fire", firearm_serial="RUG-123"),
            "b1": dict(case_number="K-100", recovery_date="2024-01-05"),
            "b2": dict(case_number="K-300", recovery_date="2023-12-24")}
    ids = {}
    for n, m in meta.items():
        r = upload(client, examiner, scans[n], name=f"{n}.x3p", exhibit_ref=n, **m)
        assert r.status_code == 201, r.text
        ids[n] = r.json()["id"]
    run_jobs(client)
    return ids


def _top(client, h, exhibit_id):
    return client.get(f"/v1/exhibits/{exhibit_id}/candidates", headers=h,
                      params={"include_explanation": False}).json()["items"][0]


def _cand_between(client, h, x, y):
    for it in client.get(f"/v1/exhibits/{x}/candidates", headers=h, params={"include_explanation": False}
                         ).json()["items"]:
        if it["candidate"]["id"] == y:
            return it
    raise AssertionError(f"no candidate between {x} and {y}")


def test_review_feed_etag_series_exports(client, examiner, intel, linked):
    ids = linked
    c_a12 = _cand_between(client, examiner, ids["a1"], ids["a2"])
    c_a23 = _cand_between(client, examiner, ids["a2"], ids["a3"])
    c_b12 = _cand_between(client, examiner, ids["b1"], ids["b2"])
    c_ab = _cand_between(client, examiner, ids["a1"], ids["b1"])

    # empty feed, then its ETag answers 304
    r0 = client.get("/v1/hits/feed", headers=intel)
    assert r0.status_code == 200 and r0.json()["items"] == [] and r0.headers["etag"]
    assert client.get("/v1/hits/feed", headers={**intel, "If-None-Match": r0.headers["etag"]}).status_code == 304

    rv = client.post(f"/v1/candidates/{c_a12['id']}/review", headers=examiner,
                     json={"decision": "confirmed", "comment": "breech face marks agree"})
    assert rv.status_code == 201 and rv.json()["examiner"] == "Examiner Alice" and rv.json()["feed_seq"] == 1
    client.post(f"/v1/candidates/{c_ab['id']}/review", headers=examiner, json={"decision": "rejected"})
    client.post(f"/v1/candidates/{c_a23['id']}/review", headers=examiner, json={"decision": "confirmed"})
    client.post(f"/v1/candidates/{c_b12['id']}/review", headers=examiner, json={"decision": "inconclusive"})

    # the old ETag no longer matches; exactly the two confirmations, in order
    r1 = client.get("/v1/hits/feed", headers={**intel, "If-None-Match": r0.headers["etag"]})
    assert r1.status_code == 200
    feed = r1.json()
    assert [(i["kind"], i["candidate_id"]) for i in feed["items"]] == [("hit", c_a12["id"]), ("hit", c_a23["id"])]
    first = feed["items"][0]
    assert first["confirmed_by"] == "Examiner Alice" and first["confirmed_at"] and first["score"] == c_a12["score"]
    assert {e["id"] for e in first["exhibits"]} == {ids["a1"], ids["a2"]}
    assert {c["case_number"] for c in first["cases"]} == {"K-100", "K-200"}
    # polling from the cursor: nothing new, 304 with the page's ETag
    nxt = client.get("/v1/hits/feed", headers=intel, params={"after": feed["next_cursor"]})
    assert nxt.json()["items"] == [] and nxt.json()["next_cursor"] == feed["next_cursor"]
    assert client.get("/v1/hits/feed", params={"after": feed["next_cursor"]},
                      headers={**intel, "If-None-Match": nxt.headers["etag"]}).status_code == 304
    # pagination
    p1 = client.get("/v1/hits/feed", headers=intel, params={"limit": 1}).json()
    assert len(p1["items"]) == 1 and p1["has_more"]
    p2 = client.get("/v1/hits/feed", headers=intel, params={"limit": 1, "after": p1["next_cursor"]}).json()
    assert [i["candidate_id"] for i in p2["items"]] == [c_a23["id"]] and not p2["has_more"]
    assert client.get("/v1/hits/feed", headers=intel, params={"after": "garbage!"}).status_code == 400

    # series: a1-a2-a3 connected through two confirmations (three cases); b's are not linked
    series = client.get("/v1/series", headers=intel).json()["items"]
    assert len(series) == 1
    s = series[0]
    assert {e["id"] for e in s["exhibits"]} == {ids["a1"], ids["a2"], ids["a3"]}
    assert {c["case_number"] for c in s["cases"]} == {"K-100", "K-200", "TF-1"}
    assert s["firearm_serials"] == ["RUG-123"]
    assert s["first_date"] == "2024-01-05" and s["last_date"] == "2024-02-11"
    assert [t["exhibit_id"] for t in s["timeline"]][:2] == [ids["a1"], ids["a2"]]
    assert {p["place_text"] for p in s["places"]} == {"Harbour Rd", "Station Sq"}

    # i2: one CSV, link rows carrying both entities
    r = client.get("/v1/export/i2.csv", headers=intel)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    hits = [x for x in rows if x["link_type"] == "ballistic_hit"]
    assert len(hits) == 2 and {x["confirmed_by"] for x in hits} == {"Examiner Alice"}
    assert {(x["from_id"], x["to_id"]) for x in hits} == {
        (f"EXH-{c_a12['reference_exhibit_id']}", f"EXH-{c_a12['target_exhibit_id']}"),
        (f"EXH-{c_a23['reference_exhibit_id']}", f"EXH-{c_a23['target_exhibit_id']}")}
    assert sum(x["link_type"] == "in_case" for x in rows) == 3
    tf = [x for x in rows if x["link_type"] == "test_fired_from"]
    assert len(tf) == 1 and tf[0]["to_id"] == "FIREARM-RUG-123"
    # GraphML parses, has the hit edges
    g = client.get("/v1/export/graph.graphml", headers=intel)
    root = ET.fromstring(g.content)
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    edges = root.findall(".//g:edge", ns)
    assert sum(1 for e in edges if e.get("id").startswith("HIT-")) == 2
    assert len(root.findall(".//g:node", ns)) == 3 + 3 + 1  # exhibits, cases, firearm

    # withdrawing a confirmation: a retraction event, the series splits
    client.post(f"/v1/candidates/{c_a23['id']}/review", headers=examiner, json={"decision": "rejected"})
    more = client.get("/v1/hits/feed", headers=intel, params={"after": feed["next_cursor"]}).json()
    assert [(i["kind"], i["candidate_id"]) for i in more["items"]] == [("retraction", c_a23["id"])]
    s2 = client.get("/v1/series", headers=intel).json()["items"]
    assert [{e["id"] for e in x["exhibits"]} for x in s2] == [{ids["a1"], ids["a2"]}]
    hist = client.get(f"/v1/candidates/{c_a23['id']}/reviews", headers=examiner).json()
    assert [h["decision"] for h in hist] == ["confirmed", "rejected"]
    # reviews are audited with the examiner identity
    log = client.get("/v1/audit", headers={"X-API-Key": "bk_test-admin-key-0123456789"}).json()["items"]
    reviews = [e for e in log if e["action"] == "candidate.review"]
    assert len(reviews) == 5 and all("Examiner Alice" in e["actor"] for e in reviews)


def test_review_validation(client, examiner, linked):
    c = _top(client, examiner, linked["a1"])
    assert client.post(f"/v1/candidates/{c['id']}/review", headers=examiner,
                       json={"decision": "maybe"}).status_code == 422
    assert client.post("/v1/candidates/99999/review", headers=examiner,
                       json={"decision": "confirmed"}).status_code == 404
