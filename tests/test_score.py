"""CMC counting rules (:mod:`ballistic.cartridge.cmc.decision`) and accuracy metrics (:mod:`ballistic.stats.metrics`)
on hand-built results."""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.cartridge.cmc.cells import CellResult, DirectionResult
from ballistic.cartridge.cmc.decision import angle_difference, cmc_count, decide, high_cmc_count
from ballistic.cartridge.cmc.params import CMCParams
from ballistic.cartridge.cmc.register import Registration
from ballistic.stats import metrics

P = CMCParams()   # corr 0.5, translation 25 um, angle 6 deg, tau 1, decision 6
REG = Registration(angle_deg=10.0, dy_um=0.0, dx_um=0.0, ncc=0.6)


def cell(k: int, angle: float = 10.0, dy: float = 0.0, dx: float = 0.0, corr: float = 0.8,
         per_angle=()) -> CellResult:
    return CellResult(row=k // 8, col=k % 8, y0_px=0, x0_px=0, size_px=16, valid_fraction=1.0,
                      angle_deg=angle % 360.0, dy_um=dy, dx_um=dx, corr=corr, per_angle=tuple(per_angle))


def result(cells) -> DirectionResult:
    return DirectionResult(REG, list(cells))


# --------------------------------------------------------------------------- original rule

def test_all_congruent_cells_count():
    r = result(cell(k, dy=(k % 3) * 5.0, dx=-(k % 2) * 5.0) for k in range(10))
    out = cmc_count(r, P)
    assert out.count == 10 and all(out.cmc_mask) and out.rule == "original"
    assert out.mean_cmc_corr == pytest.approx(0.8)
    assert out.consensus_angle_deg == pytest.approx(10.0)


def test_low_correlation_not_counted():
    corrs = [0.8, 0.49, 0.5, 0.2, np.nan, 0.9, -0.7]
    out = cmc_count(result(cell(k, corr=c) for k, c in enumerate(corrs)), P)
    assert out.cmc_mask == (True, False, True, False, False, True, False)
    assert out.count == 3
    assert out.mean_cmc_corr == pytest.approx((0.8 + 0.5 + 0.9) / 3)


def test_translation_outside_threshold_not_counted():
    cells = [cell(k) for k in range(6)]
    cells += [cell(6, dy=30.0), cell(7, dx=-26.0), cell(8, dy=24.0, dx=-24.0)]
    out = cmc_count(result(cells), P)
    assert out.cmc_mask == (True,) * 6 + (False, False, True)
    assert out.count == 7
    assert out.consensus_dy_um == pytest.approx(0.0) and out.consensus_dx_um == pytest.approx(0.0)


def test_nan_translation_does_not_poison_the_consensus():
    cells = [cell(k) for k in range(6)] + [cell(6, dy=np.nan)]
    out = cmc_count(result(cells), P)
    assert out.count == 6 and out.cmc_mask[-1] is False


def test_angle_outside_threshold_not_counted():
    cells = [cell(k) for k in range(6)] + [cell(6, angle=17.0), cell(7, angle=3.5), cell(8, angle=15.5)]
    out = cmc_count(result(cells), P)
    assert out.cmc_mask == (True,) * 6 + (False, False, True)


def test_angle_wrap_around_is_congruent():
    angles = [359.0, 1.0, 358.0, 2.0, 0.0, 357.5]
    out = cmc_count(result(cell(k, angle=a) for k, a in enumerate(angles)), P)
    assert out.count == 6
    assert abs(angle_difference(out.consensus_angle_deg, 0.0)) <= 1.0
    # a cell 180 degrees away is not
    out = cmc_count(result([cell(k, angle=a) for k, a in enumerate(angles)] + [cell(9, angle=180.0)]), P)
    assert out.count == 6 and out.cmc_mask[-1] is False


def test_no_good_cells():
    out = cmc_count(result(cell(k, corr=0.1) for k in range(5)), P)
    assert out.count == 0 and out.mean_cmc_corr == 0.0 and np.isnan(out.consensus_angle_deg)
    out = cmc_count(result([]), P)
    assert out.count == 0 and out.cmc_mask == ()


def test_angle_difference():
    assert angle_difference(359.0, 1.0) == pytest.approx(-2.0)
    assert angle_difference(1.0, 359.0) == pytest.approx(2.0)
    assert angle_difference(180.0, 0.0) == pytest.approx(-180.0)
    np.testing.assert_allclose(angle_difference([10.0, 370.0], [350.0, 0.0]), [20.0, 10.0])


# --------------------------------------------------------------------------- High-CMC

ANGLES = (4.0, 7.0, 10.0, 13.0, 16.0)


def _pa(good_at, corr=0.8, bad_corr=0.1, dy=0.0):
    """per_angle tuples: good correlation at the angles in ``good_at``."""
    return tuple((a, dy, 0.0, corr if a in good_at else bad_corr) for a in ANGLES)


