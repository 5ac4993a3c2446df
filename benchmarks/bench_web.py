"""Server time of the workbench pages on a database of 10^4 exhibits.

Populates a fresh SQLite database (created by the service's own migrations) directly through the ORM
tables - exhibits, cases, jobs, candidates with explanation JSON of the real size (8 x 8 cells both
ways, ~11 kB), reviews and feed events for the confirmed ones - without running any comparison; then
signs in through the login form and times each page in-process (TestClient against the app: the
time from request to full response body, no network):

    python benchmarks/bench_web.py [--exhibits 10000] [--per-exhibit 10] [--confirmed 400] [--repeat 40]

Prints p50 / p95 per page and writes benchmarks/results/web.json. ``--index NAME=COLUMNS`` creates
an extra index on the benchmark database only (to measure a proposal, e.g.
``--index candidates.review_status``); the service's models and migrations are not touched.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_KEY = "bk_bench-web-admin-key-0123456789"
AGENCIES = ["Metro PD", "County SO", "State Police", "Harbour PD", "National FFP", "North Division", "South Division",
            "Airport Police", "Transit PD", "Border Unit", "River PD", "Hill County SO"]
CALIBRES = ["9mm", "9mm", "9mm", ".40 S&W", ".45 ACP", ".380 ACP", "7.62x39"]
PLACES = ["Main St", "Harbour Rd", "Station Sq", "Park Ave", "Mill Ln", "Church St", "Bridge Rd", None]


def _explanation(rng: random.Random, cmc: int) -> dict:
    """The shape and size of ``PairResult.to_dict()``: summary, params, 8 x 8 cells both ways."""
    def cells(n_cmc: int) -> list[dict]:
        out = []
        for r in range(8):
            for c in range(8):
                if rng.random() < 0.45:
                    continue
                corr = round(rng.uniform(0.1, 0.95), 4)
                out.append({"row": r, "col": c, "y0_px": 34 * r, "x0_px": 34 * c, "size_px": 34,
                            "valid_fraction": round(rng.uniform(0.15, 1), 4),
                            "angle_deg": round(rng.uniform(0, 360), 3),
                            "dy_um": round(rng.uniform(-200, 200), 2), "dx_um": round(rng.uniform(-200, 200), 2),
                            "corr": corr, "cmc": False})
        for x in rng.sample(out, min(n_cmc, len(out))):
            x["cmc"] = True
        return out

    angle = round(rng.uniform(0, 360), 2)
    fwd, bwd = cells(cmc + rng.randint(0, 3)), cells(cmc)
    reg = {"angle_deg": angle, "dy_um": round(rng.uniform(-100, 100), 1), "dx_um": round(rng.uniform(-100, 100), 1),
           "ncc": round(rng.uniform(0.1, 0.8), 4), "prior_deg": [angle, angle - 8, angle + 8]}
    return {"reference": "a", "target": "b", "cmc_count": cmc, "similarity": cmc + 0.7, "identification": cmc >= 6,
            "cmc_forward": sum(c["cmc"] for c in fwd), "cmc_backward": sum(c["cmc"] for c in bwd),
            "cmc_original_forward": cmc, "cmc_original_backward": cmc, "rule_forward": "high-cmc",
            "rule_backward": "high-cmc", "cells_forward": len(fwd), "cells_backward": len(bwd),
            "angle_deg": angle, "dy_um": reg["dy_um"], "dx_um": reg["dx_um"], "registration_ncc": reg["ncc"],
            "seconds": 0.4, "algorithm": "cmc-coarse2fine/1",
            "params": {"spacing_um": 12.5, "coarse_spacing_um": 25.0, "prior_spacing_um": 50.0, "prior_step_deg": 4.0,
                       "grid": 8, "min_cell_valid": 0.15, "prior_candidates": 3, "coarse_halfwidth_deg": 3.0,
                       "coarse_step_deg": 1.5, "fine_step_deg": 0.75, "cell_angles_deg": [-6.0, -3.0, 0.0, 3.0, 6.0],
                       "region_scale": 2.0, "min_overlap": 0.4, "max_shift_fraction": 0.3, "cell_min_overlap": 0.5,
                       "corr_threshold": 0.5, "translation_threshold_um": 25.0, "angle_threshold_deg": 6.0,
                       "high_cmc_tau": 1, "decision_threshold": 6},
            "forward": {"registration": reg, "consensus": {"angle_deg": angle, "dy_um": 0.0, "dx_um": 0.0,
                                                           "rule": "high-cmc"}, "cells": fwd},
            "backward": {"registration": dict(reg, angle_deg=(360 - angle) % 360, prior_deg=[]),
                         "consensus": {"angle_deg": (360 - angle) % 360, "dy_um": 0.0, "dx_um": 0.0,
                                       "rule": "high-cmc"}, "cells": bwd}}


def populate(rt, n: int, per: int, confirmed: int, seed: int = 1) -> dict:
    """Rows straight into the tables (Core executemany; one transaction per table)."""
    from sqlalchemy import insert, update

    from api.db.models import Candidate, Case, Exhibit, HitEvent, Job, Review

    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    n_cases = max(1, n // 4)
    cases = [{"id": i + 1, "agency": AGENCIES[i % len(AGENCIES)], "case_number": f"CR-{2020 + i % 5}-{i:06d}",
              "created_at": now} for i in range(n_cases)]
    exhibits, jobs = [], []
    for i in range(n):
        cid = rng.randrange(n_cases) + 1
        role = "test_fire" if rng.random() < 0.15 else "evidence"
        exhibits.append({
            "id": i + 1, "case_id": cid, "exhibit_ref": f"EX-{i:05d}", "exhibit_type": "cartridge_case", "role": role,
            "calibre": rng.choice(CALIBRES), "firing_pin_shape": None, "land_count": None, "twist": None,
            "recovery_date": dt.date(2021, 1, 1) + dt.timedelta(days=rng.randrange(1460)),
            "place_text": rng.choice(PLACES), "lat": None, "lon": None,
            "firearm_serial": f"SN-{rng.randrange(10**6):06d}" if role == "test_fire" else None, "spacing_um": None,
            "original_sha256": f"{rng.getrandbits(256):064x}", "original_filename": f"scan-{i}.x3p",
            "original_size": 650_000, "media_type": "x3p", "region": "breech_face", "partition": "9mm|*|breech_face",
            "derived_path": None, "preprocess_info": "raw", "descriptor": None, "descriptor_version": "bench",
            "descriptor_dim": 1280, "created_at": now, "created_by": "key:1:bench"})
        jobs.append({"id": i + 1, "exhibit_id": i + 1, "kind": "correlate", "status": "done", "attempts": 1,
                     "max_attempts": 3, "error": None, "candidates_found": per, "created_at": now, "updated_at": now,
                     "started_at": now, "finished_at": now})
    # candidates are streamed in chunks (their explanations do not fit in memory at 10^5 rows)
    light, seen, expl_sizes = [], set(), []
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()

    def candidate_chunks(size: int = 2000):
        chunk = []
        for a in range(1, n + 1):
            for _ in range(per):
                b = rng.randrange(1, n + 1)
                lo, hi = min(a, b), max(a, b)
                if a == b or (lo, hi) in seen:
                    continue
                seen.add((lo, hi))
                cmc = rng.choice([0, 0, 0, 1, 1, 2, 3, 4, 8, 15])
                sim = cmc + rng.random()
                cid = len(light) + 1
                light.append((cid, a, b, sim, cmc))
                expl = _explanation(rng, cmc)
                if len(expl_sizes) < 500:
                    expl_sizes.append(len(json.dumps(expl)))
                chunk.append({"id": cid, "exhibit_a_id": a, "exhibit_b_id": b, "pair_lo": lo, "pair_hi": hi,
                              "region": "breech_face", "vector_score": rng.uniform(0.5, 1), "similarity": sim,
                              "cmc_count": cmc, "identification": cmc >= 6,
                              "registration": {"angle_deg": 12.0, "dy_um": 10.0, "dx_um": -5.0, "ncc": 0.4},
                              "explanation": expl, "algorithm_version": "cmc-coarse2fine/1",
                              "descriptor_version": "bench", "review_status": "unreviewed", "job_id": a,
                              "created_at": now})
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    with rt.engine.connect() as conn:  # the service's engine and pragmas; one commit per table
        for table, rows in ((Case.__table__, cases), (Exhibit.__table__, exhibits), (Job.__table__, jobs)):
            for i in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[i:i + 5000])
            conn.commit()
        for chunk in candidate_chunks():
            conn.execute(insert(Candidate.__table__), chunk)
        conn.commit()
        chosen = sorted(rng.sample([x for x in light if x[4] >= 6], min(confirmed, sum(x[4] >= 6 for x in light))))
        reviews, events = [], []
        for k, (cid, a, b, sim, cmc) in enumerate(chosen):
            when = now - dt.timedelta(days=rng.randrange(700), minutes=rng.randrange(1440))
            reviews.append({"id": k + 1, "candidate_id": cid, "decision": "confirmed", "comment": "bench",
                            "examiner": "Bench Examiner", "key_id": 1, "created_at": when})
            events.append({"kind": "hit", "candidate_id": cid, "review_id": k + 1, "exhibit_a_id": a,
                           "exhibit_b_id": b, "score": sim, "cmc_count": cmc, "confirmed_by": "Bench Examiner",
                           "created_at": when})
        events.sort(key=lambda e: e["created_at"])
        if chosen:
            conn.execute(update(Candidate.__table__).where(Candidate.__table__.c.id.in_([x[0] for x in chosen]))
                         .values(review_status="confirmed"))
            conn.execute(insert(Review.__table__), reviews)
            conn.execute(insert(HitEvent.__table__), events)
        conn.commit()
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
        size = conn.exec_driver_sql("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
                                    ).scalar()
    cands = light
    return {"exhibits": n, "cases": n_cases, "candidates": len(cands), "confirmed": len(chosen),
            "generate_and_insert_s": round(t_gen + time.perf_counter() - t0, 1),
            "db_bytes": int(size), "explanation_bytes_mean": round(statistics.mean(expl_sizes))}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exhibits", type=int, default=10_000)
    ap.add_argument("--per-exhibit", type=int, default=10, help="candidate pairs stored by each exhibit's job")
    ap.add_argument("--confirmed", type=int, default=400, help="confirmed hits (reviews + feed events)")
    ap.add_argument("--repeat", type=int, default=40, help="requests per page")
    ap.add_argument("--index", action="append", default=[], help="extra index TABLE.COLUMN on the bench DB only")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "web.json")
    ap.add_argument("--target-ms", type=float, default=300.0)
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import Settings
    from api.web import routes

    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    settings = Settings(data_dir=tmp, admin_key=ADMIN_KEY, print_admin_key=False, run_worker=False)
    rng = random.Random(7)
    with TestClient(create_app(settings)) as c:
        rt = c.app.state.runtime
        key = c.post("/v1/keys", json={"name": "Bench Examiner", "scope": "examiner"},
                     headers={"X-API-Key": ADMIN_KEY}).json()["key"]
        print(f"populating {args.exhibits} exhibits in {tmp} ...", flush=True)
        db = populate(rt, args.exhibits, args.per_exhibit, args.confirmed)
        with rt.engine.connect() as conn:
            for spec in args.index:
                table, col = spec.split(".")
                conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS bench_ix_{table}_{col} ON {table} ({col})")
            conn.commit()
        print(json.dumps(db), flush=True)
        page = c.get("/web/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = c.post("/web/login", data={"api_key": key, "csrf_token": token}, follow_redirects=False)
        assert r.status_code == 303, r.text
        n, n_cand = db["exhibits"], db["candidates"]
        pages = {
            "exhibit list (page 1)": lambda: "/web/exhibits",
            "exhibit list (search: agency + dates)": lambda: (
                f"/web/exhibits?agency={rng.choice(AGENCIES).split()[0].lower()}&date_from=2022-01-01"
                f"&date_to=2023-06-30&page={rng.randrange(1, 4)}"),
            "exhibit list (deep page)": lambda: f"/web/exhibits?page={rng.randrange(50, 200)}",
            "exhibit page": lambda: f"/web/exhibits/{rng.randrange(1, n + 1)}",
            "comparison view": lambda: f"/web/candidates/{rng.randrange(1, n_cand + 1)}",
            "dashboard": lambda: "/web/dashboard",
            "dashboard (cold: series recomputed)": lambda: (routes._series_cache.clear(), "/web/dashboard")[1],
            "hits feed": lambda: "/web/hits",
        }
        results = {}
        for name, url in pages.items():
            c.get(url())  # warm-up (imports, template compilation, page cache)
            times = []
            for _ in range(args.repeat):
                u = url()
                t = time.perf_counter()
                r = c.get(u)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (u, r.status_code, r.text[:300])
            results[name] = {"p50_ms": round(_pct(times, 0.5), 1), "p95_ms": round(_pct(times, 0.95), 1),
                             "max_ms": round(max(times), 1), "n": len(times), "bytes": len(r.content)}
    print(f"\n{'page':40s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}  target p95 < {args.target_ms:.0f} ms")
    for name, v in results.items():
        ok = "ok" if v["p95_ms"] < args.target_ms else "SLOW"
        print(f"{name:40s} {v['p50_ms']:8.1f} {v['p95_ms']:8.1f} {v['max_ms']:8.1f}  {ok}")
    out = {"pages": results, "database": db, "extra_indexes": args.index, "target_p95_ms": args.target_ms,
           "all_within_target": all(v["p95_ms"] < args.target_ms for v in results.values()),
           "repeat": args.repeat, "measured": "in-process TestClient, request to full body, one client",
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
