"""End-to-end speed of ``ballistic bench cartridge`` per set, stage by stage, and how time grows with area.

Runs the labelled all-pairs bench (load, preprocess, compare, score, report; ``--workers`` processes)
on every labelled cartridge set found under ``--data`` (Fadul, DFSC), prints a table and writes
``benchmarks/results/cartridge_end_to_end.json``. The per-pair CSVs and plots go to ``out/e2e/``.

Timings on a shared machine are noisy: besides pairs/s the table gives the ratio of end-to-end
to comparison-only throughput (the overhead share) and the time per pair against the measured
area of the two scans (a least-squares power law t ~ area^k over all pairs of all sets).

    python benchmarks/bench_cartridge_e2e.py [--data ../shared/data] [--workers 2] [--sets fadul,dfsc]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _areas(directory: Path, names: list[str]) -> dict[str, float]:
    """Measured area (mm^2) of each scan after preprocessing."""
    from ballistic.io.x3p import read_x3p
    from ballistic.cartridge.breech_face import preprocess_cartridge
    out = {}
    for n in names:
        s = preprocess_cartridge(read_x3p(directory / f"{n}.x3p"))
        out[n] = float(s.mask.sum()) * s.spacing_um ** 2 / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sets", default="fadul,dfsc")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cartridge_end_to_end.json")
    a = ap.parse_args()
    from ballistic.bench.cartridge import run_cartridge_bench

    res: dict = {"workers": a.workers, "sets": {}}
    t_all, area_all = [], []
    for name in [s for s in a.sets.split(",") if s]:
        d = a.data / "cartridge" / name
        if not (d / "labels.csv").is_file():
            print(f"skip {name}: no labels at {d}")
            continue
        t0 = time.perf_counter()
        first = not res["sets"]
        s = run_cartridge_bench(d, d / "labels.csv", json_out=ROOT / "out" / "e2e" / f"{name}.json", rotate_random=True,
                                seed=0, workers=a.workers, progress=False)
        rows = list(csv.DictReader(open(s["pairs_csv"])))
        names = sorted({r["reference"] for r in rows} | {r["target"] for r in rows})
        area = _areas(d, names)
        t = np.array([float(r["seconds"]) for r in rows])
        ar = np.array([area[r["reference"]] + area[r["target"]] for r in rows])
        t_all.append(t)
        area_all.append(ar)
        res["sets"][name] = {
            "scans": len(names), "pairs": s["pairs"], "auc_cmc": s["auc_cmc_count"], "errors_at_6": s["errors_at_6"],
            "pair_model": s.get("pair_model"), "pairs_per_second_end_to_end": s["pairs_per_second_end_to_end"],
            "pairs_per_second_compare_only": s["pairs_per_second"],
            "end_to_end_over_compare_only": s["pairs_per_second_end_to_end"] / s["pairs_per_second"],
            # the process age at the call counts interpreter start-up and imports only for the first set
            "stage_seconds": {**s["stage_seconds"], **({} if first else {"startup_before_call": None})},
            "preprocess_seconds_per_scan_per_worker":
                s["preprocess_seconds_per_scan_per_worker"],
            "mean_area_mm2": float(np.mean(list(area.values()))),
            "compare_seconds_per_pair_one_worker_median": float(np.median(t)),
            "wall_seconds": time.perf_counter() - t0,
        }
    if t_all:
        t, ar = np.concatenate(t_all), np.concatenate(area_all)
        k, c = np.polyfit(np.log(ar), np.log(t), 1)
        res["time_vs_area"] = {"exponent": float(k), "pairs": int(t.size),
                               "note": "least-squares fit of log(seconds per pair, one worker) on log(sum of the two "
                                       "scans' measured areas) over every pair of every set; 1 = linear"}
    print(f"{'set':<8}{'scans':>6}{'pairs':>7}{'area mm2':>9}{'e2e p/s':>9}{'cmp p/s':>9}{'e2e/cmp':>8}"
          f"{'s/pair 1w':>10}{'preproc s/scan':>15}")
    for name, r in res["sets"].items():
        print(f"{name:<8}{r['scans']:>6}{r['pairs']:>7}{r['mean_area_mm2']:>9.2f}{r['pairs_per_second_end_to_end']:>9.2f}"
              f"{r['pairs_per_second_compare_only']:>9.2f}{r['end_to_end_over_compare_only']:>8.2f}"
              f"{r['compare_seconds_per_pair_one_worker_median']:>10.3f}{r['preprocess_seconds_per_scan_per_worker']:>15.3f}")
        print("        stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items() if v is not None))
    if "time_vs_area" in res:
        print(f"time per pair ~ area^{res['time_vs_area']['exponent']:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
