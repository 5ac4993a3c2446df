"""The FFT backends of the comparison side by side: torch's MKL against scipy's pocketfft, on real pairs.

For each labelled set found (Fadul, DFSC), the first ``--scans`` scans are loaded (randomly rotated, seed 7),
and every pair is compared on one core by both backends back to back, the order alternating from pair to
pair, so that the ratio of their times is measured under the same load (these machines are noisy). Also
reported: whether both backends give the same CMC count, pose and model score for every pair (they agree to
float rounding, which could move a peak between equal neighbours), and the thorough search on a few pairs.
Prints a table and writes ``benchmarks/results/fft_backend.json``:

    python benchmarks/bench_fft_backend.py [--data ../shared/data] [--scans 10] [--thorough-pairs 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("scipy", "torch")


def _timed_pairs(prep, pairs, params, search: str) -> dict:
    from ballistic.cartridge.cmc import fft, register
    from ballistic.cartridge.cmc.pair import compare_pair

    for b in BACKENDS:                                           # compile kernels, import torch, plan transforms
        os.environ[fft.FFT_ENV] = b
        compare_pair(prep[pairs[0][0]], prep[pairs[0][1]], params, search=search)
    secs = {b: [] for b in BACKENDS}
    same = {"cmc_count": 0, "pose_within_0.05deg_1um": 0, "model_score_within_1e-3": 0}
    worst = {"angle_deg": 0.0, "translation_um": 0.0, "model_score": 0.0}
    for k, (i, j) in enumerate(pairs):
        got = {}
        for b in (BACKENDS if k % 2 == 0 else BACKENDS[::-1]):
            os.environ[fft.FFT_ENV] = b
            register._stack_cache.clear()                        # a whole comparison: no kept rotated stack
            t = time.perf_counter()
            got[b] = compare_pair(prep[i], prep[j], params, search=search)
            secs[b].append(time.perf_counter() - t)
        a, c = got["scipy"], got["torch"]
        ra, rc = a.forward.registration, c.forward.registration
        same["cmc_count"] += a.cmc_count == c.cmc_count
        dang = abs((ra.angle_deg - rc.angle_deg + 180.0) % 360.0 - 180.0)
        dxy = float(np.hypot(ra.dy_um - rc.dy_um, ra.dx_um - rc.dx_um))
        dscore = abs((a.model_score or 0.0) - (c.model_score or 0.0))
        same["pose_within_0.05deg_1um"] += ra.mirrored == rc.mirrored and dang <= 0.05 and dxy <= 1.0
        same["model_score_within_1e-3"] += dscore < 1e-3
        if ra.mirrored == rc.mirrored:
            worst.update(angle_deg=max(worst["angle_deg"], dang), translation_um=max(worst["translation_um"], dxy))
        worst["model_score"] = max(worst["model_score"], dscore)
    ratio = np.array(secs["torch"]) / np.array(secs["scipy"])
    return {"search": search, "pairs": len(pairs),
            "seconds_per_pair_scipy": float(np.mean(secs["scipy"])),
            "seconds_per_pair_torch": float(np.mean(secs["torch"])),
            "time_ratio_torch_over_scipy_total": float(np.sum(secs["torch"]) / np.sum(secs["scipy"])),
            "time_ratio_torch_over_scipy_median": float(np.median(ratio)),
            "time_ratio_quartiles": [float(v) for v in np.percentile(ratio, [25, 75])],
            "same_result": same, "largest_difference": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--thorough-pairs", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fft_backend.json")
    a = ap.parse_args()
    from ballistic.bench.cartridge import load_scans_parallel
    from ballistic.bench.generalization import discover_sets
    from ballistic.cartridge.cmc import fft
    from ballistic.cartridge.cmc.params import CMCParams

    asked = os.environ.get(fft.FFT_ENV)
    scans = discover_sets(a.data)
    if not scans:
        raise SystemExit(f"no labelled cartridge sets under {a.data / 'cartridge'}")
    params = CMCParams()
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "load_average_at_start": list(os.getloadavg())},
           "torch_threads_during_transforms": 1, "sets": {}}
    try:
        for ds in ("fadul", "dfsc"):
            sc = [s for s in scans if s.dataset == ds][: a.scans]
            if len(sc) < 2:
                continue
            rng = np.random.default_rng(7)
            prep, _ = load_scans_parallel([s.path for s in sc], [s.name for s in sc],
                                          [float(rng.uniform(0.0, 360.0)) for _ in sc], params, workers=1)
            pairs = list(combinations(range(len(prep)), 2))
            res["sets"][ds] = {"scans": len(sc), "standard": _timed_pairs(prep, pairs, params, "standard")}
            if a.thorough_pairs:
                res["sets"][ds]["thorough"] = _timed_pairs(prep, pairs[: a.thorough_pairs], params, "thorough")
    finally:
        if asked is None:
            os.environ.pop(fft.FFT_ENV, None)
        else:
            os.environ[fft.FFT_ENV] = asked
    head = f"{'set':<7}{'search':<10}{'pairs':>6}{'s/pair scipy':>14}{'s/pair torch':>14}{'ratio':>8}" \
           f"{'median':>8}{'same CMC':>10}{'same pose':>10}{'max dangle':>11}"
    print(head)
    print("-" * len(head))
    for ds, blk in res["sets"].items():
        for search in ("standard", "thorough"):
            r = blk.get(search)
            if r:
                print(f"{ds:<7}{search:<10}{r['pairs']:>6}{r['seconds_per_pair_scipy']:>14.3f}"
                      f"{r['seconds_per_pair_torch']:>14.3f}{r['time_ratio_torch_over_scipy_total']:>8.3f}"
                      f"{r['time_ratio_torch_over_scipy_median']:>8.3f}{r['same_result']['cmc_count']:>10}"
                      f"{r['same_result']['pose_within_0.05deg_1um']:>10}{r['largest_difference']['angle_deg']:>11.2g}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from ballistic.io.atomic import atomic_write_bytes
    atomic_write_bytes(a.out, json.dumps(res, indent=1).encode())
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
