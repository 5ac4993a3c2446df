"""Evaluation of breech-face embeddings on real scans, cross-validated by firearm.

Folds (:func:`firearm_folds`): fold ``k`` holds out Fadul slide ``k + 1`` and, for the first folds,
one DFSC gun (every file of a held-out firearm, in every study, leaves the training set). A fold's
model is only ever queried with scans of its held-out firearms:

* Fadul (leave-one-slide-out): each scan of the held-out slide queries the other 39 Fadul scans;
  recall@k of its mates (the other scans of its slide), averaged over all 40 queries of the 10 folds;
* DFSC (leave-one-gun-out): each scan of the held-out gun queries the other 16 DFSC scans.

Queries and gallery are the preprocessed scans at their own spacing, each rotated by a seeded random
angle (full circle), exactly as ``ballistic bench retrieval`` loads them
(:func:`ballistic.bench.retrieval.load_rotated_scans`, same seed = same angles).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ballistic.preprocess.filters import crop_to_mask, rotate
from ballistic.surface import Surface
from models.breech_face.data import RealScan

__all__ = ["firearm_folds", "study_folds", "rotated_studies", "rotated_copies", "ranking_metrics", "fold_metrics",
           "summarise_folds", "projected_recall", "compare_checkpoints"]

_DFSC_GUNS = ("A", "B", "C", "D", "G", "J")


def firearm_folds(real: Sequence[RealScan]) -> list[tuple[str, ...]]:
    """Held-out firearms per fold: ``("fadul:1", "dfsc:A")``, ..., ``("fadul:10",)``."""
    fadul = sorted({s.firearm for s in real if s.firearm.startswith("fadul:")}, key=lambda f: int(f.split(":")[1]))
    dfsc = sorted({s.firearm for s in real if s.firearm.startswith("dfsc:")})
    n = max(len(fadul), len(dfsc))
    return [tuple(x for x in ((fadul[k] if k < len(fadul) else None), (dfsc[k] if k < len(dfsc) else None)) if x)
            for k in range(n)]


def study_folds(real: Sequence[RealScan]) -> list[tuple[str, ...]]:
    """Leave one *study* out: fold 0 holds out every Fadul firearm, fold 1 every DFSC/Baldwin one.

    The closest thing to a real set from another study that these files allow: the Fadul queries are
    answered by a model that saw only Ruger SR9 cases scanned by TopMatch (plus synthetic firearms), the
    DFSC queries by one that saw only Fadul's NanoFocus scans of slides (plus synthetic firearms).
    """
    fams: dict[str, set[str]] = {}
    for s in real:
        fams.setdefault(s.firearm.split(":")[0], set()).add(s.firearm)
    order = [f for f in ("fadul", "dfsc") if f in fams] + sorted(set(fams) - {"fadul", "dfsc"})
    return [tuple(sorted(fams[f])) for f in order]


def rotated_studies(root, real: Sequence[RealScan], *, seed: int = 0) -> dict[str, list[Surface]]:
    """Per study ("fadul", "dfsc"): its scans preprocessed and randomly rotated at full resolution, in the
    order of ``real`` (the order of the study's labels.csv)."""
    from pathlib import Path

    from ballistic.bench.retrieval import load_rotated_scans

    out = {}
    for study in ("fadul", "dfsc"):
        names = [s.name for s in real if s.study == study]
        if not names:
            continue
        folder = Path(root) / "cartridge" / study
        got, _, surf = load_rotated_scans(folder, folder / "labels.csv", seed=seed)
        if [Path(n).stem for n in got] != names:
            raise ValueError(f"{folder}: scans not in the order of load_real_scans")
        out[study] = [surf[i] for i in range(len(got))]
    return out


def rotated_copies(surfaces: Sequence[Surface], *, seed: int = 0) -> tuple[list[Surface], np.ndarray]:
    """Each surface rotated by a seeded random angle (degrees returned) and cropped to its mask."""
    rng = np.random.default_rng([seed, 77])
    ang = rng.uniform(0.0, 360.0, len(surfaces))
    return [crop_to_mask(rotate(s, float(a))) for s, a in zip(surfaces, ang)], ang


def ranking_metrics(E: np.ndarray, labels: Sequence[str], queries: Sequence[int], gallery: Sequence[int],
                    ks: tuple[int, ...] = (1, 5, 10)) -> list[dict]:
    """Per query: recall@k of its mates among ``gallery`` (itself excluded), top-1, average precision."""
    labels = np.asarray(labels)
    gallery = np.asarray(gallery)
    out = []
    for q in queries:
        g = gallery[gallery != q]
        mates = labels[g] == labels[q]
        if not mates.any():
            continue
        s = E[g] @ E[q]
        order = np.argsort(-s, kind="stable")
        hit = mates[order]
        ranks = np.flatnonzero(hit) + 1
        ap = float(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        out.append({"query": int(q), "mates": int(mates.sum()), "top1": bool(hit[0]), "ap": ap,
                    "best_mate_rank": int(ranks[0]),
                    **{f"recall@{k}": float(hit[:k].sum() / mates.sum()) for k in ks},
                    "mate_scores": [float(v) for v in s[mates]], "nonmate_mean": float(s[~mates].mean()),
                    "nonmate_std": float(s[~mates].std(ddof=1)) if (~mates).sum() > 1 else float("nan")})
    return out


def fold_metrics(embed: Callable[[list[Surface]], np.ndarray] | None, real: Sequence[RealScan],
                 held_out: Sequence[str], rotated: dict[str, list[Surface]], *,
                 embedded: dict[str, np.ndarray] | None = None) -> dict[str, list[dict]]:
    """Queries of one fold: for each study set ("fadul", "dfsc"), the held-out firearm's scans query the set.

    ``rotated[study]``: the study's scans, rotated (same order as in ``real``); ``embedded[study]``: their
    embeddings when already computed (then ``embed`` is not called).
    """
    res: dict[str, list[dict]] = {}
    for study in ("fadul", "dfsc"):
        idx = [i for i, s in enumerate(real) if s.study == study]
        if not idx:
            continue
        labels = [real[i].firearm for i in idx]
        qs = [j for j, i in enumerate(idx) if real[i].firearm in held_out]
        if not qs:
            continue
        E = embedded[study] if embedded is not None else embed(rotated[study])
        res[study] = ranking_metrics(E, labels, qs, list(range(len(idx))))
    return res


def compare_checkpoints(paths: Sequence, real: Sequence[RealScan], rotated: dict[str, list[Surface]]) -> dict:
    """Held-out recall of saved fold models against the polar-FFT descriptor, on the same queries.

    Each checkpoint (``python -m models.train --folds DIR``) is queried only with the scans of the
    firearms its metadata lists as held out, and refused if it was trained on any of them; the polar-FFT
    descriptor (raw cosine, no training) answers exactly the same queries against the same gallery.
    A third arm, ``fused``, ranks by the mean of the two cosines (both unit vectors concatenated, each
    scaled by 1/sqrt 2; no weight fitted), to show whether the two descriptors err on different scans.
    Returns ``{"learned": summary, "polar": summary, "fused": summary, "folds": [...], "per_query": {...}}``.
    """
    from ballistic.retrieval.registry import load_descriptor
    from models.breech_face.descriptor import LearnedDescriptor

    polar = load_descriptor("polar")
    E_polar = {st: np.stack([polar(s) for s in v]) for st, v in rotated.items()}
    per: dict[str, list] = {"learned": [], "polar": [], "fused": []}
    folds = []
    for p in paths:
        d = LearnedDescriptor(p)
        held = list(d.meta.get("held_out", []))
        seen = set(held) & set(d.meta.get("trained_on", []))
        if not held or seen:
            raise ValueError(f"{p}: held out {held}, trained on {sorted(seen)} of them; not a held-out fold model")
        # only the studies this fold queries (fold_metrics skips the others)
        asked = {s.study for s in real if s.firearm in held} & set(rotated)
        E_learned = {st: d.describe_many(rotated[st]) for st in asked}
        # both unit vectors side by side, each scaled by 1/sqrt(2): the cosine is the mean of the two cosines
        E_fused = {st: np.hstack([E_learned[st], E_polar[st]]) / np.sqrt(2.0) for st in asked}
        for arm, E in (("learned", E_learned), ("polar", E_polar), ("fused", E_fused)):
            per[arm].append(fold_metrics(None, real, held, rotated, embedded=E))
        folds.append({"weights": str(p), "held_out": held, "fold": d.meta.get("fold"),
                      **{f"{arm}_recall@10": {st: round(float(np.mean([r["recall@10"] for r in v])), 4)
                                              for st, v in per[arm][-1].items()} for arm in per}})
    return {**{arm: summarise_folds(v) for arm, v in per.items()}, "folds": folds, "per_query": per}


def summarise_folds(per_fold: list[dict[str, list[dict]]]) -> dict:
    """Mean of each per-query metric over every query of every fold, per study."""
    out = {}
    for study in ("fadul", "dfsc"):
        rows = [r for f in per_fold for r in f.get(study, [])]
        if not rows:
            continue
        keys = [k for k in rows[0] if k not in ("query", "mates", "best_mate_rank", "mate_scores", "nonmate_mean",
                                                "nonmate_std")]
        out[study] = {"queries": len(rows), **{k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
                      "best_mate_rank_max": int(max(r["best_mate_rank"] for r in rows)),
                      "projected_among_real_nonmates": projected_recall(rows)}
    return out


def projected_recall(rows: list[dict], scales=((10 ** 5, 100), (10 ** 6, 1000))) -> dict:
    """Recall@K of the mates among N *real* non-mates, projected from the few real non-mates each query has.

    Per query, its non-mate scores are taken as Gaussian (mean, std of the 13-38 it has); a mate of score s
    is outscored by each of N non-mates with probability p = 1 - Phi((s - mean) / std), so it stays in the top
    K with probability P(Poisson(N p) < K). A coarse model (Gaussian tails, Fadul's consecutively made
    slides as the non-mate population), reported beside the synthetic-distractor figures, not instead.
    """
    from scipy.stats import norm, poisson

    out = {}
    for n, k in scales:
        vals = []
        for r in rows:
            sd = r.get("nonmate_std")
            if not sd or not np.isfinite(sd):
                continue
            for s in r["mate_scores"]:
                p = float(norm.sf((s - r["nonmate_mean"]) / sd))
                vals.append(float(poisson.cdf(k - 1, max(n * p, 1e-12))))
        out[f"recall@{k}_among_{n:.0e}"] = round(float(np.mean(vals)), 4) if vals else None
    return out
