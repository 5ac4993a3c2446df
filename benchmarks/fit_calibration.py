"""Fit the service's default breech-face likelihood-ratio calibration on the real Fadul bench.

Runs the Fadul all-pairs bench (``ballistic.bench.cartridge.run_cartridge_bench``: 40 scans, 10 Ruger P95
slides, 63 same-source / 717 different-source pairs, random rotations so that orientation cannot
help) - or reuses its per-pair CSV (``--pairs-csv out/fadul_rot.pairs.csv``) - and fits a
``ScoreLRCalibrator`` on the pair similarity (CMC count + mean congruent-cell correlation, exactly the
``similarity`` the service stores). Writes ``api/calibration/breech_face_fadul.json``:

* the calibrator (intercept, slope, invariance bounds, 200 bootstrap coefficient pairs);
* the reference population: what it is, how many pairs, algorithm version and CMC parameters;
* its leave-one-firearm-out performance (``calibration_report``: Cllr, Cllr_min, misleading LRs);
* the review-depth statistics (``api.lr.depth_statistics``): per recall target the same-source
  score threshold and how many different-source pairs reach it.

No scan data and no per-pair scores are written, only coefficients, bounds and counts.

    python benchmarks/fit_calibration.py [--data ../shared/data] [--pairs-csv out/fadul_rot.pairs.csv]
                                         [--out api/calibration/breech_face_fadul.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _read_pairs(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--pairs-csv", type=Path, default=None,
                    help="reuse the per-pair CSV of an earlier Fadul bench run instead of running it")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bench-json", type=Path, default=ROOT / "out" / "fadul_calibration_bench.json")
    ap.add_argument("--out", type=Path, default=ROOT / "api" / "calibration" / "breech_face_fadul.json")
    a = ap.parse_args()

    from ballistic import __version__
    from ballistic.bench.cartridge import read_labels, run_cartridge_bench
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.stats.calibrate import ScoreLRCalibrator, calibration_report

    from api.lr import CALIBRATION_FORMAT, depth_statistics

    fadul = a.data / "cartridge" / "fadul"
    labels = fadul / "labels.csv"
    if not labels.is_file():
        print(f"real data not found at {fadul}", file=sys.stderr)
        return 2
    scans = read_labels(fadul, labels)
    source = {s.name: s.source for s in scans}
    t0 = time.perf_counter()
    if a.pairs_csv is None:
        summary = run_cartridge_bench(fadul, labels, json_out=a.bench_json, rotate_random=True, seed=0,
                                      workers=a.workers, progress=True)
        pairs_csv = Path(summary["pairs_csv"])
        rotate = True
    else:
        pairs_csv = a.pairs_csv
        rotate = None
    rows = _read_pairs(pairs_csv)
    algos = {r.get("algorithm") for r in rows}
    if algos != {ALGORITHM_VERSION}:
        print(f"{pairs_csv} was computed with {sorted(algos)}, this code is {ALGORITHM_VERSION}: run the bench "
              "again (omit --pairs-csv)", file=sys.stderr)
        return 1
    if rotate is None:
        rotate = any(float(r.get("reference_rotation_deg") or 0) != 0 for r in rows)
    scores = [float(r["similarity"]) for r in rows]
    same = [r["same_source"] in ("True", "true", "1") for r in rows]
    sa = [source[r["reference"]] for r in rows]
    sb = [source[r["target"]] for r in rows]
    desc = (f"Fadul et al. 2011: {len(scans)} processed NanoFocus breech-face scans (6.25 um, cmcR-style "
            f"processing) of cartridges fired from {len(set(source.values()))} consecutively manufactured Ruger P95 "
            f"slides (9 mm Luger); all {len(rows)} pairs, {sum(same)} same-source / {len(rows) - sum(same)} "
            f"different-source; score = PairResult.similarity of {ALGORITHM_VERSION}"
            f"{', scans rotated at random (seed 0)' if rotate else ''}")
    cal = ScoreLRCalibrator.fit(scores, same, population=desc, n_bootstrap=200, seed=0)
    report = calibration_report(scores, same, sa, sb)
    report["method"] = "logistic on similarity + invariance bounds (lir), leave-one-firearm-out cross-validation"
    import lir

    out = {
        "format": CALIBRATION_FORMAT,
        "region": "breech_face",
        "score": "similarity (PairResult.similarity: CMC count + mean correlation of the congruent cells)",
        "algorithm_version": ALGORITHM_VERSION,
        "cmc_params": CMCParams().as_dict(),
        "population": {"description": desc, "data_set": "Fadul et al. 2011 (NIST NBTRD; CSAFE-ISU/cartridgeCaseScans)",
                       "scans": len(scans), "firearms": len(set(source.values())),
                       "firearm_model": "Ruger P95 (9 mm Luger), 10 consecutively manufactured slides",
                       "pairs": len(rows), "same_source_pairs": int(sum(same)),
                       "different_source_pairs": int(len(rows) - sum(same)), "rotate_random": bool(rotate),
                       "source_csv": pairs_csv.name},
        "calibrator": cal.to_dict(),
        "performance": report,
        "review_depth": depth_statistics(scores, same),
        "fitted_with": {"ballistic": __version__, "lir": getattr(lir, "__version__", "?"),
                        "script": "benchmarks/fit_calibration.py"},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    tmp.replace(a.out)
    print(json.dumps({"out": str(a.out), "seconds": round(time.perf_counter() - t0, 1), "cllr": report["cllr"],
                      "cllr_min": report["cllr_min"], "log10_lr_bounds": [cal.log10_lower, cal.log10_upper],
                      "review_depth": out["review_depth"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
