"""The examiner's second look on real scans from two kits and two upstream pipelines (../shared/data; skipped
when absent): the service's standard comparison of DFSC K027gA3 and the raw Baldwin K013sA2 (same Ruger SR9)
misses the pose (CMC 0), the second look finds it (CMC 5 and 8 by direction) and nothing stored changes. Neither
score identifies the pair even then: the CMC rule takes the smaller direction (5), and the pair model puts it just
below its threshold (registration NCC 0.23, a consensus of 24-40 % of the cells: weak marks; the model before
pair-features/2 put it at +1.0 by reading the consensus's small offset alone, the cue behind all of its false
positives). The examiner sees the aligned pose and judges."""
from __future__ import annotations

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs, upload
from fastapi.testclient import TestClient

from api.main import create_app

pytestmark = pytest.mark.realdata


def test_second_look_finds_the_pose_of_a_cross_pipeline_mate_the_service_missed(shared_data, tmp_path):
    files = {"K027gA3": shared_data / "cartridge" / "dfsc" / "K027gA3.x3p",
             "K013sA2": shared_data / "cartridge" / "baldwin" / "K013sA2.x3p"}
    with TestClient(create_app(make_settings(tmp_path))) as c:
        exam = new_key(c, "examiner", "Examiner SR9")
        ids = {}
        for n, f in files.items():
            r = upload(c, exam, f.read_bytes(), name=f.name, case_number=f"SR9-{n}", exhibit_ref=n)
            assert r.status_code == 201, r.text
            ids[n] = r.json()["id"]
        run_jobs(c)
        items = c.get(f"/v1/exhibits/{ids['K013sA2']}/candidates", headers=exam).json()["items"]
        assert [i["candidate"]["id"] for i in items] == [ids["K027gA3"]]
        cand = items[0]
        assert not cand["identification"] and cand["cmc_count"] <= 2, cand
        s = c.get(f"/v1/candidates/{cand['id']}/second-look", headers=exam).json()
        # the pose is found: 5 congruent cells one way, 8 the other (the rule takes the smaller: no C >= 6
        # identification with the service's order of the pair); the pair model's score rises from about -2.5 (the
        # standard search's wrong pose) to near its threshold
        assert s["cmc_count"] >= 4 and max(s["cmc_forward"], s["cmc_backward"]) >= 6, s
        assert -1.0 < s["model_score"], s
        assert s["pose_changed"] and s["registration"]["ncc"] > cand["registration"]["ncc"] + 0.03
        assert s["stored"]["cmc_count"] == cand["cmc_count"]
        again = c.get(f"/v1/exhibits/{ids['K013sA2']}/candidates", headers=exam).json()["items"][0]
        assert (again["score"], again["identification"], again["log10_lr"]) == \
            (cand["score"], cand["identification"], cand["log10_lr"])
        assert c.get("/v1/audit/verify", headers=ADMIN).json()["ok"]
