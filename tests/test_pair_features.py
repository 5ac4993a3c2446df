"""Unit tests of :mod:`ballistic.cartridge.score.features` on synthetic comparison results."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ballistic.cartridge.cmc.cells import CellResult, DirectionResult
from ballistic.cartridge.cmc.params import CMCParams
from ballistic.cartridge.cmc.register import Registration
from ballistic.cartridge.cmc.pair import PairResult
from ballistic.cartridge.score.features import (MIN_CLUSTER_POINTS, dbscan, direction_features, pair_features,
                                               pose_weight)
from ballistic.cartridge.cmc.decision import high_cmc_count


def twin_dbscan(x, eps, min_points):
    """Slow reference: core points, clusters = connected components of cores, borders to the
    first core (lowest index) cluster that reaches them."""
    n = len(x)
    nb = [[j for j in range(n) if math.dist(x[i], x[j]) <= eps] for i in range(n)]
    core = [len(nb[i]) >= min_points for i in range(n)]
    labels = [-1] * n
    c = 0
    for i in range(n):
        if not core[i] or labels[i] != -1:
            continue
        queue = [i]
        labels[i] = c
        while queue:
            j = queue.pop()
            if core[j]:
                for k in nb[j]:
                    if labels[k] == -1:
                        labels[k] = c
                        queue.append(k)
        c += 1
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dbscan_matches_twin_on_core_structure(seed):
    rng = np.random.default_rng(seed)
    pts = np.vstack([rng.normal(0, 3, (12, 2)), rng.normal(60, 3, (6, 2)), rng.uniform(-200, 200, (20, 2))])
    got = dbscan(pts, 10.0, 4)
    ref = np.array(twin_dbscan(pts.tolist(), 10.0, 4))
    # same noise set and same partition of the core points (border ties may differ in principle)
    assert ((got == -1) == (ref == -1)).all()
    for lbl in set(ref[ref >= 0]):
        assert len(set(got[ref == lbl])) == 1


def test_dbscan_edge_cases():
    assert dbscan(np.zeros((0, 2)), 1.0, 3).size == 0
    assert (dbscan(np.array([[0.0, 0.0], [100.0, 0.0]]), 1.0, 2) == -1).all()
    lab = dbscan(np.zeros((5, 2)), 1.0, 5)
    assert (lab == 0).all()
    with pytest.raises(ValueError):
        dbscan(np.array([[np.nan, 0.0]]), 1.0, 1)
    with pytest.raises(ValueError):
        dbscan(np.zeros(3), 1.0, 1)


P = CMCParams()


def _direction(rng, n_cells, n_agree, angle=10.0, jitter_um=4.0, corr_agree=0.7, offset=(0.0, 0.0), nan_cells=0):
    """Cells of one direction: ``n_agree`` agree on one translation at the middle angle."""
    cells = []
    angles = [angle + da for da in P.cell_angles_deg]
    for k in range(n_cells):
        per = []
        for a in angles:
            if k < nan_cells:
                per.append((a, np.nan, np.nan, np.nan))
            elif k < nan_cells + n_agree and a == angle:
                per.append((a, offset[0] + rng.normal(0, jitter_um), offset[1] + rng.normal(0, jitter_um), corr_agree))
            else:
                per.append((a, rng.uniform(-200, 200), rng.uniform(-200, 200), rng.uniform(-0.1, 0.35)))
        best = max((t for t in per if np.isfinite(t[3])), key=lambda t: t[3], default=(angle, np.nan, np.nan, np.nan))
        cells.append(CellResult(k // 8, k % 8, 0, 0, 34, 0.8, best[0], best[1], best[2], best[3], tuple(per)))
    return DirectionResult(Registration(angle, 0.0, 0.0, 0.5, (angle,), False, 0.4, 0.2), cells)


def _pair(rng, n_agree, **kw):
    fwd = _direction(rng, 40, n_agree, angle=10.0, **kw)
    bwd = _direction(rng, 40, n_agree, angle=350.0, **kw)
    high = (high_cmc_count(fwd, P), high_cmc_count(bwd, P))
    return PairResult("a", "b", fwd, bwd, high, high, min(h.count for h in high), 0.0, False, 0.0, P)


def test_direction_features_cluster_of_agreeing_cells():
    rng = np.random.default_rng(3)
    d = _direction(rng, 40, 20, offset=(30.0, -10.0))
    f = direction_features(d, high_cmc_count(d, P), P)
    assert f["cells_total"] == 40 and f["cells_compared"] == 40
    assert f["cluster_size"] >= 18 and f["cluster_frac"] == pytest.approx(f["cluster_size"] / 40)
    assert f["cluster_corr"] == pytest.approx(0.7, abs=0.05)
    assert f["cluster_offset_um"] == pytest.approx(math.hypot(30, -10), abs=5)
    assert f["angle_offset_deg"] == pytest.approx(0.0, abs=1e-9)


def test_pose_weight_values_and_bad_tolerance():
    assert pose_weight(0.0, 25.0) == 1.0
    assert pose_weight(25.0, 25.0) == pytest.approx(math.exp(-0.5))
    assert pose_weight(-50.0, 25.0) == pytest.approx(math.exp(-2.0))      # a distance: sign-free
    assert pose_weight(250.0, 25.0) < 1e-20
    with pytest.raises(ValueError, match="tolerance_um"):
        pose_weight(1.0, 0.0)


@pytest.mark.parametrize("offset_um", [0.0, 20.0, 60.0, 150.0])
def test_cluster_pose_frac_discounts_a_consensus_away_from_the_registration(offset_um):
    """The same 20 agreeing cells count fully at the registration's pose and fade with their
    distance from it (the chance cluster of a different-source pair is small *and* seldom at the pose)."""
    rng = np.random.default_rng(11)
    d = _direction(rng, 40, 20, offset=(offset_um, 0.0), jitter_um=2.0)
    f = direction_features(d, high_cmc_count(d, P), P)
    expect = f["cluster_frac"] * math.exp(-0.5 * (f["cluster_offset_um"] / P.translation_threshold_um) ** 2)
    assert f["cluster_pose_frac"] == pytest.approx(expect)
    assert f["cluster_offset_um"] == pytest.approx(offset_um, abs=3.0)
    if offset_um == 0.0:
        assert f["cluster_pose_frac"] == pytest.approx(f["cluster_frac"], rel=0.02)
    if offset_um >= 60.0:
        assert f["cluster_pose_frac"] < 0.1 * f["cluster_frac"]


def test_direction_features_no_cluster_and_no_cells():
    rng = np.random.default_rng(4)
    d = _direction(rng, 40, 0)
    f = direction_features(d, high_cmc_count(d, P), P)
    assert f["cluster_frac"] <= 0.15
    empty = DirectionResult(Registration(0.0, 0.0, 0.0, 0.0), [])
    g = direction_features(empty, high_cmc_count(empty, P), P)
    assert g["cells_compared"] == 0 and g["cluster_frac"] == 0.0 and g["cmc_frac"] == 0.0
    assert g["cluster_pose_frac"] == 0.0


def test_pair_features_finite_and_ordered():
    rng = np.random.default_rng(5)
    match = pair_features(_pair(rng, 25))
    nonmatch = pair_features(_pair(rng, 0))
    for f in (match, nonmatch):
        assert all(isinstance(v, float) and math.isfinite(v) for v in f.values())
    for key in ("cluster_frac_min", "cluster_frac_mean", "cluster_corr_mean", "corr_frac_above", "cmc_frac_min",
                "cluster_pose_frac_mean"):
        assert match[key] > nonmatch[key], key
    assert match["prior_margin"] == pytest.approx(0.2)
    assert match["overlap"] == 1.0 and match["mirrored"] == 0.0
    assert match["cluster_pose_frac_mean"] == pytest.approx(
        0.5 * (match["cluster_pose_frac_fwd"] + match["cluster_pose_frac_bwd"]))


def test_pair_features_with_missing_cells():
    rng = np.random.default_rng(6)
    f = pair_features(_pair(rng, 10, nan_cells=8))
    assert f["overlap"] == pytest.approx(64 / 80)
    assert f["cells_compared"] == 64


def test_min_cluster_points_is_sane():
    assert 3 <= MIN_CLUSTER_POINTS <= 6
