"""Unit tests of :mod:`ballistic.cartridge.score.model` (logistic pair model, firearm-grouped CV)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ballistic.cartridge.score import model as M
from ballistic.errors import PairModelError


def _features(rng, same, n):
    """Synthetic feature dicts: same-source pairs score higher on every model feature."""
    out = []
    for s in same[:n]:
        base = 0.6 if s else 0.15
        out.append({"ncc": base + rng.normal(0, 0.08), "cluster_frac_mean": base + rng.normal(0, 0.1),
                    "cluster_pose_frac_mean": max(0.0, (0.5 if s else 0.02) + rng.normal(0, 0.08)), "extra": 1.0})
    return out


def _pairs(n_firearms=8, per=3):
    src = np.repeat([f"g{i}" for i in range(n_firearms)], per)
    a, b = [], []
    for i in range(src.size):
        for j in range(i + 1, src.size):
            a.append(src[i])
            b.append(src[j])
    a, b = np.array(a), np.array(b)
    return a, b, a == b


def test_fit_logistic_separates_and_standardises():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.2
    X = np.column_stack([np.where(y, 1.0, -1.0) + rng.normal(0, 0.5, 400), rng.normal(0, 1, 400)])
    coef, b, mean, scale = M.fit_logistic(X, y)
    assert coef[0] > 1.0 and abs(coef[1]) < 0.3
    np.testing.assert_allclose(mean, X.mean(axis=0))
    s = b + ((X - mean) / scale) @ coef
    assert ((s > 0) == y).mean() > 0.95
    with pytest.raises(PairModelError):
        M.fit_logistic(X, np.zeros(400, bool))
    with pytest.raises(PairModelError):
        M.fit_logistic(X[:10], y)


def test_design_matrix_transforms_and_errors():
    spec = [("a", "atanh"), ("b", "identity"), ("c", "log_um")]
    X = M.design_matrix({"a": 1.5, "b": 0.2, "c": 25.0, "unused": 3.0}, spec)
    assert X.shape == (1, 3)
    assert X[0, 0] == pytest.approx(np.arctanh(0.99))            # clipped before the transform
    assert X[0, 1] == 0.2 and X[0, 2] == pytest.approx(np.log(2.0))
    assert M.design_matrix([{"a": 0.1, "b": 0, "c": 0}] * 4, spec).shape == (4, 3)
    with pytest.raises(PairModelError):
        M.design_matrix({"a": 0.5}, spec)
    with pytest.raises(PairModelError):
        M.design_matrix([{"a": np.nan, "b": 0.0, "c": 0.0}], spec)
    with pytest.raises(PairModelError):
        M.design_matrix({"a": 0.5}, [("a", "bogus")])
    assert {name for name, _ in M.MODEL_FEATURES} <= {"ncc", "cluster_frac_mean", "cluster_pose_frac_mean"}


def test_strata_weigh_each_family_the_same():
    rng = np.random.default_rng(7)
    # a big family where feature 0 separates, a small one where feature 1 does
    n_big, n_small = 400, 40
    y = np.r_[rng.random(n_big) < 0.1, rng.random(n_small) < 0.3]
    fam = np.r_[["big"] * n_big, ["small"] * n_small]
    X = rng.normal(0, 1, (y.size, 2))
    X[:n_big, 0] += 3 * y[:n_big]
    X[n_big:, 1] += 3 * y[n_big:]
    c_plain, *_ = M.fit_logistic(X, y, l2=0.1)
    c_strat, *_ = M.fit_logistic(X, y, l2=0.1, strata=fam)
    assert c_strat[1] / c_strat[0] > 2 * (c_plain[1] / c_plain[0])


def test_firearm_cv_never_fits_on_either_firearm(monkeypatch):
    rng = np.random.default_rng(1)
    a, b, y = _pairs()
    feats = _features(rng, y, y.size)
    seen = []
    real = M.fit_logistic

    def spy(X, yy, **kw):
        seen.append(X.copy())
        return real(X, yy, **kw)

    monkeypatch.setattr(M, "fit_logistic", spy)
    X = M.design_matrix(feats)
    scores = M.firearm_cv_scores(feats, y, a, b)
    assert np.isfinite(scores).all()
    keys = sorted({tuple(sorted(k)) for k in zip(a, b)})
    assert len(seen) == len(keys)
    for key, Xtr in zip(keys, seen):
        held = set(key)
        allowed = np.array([u not in held and v not in held for u, v in zip(a, b)])
        # the training rows are exactly the pairs without either firearm
        assert Xtr.shape[0] == allowed.sum()
        np.testing.assert_array_equal(Xtr, X[allowed])
    from ballistic.stats.metrics import roc_auc
    assert roc_auc(scores, y) > 0.95


def test_firearm_cv_train_mask_and_too_few():
    rng = np.random.default_rng(2)
    a, b, y = _pairs(n_firearms=4, per=2)
    feats = _features(rng, y, y.size)
    only_some = np.array([u in ("g0", "g1") and v in ("g0", "g1") for u, v in zip(a, b)])
    s = M.firearm_cv_scores(feats, y, a, b, train_mask=only_some)
    touches = np.array([u in ("g0", "g1") or v in ("g0", "g1") for u, v in zip(a, b)])
    # a pair touching g0 or g1 would have to be scored by a model fitted on its own firearm(s)
    # or on too few pairs: unscored; the others are scored by the g0/g1-only model
    assert np.isnan(s[touches]).all() and np.isfinite(s[~touches]).all()


def test_pair_model_fit_score_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    a, b, y = _pairs()
    feats = _features(rng, y, y.size)
    m = M.PairModel.fit(feats, y)
    s = m.score(feats)
    assert s.shape == (y.size,)
    assert isinstance(m.score(feats[0]), float)
    contrib = m.contributions(feats[0])
    assert set(contrib) == {n for n, _ in M.MODEL_FEATURES}
    assert sum(contrib.values()) + m.intercept == pytest.approx(m.score(feats[0]), abs=1e-3)
    assert m.log10_lr(feats[0]) is None
    from ballistic.stats.calibrate import ScoreLRCalibrator
    m.calibrator = ScoreLRCalibrator.fit(s, y, n_bootstrap=0).to_dict()
    lr = m.log10_lr(feats)
    assert (np.diff(lr[np.argsort(s)]) >= -1e-12).all()          # monotone in the score
    p = tmp_path / "m.json"
    m.save(p)
    back = M.PairModel.load(p)
    np.testing.assert_allclose(back.score(feats), s)
    assert json.loads(p.read_text())["format"] == M.MODEL_FORMAT
    with pytest.raises(PairModelError):
        M.PairModel.from_dict({"format": "other"})


def test_default_model_absent_and_present(tmp_path):
    assert M.default_model(tmp_path / "none.json") is None
    rng = np.random.default_rng(4)
    a, b, y = _pairs()
    m = M.PairModel.fit(_features(rng, y, y.size), y)
    m.save(tmp_path / "m.json")
    assert isinstance(M.default_model(tmp_path / "m.json"), M.PairModel)


def test_shipped_model_matches_this_code():
    """The model shipped as package data was fitted on features of this comparison: refit it
    (``ballistic bench generalization --fit``) whenever the algorithm or the features change."""
    from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
    from ballistic.cartridge.score.features import FEATURE_VERSION
    m = M.default_model()
    assert m is not None, f"{M.DEFAULT_MODEL_PATH} missing from the package"
    assert m.algorithm_version == ALGORITHM_VERSION and m.feature_version == FEATURE_VERSION
    assert m.calibrator and m.population.get("pairs", 0) > 0



@pytest.mark.parametrize("features, match", [
    # the largest chance consensus of a different-source pair seen in ten rotation draws of DFSC/Baldwin/Fadul
    # (24 % of the cells, right at the registration's pose, registration NCC 0.27): not a match
    ({"ncc": 0.27, "cluster_frac_mean": 0.24, "cluster_pose_frac_mean": 0.23}, False),
    ({"ncc": 0.24, "cluster_frac_mean": 0.15, "cluster_pose_frac_mean": 0.14}, False),
    # the weakest same-gun SR9 pairs that the registration found (consensus 0.40-0.43 at the pose): a match
    ({"ncc": 0.29, "cluster_frac_mean": 0.40, "cluster_pose_frac_mean": 0.38}, True),
    ({"ncc": 0.37, "cluster_frac_mean": 0.43, "cluster_pose_frac_mean": 0.40}, True),
])
def test_shipped_model_does_not_take_a_small_consensus_at_the_pose_for_a_match(features, match):
    """The previous model read the consensus's distance from the registration by itself, and every one of its
    false positives over ten rotation draws was a small chance cluster lying near the pose; the shipped model
    must keep such a pair below its threshold and the weakest found mates above it."""
    m = M.default_model()
    assert (m.score(features) > 0.0) is match
    assert (m.log10_lr(features) > 0.0) is match
