"""Firing pins, likelihood ratios, review depth, search records, the relief view.

Synthetic tests run everywhere; the real-data one uses the raw Fadul scans (1-1 ~ 1-2 same slide,
2-1 another) plus one processed Fadul scan (no firing pin)."""
from __future__ import annotations

import json

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs, upload
from fastapi.testclient import TestClient

from api.main import create_app


def _ingest(c, h, scans, names):
    ids = {}
    for n in names:
        r = upload(c, h, scans[n], name=f"{n}.x3p", case_number=f"case-{n}", exhibit_ref=n)
        assert r.status_code == 201, r.text
        ids[n] = r.json()["id"]
    return ids


def test_search_record_lr_and_review_depth(client, examiner, scans):
    from ballistic.retrieval.record import SearchRecord

    ids = _ingest(client, examiner, scans, ["a1", "b1", "a2"])
    run_jobs(client)
    job = client.get("/v1/exhibits/%d" % ids["a2"], headers=examiner).json()["job"]
    assert job["search_record_hash"] and "search_record" in job and job["search_record"] is None  # lists: hash only
    full = client.get(f"/v1/jobs/{job['id']}", headers=examiner).json()
    rec = full["search_record"]
    assert rec["content_hash"] == job["search_record_hash"]
    SearchRecord.from_dict(dict(rec))  # verifies the hash: the stored record is intact
    assert rec["partition"] == "breech_face|9mm|any" and rec["k"] == 10
    assert rec["n_eligible"] == 2 and rec["n_scored"] == 2 and rec["index_seq"] == ids["a2"]
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
    assert rec["index_snapshot_id"].startswith("ids:") and rec["algorithm_version"] == ALGORITHM_VERSION
    assert rec["prefilter"] == {"region": "breech_face", "calibre": "9mm", "firing_pin_shape": None,
                                "exclude_ids": [ids["a2"]]}
    assert {r["exhibit_id"] for r in rec["results"]} == {ids["a1"], ids["b1"]}
    assert rec["retrieval_params"]["calibration_id"].startswith("breech_face_fadul@")
    assert "processed scan" in rec["notes"]  # no firing pin on processed scans

    cl = client.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=examiner).json()
    assert cl["search_record"]["query"].startswith(f"exhibit:{ids['a1']}:") and cl["search_record_verified"]
    top, other = cl["items"]
    assert top["candidate"]["id"] == ids["a2"] and top["log10_lr"] > 1 and other["log10_lr"] < 0
    lo, hi = top["log10_lr_interval"]
    assert lo <= top["log10_lr"] <= hi and top["calibration_id"] == cl["calibration"]["id"]
    assert cl["calibration"]["population"]["same_source_pairs"] == 63
    d = cl["review_depth"]
    assert d["n_eligible"] == 2 and d["rerank_k"] == 10 and [t["recall"] for t in d["targets"]] == [0.95, 0.99]
    assert all(1 <= t["depth"] <= t["depth_upper"] <= 2 and t["within_rerank_k"] for t in d["targets"])
    # no firing pin list on processed scans; the fused list is the breech face normalised
    assert client.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=examiner,
                      params={"region": "firing_pin"}).json()["items"] == []
    fused = client.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=examiner, params={"region": "fused"}).json()
    assert fused["region"] == "fused" and fused["review_depth"] is None
    assert [i["id"] for i in fused["items"]] == [top["id"], other["id"]]
    assert fused["items"][0]["fused_score"] == pytest.approx(min(3.0, top["score"] / 6.0))
    assert client.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=examiner,
                      params={"region": "nope"}).status_code == 422
    # the LR an examiner saw is in the audit row of the review
    client.post(f"/v1/candidates/{top['id']}/review", headers=examiner, json={"decision": "confirmed"})
    row = [e for e in client.get("/v1/audit", headers=ADMIN).json()["items"] if e["action"] == "candidate.review"][0]
    assert json.loads(row["detail"])["log10_lr"] == top["log10_lr"]


def test_review_depth_method():
    from api.lr import Calibration, depth_statistics, same_source_threshold
    from api.settings import DEFAULT_CALIBRATION

    assert same_source_threshold(list(range(1, 101)), 0.95) == 6.0  # 95 of 100 reach 6
    st = depth_statistics([1, 2, 3, 10, 11, 12], [False, False, True, True, True, True], recalls=(0.95,))
    assert st["targets"][0] == {"recall": 0.95, "score_threshold": 3.0, "same_source_at_or_above": 4,
                                "different_source_at_or_above": 0}
    cal = Calibration.load(DEFAULT_CALIBRATION)
    d = cal.review_depth(100_000, 20)
    t95, t99 = d["targets"]
    # no Fadul non-mate reaches the mates' 5% / 1% quantile: Jeffreys p = 0.5 / 718
    assert t95["p_different_source_at_or_above"] == pytest.approx(0.5 / 718)
    assert t95["depth"] == 71 and t95["depth_upper"] > t95["depth"] and not t95["within_rerank_k"]
    assert cal.review_depth(0, 20)["targets"][0]["depth"] == 0


