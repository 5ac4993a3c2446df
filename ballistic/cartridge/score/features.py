"""Similarity features of a breech-face comparison, from the comparison already computed.

:func:`pair_features` reads a :class:`ballistic.cartridge.cmc.pair.PairResult` (both directions'
cells, the registration and the CMC outcomes) and returns a flat dict of numbers; no
surface is touched again, so the features cost microseconds. They follow the ideas of
ACES (Zemmels, Hofmann & VanderPlas: registration-based, density-based and
correlation-distribution features of a cell-based comparison), computed our own way on our
own comparison:

* **registration**: ``ncc`` (whole-surface masked NCC at the comparison spacing after the
  full-circle registration), ``prior_ncc`` and ``prior_margin`` (the best rotation-prior
  correlation minus the best one of a clearly different pose - another angle or the
  other mirror parity: how much the winning pose stands out);
* **congruent cells**: per direction the High-CMC count and its fraction of the cells that
  could be compared (``cmc_*``);
* **translation consensus**: per direction and per searched angle, the cells' translations
  (relative to the global registration) are clustered with DBSCAN (:func:`dbscan`,
  radius = the CMC translation threshold, 4 points); the angle with the largest cluster
  wins. ``cluster_frac`` (its size over the compared cells), ``cluster_corr`` (mean cell
  correlation in it), ``cluster_offset_um`` (distance of its centre from the global
  registration: cells of a true match agree with the whole-surface pose) and
  ``angle_offset_deg``. ``cluster_pose_frac`` is the cluster's share discounted by how far it lies
  from the registration (``cluster_frac * exp(-offset^2 / (2 t^2))``, t = the CMC translation
  threshold): a consensus counts as agreement with the registration only as far as it is both
  large and at the registration's pose. The offset alone is a poor witness when the cluster is
  small: a chance cluster of a few cells of a different-source pair (11-24 % of them in the
  cases seen) can sit within t of the registration (probably because the registration and the
  cells see the same large-scale shape), and a model that reads the offset by itself then
  scores such a pair as a near match;
* **correlation distribution**: median, 90th percentile and share above the CMC
  correlation threshold of every cell's best correlation, both directions pooled;
* **overlap**: ``cells_compared`` / ``cells_total`` (cells with enough target data under
  the registration).

Pair-level values combine the two directions by min and mean (a match must hold whichever
scan provides the cells). Every value is finite: undefined ones (no cluster, no cells) take
the value that means "no evidence" (0 for fractions and correlations, the search radius for
offsets).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FEATURE_VERSION", "dbscan", "direction_features", "pair_features", "pose_weight"]

FEATURE_VERSION = "pair-features/2"

#: DBSCAN: a translation cluster needs this many cells (ACES uses 5 on finer cells; our 8 x 8
#: grid has 40-60 cells, where 4 points within 25 um arise by chance in ~1 % of unrelated pairs).
MIN_CLUSTER_POINTS = 4


def dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """Density-based clustering (Ester et al. 1996) of a few points.

    Parameters
    ----------
    points : ndarray, shape (n, d)
        Finite coordinates.
    eps : float
        Neighbourhood radius (same units as ``points``).
    min_points : int
        A point is a core point when at least this many points (itself included) lie
        within ``eps``.

    Returns
    -------
    ndarray of int, shape (n,)
        Cluster label per point, 0, 1, ... in order of first core point; -1 = noise.
        Border points join the cluster of the first core point that reaches them.
    """
    x = np.asarray(points, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"points must be 2-D (n, d), got shape {x.shape}")
    n = x.shape[0]
    labels = np.full(n, -1, dtype=int)
    if n == 0:
        return labels
    if not np.isfinite(x).all():
        raise ValueError("points must be finite; drop cells without a translation first")
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    nb = d2 <= eps * eps
    core = nb.sum(axis=1) >= min_points
    c = 0
    for i in range(n):
        if not core[i] or labels[i] != -1:
            continue
        labels[i] = c
        stack = [i]
        while stack:
            j = stack.pop()
            if not core[j]:
                continue
            for k in np.flatnonzero(nb[j]):
                if labels[k] == -1:
                    labels[k] = c
                    stack.append(k)
        c += 1
    return labels


def pose_weight(offset_um: float, tolerance_um: float) -> float:
    """Weight in (0, 1] of a translation consensus whose centre lies ``offset_um`` from the
    registration's pose: ``exp(-offset^2 / (2 tolerance^2))`` (1 at the pose, 0.61 at one
    tolerance, 0.14 at two); the tolerance is the CMC translation threshold, in um."""
    if not tolerance_um > 0:
        raise ValueError(f"tolerance_um must be > 0, got {tolerance_um}")
    return float(math.exp(-0.5 * (float(offset_um) / tolerance_um) ** 2))


def direction_features(direction: Any, outcome: Any, params: Any) -> dict[str, float]:
    """Features of one direction (a :class:`ballistic.cartridge.cmc.cells.DirectionResult` and its
    High-CMC :class:`ballistic.score.CMCOutcome`)."""
    cells = direction.cells
    total = len(cells)
    corr = np.array([c.corr for c in cells], dtype=float)
    ok = np.isfinite(corr)
    n = int(ok.sum())
    radius = (params.region_scale - 1.0) * (cells[0].size_px if cells else 0) * params.spacing_um / 2.0
    out = {"cells_total": float(total), "cells_compared": float(n), "cmc": float(outcome.count),
           "cmc_frac": outcome.count / n if n else 0.0, "cluster_frac": 0.0, "cluster_size": 0.0,
           "cluster_corr": 0.0, "cluster_offset_um": float(radius), "angle_offset_deg": 0.0,
           "cluster_pose_frac": 0.0}
    if not n or not cells[0].per_angle:
        return out
    n_ang = min(len(c.per_angle) for c in cells)
    table = np.array([[c.per_angle[k] for k in range(n_ang)] for c in cells], dtype=float)  # (cell, angle, 4)
    best = (0, -1.0, None, None)     # size, mean corr, angle index, member mask
    for k in range(n_ang):
        dy, dx, cc = table[:, k, 1], table[:, k, 2], table[:, k, 3]
        fin = np.isfinite(dy) & np.isfinite(dx) & np.isfinite(cc)
        if fin.sum() < MIN_CLUSTER_POINTS:
            continue
        lab = dbscan(np.stack([dy[fin], dx[fin]], axis=1), params.translation_threshold_um, MIN_CLUSTER_POINTS)
        if (lab < 0).all():
            continue
        sizes = np.bincount(lab[lab >= 0])
        for lbl in np.flatnonzero(sizes == sizes.max()):
            members = np.zeros(len(cells), dtype=bool)
            members[np.flatnonzero(fin)[lab == lbl]] = True
            mc = float(np.mean(cc[members]))
            if (sizes[lbl], mc) > best[:2]:
                best = (int(sizes[lbl]), mc, k, members)
    size, mc, k, members = best
    if k is not None:
        dy, dx = table[members, k, 1], table[members, k, 2]
        ref_angle = float(np.median(table[:, k, 0]))
        out.update(cluster_size=float(size), cluster_frac=size / n, cluster_corr=mc,
                   cluster_offset_um=float(math.hypot(np.mean(dy), np.mean(dx))),
                   angle_offset_deg=float((ref_angle - direction.registration.angle_deg + 180.0) % 360.0 - 180.0))
        out["cluster_pose_frac"] = out["cluster_frac"] * pose_weight(out["cluster_offset_um"],
                                                                     params.translation_threshold_um)
    return out


def pair_features(result: Any) -> dict[str, float]:
    """Flat, finite feature dict of a :class:`ballistic.cartridge.cmc.pair.PairResult` (see module docstring)."""
    p = result.params
    reg = result.registration
    f = direction_features(result.forward, result.high[0], p)
    b = direction_features(result.backward, result.high[1], p)
    corr = np.array([c.corr for d in (result.forward, result.backward) for c in d.cells], dtype=float)
    corr = corr[np.isfinite(corr)]
    prior = reg.prior_ncc if np.isfinite(reg.prior_ncc) else reg.ncc
    runner = reg.runner_up_ncc if np.isfinite(reg.runner_up_ncc) else -1.0
    out = {
        "ncc": float(reg.ncc) if np.isfinite(reg.ncc) else 0.0,
        "prior_ncc": float(prior) if np.isfinite(prior) else 0.0,
        "prior_margin": float(prior - runner) if np.isfinite(prior) else 0.0,
        "mirrored": float(bool(reg.mirrored)),
        "cmc_min": min(f["cmc"], b["cmc"]),
        "cmc_frac_min": min(f["cmc_frac"], b["cmc_frac"]),
        "cmc_frac_mean": 0.5 * (f["cmc_frac"] + b["cmc_frac"]),
        "cluster_frac_min": min(f["cluster_frac"], b["cluster_frac"]),
        "cluster_frac_mean": 0.5 * (f["cluster_frac"] + b["cluster_frac"]),
        "cluster_corr_mean": 0.5 * (f["cluster_corr"] + b["cluster_corr"]),
        "cluster_offset_max_um": max(f["cluster_offset_um"], b["cluster_offset_um"]),
        "cluster_pose_frac_mean": 0.5 * (f["cluster_pose_frac"] + b["cluster_pose_frac"]),
        "angle_offset_sum_deg": abs(f["angle_offset_deg"] + b["angle_offset_deg"]),
        "corr_median": float(np.median(corr)) if corr.size else 0.0,
        "corr_q90": float(np.quantile(corr, 0.9)) if corr.size else 0.0,
        "corr_frac_above": float((corr >= p.corr_threshold).mean()) if corr.size else 0.0,
        "overlap": (f["cells_compared"] + b["cells_compared"]) / max(1.0, f["cells_total"] + b["cells_total"]),
        "cells_compared": f["cells_compared"] + b["cells_compared"],
    }
    for name, d in (("fwd", f), ("bwd", b)):
        for key in ("cmc_frac", "cluster_frac", "cluster_corr", "cluster_offset_um", "cluster_pose_frac"):
            out[f"{key}_{name}"] = float(d[key])
    return {k: float(v) for k, v in out.items()}
