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

from ballistic.cartridge.breech_face import preprocess_cartridge
from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION, compare_pair
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, prepare
from ballistic.cartridge.score.model import default_model
from ballistic.io.csv import write_rows_csv
from ballistic.io.x3p import read_x3p
from ballistic.preprocess.filters import crop_to_mask, rotate
from ballistic.stats.metrics import equal_error_rate, error_counts, roc_auc
from ballistic.viz.plots import cartridge_bench_plots

__all__ = ["LabelledScan", "read_labels", "prepare_scan", "load_scans", "load_scans_parallel", "compare_all_pairs",
           "run_cartridge_bench", "summarise", "measured_area_mm2", "time_vs_area", "run_end_to_end_bench",
           "format_end_to_end"]


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


def prepare_scan(path: str | Path, name: str, params: CMCParams, angle_deg: float = 0.0) -> PreparedSurface:
    """Read, preprocess (:func:`ballistic.cartridge.breech_face.preprocess_cartridge`), optionally rotate
    by ``angle_deg`` and prepare one scan for comparison."""
    s = preprocess_cartridge(read_x3p(path))
    if angle_deg:
        s = crop_to_mask(rotate(s, angle_deg))
    return prepare(s, params, name=name)


def load_scans(scans: list[LabelledScan], params: CMCParams, *, rotate_random: bool = False,
               seed: int = 0, workers: int = 1) -> tuple[list[PreparedSurface], list[float]]:
    """Read, preprocess and prepare each scan; optionally rotate each by a seeded random angle.

    ``workers`` > 1 preprocesses the scans in that many processes (the normalisation of a scan
    takes a few tenths of a second, as long as a comparison or two).
    """
    rng = np.random.default_rng(seed)
    angles = [float(rng.uniform(0.0, 360.0)) if rotate_random else 0.0 for _ in scans]
    prepared, _ = load_scans_parallel([sc.path for sc in scans], [sc.name for sc in scans], angles, params,
                                      workers=workers)
    return prepared, angles


def _prep_job(args):
    path, name, angle, params = args
    return prepare_scan(path, name, params, angle)


