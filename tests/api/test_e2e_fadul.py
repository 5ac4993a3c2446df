"""End to end on real scans through the HTTP API: 10 Fadul scans (3 slides) + the Baldwin A1/A2 pair
(raw TopMatch scans in micrometres). Every exhibit's candidate list has its true mate at rank 1, every
candidate's log10 LR (shipped Fadul calibration) is positive exactly for mates, with a review depth and
a verified search record; an examiner confirms the hits; the intelligence key sees exactly those in the feed and gets 304 on the
second poll with the ETag. The full 40-scan run is benchmarks/e2e_service.py."""
from __future__ import annotations

import csv
import time

import pytest
from api_helpers import ADMIN, make_settings, new_key
from fastapi.testclient import TestClient

from api.ingest import metadata_for, read_labels, upload_file
from api.main import create_app

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

SUBSET = ["Fadul 1-1", "Fadul 1-2", "Fadul F", "Fadul 2-1", "Fadul 2-2", "Fadul C", "Fadul M", "Fadul 3-1",
          "Fadul 3-2", "Fadul A"]


def test_fadul_subset_end_to_end(shared_data, tmp_path):
    fadul = shared_data / "cartridge" / "fadul"
    labels = fadul / "labels.csv"
    slide = {r["scan"]: r["slide"] for r in csv.DictReader(open(labels))}
    lab = read_labels(labels)
    files = [(fadul / f"{s}.x3p", f"fadul-{slide[s]}", "NIST-Fadul") for s in SUBSET]
    files += [(shared_data / "cartridge" / "baldwin" / f"K013sA{i}.x3p", "baldwin-A", "DFSC") for i in (1, 2)]

    s = make_settings(tmp_path, run_worker=True, workers=2, rerank_k=20)
    with TestClient(create_app(s)) as c:
        exam = new_key(c, "examiner", "Examiner E2E")
        intel = new_key(c, "intelligence", "Analyst E2E")
        c.headers.update(exam)
        truth, jobs = {}, []
        for path, source, agency in files:
            meta = metadata_for(path, lab, agency=agency, calibre="9mm", firing_pin_shape=None)
            r = upload_file(c, path, meta)
            assert r["status"] == "created", r
            truth[r["exhibit_id"]] = (path.stem, source)
            jobs.append(r["job_id"])
        # known Fadul scans are test fires with the slide as firearm id; questioned ones are evidence
        e = c.get(f"/v1/exhibits/{next(iter(truth))}").json()
        assert e["role"] == "test_fire" and e["firearm_serial"] == "slide-1"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            st = [c.get(f"/v1/jobs/{j}").json()["status"] for j in jobs]
            if all(x in ("done", "failed") for x in st):
                break
            time.sleep(0.5)
        assert st == ["done"] * len(jobs), st

        confirm = set()
        lrs = {}
        for eid, (name, source) in truth.items():
            cl = c.get(f"/v1/exhibits/{eid}/candidates", params={"include_explanation": False}).json()
            items = cl["items"]
            assert items, name
            top = items[0]
            assert truth[top["candidate"]["id"]][1] == source, (name, [(truth[i["candidate"]["id"]][0],
                                                                         i["cmc_count"]) for i in items[:3]])
            assert top["identification"], (name, top["cmc_count"])
            confirm.add(top["id"])
            # likelihood ratios (Fadul calibration): within its population mates support same source;
            # non-mates support different source everywhere. A Baldwin (Ruger SR9, TopMatch) pair is
            # outside it: its identification (C >= 6) is asserted above, not the Fadul LR's direction
            # (Fadul mates all score >= 13, so the Fadul LR crosses 1 near 9; K013sA1/A2 score 7-9)
            for i in items:
                mate = truth[i["candidate"]["id"]][1] == source
                lo, hi = i["log10_lr_interval"]
                assert lo <= i["log10_lr"] <= hi, (name, i["score"], i["log10_lr"])
                if not mate or source.startswith("fadul"):
                    assert (i["log10_lr"] > 0) == mate, (name, i["score"], i["log10_lr"])
                if mate and source.startswith("fadul"):
                    lrs[i["id"]] = i["log10_lr"]
            d = cl["review_depth"]
            assert d["n_eligible"] == len(files) - 1 and all(t["depth"] <= t["depth_upper"] <= d["n_eligible"]
                                                             for t in d["targets"])
            assert cl["search_record_verified"] and cl["search_record"]["query"].startswith(f"exhibit:{eid}:")
        assert lrs and min(lrs.values()) >= 2.0, sorted(lrs.values())
        print(f"Fadul mates: log10 LR {min(lrs.values()):.2f}..{max(lrs.values()):.2f} over {len(lrs)} pairs")
        for cid in sorted(confirm):
            r = c.post(f"/v1/candidates/{cid}/review", json={"decision": "confirmed", "comment": "e2e"})
            assert r.status_code == 201 and r.json()["examiner"] == "Examiner E2E"

        f1 = c.get("/v1/hits/feed", headers=intel)
        assert f1.status_code == 200
        feed = f1.json()
        assert sorted(i["candidate_id"] for i in feed["items"]) == sorted(confirm)
        assert all(i["kind"] == "hit" and i["confirmed_by"] == "Examiner E2E" for i in feed["items"])
        assert all(len({truth[e["id"]][1] for e in i["exhibits"]}) == 1 for i in feed["items"])
        f2 = c.get("/v1/hits/feed", headers={**intel, "If-None-Match": f1.headers["etag"]})
        assert f2.status_code == 304 and f2.content == b""
        # every series holds one source only
        for ser in c.get("/v1/series", headers=intel).json()["items"]:
            assert len({truth[e["id"]][1] for e in ser["exhibits"]}) == 1
        # intelligence cannot touch evidence
        assert c.get(f"/v1/exhibits/{next(iter(truth))}/original", headers=intel).status_code == 403
        st = c.get("/v1/status", headers=ADMIN).json()
        assert st["index"]["consistent"] and st["index"]["index_count"] == len(files)
        assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
