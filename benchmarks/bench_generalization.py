"""Generalisation benchmark: pair model and CMC rule, trained on some cartridge sets and tested on others.

    python benchmarks/bench_generalization.py [--data ../shared/data] [--workers 2] [--fit]
    python benchmarks/bench_generalization.py --seeds 0-9 --json benchmarks/results/generalization_draws.json

The same as ``ballistic bench generalization`` (see :mod:`ballistic.bench.generalization`):
per-pair comparisons are cached under ``out/generalization/`` (recomputed when the code's
versions, parameters or the scans change), a table is printed and the JSON goes to
``benchmarks/results/generalization.json``. ``--fit`` also writes the shipped model
``ballistic/cartridge/score/data/pair_model.json``. ``--seeds`` runs several rotation draws and reports each
protocol's mean and range over them (and every pair some draw got wrong, with how often).
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "generalization.json")
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "generalization")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", action="store_true", help="also fit and write the shipped pair model")
    ap.add_argument("--model-out", type=Path, default=None)
    ap.add_argument("--search", choices=("standard", "thorough"), default="standard",
                    help="registration of every pair (thorough: the whole circle at the coarse spacing, ~8x slower)")
    ap.add_argument("--seeds", default=None, help="several rotation draws, e.g. 0-9 (instead of --seed)")
    a = ap.parse_args()
    from ballistic.bench.draws import parse_seeds
    from ballistic.bench.generalization import run_generalization_bench, run_generalization_draws
    if a.seeds is not None:
        if a.fit:
            ap.error("--fit fits the shipped model on one draw (--seed); drop --seeds")
        run_generalization_draws(a.data, seeds=parse_seeds(a.seeds), json_out=a.json, cache_dir=a.cache,
                                 workers=a.workers, search=a.search)
        return
    run_generalization_bench(a.data, json_out=a.json, cache_dir=a.cache, workers=a.workers, seed=a.seed, fit=a.fit,
                             model_out=a.model_out, search=a.search)


if __name__ == "__main__":
    main()
