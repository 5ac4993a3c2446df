"""API latency while correlation jobs run (issue 12 item 8): GET /v1/exhibits?limit=50 and GET /v1/hits/feed,
p50 / p95 / max, measured by a client polling them during a 40-scan Fadul ingest through ``ballistic serve``.

    python benchmarks/bench_load.py --label after [--workers 2] [--data ../shared/data] [--json FILE]

Starts ``ballistic serve`` (fresh data folder, ``--workers`` correlation workers: threads inside the API
process on the old code, worker processes at nice 10 on the new) as a child process; the code it runs is
whatever ``api`` the interpreter imports, so the same script measures another checkout with
``PYTHONPATH=/path/to/checkout`` (e.g. ``git worktree add /tmp/before c2f850f``). Phases:

1. idle: the two requests alone (no ingest), the reference;
2. load: ``ballistic ingest`` of the 40 Fadul scans (2 uploads at a time) and their correlation jobs, while
   one client alternates the two requests as fast as they answer (a request every ``--interval`` s at most),
   until every job is done.

Prints a table and writes JSON (default ``benchmarks/results/load_<label>.json``) with the machine's load
average at the start and end: the machine may be shared, so compare runs made back to back.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pct(xs, q):
    import numpy as np
    return round(float(np.percentile(xs, q)) * 1000, 1) if xs else None


def _poll(srv, exam: str, intel: str, stop: threading.Event, interval: float) -> dict[str, list[float]]:
    import httpx

    out = {"exhibits": [], "feed": [], "errors": 0}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        while not stop.is_set():
            for name, path, key in (("exhibits", "/v1/exhibits?limit=50", exam), ("feed", "/v1/hits/feed", intel)):
                t = time.perf_counter()
                r = c.get(path, headers={"X-API-Key": key})
                dt = time.perf_counter() - t
                if r.status_code == 200:
                    out[name].append(dt)
                else:
                    out["errors"] += 1
                stop.wait(max(0.0, interval - dt))
    return out


def _summary(samples: dict) -> dict:
    return {k: {"n": len(v), "p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95), "max_ms": _pct(v, 100)}
            for k, v in samples.items() if k != "errors"} | {"errors": samples["errors"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True, help="names the run (before / after ...)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2, help="uploads at a time")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between two polls, at least")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    import api
    from api.ingest import ingest_directory, wait_for_jobs
    from api.process import ServerProcess

    fadul = a.data / "cartridge" / "fadul"
    if not (fadul / "labels.csv").is_file():
        print(f"real data not found at {fadul}", file=sys.stderr)
        return 2
    files = sorted(fadul.glob("*.x3p"))
    tmp = Path(tempfile.mkdtemp(prefix=f"ballistic-load-{a.label}-"))
    admin = "bk_load-admin-" + str(int(time.time()))
    srv = ServerProcess(tmp / "data", admin_key=admin, workers=a.workers, log=tmp / "server.log",
                        env={"BALLISTIC_RERANK_K": "20"})
    out: dict = {"label": a.label, "api_code": str(Path(api.__file__).resolve().parent), "workers": a.workers,
                 "scans": len(files), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                 "loadavg_start": os.getloadavg()}
    srv.start()
    try:
        with srv.client() as c:
            exam = c.post("/v1/keys", json={"name": "load examiner", "scope": "examiner"}).json()["key"]
            intel = c.post("/v1/keys", json={"name": "load analyst", "scope": "intelligence"}).json()["key"]
        stop = threading.Event()
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(idle=_poll(srv, exam, intel, stop, a.interval)))
        t.start()
        time.sleep(a.idle_s)
        stop.set()
        t.join()
        out["idle"] = _summary(box["idle"])
        stop = threading.Event()
        t = threading.Thread(target=lambda: box.update(load=_poll(srv, exam, intel, stop, a.interval)))
        t0 = time.perf_counter()
        t.start()
        res = ingest_directory(fadul, api_url=srv.url, api_key=exam, labels=fadul / "labels.csv",
                               agency="NIST-Fadul", calibre="9mm", concurrency=a.concurrency, files=files,
                               progress=False)
        out["upload_s"] = round(time.perf_counter() - t0, 1)
        with srv.client(exam, timeout=300) as c:
            jobs = wait_for_jobs(c, [r["job_id"] for r in res if r.get("job_id")], progress=False, poll=0.5)
        out["ingest_to_all_jobs_done_s"] = round(time.perf_counter() - t0, 1)
        stop.set()
        t.join()
        out["load"] = _summary(box["load"])
        out["jobs_done"] = sum(1 for j in jobs.values() if j.get("status") == "done")
        with srv.client() as c:
            out["status_workers"] = c.get("/v1/status").json().get("workers")
    finally:
        srv.stop()
        out["loadavg_end"] = os.getloadavg()
    print(f"\n{a.label}: {out['scans']} Fadul scans, {a.workers} workers, {out['jobs_done']} jobs done "
          f"{out['ingest_to_all_jobs_done_s']} s after the first upload; load average {out['loadavg_start'][0]:.1f}"
          f" -> {out['loadavg_end'][0]:.1f} on {out['machine']['cpus']} cores")
    print(f"{'phase':<6} {'request':<28} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for phase in ("idle", "load"):
        for k, name in (("exhibits", "GET /v1/exhibits?limit=50"), ("feed", "GET /v1/hits/feed")):
            s = out[phase][k]
            print(f"{phase:<6} {name:<28} {s['n']:>5} {s['p50_ms']:>8} {s['p95_ms']:>8} {s['max_ms']:>8}")
    dest = a.json or ROOT / "benchmarks" / "results" / f"load_{a.label}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"json: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
