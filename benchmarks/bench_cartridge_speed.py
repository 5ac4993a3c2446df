"""Speed of the full-rotation CMC comparison on real Fadul scans (randomly rotated).

Prints a table and writes benchmarks/results/cartridge_speed.json. Timings are reported as
pairs/second and as ratios measured in the same run (these machines are noisy):

    python benchmarks/bench_cartridge_speed.py [--scans 16] [--workers 2]

Stages are timed separately on one core so the cost of each is visible.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from itertools import combinations
from pathlib import Path

from ballistic.bench.cartridge import compare_all_pairs, load_scans, read_labels
from ballistic.cartridge.cmc import register
from ballistic.cartridge.cmc.cells import compare_cells
from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.cartridge.cmc.params import CMCParams
from ballistic.cartridge.cmc.register import invert_registration, register_global

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cartridge" / "fadul"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cartridge_speed.json"))
    a = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data not found at {DATA}")
    p = CMCParams()
    scans = read_labels(DATA, DATA / "labels.csv")[: a.scans]
    t0 = time.perf_counter()
    prep, _ = load_scans(scans, p, rotate_random=True, seed=7)
    t_prep = (time.perf_counter() - t0) / len(scans)
    pairs = list(combinations(range(len(prep)), 2))
    compare_pair(prep[0], prep[1], p)  # JIT warm-up

    # one core, stage by stage; each stage starts without kept rotated stacks (register._stack_spectra)
    sub = pairs[: min(40, len(pairs))]
    register._stack_cache.clear()
    t_reg = t_cells = 0.0
    for i, j in sub:
        t = time.perf_counter()
        reg = register_global(prep[i], prep[j], p)
        t_reg += time.perf_counter() - t
        t = time.perf_counter()
        compare_cells(prep[i], prep[j], reg, p)
        compare_cells(prep[j], prep[i], invert_registration(reg), p)
        t_cells += time.perf_counter() - t
    register._stack_cache.clear()
    t = time.perf_counter()
    for i, j in sub:
        compare_pair(prep[i], prep[j], p)
    one_core = len(sub) / (time.perf_counter() - t)

    # all pairs on N worker processes, as `ballistic bench cartridge` runs them
    _, seconds = compare_all_pairs(prep, pairs, p, workers=a.workers)
    multi = len(pairs) / seconds

    res = {
        "scans": len(prep), "pairs": len(pairs), "workers": a.workers, "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "rotation_searched_deg": 360, "params": p.as_dict(),
        "preprocess_seconds_per_scan": t_prep,
        "register_seconds_per_pair_1core": t_reg / len(sub),
        "cells_both_directions_seconds_per_pair_1core": t_cells / len(sub),
        "pairs_per_second_1core": one_core,
        "pairs_per_second_workers": multi,
        "speedup_workers_over_1core": multi / one_core,
        "target_pairs_per_second": 5.0,
        "meets_target": multi >= 5.0,
    }
    print(f"{'measure':<46}{'value':>12}")
    for k in ("preprocess_seconds_per_scan", "register_seconds_per_pair_1core",
              "cells_both_directions_seconds_per_pair_1core", "pairs_per_second_1core",
              "pairs_per_second_workers", "speedup_workers_over_1core", "meets_target"):
        v = res[k]
        print(f"{k:<46}{v:>12.3f}" if isinstance(v, float) else f"{k:<46}{str(v):>12}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
