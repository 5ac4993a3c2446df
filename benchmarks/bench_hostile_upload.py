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
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "api"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=7900, help="grid side (points)")
    ap.add_argument("--label", default="after", help="name of this run in the JSON file")
    ap.add_argument("--job-limit-gib", type=float, default=6.0)
    a = ap.parse_args()
    from api_helpers import constant_grid_x3p
    from service_job_probe import upload_and_job

    with tempfile.TemporaryDirectory() as d:
        f = constant_grid_x3p(Path(d) / "zeros.x3p", a.size, a.size)
        res = upload_and_job(f, d, name="zeros.x3p", job_limit_gib=a.job_limit_gib)
        res.update(file_bytes=f.stat().st_size, grid=f"{a.size}x{a.size}", label=a.label)
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
