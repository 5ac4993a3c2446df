"""Labelled bullet benchmark behind ``ballistic bench bullet``: every land pair, every bullet pair.

Lands are reduced to signatures at many heights (:func:`ballistic.bullet.signature.land_signatures`),
every pair of lands within a set is compared (:func:`ballistic.bullet.features.land_features`),
every pair of bullets is scored by SAM (:mod:`ballistic.bullet.sam`), and the land descriptors
(:mod:`ballistic.bullet.descriptor`) are checked by the rank of each land's mate.
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ballistic.bullet.descriptor import BULLET_DESCRIPTOR_DIM, BULLET_DESCRIPTOR_VERSION, bullet_descriptor
from ballistic.bullet.features import LAND_SCORE_MODEL, land_features
from ballistic.bullet.profile import Signature
from ballistic.bullet.sam import BULLET_PHASE_ALPHA, BULLET_SAM_THRESHOLD, phase_test, sequence_average_maximum
from ballistic.bullet.signature import land_signatures
from ballistic.errors import BulletError
from ballistic.io.csv import write_rows_csv
from ballistic.io.x3p import read_x3p
from ballistic.viz.plots import bullet_bench_plots

__all__ = ["read_bullet_labels", "read_manual_grooves", "run_bullet_bench", "format_bullet_summary"]


_LAND_NUMBER = re.compile(r"(\d+)\s*$")


def read_bullet_labels(directory: str | Path, labels_csv: str | Path) -> list[dict]:
    """Read a bullet labels CSV.

    Required columns: ``path`` (relative to ``directory``, or a file name found in
    it) and ``same_source_group`` (equal = same land of the same barrel).
    Optional: ``land_id`` (name), ``barrel``, ``bullet``, ``land`` (e.g. ``L3``;
    its trailing number is the land's position around the bullet). The *set* of a
    scan is the first folder of its ``path`` (e.g. ``hamby252``): lands are only
    compared within a set.

    Returns
    -------
    list of dict
        Keys ``name``, ``path`` (Path), ``set``, ``group``, ``barrel``, ``bullet``,
        ``land`` (int or None).
    """
    directory = Path(directory)
    out = []
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        cols = set(rd.fieldnames or [])
        if not {"path", "same_source_group"} <= cols:
            raise BulletError(f"{labels_csv}: need columns 'path' and 'same_source_group', found {sorted(cols)}")
        for row in rd:
            rel = Path(row["path"])
            p = directory / rel
            if not p.exists():
                p = directory / rel.name
            if not p.exists():
                raise FileNotFoundError(f"{row['path']} listed in {labels_csv} is missing from {directory}")
            m = _LAND_NUMBER.search(row.get("land") or "")
            out.append({"name": row.get("land_id") or p.stem, "path": p,
                        "set": rel.parts[0] if len(rel.parts) > 1 else directory.name,
                        "group": row["same_source_group"].strip(), "barrel": (row.get("barrel") or "").strip(),
                        "bullet": (row.get("bullet") or "").strip(), "land": int(m.group(1)) if m else None})
    if len(out) < 2:
        raise BulletError(f"{labels_csv}: fewer than two scans")
    return out


def _auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    from ballistic.stats.metrics import roc_auc
    if y.all() or not y.any():
        return None
    return roc_auc(scores, y)


def _jsonable(o):
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (Path, np.ndarray)):
        return str(o) if isinstance(o, Path) else o.tolist()
    return str(o)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_manual_grooves(path: str | Path) -> dict[str, dict]:
    """Manually chosen groove positions (bulletAnalyzr's export: columns ``filename``,
    ``left_groove``, ``right_groove`` in um across the land, ``crosscut_y`` in um
    along it). Returns ``{file stem: {"left_um", "right_um", "crosscut_um"}}``.
    Used only to check :func:`locate_grooves`, never as its input."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        need = {"filename", "left_groove", "right_groove"}
        if not need <= set(rd.fieldnames or []):
            raise BulletError(f"{path}: need columns {sorted(need)}, found {rd.fieldnames}")
        for row in rd:
            cy = row.get("crosscut_y")
            out[Path(row["filename"]).stem] = {"left_um": float(row["left_groove"]),
                                               "right_um": float(row["right_groove"]),
                                               "crosscut_um": float(cy) if cy not in (None, "", "NA") else None}
    return out


def _land_report(sigs: list[Signature]) -> dict:
    """Per-land summary of :func:`land_signatures` output for the benchmark JSON."""
    m0 = sigs[0].meta
    flags: list[str] = []
    for sg in sigs:
        for f in sg.meta.get("flags", []):
            if f not in flags:
                flags.append(f)
    src: dict[str, int] = {}
    for sg in sigs:
        src[sg.meta.get("grooves_source", "?")] = src.get(sg.meta.get("grooves_source", "?"), 0) + 1
    stab = [float(sg.meta.get("crosscut_stability", np.nan)) for sg in sigs]
    return {"signatures": len(sigs), "striae_direction": m0.get("striae_direction"),
            "direction_source": m0.get("direction_source"),
            "direction_confidence": _clean(float(m0.get("direction_confidence", np.nan))),
            "striae_tilt": _clean(float(m0.get("striae_tilt", np.nan))),
            "low_confidence": any(sg.low_confidence for sg in sigs),
            "low_confidence_signatures": sum(sg.low_confidence for sg in sigs), "flags": flags,
            "quality_median": _clean(float(np.median([sg.quality for sg in sigs]))),
            "quality_max": _clean(float(np.max([sg.quality for sg in sigs]))),
            "best_crosscut_stability": _clean(float(np.nanmax(stab))) if np.isfinite(stab).any() else None,
            "land_grooves": m0.get("land_grooves"), "grooves_sources": src,
            "length_um_median": float(np.median([sg.length_um for sg in sigs]))}


def _groove_agreement(sigs: list[Signature], scan_shape: tuple[int, int], spacing_um: float, manual: dict) -> dict:
    """Our grooves at the crosscut nearest to the manual one against the manual grooves."""
    rotated = sigs[0].meta.get("striae_rotated_deg") == -90
    cy = manual.get("crosscut_um")
    if cy is None:
        k = len(sigs) // 2
        at = None
    else:
        # x3p rows run along y from row 0; the oriented scan's column j is original row ny - 1 - j
        at = (scan_shape[0] - 1) * spacing_um - cy if rotated else cy
        k = int(np.argmin([abs(float(sg.meta.get("crosscut_um", np.inf)) - at) for sg in sigs]))
    g = sigs[k].meta["grooves_um"]
    el, er = float(g[0]) - manual["left_um"], float(g[1]) - manual["right_um"]
    return {"manual_um": [manual["left_um"], manual["right_um"]], "ours_um": [float(g[0]), float(g[1])],
            "error_um": [el, er], "outward_um": [-el, er], "crosscut_um": float(sigs[k].meta.get("crosscut_um")),
            "manual_crosscut_um": at, "grooves_source": sigs[k].meta.get("grooves_source")}


def run_bullet_bench(directory: str | Path, labels_csv: str | Path, *, json_out: str | Path,
                     threshold: float = BULLET_SAM_THRESHOLD, alpha: float = BULLET_PHASE_ALPHA,
                     step_um: float = 50.0, grooves_csv: str | Path | None = None,
                     progress: bool = False) -> dict:
    """Labelled bullet benchmark: every land pair within each set, every bullet pair.

    Lands are reduced to signatures at many heights (:func:`land_signatures`,
    every ``step_um``), every pair of lands within a set is compared
    (:func:`land_features`; score = :func:`land_score`), and every pair of
    bullets within a set is scored by SAM over the land scores
    (:func:`sequence_average_maximum`) and by the :func:`phase_test`; a bullet
    pair is called same-barrel when its SAM reaches ``threshold`` (column
    ``identified``) and, separately, when the phase test's p-value is at most
    ``alpha`` (``identified_phase_test``). The land descriptors
    (:func:`bullet_descriptor`) are checked by the rank of each land's mate.

    Every land gets a report (``lands``: direction and its confidence, grooves,
    quality, low-confidence flags). With ``grooves_csv`` (manually chosen grooves,
    :func:`read_manual_grooves`) the grooves found are compared with them
    (``groove_agreement``); they are never used to find the grooves.

    Writes ``<json_out>`` (summary), ``<stem>.pairs.csv`` (per land pair),
    ``<stem>.bullets.csv`` (per bullet pair) and plots ``<stem>_hist.png``,
    ``<stem>_roc.png``, ``<stem>_bullets.png``; returns the summary.
    """
    t0 = time.perf_counter()
    scans = read_bullet_labels(directory, labels_csv)
    manual = read_manual_grooves(grooves_csv) if grooves_csv else {}
    sigs: dict[str, list[Signature]] = {}
    failed: dict[str, str] = {}
    lands_report: dict[str, dict] = {}
    agreement: dict[str, dict] = {}
    it = scans
    if progress:
        from tqdm import tqdm
        it = tqdm(scans, desc="lands", unit="land")
    for sc in it:
        try:
            surf = read_x3p(sc["path"])
            sigs[sc["name"]] = land_signatures(surf, step_um=step_um)
        except BulletError as exc:
            failed[sc["name"]] = f"{type(exc).__name__}: {exc}"
            continue
        lands_report[sc["name"]] = _land_report(sigs[sc["name"]])
        stem = Path(sc["path"]).stem
        if stem in manual:
            agreement[sc["name"]] = _groove_agreement(sigs[sc["name"]], surf.shape, surf.spacing_um, manual[stem])
    t_extract = time.perf_counter() - t0
    by_name = {sc["name"]: sc for sc in scans}
    rows: list[dict] = []
    t1 = time.perf_counter()
    sets = sorted({sc["set"] for sc in scans})
    pairs = [(a, b) for st in sets for a, b in combinations([sc for sc in scans if sc["set"] == st], 2)
             if a["name"] in sigs and b["name"] in sigs]
    it2 = pairs
    if progress:
        from tqdm import tqdm
        it2 = tqdm(pairs, desc="land pairs", unit="pair")
    for a, b in it2:
        f = land_features(sigs[a["name"]], sigs[b["name"]])
        row = {"set": a["set"], "land_a": a["name"], "land_b": b["name"],
               "bullet_a": f"{a['barrel']}-{a['bullet']}", "bullet_b": f"{b['barrel']}-{b['bullet']}",
               "same_source": a["group"] == b["group"]}
        row.update({k: _clean(v) for k, v in f.as_dict().items()})
        rows.append(row)
    t_compare = time.perf_counter() - t1
    if not rows:
        raise BulletError("run_bullet_bench: no land pair could be compared; check the labels and scans")

    summary: dict[str, Any] = {"sets": {}}
    feature_names = ["ccf", "cms_per_mm", "matches_per_mm", "mismatches_per_mm", "distance_um", "sum_peaks_per_mm"]
    for st in sets:
        rs = [r for r in rows if r["set"] == st]
        if not rs:
            continue
        s = np.array([r["score"] for r in rs])
        y = np.array([r["same_source"] for r in rs], dtype=bool)
        d: dict[str, Any] = {"lands": sum(1 for sc in scans if sc["set"] == st and sc["name"] in sigs),
                             "pairs": len(rs), "same_source_pairs": int(y.sum()),
                             "different_source_pairs": int((~y).sum()), "auc": _auc(s, y)}
        d["feature_auc"] = {k: _auc(np.array([r[k] for r in rs], dtype=float), y) for k in feature_names}
        if y.any() and (~y).any():
            km_min, knm_max = float(s[y].min()), float(s[~y].max())
            d.update(same_source_min=km_min, different_source_max=knm_max, margin=km_min - knm_max,
                     separated=bool(km_min > knm_max))
            d["failing_pairs"] = [
                {"land_a": r["land_a"], "land_b": r["land_b"], "same_source": r["same_source"], "score": r["score"]}
                for r in rs if (r["same_source"] and r["score"] <= knm_max)
                or (not r["same_source"] and r["score"] >= km_min)]
        d["same_source_scores"] = [{"land_a": r["land_a"], "land_b": r["land_b"], "score": r["score"],
                                    "lag_um": r["lag_um"], "cms": r["cms"]} for r in rs if r["same_source"]]
        summary["sets"][st] = d

    # bullet level
    score_of = {frozenset((r["land_a"], r["land_b"])): r["score"] for r in rows}
    bullets: list[dict] = []
    for st in sets:
        members = [sc for sc in scans if sc["set"] == st and sc["land"] is not None]
        n = max((sc["land"] for sc in members), default=0)
        keys = sorted({(sc["barrel"], sc["bullet"]) for sc in members})
        for ka, kb in combinations(keys, 2):
            la = {sc["land"]: sc["name"] for sc in members if (sc["barrel"], sc["bullet"]) == ka}
            lb = {sc["land"]: sc["name"] for sc in members if (sc["barrel"], sc["bullet"]) == kb}
            S = np.full((n, n), np.nan)
            for i in range(n):
                for j in range(n):
                    na, nb_ = la.get(i + 1), lb.get(j + 1)
                    if na and nb_ and frozenset((na, nb_)) in score_of:
                        S[i, j] = score_of[frozenset((na, nb_))]
            try:
                sam, phase, ph = sequence_average_maximum(S)
            except BulletError:
                continue
            pt = phase_test(S) if np.isfinite(ph).sum() >= 2 else None
            idx = [(i, (i + phase) % n) for i in range(n) if np.isfinite(S[i, (i + phase) % n])]
            p_val = pt.p_value if pt is not None else float("nan")
            bullets.append({"set": st, "bullet_a": "-".join(ka), "bullet_b": "-".join(kb),
                            "same_barrel": ka[0] == kb[0], "sam": sam, "phase": phase,
                            "lands_compared": len(idx), "identified": bool(sam >= threshold),
                            "phase_contrast": _clean(pt.contrast) if pt else None,
                            "phase_sigma": _clean(pt.sigma) if pt else None,
                            "phase_p_value": _clean(p_val),
                            "identified_phase_test": bool(np.isfinite(p_val) and p_val <= alpha),
                            "pairs": "; ".join(f"L{i + 1}~L{j + 1}:{S[i, j]:.3f}" for i, j in idx),
                            "phase_scores": [_clean(float(v)) for v in ph]})
    if bullets:
        sb = np.array([b["sam"] for b in bullets])
        yb = np.array([b["same_barrel"] for b in bullets], dtype=bool)
        # a pair without a phase test (a single land on one bullet) is not identified by it: p = 1 for the AUC
        pv = np.array([b["phase_p_value"] if b["phase_p_value"] is not None else np.nan for b in bullets])
        bs: dict[str, Any] = {"bullet_pairs": len(bullets), "same_barrel_pairs": int(yb.sum()),
                              "threshold": threshold, "alpha": alpha,
                              "errors": int(sum(b["identified"] != b["same_barrel"] for b in bullets)),
                              "errors_phase_test": int(sum(b["identified_phase_test"] != b["same_barrel"]
                                                           for b in bullets))}
        if yb.any() and (~yb).any():
            bs.update(same_barrel_min=float(sb[yb].min()), different_barrel_max=float(sb[~yb].max()),
                      separated=bool(sb[yb].min() > sb[~yb].max()),
                      same_barrel_p_max=_clean(float(np.nanmax(pv[yb]))) if np.isfinite(pv[yb]).any() else None,
                      different_barrel_p_min=(_clean(float(np.nanmin(pv[~yb]))) if np.isfinite(pv[~yb]).any()
                                              else None),
                      phase_test_not_computed=int((~np.isfinite(pv)).sum()),
                      auc_sam=_auc(sb, yb),
                      auc_phase_test=_auc(-np.log10(np.maximum(np.where(np.isfinite(pv), pv, 1.0), 1e-300)), yb))
        summary["bullet_summary"] = bs
    summary["bullets"] = bullets

    # land level for sets without land ground truth: the best-phase land pairs of same-barrel bullets
    # (the putative mates the phase test picked) against every other land pair, descriptive only
    for st in sets:
        d = summary["sets"].get(st)
        if d is None or d["same_source_pairs"]:
            continue
        members = {sc["name"]: sc for sc in scans if sc["set"] == st}
        best = set()
        for b in bullets:
            if b["set"] == st and b["same_barrel"]:
                for part in b["pairs"].split("; "):
                    la_, lb_ = part.split(":")[0].split("~")
                    na = next((nm for nm, sc in members.items() if f"{sc['barrel']}-{sc['bullet']}" == b["bullet_a"]
                               and sc["land"] == int(la_[1:])), None)
                    nb_ = next((nm for nm, sc in members.items() if f"{sc['barrel']}-{sc['bullet']}" == b["bullet_b"]
                                and sc["land"] == int(lb_[1:])), None)
                    best.add(frozenset((na, nb_)))
        rs = [r for r in rows if r["set"] == st]
        inb = np.array([r["score"] for r in rs if frozenset((r["land_a"], r["land_b"])) in best])
        other = np.array([r["score"] for r in rs if frozenset((r["land_a"], r["land_b"])) not in best])

        def q(v):
            return {k: _clean(float(np.quantile(v, x))) for k, x in (("min", 0), ("q10", .1), ("median", .5),
                                                                     ("q90", .9), ("max", 1))} if v.size else None
        d["land_scores_without_ground_truth"] = {
            "note": ("land correspondence unknown: 'best_phase_same_barrel' are the land pairs of the best phase of "
                     "each same-barrel bullet pair (putative mates chosen by the comparison itself), 'other' every "
                     "other land pair; descriptive, not a validation"),
            "best_phase_same_barrel": q(inb), "other": q(other), "n_best_phase_same_barrel": int(inb.size),
            "n_other": int(other.size)}

    # retrieval descriptor: rank of each land's nearest mate
    ranks = []
    for st in sets:
        names = [sc["name"] for sc in scans if sc["set"] == st and sc["name"] in sigs]
        if len(names) < 2:
            continue
        D = np.stack([bullet_descriptor(sigs[nm]) for nm in names])
        Ssim = D @ D.T
        np.fill_diagonal(Ssim, -np.inf)
        for i, nm in enumerate(names):
            mates = [j for j, o in enumerate(names) if j != i and by_name[o]["group"] == by_name[nm]["group"]]
            if mates:
                order = np.argsort(-Ssim[i], kind="stable")
                ranks.append(int(np.flatnonzero(np.isin(order, mates))[0]) + 1)
    summary["descriptor"] = {"version": BULLET_DESCRIPTOR_VERSION, "dim": BULLET_DESCRIPTOR_DIM,
                             "lands_with_mate": len(ranks), "mate_ranks": ranks,
                             "top1": float(np.mean(np.array(ranks) == 1)) if ranks else None}
    summary["lands"] = lands_report
    summary["lands_with_signature"] = len(sigs)
    summary["lands_low_confidence"] = sorted(nm for nm, r in lands_report.items() if r["low_confidence"])
    if agreement:
        err = np.array([e for a_ in agreement.values() for e in a_["error_um"]])
        outw = np.array([e for a_ in agreement.values() for e in a_["outward_um"]])
        summary["groove_agreement"] = {
            "source": str(grooves_csv), "lands": len(agreement),
            "median_abs_error_um": float(np.median(np.abs(err))), "max_abs_error_um": float(np.max(np.abs(err))),
            "median_outward_um": float(np.median(outw)),
            "note": ("error = ours - manual, um across the land at the crosscut nearest the manual one; outward > 0 "
                     "means our groove lies further out (more land kept) than the manual one"),
            "per_land": agreement}
    summary.update({"failed_lands": failed, "extract_seconds": t_extract, "compare_seconds": t_compare,
                    "land_pairs_per_second": len(rows) / max(t_compare, 1e-9), "step_um": step_um,
                    "land_score_model": LAND_SCORE_MODEL, "directory": str(directory)})
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    summary["pairs_csv"] = str(write_rows_csv(rows, json_out.with_suffix(".pairs.csv")))
    cols = ["set", "bullet_a", "bullet_b", "same_barrel", "sam", "phase", "lands_compared", "identified",
            "phase_contrast", "phase_sigma", "phase_p_value", "identified_phase_test", "pairs"]
    summary["bullets_csv"] = str(write_rows_csv(bullets, json_out.with_suffix(".bullets.csv"), columns=cols))
    summary["plots"] = bullet_bench_plots(rows, bullets, json_out.with_suffix(""))
    json_out.write_text(json.dumps(summary, indent=2, default=_jsonable))
    return summary


def format_bullet_summary(summary: dict) -> str:
    """A plain-text table of a :func:`run_bullet_bench` summary (one line per set and per bullet pair)."""
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)
    lines = [f"{'set':<10} {'lands':>5} {'pairs':>5} {'KM':>3} {'AUC':>6} {'KM min':>7} {'KNM max':>7} "
             f"{'margin':>7}  failing pairs"]
    for st, d in summary["sets"].items():
        fails = ", ".join(f"{p['land_a']}~{p['land_b']} ({p['score']:.3f})" for p in d.get("failing_pairs", []))
        lines.append(f"{st:<10} {d['lands']:>5} {d['pairs']:>5} {d['same_source_pairs']:>3} {f(d['auc']):>6} "
                     f"{f(d.get('same_source_min')):>7} {f(d.get('different_source_max')):>7} "
                     f"{f(d.get('margin'), '{:+.3f}'):>7}  {fails or 'none'}")
    lines.append("")
    lines.append(f"{'set':<10} {'bullet A':<8} {'bullet B':<8} {'same barrel':>11} {'SAM':>6} {'phase':>5} "
                 f"{'lands':>5} {'called':>6} {'contrast':>8} {'p (phase)':>9} {'called':>6}")
    for b in summary.get("bullets", []):
        lines.append(f"{b['set']:<10} {b['bullet_a']:<8} {b['bullet_b']:<8} {str(b['same_barrel']):>11} "
                     f"{b['sam']:>6.3f} {b['phase']:>5} {b['lands_compared']:>5} "
                     f"{'same' if b['identified'] else 'diff':>6} {f(b.get('phase_contrast')):>8} "
                     f"{f(b.get('phase_p_value'), '{:.2g}'):>9} "
                     f"{'same' if b.get('identified_phase_test') else 'diff':>6}")
    bs = summary.get("bullet_summary", {})
    if bs:
        lines.append(f"bullet pairs: {bs['bullet_pairs']}, errors at SAM >= {bs['threshold']}: {bs['errors']}, "
                     f"same-barrel min {f(bs.get('same_barrel_min'))}, different-barrel max "
                     f"{f(bs.get('different_barrel_max'))}")
        if "errors_phase_test" in bs:
            lines.append(f"phase test: errors at p <= {bs['alpha']}: {bs['errors_phase_test']}, same-barrel p max "
                         f"{f(bs.get('same_barrel_p_max'), '{:.2g}')}, different-barrel p min "
                         f"{f(bs.get('different_barrel_p_min'), '{:.2g}')}"
                         + (f" ({bs['phase_test_not_computed']} pair(s) without a test: a single land on one "
                            "bullet)" if bs.get("phase_test_not_computed") else ""))
    if "lands_with_signature" in summary:
        n_all = summary["lands_with_signature"] + len(summary.get("failed_lands", {}))
        low = summary.get("lands_low_confidence", [])
        lines.append(f"lands with a signature: {summary['lands_with_signature']} of {n_all}; low confidence: "
                     f"{len(low)}" + (f" ({', '.join(low)})" if low else ""))
    ga = summary.get("groove_agreement")
    if ga:
        lines.append(f"grooves vs {ga['lands']} manual lands: median |error| {ga['median_abs_error_um']:.0f} um, max "
                     f"{ga['max_abs_error_um']:.0f} um, median outward {ga['median_outward_um']:+.0f} um")
    de = summary.get("descriptor", {})
    if de.get("mate_ranks"):
        lines.append(f"descriptor {de['version']} ({de['dim']}-d): mate ranked first for "
                     f"{f(de['top1'], '{:.0%}')} of {de['lands_with_mate']} lands, ranks {de['mate_ranks']}")
    lines.append(f"extract {summary['extract_seconds']:.1f} s, compare {summary['compare_seconds']:.1f} s "
                 f"({summary['land_pairs_per_second']:.1f} land pairs/s)")
    return "\n".join(lines)