def load_scans_parallel(paths: list, names: list[str], angles: list[float], params: CMCParams, *,
                        workers: int = 1) -> tuple[list[PreparedSurface], float]:
    """:func:`prepare_scan` of every scan, on ``workers`` processes; returns them and the seconds taken."""
    t0 = time.perf_counter()
    jobs = [(p, n, a, params) for p, n, a in zip(paths, names, angles)]
    if workers <= 1 or len(jobs) < 2:
        out = [_prep_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as ex:
            out = list(ex.map(_prep_job, jobs))
    return out, time.perf_counter() - t0


_WORK: dict = {}


def _init(prepared, params, model="default", search="standard"):
    _WORK["prepared"] = prepared
    _WORK["params"] = params
    _WORK["model"] = model
    _WORK["search"] = search


def _one(ij):
    i, j = ij
    r = compare_pair(_WORK["prepared"][i], _WORK["prepared"][j], _WORK["params"], model=_WORK.get("model", "default"),
                     search=_WORK.get("search", "standard"))
    return i, j, r.summary()


def _prefetch(modules: tuple[str, ...]) -> None:
    """Import modules in a background thread (the parent idles while its workers compare).
    Call only after every worker has been forked: forking while another thread holds the
    import lock could leave a child stuck."""
    import importlib
    import threading

    def run():
        for m in modules:
            try:
                importlib.import_module(m)
            except ImportError:
                pass
    threading.Thread(target=run, daemon=True, name="prefetch-imports").start()


def compare_all_pairs(prepared: list[PreparedSurface], pairs: list[tuple[int, int]], params: CMCParams, *,
                      workers: int = 2, progress: bool = False, model="default",
                      prefetch: tuple[str, ...] = (), search: str = "standard") -> tuple[list[dict], float]:
    """:func:`compare_pair` summaries of ``pairs`` (in that order) on ``workers`` forked processes
    (``search`` as in :func:`compare_pair`).

    The numba kernels are compiled (or loaded from their cache) once in this process before
    the workers fork, so that no worker pays for it again. ``prefetch`` names modules the
    caller needs afterwards (lir, matplotlib): they are imported while the workers run.
    """
    mdl = default_model() if isinstance(model, str) and model == "default" else model
    if len(prepared) >= 2:
        compare_pair(prepared[0], prepared[1], params, model=None)      # JIT warm-up before fork
    t0 = time.perf_counter()
    out: dict = {}
    # grouped by target: the registration rotates and transforms the target, and a process keeps that for its
    # next pairs with the same target (register._stack_spectra); every pair's result is the same in any order
    order = sorted(pairs, key=lambda ij: (ij[1], ij[0]))
    if workers <= 1:
        _init(prepared, params, mdl, search)
        it = map(_one, order)
    else:
        ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_init,
                                 initargs=(prepared, params, mdl, search))
        it = ex.map(_one, order, chunksize=max(1, min(8, len(pairs) // (8 * workers) or 1)))
        if prefetch:          # map() has submitted everything: all workers are forked by now
            _prefetch(prefetch)
    try:
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(pairs), desc="pairs", unit="pair")
        for i, j, s in it:
            out[(i, j)] = s
    finally:
        if workers > 1:
            ex.shutdown()
    return [out[p] for p in pairs], time.perf_counter() - t0


def measured_area_mm2(prepared: PreparedSurface) -> float:
    """Measured area of a prepared surface (its valid points at the comparison spacing), mm^2."""
    return float(np.isfinite(prepared.fine).sum()) * prepared.spacing_um ** 2 / 1e6


def time_vs_area(seconds, area_mm2) -> dict:
    """Least-squares power law ``seconds ~ area^k`` (log-log fit) of per-pair times against the summed
    measured area of the two scans; k = 1 is linear."""
    t, a = np.asarray(seconds, dtype=float), np.asarray(area_mm2, dtype=float)
    ok = (t > 0) & (a > 0)
    if ok.sum() < 3 or np.ptp(np.log(a[ok])) == 0:
        return {"exponent": None, "pairs": int(ok.sum())}
    k, _ = np.polyfit(np.log(a[ok]), np.log(t[ok]), 1)
    q = np.quantile(a[ok], [0.25, 0.75])
    lo, hi = a[ok] <= q[0], a[ok] >= q[1]
    return {"exponent": float(k), "pairs": int(ok.sum()),
            "area_mm2_quartiles": [float(q[0]), float(q[1])],
            "seconds_per_pair_small_quarter": float(np.median(t[ok][lo])),
            "seconds_per_pair_large_quarter": float(np.median(t[ok][hi])),
            "note": "log(seconds per pair, one worker) fitted on log(sum of the two scans' measured areas); "
                    "1 = linear"}


def run_end_to_end_bench(data_root: str | Path, *, sets: tuple[str, ...] = ("fadul", "dfsc"), workers: int = 2,
                         json_out: str | Path, out_dir: str | Path = "out/e2e", log=print) -> dict:
    """:func:`run_cartridge_bench` on each labelled set under ``data_root/cartridge`` (random rotations,
    seed 0): end-to-end and comparison-only pairs/s, stage timings, and time per pair against the
    measured area over all pairs of all sets. Prints a table, writes ``json_out``."""
    res: dict = {"workers": workers, "load_average_at_start": list(os.getloadavg()), "sets": {}}
    t_all, area_all = [], []
    for name in sets:
        d = Path(data_root) / "cartridge" / name
        if not (d / "labels.csv").is_file():
            log(f"skip {name}: no labels at {d}")
            continue
        t0 = time.perf_counter()
        first = not res["sets"]
        s = run_cartridge_bench(d, d / "labels.csv", json_out=Path(out_dir) / f"{name}.json", rotate_random=True,
                                seed=0, workers=workers, progress=False)
        with open(s["pairs_csv"], newline="", encoding="utf-8") as fh:
            rows = [{k: r[k] for k in ("reference", "target")}
                    | {k: float(r[k]) for k in ("seconds", "reference_area_mm2", "target_area_mm2")}
                    for r in csv.DictReader(fh)]
        t = np.array([r["seconds"] for r in rows])
        ar = np.array([r["reference_area_mm2"] + r["target_area_mm2"] for r in rows])
        t_all.append(t)
        area_all.append(ar)
        areas = {r["reference"]: r["reference_area_mm2"] for r in rows} | {r["target"]: r["target_area_mm2"]
                                                                            for r in rows}
        res["sets"][name] = {
            "scans": len(areas), "pairs": s["pairs"], "auc_cmc": s["auc_cmc_count"], "errors_at_6": s["errors_at_6"],
            "pair_model": s.get("pair_model"), "pairs_per_second_end_to_end": s["pairs_per_second_end_to_end"],
            "pairs_per_second_compare_only": s["pairs_per_second"],
            "end_to_end_over_compare_only": s["pairs_per_second_end_to_end"] / s["pairs_per_second"],
            # the process age at the call counts interpreter start-up and imports only for the first set
            "stage_seconds": {**s["stage_seconds"], **({} if first else {"startup_before_call": None})},
            "preprocess_seconds_per_scan_per_worker": s["preprocess_seconds_per_scan_per_worker"],
            "mean_area_mm2": float(np.mean(list(areas.values()))),
            "compare_seconds_per_pair_one_worker_median": float(np.median(t)),
            "time_vs_area": time_vs_area(t, ar),
            "wall_seconds": time.perf_counter() - t0,
        }
    if t_all:
        res["time_vs_area"] = time_vs_area(np.concatenate(t_all), np.concatenate(area_all))
    res["load_average_at_end"] = list(os.getloadavg())
    log(format_end_to_end(res))
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(res, indent=1))
    log(f"wrote {json_out}")
    return res


def format_end_to_end(res: dict) -> str:
    """The table of :func:`run_end_to_end_bench`."""
    lines = [f"{'set':<8}{'scans':>6}{'pairs':>7}{'area mm2':>9}{'e2e p/s':>9}{'cmp p/s':>9}{'e2e/cmp':>8}"
             f"{'s/pair 1w':>10}{'preproc s/scan':>15}"]
    for name, r in res["sets"].items():
        lines.append(f"{name:<8}{r['scans']:>6}{r['pairs']:>7}{r['mean_area_mm2']:>9.2f}"
                     f"{r['pairs_per_second_end_to_end']:>9.2f}{r['pairs_per_second_compare_only']:>9.2f}"
                     f"{r['end_to_end_over_compare_only']:>8.2f}{r['compare_seconds_per_pair_one_worker_median']:>10.3f}"
                     f"{r['preprocess_seconds_per_scan_per_worker']:>15.3f}")
        lines.append("        stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stage_seconds"].items()
                                                       if v is not None))
    k = (res.get("time_vs_area") or {}).get("exponent")
    if k is not None:
        lines.append(f"time per pair ~ area^{k:.2f}")
    return "\n".join(lines)


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


