"""Time and peak memory of a correlation job on finer and finer raw scans (high-resolution scanners).

Confocal and focus-variation scanners measure breech faces at 0.5-2 um, 4 to 40 times the points of a 3.125 um
NanoFocus scan. No such scan is in ../shared/data, so this takes a real raw scan (default: Fadul 1-1, raw, 3.125 um,
from ``../shared/data/cartridge/fadul-raw``) and resamples it to finer spacings (bilinear heights, nearest mask:
the same surface, more points), uploads each to a fresh in-process service and runs its correlation job
(``service_job_probe.upload_and_job``: a child process, its own peak RSS). The table gives the job's seconds,
its peak RSS and that peak in float64 copies of the scan grid above the idle process, and the same for the
address space (what a worker's ``RLIMIT_AS`` counts) - the figure ``Settings.job_working_copies`` must cover
(``api/limits.py``).

    python benchmarks/bench_fine_scan_job.py [--factors 1,2,4] [--scan PATH] [--label NAME]

Prints a table and writes benchmarks/results/fine_scan_job_<label>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DEFAULT_SCAN = ROOT.parent / "shared" / "data" / "cartridge" / "fadul-raw" / "fadul1.1_raw.x3p"


def finer(surface, factor: int):
    """``surface`` on a grid ``factor`` times finer: bilinear heights, nearest-neighbour mask."""
    import cv2

    from ballistic.surface import Surface

    if factor == 1:
        return surface
    h = surface.heights
    z = cv2.resize(np.where(np.isfinite(h), h, 0.0), None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    m = cv2.resize(np.isfinite(h).astype(np.uint8), None, fx=factor, fy=factor,
                   interpolation=cv2.INTER_NEAREST) > 0
    return Surface(np.where(m, z, np.nan), surface.spacing_um / factor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", type=Path, default=DEFAULT_SCAN, help="a RAW x3p scan (primer and firing pin)")
    ap.add_argument("--factors", default="1,2,4", help="grid refinements, comma-separated")
    ap.add_argument("--label", default="current", help="name of this run in the JSON file")
    ap.add_argument("--job-limit-gib", type=float, default=8.0)
    a = ap.parse_args()
    if not a.scan.is_file():
        raise SystemExit(f"scan not found: {a.scan} (real data lives in ../shared/data; pass --scan)")
    from ballistic.io.x3p import read_x3p, write_x3p
    from service_job_probe import upload_and_job

    src = read_x3p(a.scan)
    rows = []
    for factor in (int(x) for x in a.factors.split(",")):
        with tempfile.TemporaryDirectory() as d:
            s = finer(src, factor)
            f = Path(d) / f"fine_x{factor}.x3p"
            write_x3p(s, f, dtype="float32")
            points = int(s.heights.size)
            del s
            file_mib = f.stat().st_size / 2**20
            res = upload_and_job(f, d, name=f.name, job_limit_gib=a.job_limit_gib)
        grid_mib = points * 8 / 2**20
        res.update(factor=factor, spacing_um=src.spacing_um / factor, points=points, file_mib=file_mib,
                   grid_float64_mib=grid_mib)
        if "job_peak_rss_mib" in res:
            res["job_peak_copies_above_idle"] = (res["job_peak_rss_mib"] - res["rss_before_mib"]) / grid_mib
        if res.get("job_peak_vm_mib") is not None and res.get("vm_before_mib") is not None:
            res["job_peak_address_space_copies_above_idle"] = (res["job_peak_vm_mib"] - res["vm_before_mib"]) / grid_mib
        rows.append(res)
        print(f"x{factor}: {points / 1e6:.1f} M points, job {res.get('job_status')} in {res.get('job_s', 0):.1f} s, "
              f"peak RSS {res.get('job_peak_rss_mib', 0):.0f} MiB", flush=True)
    print(f"\n{'spacing um':>11}{'points M':>10}{'upload':>8}{'job':>10}{'job s':>8}{'peak MiB':>10}{'copies':>8}"
          f"{'AS copies':>10}")
    for r in rows:
        print(f"{r['spacing_um']:>11.4g}{r['points'] / 1e6:>10.1f}{r['upload_status']:>8}{r.get('job_status', '-'):>10}"
              f"{r.get('job_s', float('nan')):>8.1f}{r.get('job_peak_rss_mib', float('nan')):>10.0f}"
              f"{r.get('job_peak_copies_above_idle', float('nan')):>8.1f}"
              f"{r.get('job_peak_address_space_copies_above_idle') or float('nan'):>10.1f}")
    out = ROOT / "benchmarks" / "results" / f"fine_scan_job_{a.label}.json"
    out.write_text(json.dumps({"scan": a.scan.name, "label": a.label, "runs": rows}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
