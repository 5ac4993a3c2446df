"""Time and peak memory of a hostile upload (issue 12, item 2): a 486 KB x3p holding a 7900 x 7900 float64
grid of zeros, sent to the service in-process (TestClient, real SQLite file), then its correlation job run.

Each case runs in a child process so that its peak RSS (``resource.getrusage``) is its own. The job phase runs
under an address-space limit (``--job-limit-gib``, default 6) so that a runaway job on the old code fails with
MemoryError instead of taking the shared machine down; the table says so when it hit the limit.

    python benchmarks/bench_hostile_upload.py [--size 7900] [--label after]

Prints a table and writes benchmarks/results/hostile_upload_<label>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "api"))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {helpers!r})
from pathlib import Path
from fastapi.testclient import TestClient
from api.main import create_app
from api_helpers import make_settings, new_key, upload

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

out = {{}}
tmp = Path({tmp!r})
with TestClient(create_app(make_settings(tmp))) as c:
    ex = new_key(c, "examiner")
    data = Path({file!r}).read_bytes()
    out["rss_before_mib"] = rss_mib()
    t = time.perf_counter()
    r = upload(c, ex, data, name="zeros.x3p")
    out["upload_s"] = time.perf_counter() - t
    out["upload_status"] = r.status_code
    out["upload_detail"] = str(r.json().get("detail", ""))[:300] if r.status_code != 201 else ""
    out["upload_peak_rss_mib"] = rss_mib()
    if r.status_code == 201:
        limit = int({job_limit_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        t = time.perf_counter()
        try:
            c.app.state.runtime.run_pending_inline()
            job = c.get(f"/v1/jobs/{{r.json()['job']['id']}}", headers=ex).json()
            out["job_status"], out["job_error"] = job["status"], (job.get("error") or "")[:300]
        except MemoryError:
            out["job_status"], out["job_error"] = "MemoryError", "address space limit of {job_limit_gib} GiB hit"
        out["job_s"] = time.perf_counter() - t
        out["job_peak_rss_mib"] = rss_mib()
print("RESULT " + json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=7900, help="grid side (points)")
    ap.add_argument("--label", default="after", help="name of this run in the JSON file")
    ap.add_argument("--job-limit-gib", type=float, default=6.0)
    a = ap.parse_args()
    from api_helpers import constant_grid_x3p

    with tempfile.TemporaryDirectory() as d:
        f = constant_grid_x3p(Path(d) / "zeros.x3p", a.size, a.size)
        code = CHILD.format(helpers=str(ROOT / "tests" / "api"), tmp=str(Path(d) / "svc"), file=str(f),
                            job_limit_gib=a.job_limit_gib)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"child failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
        res = json.loads(line[7:])
        res.update(file_bytes=f.stat().st_size, grid=f"{a.size}x{a.size}", child_wall_s=wall, label=a.label)
    print(f"{'case':<28}{'status':>8}{'seconds':>10}{'peak RSS MiB':>14}")
    print(f"{'upload ' + res['grid']:<28}{res['upload_status']:>8}{res['upload_s']:>10.2f}"
          f"{res['upload_peak_rss_mib']:>14.0f}")
    if "job_s" in res:
        print(f"{'job':<28}{res['job_status']:>8}{res['job_s']:>10.2f}{res['job_peak_rss_mib']:>14.0f}")
        print("job error:", res["job_error"])
    else:
        print("detail:", res["upload_detail"])
    out = ROOT / "benchmarks" / "results" / f"hostile_upload_{a.label}.json"
    out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
