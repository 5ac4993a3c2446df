"""Bullets and 2D images end to end on real data through the HTTP API: upload, candidates, review, feed.

* Hamby 252: two Barrel 1 bullets (lands 1-5 and 1,2,4,5,6) and one Barrel 2 land. Lands go in one by
  one (metadata from the labels CSV, as ``ballistic ingest --exhibit-type bullet`` does) except the
  Barrel 2 bullet, sent as a one-file bullet; the Barrel 1 mate must be the top candidate of each
  Barrel 1 bullet, identified by SAM, with the land pairing of the best phase as explanation.
* NBIDE 118 / 129: two ring-light photographs of the same Ruger; each is the other's top candidate
  (C >= 6) in the 2D partition; an examiner confirms and the hit reaches the feed.
"""
from __future__ import annotations

import csv
import io
import time

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs
from fastapi.testclient import TestClient

from api.ingest import metadata_for, read_labels, upload_file
from api.main import create_app

pytestmark = pytest.mark.realdata


def test_hamby252_bullets_end_to_end(shared_data, tmp_path):
    t0 = time.monotonic()
    root = shared_data / "bullet"
    lab = read_labels(root / "labels.csv")
    lands = sorted((root / "hamby252").glob("*.x3p"))
    assert len(lands) == 11
    with TestClient(create_app(make_settings(tmp_path))) as c:
        exam = new_key(c, "examiner", "Examiner Bullets")
        intel = new_key(c, "intelligence", "Analyst Bullets")
        c.headers.update(exam)
        bullets: dict[str, int] = {}
        for f in lands:
            meta = metadata_for(f, lab, agency="NIST", calibre="9mm", firing_pin_shape=None, exhibit_type="bullet")
            meta["land_count"] = "6"
            if "Barrel2" in f.name:  # the same thing as one request with explicit positions
                r = c.post("/v1/exhibits", data={**{k: v for k, v in meta.items() if k != "land_index"},
                                                 "land_indexes": meta["land_index"]},
                           files=[("file", (f.name, f.read_bytes(), "application/octet-stream"))])
                assert r.status_code == 201, r.text
                res = {"status": "created", "exhibit_id": r.json()["id"]}
            else:
                res = upload_file(c, f, meta)
            assert res["status"] == "created", res
            bullets.setdefault(meta["exhibit_ref"], res["exhibit_id"])
            assert bullets[meta["exhibit_ref"]] == res["exhibit_id"]  # lands join their bullet
        assert set(bullets) == {"hamby252-Br1-B1", "hamby252-Br1-B2", "hamby252-Br2-B1"}
        b11, b12, b21 = bullets["hamby252-Br1-B1"], bullets["hamby252-Br1-B2"], bullets["hamby252-Br2-B1"]
        e = c.get(f"/v1/exhibits/{b12}").json()
        assert [x["land_index"] for x in e["lands"]] == [1, 2, 4, 5, 6] and e["partition"] == "bullet_lea|9mm|any"
        run_jobs(c)
        jobs = c.get("/v1/jobs").json()
        assert len(jobs) == 3 and {j["status"] for j in jobs} == {"done"}, jobs
        e = c.get(f"/v1/exhibits/{b11}").json()
        assert all(x["signature_info"]["signatures"] > 5 for x in e["lands"])

        tops = {}
        for b, mate in ((b11, b12), (b12, b11)):
            cl = c.get(f"/v1/exhibits/{b}/candidates").json()
            assert cl["region"] == "bullet_lea" and cl["review_depth"] is None  # no calibration for bullets
            top = cl["items"][0]
            assert top["candidate"]["id"] == mate, [(i["candidate"]["exhibit_ref"], i["score"]) for i in cl["items"]]
            assert top["identification"] and top["score"] > 0.9 and top["cmc_count"] is None
            assert top["algorithm_version"] == "bullet-sam-ccf/2" and top["log10_lr"] is None
            ex = c.get(top["explanation_url"]).json()["explanation"]
            assert ex["phase"] == top["registration"]["phase"] and len(ex["pairs"]) == 4
            assert all(p["ccf"] > 0.85 and {"land_a", "land_b", "lag_um", "cms"} <= set(p) for p in ex["pairs"])
            assert len(ex["scores"]) == 6 and len(ex["phase_scores"]) == 6
            pt = ex["phase_test"]  # the best phase stands out from the others (bullet algorithm /2)
            assert pt["p_value"] < 1e-6 and pt["same_barrel_at_alpha"] and pt["alpha"] == 0.01 and pt["phases"] == 6
            assert top["registration"]["phase_p_value"] == pytest.approx(pt["p_value"])
            others = [i for i in cl["items"] if i["candidate"]["id"] == b21]
            assert others and not others[0]["identification"] and others[0]["score"] < 0.7
            assert others[0]["registration"]["phase_p_value"] is None  # one land: no sequence, no phase test
            tops[b] = top
        # the Barrel 2 bullet (one land) matches nothing
        assert not any(i["identification"] for i in c.get(f"/v1/exhibits/{b21}/candidates").json()["items"])
        # search record of the last job: the two other bullets eligible, both scored
        rec = c.get(f"/v1/jobs/{max(j['id'] for j in jobs)}").json()["search_record"]
        assert rec["algorithm_version"] == "bullet-sam-ccf/2" and rec["descriptor_version"] == "bullet-spectrum/1"
        assert rec["partition"] == "bullet_lea|9mm|any" and rec["n_eligible"] == 2 and rec["n_scored"] == 2
        fig = c.get(tops[b11]["figure_url"])
        assert fig.status_code == 200 and fig.content[:4] == b"\x89PNG"
        land = c.get(f"/v1/exhibits/{b12}/render.png", params={"land_index": 4})
        assert land.status_code == 200 and land.content[:4] == b"\x89PNG"
        assert c.get(f"/v1/exhibits/{b12}/render.png", params={"land_index": 3}).status_code == 404
        assert c.get(f"/v1/exhibits/{b12}/render.png", headers=intel).status_code == 403

        # review -> feed -> series -> export
        r = c.post(f"/v1/candidates/{tops[b11]['id']}/review", json={"decision": "confirmed", "comment": "LEAs agree"})
        assert r.status_code == 201 and r.json()["feed_seq"]
        feed = c.get("/v1/hits/feed", headers=intel).json()["items"]
        assert [(i["kind"], i["region"], i["cmc_count"]) for i in feed] == [("hit", "bullet_lea", None)]
        assert {x["id"] for x in feed[0]["exhibits"]} == {b11, b12}
        series = c.get("/v1/series", headers=intel).json()["items"]
        assert [{x["id"] for x in s["exhibits"]} for s in series] == [{b11, b12}]
        rows = list(csv.DictReader(io.StringIO(c.get("/v1/export/i2.csv", headers=intel).text)))
        hit = [x for x in rows if x["link_type"] == "ballistic_hit"]
        assert len(hit) == 1 and hit[0]["region"] == "bullet_lea" and hit[0]["cmc_count"] == ""
        assert hit[0]["link_label"].startswith("bullet SAM 0.9")

        st = c.get("/v1/status", headers=ADMIN).json()["index"]
        assert st["consistent"] and st["bullet"]["index_count"] == 3 and st["index_count"] == 0
        assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
    assert time.monotonic() - t0 < 60