def test_high_cmc_counts_best_angle():
    # 7 cells good at 10 deg; 4 of them also at 7 deg; 2 extra cells good only at 13
    cells = [cell(k, per_angle=_pa({10.0, 7.0} if k < 4 else {10.0})) for k in range(7)]
    cells += [cell(7 + k, angle=13.0, per_angle=_pa({13.0})) for k in range(2)]
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc"
    assert out.count == 7
    assert out.cmc_mask == (True,) * 7 + (False, False)
    assert out.consensus_angle_deg == pytest.approx(10.0)


def test_high_cmc_translation_consensus_per_angle():
    cells = [cell(k, per_angle=_pa({10.0})) for k in range(6)]
    cells.append(cell(6, per_angle=_pa({10.0}, dy=100.0)))   # right angle, wrong place
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc" and out.count == 6 and out.cmc_mask[-1] is False


def test_high_cmc_fallback_when_top_angles_spread():
    # 5 cells peak at 4 deg, 5 other cells at 16 deg: two equally high angles 12 deg apart
    cells = [cell(k, angle=4.0, per_angle=_pa({4.0})) for k in range(5)]
    cells += [cell(5 + k, angle=16.0, per_angle=_pa({16.0})) for k in range(5)]
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc:fallback-original"
    assert out.count == cmc_count(result(cells), P).count


def test_high_cmc_within_tau_but_close_angles_is_not_fallback():
    # counts 6 at 10 deg and 5 at 13 deg: within tau = 1 but only 3 deg apart
    cells = [cell(k, per_angle=_pa({10.0, 13.0} if k < 5 else {10.0})) for k in range(6)]
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc" and out.count == 6


def test_high_cmc_angle_wrap_around():
    angles = (354.0, 357.0, 360.0, 363.0, 366.0)   # compare_cells does not wrap registration + offset

    def pa(good):
        return tuple((a, 0.0, 0.0, 0.8 if a in good else 0.1) for a in angles)

    # 6 cells at 357, 5 of them also at 363 (= 3 deg): 6 deg apart, within the threshold
    cells = [cell(k, angle=357.0, per_angle=pa({357.0, 363.0} if k < 5 else {357.0})) for k in range(6)]
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc" and out.count == 6
    # 5 at 354, 5 at 366 (= 6 deg): 12 deg apart across 0 -> fall back to the original rule
    cells = [cell(k, angle=354.0, per_angle=pa({354.0})) for k in range(5)]
    cells += [cell(5 + k, angle=6.0, per_angle=pa({366.0})) for k in range(5)]
    out = high_cmc_count(result(cells), P)
    assert out.rule == "high-cmc:fallback-original"


def test_high_cmc_without_per_angle_is_original():
    cells = [cell(k) for k in range(7)]
    out = high_cmc_count(result(cells), P)
    assert out.count == 7 and out.rule == "original"


def test_decide():
    assert decide(6, P) is True
    assert decide(5, P) is False
    assert decide(40) is True and decide(0) is False
    assert decide(3, CMCParams(decision_threshold=3)) is True


# --------------------------------------------------------------------------- metrics

def test_roc_auc_hand_computed():
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # pairs (same, diff): (2,1)=1, (2,2)=0.5 (tie), (3,1)=1, (3,2)=1 -> 3.5 / 4
    assert metrics.roc_auc([1, 2, 2, 3], [False, True, False, True]) == pytest.approx(0.875)
    # all tied -> 0.5
    assert metrics.roc_auc([5, 5, 5], [1, 0, 1]) == pytest.approx(0.5)


def test_equal_error_rate_hand_computed():
    assert metrics.equal_error_rate([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == pytest.approx(0.0)
    assert metrics.equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(1.0)
    # same [3, 2], different [2, 1]: ROC (fpr, fnr) goes (0, .5) -> (.5, 0): they meet at .25
    assert metrics.equal_error_rate([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.25)


def test_error_counts_hand_computed():
    s = [0.1, 0.4, 0.35, 0.8, 0.6]
    y = [0, 0, 1, 1, 0]
    assert metrics.error_counts(s, y, 0.5) == {"false_positives": 1, "false_negatives": 1, "errors": 2}
    # decision is 'score >= threshold'
    assert metrics.error_counts(s, y, 0.35) == {"false_positives": 2, "false_negatives": 0, "errors": 2}
    assert metrics.error_counts(s, y, 0.9) == {"false_positives": 0, "false_negatives": 2, "errors": 2}


@pytest.mark.parametrize("fn", [metrics.roc_auc, metrics.equal_error_rate,
                                lambda s, y: metrics.error_counts(s, y, 0.5)])
def test_metrics_reject_single_class_and_bad_input(fn):
    with pytest.raises(ValueError):
        fn([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError):
        fn([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError):
        fn([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError):
        fn([0.1, np.nan, 0.3], [0, 1, 1])


def test_roc_curve_and_recall_at_k():
    fpr, tpr, thr = metrics.roc_curve([3, 2, 2, 1], [1, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert thr[0] == np.inf and list(thr[1:]) == [3, 2, 1]
    assert metrics.recall_at_k(["a", "b", "c"], ["c", "z"], 2) == 0.0
    assert metrics.recall_at_k(["a", "b", "c"], ["c", "z"], 3) == 0.5
    with pytest.raises(ValueError):
        metrics.recall_at_k(["a"], [], 1)
