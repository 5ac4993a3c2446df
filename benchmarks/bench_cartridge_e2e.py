"""End-to-end speed of ``ballistic bench cartridge`` per set, stage by stage, and how time grows with area.

Runs the labelled all-pairs bench (load, preprocess, compare, score, report; ``--workers`` processes)
on every labelled cartridge set found under ``--data`` (Fadul, DFSC) with
:func:`ballistic.bench.cartridge.run_end_to_end_bench`, prints a table and writes
``benchmarks/results/cartridge_end_to_end.json``. The per-pair CSVs and plots go to ``out/e2e/``.

Timings on a shared machine are noisy: besides pairs/s the table gives the ratio of end-to-end
to comparison-only throughput (the overhead share), the load average, and the time per pair against
the measured area of the two scans (a least-squares power law t ~ area^k over all pairs of all sets).

    python benchmarks/bench_cartridge_e2e.py [--data ../shared/data] [--workers 2] [--sets fadul,dfsc]
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sets", default="fadul,dfsc")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cartridge_end_to_end.json")
    a = ap.parse_args()
    from ballistic.bench.cartridge import run_end_to_end_bench
    run_end_to_end_bench(a.data, sets=tuple(s for s in a.sets.split(",") if s), workers=a.workers,
                         json_out=a.out, out_dir=ROOT / "out" / "e2e")


if __name__ == "__main__":
    main()