def test_calibration_switched_off_and_changed(tmp_path, scans):
    from ballistic.stats.calibrate import ScoreLRCalibrator

    with TestClient(create_app(make_settings(tmp_path))) as c:
        ex = new_key(c, "examiner")
        ids = _ingest(c, ex, scans, ["a1", "a2"])
        run_jobs(c)
        lr0 = c.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=ex).json()["items"][0]["log10_lr"]
        assert lr0 > 0
    with TestClient(create_app(make_settings(tmp_path, calibration_path=""))) as c:
        assert c.app.state.runtime.startup_report["calibration"]["candidates_updated"] == 1
        cl = c.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=ADMIN).json()
        assert cl["items"][0]["log10_lr"] is None and cl["review_depth"] is None and cl["calibration"] is None
    # a plain ScoreLRCalibrator JSON: LRs, no review depth (no population statistics)
    plain = tmp_path / "plain.json"
    ScoreLRCalibrator.fit([0, 1, 2, 3, 10, 12, 14, 16], [0, 0, 0, 0, 1, 1, 1, 1], population="toy",
                          n_bootstrap=20).save(plain)
    with TestClient(create_app(make_settings(tmp_path, calibration_path=str(plain)))) as c:
        cl = c.get(f"/v1/exhibits/{ids['a1']}/candidates", headers=ADMIN).json()
        assert cl["items"][0]["calibration_id"].startswith("plain@") and cl["items"][0]["log10_lr"] is not None
        assert cl["review_depth"] is None


def test_render_png_is_audited_and_evidence_only(client, examiner, intel, scans):
    ids = _ingest(client, examiner, scans, ["a1"])
    r = client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=examiner, params={"view": "preprocessed"})
    assert r.status_code == 409  # not preprocessed yet
    orig = client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=examiner)  # default: what exists
    assert orig.status_code == 200 and orig.headers["content-type"] == "image/png" and orig.content[:4] == b"\x89PNG"
    run_jobs(client)
    pre = client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=examiner, params={"azimuth_deg": 90})
    assert pre.status_code == 200 and pre.content != orig.content
    again = client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=examiner, params={"azimuth_deg": 90})
    assert again.content == pre.content  # cached
    assert client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=intel).status_code == 403
    assert client.get("/v1/exhibits/99/render.png", headers=examiner).status_code == 404
    assert client.get(f"/v1/exhibits/{ids['a1']}/render.png", headers=examiner,
                      params={"land_index": 1}).status_code == 422
    reads = [json.loads(e["detail"]) for e in client.get("/v1/audit", headers=ADMIN).json()["items"]
             if e["action"] == "evidence.read_render"]
    assert [x["view"] for x in reads] == ["original", "preprocessed", "preprocessed"]


@pytest.mark.realdata
def test_raw_scans_firing_pin_and_fused_ranking(shared_data, tmp_path):
    raw = shared_data / "cartridge" / "fadul-raw"
    files = [raw / "fadul1.1_raw.x3p", raw / "fadul1.2_raw.x3p", raw / "fadul2.1_raw.x3p",
             shared_data / "cartridge" / "fadul" / "Fadul 1-1.x3p"]
    with TestClient(create_app(make_settings(tmp_path))) as c:
        c.headers.update(new_key(c, "examiner"))
        ids = []
        for f in files:
            r = c.post("/v1/exhibits", data={"case_number": f.stem, "exhibit_ref": f.stem, "agency": "NIST",
                                             "calibre": "9mm"},
                       files={"file": (f.name, f.read_bytes(), "application/octet-stream")})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        run_jobs(c)
        r11, r12, r21, p11 = ids
        info = c.get(f"/v1/exhibits/{r11}").json()["firing_pin_info"]
        assert info["found"] and 500 < info["radius_um"] < 1200
        assert not c.get(f"/v1/exhibits/{p11}").json()["firing_pin_info"]["found"]
        fp = c.get(f"/v1/exhibits/{r11}/candidates", params={"region": "firing_pin"}).json()
        assert fp["region"] == "firing_pin" and [i["candidate"]["id"] for i in fp["items"]][0] == r12
        top = fp["items"][0]
        assert top["cmc_count"] is None and top["log10_lr"] is None and not top["identification"]
        expl = c.get(top["explanation_url"]).json()["explanation"]
        assert set(expl) >= {"forward", "backward", "score", "threshold"}
        assert top["score"] == pytest.approx((expl["forward"]["score"] + expl["backward"]["score"]) / 2)
        assert {i["candidate"]["id"] for i in fp["items"]} == {r12, r21}  # the processed scan has none
        fused = c.get(f"/v1/exhibits/{r11}/candidates", params={"region": "fused"}).json()["items"]
        by = {i["candidate"]["id"]: i for i in fused}
        assert by[r12]["fused_score"] > by[r21]["fused_score"] and by[p11]["firing_pin_score"] is None
        bf = c.get(f"/v1/exhibits/{r11}/candidates").json()
        mates = [i for i in bf["items"] if i["candidate"]["id"] in (r12, p11)]
        assert len(mates) == 2 and all(i["log10_lr"] > 2 for i in mates)
        assert [i["log10_lr"] < 0 for i in bf["items"] if i["candidate"]["id"] == r21] == [True]
        fig = c.get(top["figure_url"])
        assert fig.status_code == 200 and fig.content[:4] == b"\x89PNG"
        rec = c.get(f"/v1/jobs/{c.get(f'/v1/exhibits/{r21}').json()['job']['id']}").json()["search_record"]
        assert rec["retrieval_params"]["firing_pin"] == {"enabled": True, "algorithm": "firing-pin-rotation-sym/1",
                                                         "query_found": True, "compared": 2}


def test_shipped_calibration_matches_this_code():
    """The shipped breech-face LR calibration scores PairResult.similarity of this algorithm: refit it
    (``benchmarks/fit_calibration.py``) whenever the algorithm changes."""
    from api.settings import DEFAULT_CALIBRATION
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
    assert json.loads(DEFAULT_CALIBRATION.read_text())["algorithm_version"] == ALGORITHM_VERSION
