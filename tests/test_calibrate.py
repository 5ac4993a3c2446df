"""Score-to-LR calibration: monotone, bounded by the reference data, cross-validated by firearm."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from ballistic.stats.calibrate import (ScoreLRCalibrator, calibration_report, cllr, cross_validated_log10_lr,
                                      misleading_evidence)


def _population(seed=0, n_same=60, n_diff=600):
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(20, 4, n_same), rng.gamma(1.5, 1.0, n_diff)]
    y = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
    return s, y


def test_lr_is_monotone_bounded_and_on_the_right_side():
    s, y = _population()
    cal = ScoreLRCalibrator.fit(s, y, population="synthetic", n_bootstrap=50)
    grid = np.linspace(0, 40, 81)
    v = cal.log10_lr(grid)
    assert np.all(np.diff(v) >= 0)
    assert v.min() >= cal.log10_lower - 1e-12 and v.max() <= cal.log10_upper + 1e-12
    assert cal.log10_lower < 0 < cal.log10_upper
    # bounds reflect the reference sample: far from infinite with 60 / 600 pairs
    assert cal.log10_upper < 4 and cal.log10_lower > -4
    assert cal.log10_lr(25.0) > 0 > cal.log10_lr(1.0)
    lo, hi = cal.interval(grid)
    assert np.all(lo <= v + 1e-9) and np.all(v <= hi + 1e-9)


def test_round_trip_json(tmp_path):
    s, y = _population(1)
    cal = ScoreLRCalibrator.fit(s, y, n_bootstrap=10)
    cal.save(tmp_path / "cal.json")
    back = ScoreLRCalibrator.load(tmp_path / "cal.json")
    np.testing.assert_allclose(back.log10_lr([0, 5, 30]), cal.log10_lr([0, 5, 30]))
    np.testing.assert_allclose(back.interval([3.0])[0], cal.interval([3.0])[0])


def test_bad_reference_data_is_refused():
    with pytest.raises(ValueError, match="same-source"):
        ScoreLRCalibrator.fit([1, 2, 3], [False, False, True])
    with pytest.raises(ValueError, match="NaN"):
        ScoreLRCalibrator.fit([1, np.nan, 3, 4], [True, True, False, False])
    with pytest.raises(ValueError, match="differ in length"):
        ScoreLRCalibrator.fit([1, 2, 3], [True, False])


def test_cross_validation_never_sees_the_firearms_of_the_scored_pair():
    # five firearms, two items each; firearm "e" pairs carry an absurd score. If "e" pairs leaked into
    # the calibration that scores them, their LR would be pulled toward the training optimum for them.
    rng = np.random.default_rng(3)
    items = [(f, k) for f in "abcde" for k in range(2)]
    sa, sb, sc, lab = [], [], [], []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            same = items[i][0] == items[j][0]
            sa.append(items[i][0]); sb.append(items[j][0]); lab.append(same)
            sc.append(rng.normal(20, 2) if same else rng.gamma(1.5, 1.0))
    sc, lab = np.array(sc), np.array(lab)
    v = cross_validated_log10_lr(sc, lab, sa, sb)
    assert np.isfinite(v).all()
    # recompute one pair by hand: calibrator fitted without firearms a and b
    k = next(i for i in range(len(sa)) if {sa[i], sb[i]} == {"a", "b"})
    train = np.array([x not in "ab" and z not in "ab" for x, z in zip(sa, sb)])
    ref = ScoreLRCalibrator.fit(sc[train], lab[train], n_bootstrap=0).log10_lr(sc[k])
    assert v[k] == pytest.approx(ref)
    assert cllr(v, lab) < 0.5


@pytest.mark.realdata
def test_fadul_lrs_cross_validated_by_firearm(shared_data, tmp_path):
    """Fadul, scored by our CMC similarity on a subset (the numbered scans of slides 1-5: 45 pairs)."""
    from itertools import combinations

    from ballistic.bench.cartridge import load_scans, read_labels
    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.cartridge.cmc.params import CMCParams
    d = shared_data / "cartridge" / "fadul"
    scans = [s for s in read_labels(d, d / "labels.csv") if s.source in {"1", "2", "3", "4", "5"}
             and "-" in s.name]
    p = CMCParams()
    prep, _ = load_scans(scans, p)
    s, y, a, b = [], [], [], []
    for i, j in combinations(range(len(scans)), 2):
        s.append(compare_pair(prep[i], prep[j], p).similarity)
        y.append(scans[i].source == scans[j].source)
        a.append(scans[i].source)
        b.append(scans[j].source)
    rep = calibration_report(s, y, a, b)
    assert rep["same_source_lr_gt_1"] == 1.0 and rep["different_source_lr_lt_1"] == 1.0, rep
    assert rep["cllr"] < 0.2, rep


def test_misleading_evidence_counts_each_side_at_each_strength():
    v = np.array([2.5, 1.0, 0.0, -0.5, -3.0,      # same source
                  -2.0, 0.0, 0.3, 1.0, 2.0])      # different source
    y = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    me = misleading_evidence(v, y, strengths=(0, 1, 2))
    assert me["lr_10^0"] == {"different_source": 4, "different_source_rate": 0.8, "same_source": 3,
                             "same_source_rate": 0.6}                      # ties at LR 1 count as misleading
    assert me["lr_10^1"]["different_source"] == 2 and me["lr_10^1"]["same_source"] == 1
    assert me["lr_10^2"]["different_source"] == 1 and me["lr_10^2"]["same_source"] == 1
    with pytest.raises(ValueError):
        misleading_evidence(np.array([np.nan, 1.0, 0.0, 2.0]), np.array([True, True, False, False]))