def test_bullet_gains_a_land_and_is_scored_again(shared_data, tmp_path):
    """Bullet 2 first with two lands, then the rest: the unreviewed pair is re-scored on all lands."""
    d = shared_data / "bullet" / "hamby252"
    with TestClient(create_app(make_settings(tmp_path))) as c:
        c.headers.update(new_key(c, "examiner"))

        def up(bullet, land):
            f = d / f"Hamby252_Barrel1_{bullet}_Land{land}.x3p"
            r = c.post("/v1/exhibits", data={"case_number": "H", "exhibit_ref": bullet, "agency": "NIST",
                                             "exhibit_type": "bullet", "land_index": str(land), "calibre": "9mm"},
                       files={"file": (f.name, f.read_bytes(), "application/octet-stream")})
            assert r.status_code == 201, r.text
            return r.json()

        b1 = [up("Bullet1", k) for k in (1, 2, 3, 4, 5)][0]["id"]
        b2 = [up("Bullet2", k) for k in (1, 2)][0]["id"]
        run_jobs(c)
        first = c.get(f"/v1/exhibits/{b1}/candidates", params={"include_explanation": True}).json()["items"][0]
        assert first["candidate"]["id"] == b2 and first["explanation"]["lands_b" if first["reference_exhibit_id"] == b1
                                                                        else "lands_a"] == [1, 2]
        for k in (4, 5, 6):
            up("Bullet2", k)
        run_jobs(c)
        again = c.get(f"/v1/exhibits/{b1}/candidates").json()["items"]
        assert len(again) == 1 and again[0]["id"] == first["id"]  # the same pair, scored again
        assert again[0]["registration"]["lands_compared"] == 4 and again[0]["score"] > 0.9
        assert again[0]["registration"]["lands_key"] != first["registration"]["lands_key"]