def _process_age_seconds() -> float | None:
    """Seconds since this process started (Linux /proc), to count interpreter and import time."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _model_block(rows: list[dict]) -> dict:
    """Accuracy of the shipped pair model's score on the rows (score > 0 = identification)."""
    sc = [r.get("model_score") for r in rows]
    if any(v is None for v in sc):
        return {"available": False}
    s = np.array(sc, dtype=float)
    y = np.array([r["same_source"] for r in rows], dtype=bool)
    ec = error_counts(s, y, 0.0)
    out = {"available": True, "model": rows[0].get("model", ""), "auc": roc_auc(s, y), "eer": equal_error_rate(s, y),
           "false_positives_at_0": ec["false_positives"], "false_negatives_at_0": ec["false_negatives"],
           "errors_at_0": ec["errors"],
           "note": "the shipped model was fitted on the labelled sets in ../shared/data (Fadul, DFSC, Baldwin); on "
                   "those sets these figures are in-sample - the cross-validated ones are in "
                   "benchmarks/results/generalization.json"}
    lr = [r.get("model_log10_lr") for r in rows]
    if all(v is not None for v in lr):
        v = np.array(lr, dtype=float)
        out.update(same_source_lr_gt_1=float((v[y] > 0).mean()), different_source_lr_lt_1=float((v[~y] < 0).mean()))
    return out


