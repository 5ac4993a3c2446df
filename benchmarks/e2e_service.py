"""End-to-end run of the correlation service on the real Fadul set (40 scans) plus a Baldwin pair.

Starts ``ballistic serve`` (SQLite, fresh data folder) as a child process, ingests through the
HTTP API exactly as ``ballistic ingest`` does, waits for every correlation job, then checks
every exhibit's candidate list: is a true mate (same slide / same firearm) at rank 1? An
examiner key confirms the rank-1 candidates that are true mates with C >= 6 (and rejects
rank-1 non-mates); the intelligence key polls the feed and must see exactly those hits; a
second poll with the ETag must answer 304. Prints a table and writes JSON.

    python benchmarks/e2e_service.py [--data ../shared/data] [--rerank-k 20] [--workers 2] [--json out/e2e.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--rerank-k", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N Fadul scans only")
    ap.add_argument("--no-baldwin", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the data folder")
    a = ap.parse_args()

    from api.ingest import ingest_directory, wait_for_jobs
    from api.process import ServerProcess

    fadul = a.data / "cartridge" / "fadul"
    labels = fadul / "labels.csv"
    if not labels.is_file():
        print(f"real data not found at {fadul}", file=sys.stderr)
        return 2
    slide = {r["scan"]: r["slide"] for r in csv.DictReader(open(labels))}
    files = sorted(fadul.glob("*.x3p"))[: a.limit] if a.limit else sorted(fadul.glob("*.x3p"))
    baldwin = [] if a.no_baldwin else [a.data / "cartridge" / "baldwin" / f"K013sA{i}.x3p" for i in (1, 2)]

    tmp = Path(tempfile.mkdtemp(prefix="ballistic-e2e-"))
    admin = "bk_e2e-admin-" + str(int(time.time()))
    srv = ServerProcess(tmp / "data", admin_key=admin, workers=a.workers,
                        env={"BALLISTIC_RERANK_K": str(a.rerank_k)}, log=tmp / "server.log")
    t0 = time.perf_counter()
    srv.start()
    t_start = time.perf_counter() - t0
    out: dict = {"rerank_k": a.rerank_k, "workers": a.workers, "server_start_s": round(t_start, 2),
                 "data_dir": str(tmp)}
    try:
        with srv.client() as c:
            exam = c.post("/v1/keys", json={"name": "Examiner E2E", "scope": "examiner"}).json()["key"]
            intel = c.post("/v1/keys", json={"name": "Analyst E2E", "scope": "intelligence"}).json()["key"]
        t1 = time.perf_counter()
        res = ingest_directory(fadul, api_url=srv.url, api_key=exam, labels=labels, agency="NIST-Fadul",
                               calibre="9mm", concurrency=a.concurrency, files=files, progress=True)
        if baldwin:
            res += ingest_directory(baldwin[0].parent, api_url=srv.url, api_key=exam, agency="DFSC-Baldwin",
                                    calibre="9mm", concurrency=a.concurrency, files=baldwin, progress=False)
        t_upload = time.perf_counter() - t1
        bad = [r for r in res if r["status"] != "created"]
        if bad:
            print("upload problems:", bad, file=sys.stderr)
        with srv.client(exam, timeout=300) as c:
            jobs = wait_for_jobs(c, [r["job_id"] for r in res if r.get("job_id")], progress=True, poll=0.5)
            t_jobs = time.perf_counter() - t1
            truth = {}
            for r in res:
                stem = Path(r["file"]).stem
                truth[r["exhibit_id"]] = (stem, f"fadul-{slide[stem]}" if stem in slide else "baldwin-A")
            rows, to_confirm, to_reject = [], [], []
            for r in sorted(res, key=lambda r: r["exhibit_id"]):
                eid = r["exhibit_id"]
                items = c.get(f"/v1/exhibits/{eid}/candidates", params={"include_explanation": False,
                                                                       "limit": 100}).json()["items"]
                src = truth[eid][1]
                ranks = [i["rank"] for i in items if truth[i["candidate"]["id"]][1] == src]
                mates_total = sum(1 for k, v in truth.items() if v[1] == src and k != eid)
                top = items[0] if items else None
                rows.append({"exhibit_id": eid, "scan": truth[eid][0], "source": src,
                             "candidates": len(items), "mates": mates_total, "mates_listed": len(ranks),
                             "mate_rank": min(ranks) if ranks else None,
                             # every true mate listed, and the mates hold ranks 1..m (no non-mate above a mate)
                             "all_mates_listed": len(ranks) == mates_total,
                             "mates_on_top": sorted(ranks) == list(range(1, len(ranks) + 1)),
                             "top": truth[top["candidate"]["id"]][0] if top else None,
                             "top_cmc": top["cmc_count"] if top else None,
                             "top_is_mate": bool(top and truth[top["candidate"]["id"]][1] == src),
                             "job": jobs.get(r["job_id"], {}).get("status")})
                if top and rows[-1]["top_is_mate"] and top["identification"]:
                    to_confirm.append(top["id"])
                elif top:
                    to_reject.append(top["id"])
            to_confirm = sorted(set(to_confirm))
            to_reject = sorted(set(to_reject) - set(to_confirm))
            for cid in to_confirm:
                assert c.post(f"/v1/candidates/{cid}/review",
                              json={"decision": "confirmed", "comment": "e2e benchmark"}).status_code == 201
            for cid in to_reject:
                c.post(f"/v1/candidates/{cid}/review", json={"decision": "rejected"})
        with srv.client(intel) as c:
            f1 = c.get("/v1/hits/feed", params={"limit": 500})
            feed = f1.json()
            seen = sorted(i["candidate_id"] for i in feed["items"] if i["kind"] == "hit")
            f2 = c.get("/v1/hits/feed", params={"limit": 500}, headers={"If-None-Match": f1.headers["etag"]})
            series = c.get("/v1/series").json()["items"]
            forbidden = c.post("/v1/exhibits", files={"file": ("x.x3p", b"PK\x03\x04")},
                               data={"case_number": "x", "exhibit_ref": "x", "agency": "x"}).status_code
            forbidden_dl = c.get("/v1/exhibits/1/original").status_code
        with srv.client() as c:
            status = c.get("/v1/status").json()
            verify = c.get("/v1/audit/verify").json()
    finally:
        srv.stop()
    n = len(rows)
    rank1 = sum(1 for r in rows if r["mate_rank"] == 1)
    fadul_rows = [r for r in rows if r["source"].startswith("fadul")]
    out.update({
        "exhibits": n, "uploaded": sum(r["status"] == "created" for r in res), "upload_s": round(t_upload, 1),
        "ingest_to_all_jobs_done_s": round(t_jobs, 1), "jobs_done": sum(r["job"] == "done" for r in rows),
        "mate_at_rank1": rank1, "fadul_mate_at_rank1": sum(1 for r in fadul_rows if r["mate_rank"] == 1),
        "fadul_exhibits": len(fadul_rows),
        "fadul_all_mates_listed": sum(1 for r in fadul_rows if r["all_mates_listed"]),
        "fadul_mates_on_top": sum(1 for r in fadul_rows if r["all_mates_listed"] and r["mates_on_top"]),
        "mate_pairs_listed": sum(r["mates_listed"] for r in rows), "mate_pairs": sum(r["mates"] for r in rows),
        "mean_candidates": round(sum(r["candidates"] for r in rows) / max(n, 1), 1),
        "confirmed": len(to_confirm), "rejected": len(to_reject), "feed_hits": len(seen),
        "feed_matches_confirmed": seen == to_confirm, "etag_second_poll_status": f2.status_code,
        "series": len(series), "series_sizes": sorted((len(s["exhibits"]) for s in series), reverse=True),
        "intelligence_upload_status": forbidden, "intelligence_download_status": forbidden_dl,
        "index_consistent": status["index"]["consistent"], "audit_ok": verify["ok"], "audit_rows": verify["rows"],
        "rows": rows})
    print()
    print(f"{'id':>3} {'scan':<12} {'source':<10} {'cands':>5} {'mates':>5} {'listed':>6} {'rank':>4}  "
          f"{'top':<12} {'C':>3}")
    for r in rows:
        print(f"{r['exhibit_id']:>3} {r['scan']:<12} {r['source']:<10} {r['candidates']:>5} {r['mates']:>5} "
              f"{r['mates_listed']:>6} {str(r['mate_rank']):>4}  {str(r['top']):<12} {str(r['top_cmc']):>3}"
              f"{'' if r['top_is_mate'] else '  <-- not a mate'}")
    print()
    for k, v in out.items():
        if k != "rows":
            print(f"{k:>28}: {v}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
    if not a.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    ok = (rank1 == n and out["feed_matches_confirmed"] and f2.status_code == 304 and out["index_consistent"]
          and out["audit_ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
