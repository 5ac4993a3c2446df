"""Benchmarks on labelled reference sets: every pair compared, accuracy and speed reported.

``ballistic bench cartridge DIR --labels CSV --json OUT`` calls
:func:`run_cartridge_bench`. Results: a per-pair CSV, a JSON summary and two
plots (score histogram by ground truth, ROC) written next to the JSON.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from ballistic.compare import CMCParams, PreparedSurface, prepare
from ballistic.correlate import ALGORITHM_VERSION, compare_pair
from ballistic.io import read_x3p
from ballistic.metrics import equal_error_rate, error_counts, roc_auc, roc_curve
from ballistic.preprocess import crop_to_mask, preprocess_cartridge, rotate

__all__ = ["LabelledScan", "read_labels", "load_scans", "run_cartridge_bench", "summarise", "write_rows_csv"]


@dataclass(frozen=True)
class LabelledScan:
    name: str
    path: Path
    source: str          # firearm / slide identifier: equal = same source


def read_labels(directory: str | Path, labels_csv: str | Path) -> list[LabelledScan]:
    """Read a labels CSV (columns ``path`` or ``scan``, and ``slide`` / ``firearm`` / ``source``).

    ``path`` may be relative to the data root (as in ``../shared/data``); the file
    is looked up by its name inside ``directory``.
    """
    directory = Path(directory)
    out = []
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        cols = set(rd.fieldnames or [])
        src_col = next((c for c in ("slide", "source", "firearm", "barrel") if c in cols), None)
        if src_col is None or not ({"path", "scan"} & cols):
            raise ValueError(f"{labels_csv}: need a 'path' or 'scan' column and a 'slide'/'source' column; "
                             f"found {sorted(cols)}")
        for row in rd:
            fname = Path(row["path"]).name if row.get("path") else f"{row['scan']}.x3p"
            p = directory / fname
            if not p.exists():
                raise FileNotFoundError(f"{p} listed in {labels_csv} is missing from {directory}")
            out.append(LabelledScan(row.get("scan") or p.stem, p, str(row[src_col])))
    if len(out) < 2:
        raise ValueError(f"{labels_csv}: fewer than two scans")
    return out


def load_scans(scans: list[LabelledScan], params: CMCParams, *, rotate_random: bool = False,
               seed: int = 0) -> tuple[list[PreparedSurface], list[float]]:
    """Read, preprocess and prepare each scan; optionally rotate each by a seeded random angle."""
    rng = np.random.default_rng(seed)
    prepared, angles = [], []
    for sc in scans:
        s = preprocess_cartridge(read_x3p(sc.path))
        ang = float(rng.uniform(0.0, 360.0)) if rotate_random else 0.0
        if ang:
            s = crop_to_mask(rotate(s, ang))
        prepared.append(prepare(s, params, name=sc.name))
        angles.append(ang)
    return prepared, angles


_WORK: dict = {}


def _init(prepared, params):
    _WORK["prepared"] = prepared
    _WORK["params"] = params


def _one(ij):
    i, j = ij
    r = compare_pair(_WORK["prepared"][i], _WORK["prepared"][j], _WORK["params"])
    return i, j, r.summary()


def write_rows_csv(rows: list[dict], path: str | Path) -> Path:
    """Write per-pair rows (dicts with the same keys) as CSV through the formula-safe writer
    (:func:`ballistic.csvsafe.write_csv`: scan names cannot run as spreadsheet formulas); returns the path."""
    from ballistic.csvsafe import write_csv

    return write_csv(path, rows, list(rows[0].keys()))


def summarise(rows: list[dict], *, reference_counts: dict | None = None, threshold: int = 6) -> dict:
    """Accuracy summary of per-pair rows (keys ``same_source``, ``cmc_count``, ``similarity``)."""
    y = np.array([r["same_source"] for r in rows], dtype=bool)
    sim = np.array([r["similarity"] for r in rows], dtype=float)
    cmc = np.array([r["cmc_count"] for r in rows], dtype=float)
    out = {
        "pairs": len(rows), "same_source_pairs": int(y.sum()), "different_source_pairs": int((~y).sum()),
        "auc": roc_auc(sim, y), "auc_cmc_count": roc_auc(cmc, y), "eer": equal_error_rate(sim, y),
    }
    ec = error_counts(cmc, y, threshold)
    out.update({"errors_at_6": ec["errors"], "false_positives_at_6": ec["false_positives"],
                "false_negatives_at_6": ec["false_negatives"],
                "km_cmc_min": int(cmc[y].min()), "km_cmc_median": float(np.median(cmc[y])),
                "km_cmc_max": int(cmc[y].max()), "knm_cmc_max": int(cmc[~y].max()),
                "knm_cmc_zero_fraction": float((cmc[~y] == 0).mean())})
    if reference_counts:
        from scipy.stats import spearmanr
        ours, theirs = [], []
        ours_km, theirs_km = [], []
        for r in rows:
            key = frozenset((r["reference"], r["target"]))
            if key in reference_counts:
                ours.append(r["cmc_count"])
                theirs.append(reference_counts[key])
                if r["same_source"]:
                    ours_km.append(r["cmc_count"])
                    theirs_km.append(reference_counts[key])
        out["reference_pairs_matched"] = len(ours)
        out["spearman_vs_reference"] = float(spearmanr(ours, theirs).statistic) if len(ours) > 2 else None
        out["spearman_vs_reference_same_source"] = (float(spearmanr(ours_km, theirs_km).statistic)
                                                    if len(ours_km) > 2 else None)
    return out


def read_reference_counts(path: str | Path) -> dict:
    """NIST-style per-pair CMC counts: columns Reference, Compare, '# CMCs'."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            out[frozenset((row["Reference"].strip(), row["Compare"].strip()))] = float(row["# CMCs"])
    return out