def run_cartridge_bench(directory: str | Path, labels_csv: str | Path, *, json_out: str | Path,
                        reference_csv: str | Path | None = None, rotate_random: bool = False, seed: int = 0,
                        workers: int | None = None, limit: int | None = None, params: CMCParams | None = None,
                        progress: bool = True) -> dict:
    """Compare all pairs of a labelled folder; write CSV, JSON and plots; return the summary.

    End to end: scans are read and preprocessed on the worker processes, the comparison
    kernels are compiled once before the comparison workers fork, and every stage is timed
    (``stage_seconds``); ``pairs_per_second_end_to_end`` counts everything from the call to
    the written JSON, ``pairs_per_second`` the comparisons alone.
    """
    t_start = time.perf_counter()
    age0 = _process_age_seconds()
    p = params or CMCParams()
    scans = read_labels(directory, labels_csv)
    if limit:
        scans = scans[:limit]
    workers = workers or min(len(os.sched_getaffinity(0)), 8)
    t0 = time.perf_counter()
    prepared, angles = load_scans(scans, p, rotate_random=rotate_random, seed=seed, workers=workers)
    t_prep = time.perf_counter() - t0
    pairs = list(combinations(range(len(scans)), 2))
    t1 = time.perf_counter()
    results, t_cmp = compare_all_pairs(prepared, pairs, p, workers=workers, progress=progress,
                                       prefetch=("lir.algorithms.logistic_regression",
                                                 "lir.algorithms.invariance_bounds", "lir.metrics",
                                                 "matplotlib.pyplot", "scipy.stats"))
    t_warm = time.perf_counter() - t1 - t_cmp
    rows: list[dict] = []
    for (i, j), s in zip(pairs, results):
        s["same_source"] = scans[i].source == scans[j].source
        s["reference_rotation_deg"] = round(angles[i], 3)
        s["reference_area_mm2"] = round(measured_area_mm2(prepared[i]), 4)
        s["target_area_mm2"] = round(measured_area_mm2(prepared[j]), 4)
        s["target_rotation_deg"] = round(angles[j], 3)
        rows.append(s)
    t2 = time.perf_counter()
    ref = read_reference_counts(reference_csv) if reference_csv else None
    summary = summarise(rows, reference_counts=ref, threshold=p.decision_threshold)
    summary["pair_model"] = _model_block(rows)
    try:
        from ballistic.stats.calibrate import calibration_report
        src = {sc.name: sc.source for sc in scans}
        summary["likelihood_ratio"] = calibration_report(
            [r["similarity"] for r in rows], [r["same_source"] for r in rows],
            [src[r["reference"]] for r in rows], [src[r["target"]] for r in rows])
        summary["likelihood_ratio"]["method"] = ("logistic on similarity + invariance bounds (lir), "
                                                 "leave-one-firearm-out cross-validation")
    except ValueError as e:   # too few firearms for leave-one-out: say so instead of guessing
        summary["likelihood_ratio"] = {"error": str(e)}
    t_report = time.perf_counter() - t2
    t3 = time.perf_counter()
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    summary["pairs_csv"] = str(write_rows_csv(rows, json_out.with_suffix(".pairs.csv")))
    summary["plots"] = cartridge_bench_plots(rows, json_out.with_suffix(""))
    t_write = time.perf_counter() - t3
    total = time.perf_counter() - t_start
    summary.update({"pairs_per_second": len(rows) / t_cmp, "compare_seconds": t_cmp,
                    "preprocess_seconds": t_prep, "pairs_per_second_end_to_end": len(rows) / total,
                    "end_to_end_seconds": total,
                    "stage_seconds": {"startup_before_call": age0, "load_and_preprocess": t_prep,
                                      "jit_warmup": t_warm, "compare": t_cmp, "report_and_calibration": t_report,
                                      "write_csv_and_plots": t_write},
                    "preprocess_seconds_per_scan_per_worker": t_prep * min(workers, len(scans)) / max(1, len(scans)),
                    "workers": workers, "rotate_random": rotate_random,
                    "seed": seed, "algorithm": ALGORITHM_VERSION, "params": p.as_dict(),
                    "directory": str(directory)})
    json_out.write_text(json.dumps(summary, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o)))
    return summary
