"""Speed of the bullet land pipeline on the real Hamby scans, stage by stage, one core.

Prints a table and writes benchmarks/results/bullet_speed.json:

    python benchmarks/bench_bullet_speed.py [--lands 6] [--repeat 3]

Stages: read + orient one scan (the striation-direction estimate included), choose
one crosscut, signatures at every 50 um (land_signatures), one full-resolution
alignment, one land comparison at many heights (coarse-to-fine, as the benchmark)
and the same exhaustively, and the bullet-level scoring of a land-score matrix
(SAM and the phase test); the ratio of the coarse-to-fine and exhaustive land
comparisons is measured in the same run (these machines are shared and noisy).
Sets: Hamby 252 and Hamby 44 (bullet/labels.csv) and, when present, Houston
(bullet/houston/labels.csv).
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

from ballistic.bench.bullet import read_bullet_labels
from ballistic.bullet.align import align_signatures
from ballistic.bullet.crosscut import choose_crosscut
from ballistic.bullet.features import land_features
from ballistic.bullet.orient import orient_striae
from ballistic.bullet.sam import phase_test, sequence_average_maximum
from ballistic.bullet.signature import land_signature, land_signatures
from ballistic.io.x3p import read_x3p

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bullet"


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lands", type=int, default=6, help="lands per set (first ones of the labels)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bullet_speed.json"))
    a = ap.parse_args()
    if not (DATA / "labels.csv").exists():
        raise SystemExit(f"real data not found at {DATA}")
    scans = read_bullet_labels(DATA, DATA / "labels.csv")
    if (DATA / "houston" / "labels.csv").exists():
        scans += read_bullet_labels(DATA, DATA / "houston" / "labels.csv")
    by_set: dict[str, list] = {}
    for sc in scans:
        by_set.setdefault(sc["set"], []).append(sc)
    res: dict = {"cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(), "sets": {}}
    # JIT / cache warm-up
    s0 = read_x3p(scans[0]["path"])
    land_features(land_signatures(s0), land_signatures(s0))
    for st, items in sorted(by_set.items()):
        items = items[: a.lands]
        surfaces = [read_x3p(sc["path"]) for sc in items]
        t_read = _best_of(lambda: orient_striae(read_x3p(items[0]["path"])), a.repeat)
        oriented = orient_striae(surfaces[0])
        t_cc = _best_of(lambda: choose_crosscut(oriented, check_direction=False), a.repeat)
        t_sigs = _best_of(lambda: land_signatures(surfaces[0]), a.repeat)
        sigs = [land_signatures(s) for s in surfaces]
        one = land_signature(surfaces[0])
        t_align = _best_of(lambda: align_signatures(one, one, max_lag_um=250.0), a.repeat)
        pairs = list(combinations(range(len(sigs)), 2))
        t = time.perf_counter()
        for i, j in pairs:
            land_features(sigs[i], sigs[j])
        t_fast = (time.perf_counter() - t) / len(pairs)
        sub = pairs[: max(1, min(3, len(pairs)))]
        t = time.perf_counter()
        for i, j in sub:
            land_features(sigs[i], sigs[j], coarse_um=None)
        t_full = (time.perf_counter() - t) / len(sub)
        S = np.random.default_rng(0).normal(0.5, 0.1, size=(6, 6))
        t_sam = _best_of(lambda: sequence_average_maximum(S), a.repeat)
        t_phase = _best_of(lambda: phase_test(S), a.repeat)
        res["sets"][st] = {
            "lands": len(items), "crosscuts_per_land": sum(len(s) for s in sigs) / len(sigs),
            "read_orient_seconds": t_read, "choose_crosscut_seconds": t_cc,
            "land_signatures_seconds": t_sigs, "align_one_pair_seconds": t_align,
            "land_features_seconds": t_fast, "land_features_exhaustive_seconds": t_full,
            "coarse_to_fine_speedup": t_full / t_fast,
            "land_pairs_per_second": 1.0 / t_fast,
            "sam_6x6_seconds": t_sam, "phase_test_6x6_seconds": t_phase,
        }
    keys = list(next(iter(res["sets"].values())).keys())
    print(f"{'measure':<36}" + "".join(f"{st:>12}" for st in res["sets"]))
    for k in keys:
        row = [res["sets"][st][k] for st in res["sets"]]
        print(f"{k:<36}" + "".join(f"{v:>12.4f}" if isinstance(v, float) else f"{v:>12}" for v in row))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