def _plots(rows: list[dict], out_prefix: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    y = np.array([r["same_source"] for r in rows], dtype=bool)
    cmc = np.array([r["cmc_count"] for r in rows], dtype=float)
    sim = np.array([r["similarity"] for r in rows], dtype=float)
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(-0.5, max(cmc.max(), 6) + 1.5)
    ax.hist(cmc[~y], bins=bins, alpha=0.7, label=f"different source (n={int((~y).sum())})", color="tab:blue")
    ax.hist(cmc[y], bins=bins, alpha=0.7, label=f"same source (n={int(y.sum())})", color="tab:red")
    ax.axvline(5.5, color="k", ls="--", lw=1, label="C >= 6")
    ax.set_xlabel("CMC count")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    f = out_prefix.with_name(out_prefix.name + "_hist.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    fpr, tpr, _ = roc_curve(sim, y)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, AUC = {roc_auc(sim, y):.4f}")
    fig.tight_layout()
    f = out_prefix.with_name(out_prefix.name + "_roc.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    return files


def run_cartridge_bench(directory: str | Path, labels_csv: str | Path, *, json_out: str | Path,
                        reference_csv: str | Path | None = None, rotate_random: bool = False, seed: int = 0,
                        workers: int | None = None, limit: int | None = None, params: CMCParams | None = None,
                        progress: bool = True) -> dict:
    """Compare all pairs of a labelled folder; write CSV, JSON and plots; return the summary."""
    p = params or CMCParams()
    scans = read_labels(directory, labels_csv)
    if limit:
        scans = scans[:limit]
    t0 = time.perf_counter()
    prepared, angles = load_scans(scans, p, rotate_random=rotate_random, seed=seed)
    t_prep = time.perf_counter() - t0
    pairs = list(combinations(range(len(scans)), 2))
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    rows: list[dict] = []
    t1 = time.perf_counter()
    ctx = mp.get_context("fork")
    it = None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(prepared, p)) as ex:
        it = ex.map(_one, pairs, chunksize=4)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(pairs), desc="pairs", unit="pair")
        for i, j, s in it:
            s["same_source"] = scans[i].source == scans[j].source
            s["reference_rotation_deg"] = round(angles[i], 3)
            s["target_rotation_deg"] = round(angles[j], 3)
            rows.append(s)
    t_cmp = time.perf_counter() - t1
    ref = read_reference_counts(reference_csv) if reference_csv else None
    summary = summarise(rows, reference_counts=ref, threshold=p.decision_threshold)
    try:
        from ballistic.calibrate import calibration_report
        src = {sc.name: sc.source for sc in scans}
        summary["likelihood_ratio"] = calibration_report(
            [r["similarity"] for r in rows], [r["same_source"] for r in rows],
            [src[r["reference"]] for r in rows], [src[r["target"]] for r in rows])
        summary["likelihood_ratio"]["method"] = ("logistic on similarity + invariance bounds (lir), "
                                                 "leave-one-firearm-out cross-validation")
    except ValueError as e:   # too few firearms for leave-one-out: say so instead of guessing
        summary["likelihood_ratio"] = {"error": str(e)}
    summary.update({"pairs_per_second": len(rows) / t_cmp, "compare_seconds": t_cmp,
                    "preprocess_seconds": t_prep, "workers": workers, "rotate_random": rotate_random,
                    "seed": seed, "algorithm": ALGORITHM_VERSION, "params": p.as_dict(),
                    "directory": str(directory)})
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    summary["pairs_csv"] = str(write_rows_csv(rows, json_out.with_suffix(".pairs.csv")))
    summary["plots"] = _plots(rows, json_out.with_suffix(""))
    json_out.write_text(json.dumps(summary, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    return summary