def test_signatures_of_an_older_bullet_algorithm_are_extracted_again_at_start_up(shared_data, tmp_path):
    """A service upgraded to a new BULLET_ALGORITHM_VERSION: lands whose stored signatures another version
    extracted get a job at start-up; the job extracts them again and the unreviewed pair is scored again."""
    from sqlalchemy import select, update

    from api.bullets import BULLET_ALGORITHM_VERSION
    from api.db import session_scope
    from api.db.models import Candidate, LandScan

    d = shared_data / "bullet" / "hamby252"
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as c:
        c.headers.update(new_key(c, "examiner"))
        for bullet in ("Bullet1", "Bullet2"):
            for land in (1, 2):
                f = d / f"Hamby252_Barrel1_{bullet}_Land{land}.x3p"
                r = c.post("/v1/exhibits", data={"case_number": "H", "exhibit_ref": bullet, "agency": "NIST",
                                                 "exhibit_type": "bullet", "land_index": str(land), "calibre": "9mm"},
                           files={"file": (f.name, f.read_bytes(), "application/octet-stream")})
                assert r.status_code == 201, r.text
        run_jobs(c)
        before = c.get("/v1/exhibits/1/candidates").json()["items"][0]
        rt = c.app.state.runtime
        with session_scope(rt.session_factory) as s:  # as an older service version left them
            assert {x["algorithm"] for x in s.execute(select(LandScan.signature_info)).scalars()} == \
                {BULLET_ALGORITHM_VERSION}
            infos = {i: dict(x, algorithm="bullet-sam-ccf/1") for i, x in
                     s.execute(select(LandScan.id, LandScan.signature_info)).all()}
            for i, x in infos.items():
                s.execute(update(LandScan).where(LandScan.id == i).values(signature_info=x))
            s.execute(update(Candidate).values(registration={"lands_key": "from-version-1"}, similarity=0.0))
    with TestClient(create_app(settings)) as c:
        c.headers.update(new_key(c, "examiner", "after upgrade"))
        assert c.get("/v1/status", headers=ADMIN).json()["startup"]["redescribe_jobs"] == 2
        run_jobs(c)
        e = c.get("/v1/exhibits/1").json()
        assert all(x["signature_info"]["algorithm"] == BULLET_ALGORITHM_VERSION for x in e["lands"])
        top = c.get("/v1/exhibits/1/candidates").json()["items"][0]
        assert top["id"] == before["id"] and top["score"] == pytest.approx(before["score"])  # scored again
        assert top["registration"]["lands_key"] == before["registration"]["lands_key"] != "from-version-1"
        assert top["algorithm_version"] == BULLET_ALGORITHM_VERSION


def test_nbide_images_end_to_end(shared_data, tmp_path):
    d = shared_data / "images2d" / "nbide"
    with TestClient(create_app(make_settings(tmp_path))) as c:
        exam = new_key(c, "examiner", "Examiner 2D")
        intel = new_key(c, "intelligence")
        c.headers.update(exam)
        ids = {}
        for n in ("118", "129"):
            f = d / f"NBIDE_R_BF_{n}.png"
            r = upload_file(c, f, {"case_number": f"NBIDE-{n}", "exhibit_ref": n, "agency": "NIST", "calibre": "9mm"})
            assert r["status"] == "created", r
            ids[n] = r["exhibit_id"]
        run_jobs(c)
        for q, mate in (("118", "129"), ("129", "118")):
            e = c.get(f"/v1/exhibits/{ids[q]}").json()
            assert e["region"] == "breech_face_2d" and e["job"]["status"] == "done", e
            assert e["preprocess_info"].startswith("image2d:") and e["firing_pin_info"] is None
            cl = c.get(f"/v1/exhibits/{ids[q]}/candidates").json()
            assert cl["region"] == "breech_face_2d" and cl["review_depth"] is None  # the calibration is 3D
            top = cl["items"][0]
            assert top["candidate"]["id"] == ids[mate] and top["identification"] and top["cmc_count"] >= 6, top
            assert top["log10_lr"] is None
            assert cl["search_record"]["partition"] == "breech_face_2d|9mm|any" and cl["search_record_verified"]
        assert c.get(f"/v1/candidates/{top['id']}/figure.png").content[:4] == b"\x89PNG"
        assert c.get(f"/v1/exhibits/{ids['118']}/render.png").status_code == 422  # a photo has no relief
        r = c.post(f"/v1/candidates/{top['id']}/review", json={"decision": "confirmed"})
        assert r.status_code == 201
        feed = c.get("/v1/hits/feed", headers=intel).json()["items"]
        assert [(i["candidate_id"], i["region"], i["confirmed_by"]) for i in feed] == [
            (top["id"], "breech_face_2d", "Examiner 2D")]
