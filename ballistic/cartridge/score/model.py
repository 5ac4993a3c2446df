"""A small, explainable model that combines the pair features into one score and a likelihood ratio.

The model is an L2-regularised logistic regression on three transformed features
(:data:`MODEL_FEATURES`), standardised with the training means and standard deviations,
with balanced class weights and - when fitted on several data sets - every set family
weighing the same within each class. Its score is the log-odds under balanced classes, so ``score > 0`` is
the model's own decision threshold (likelihood ratio 1 under the model). A separate
:class:`ballistic.stats.calibrate.ScoreLRCalibrator`, fitted on *cross-validated* scores, turns the
score into a bounded log10 likelihood ratio.

Fitting happens only through :func:`firearm_cv_scores`: every pair is scored by a model
fitted without any pair that involves either of its firearms. The shipped model
(``ballistic/cartridge/score/data/pair_model.json``, written by ``benchmarks/bench_generalization.py
--fit``) holds the coefficients fitted on all labelled pairs, the calibrator fitted on
their cross-validated scores, and a description of the population (sets, counts, CV
figures) - no scan data. :func:`default_model` loads it (None if absent).

Only numpy is needed to apply a model; fitting the calibrator needs ``lir``.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ballistic.errors import PairModelError

__all__ = ["MODEL_FORMAT", "MODEL_FEATURES", "DEFAULT_L2", "PairModel", "design_matrix", "fit_logistic",
           "firearm_cv_scores", "default_model", "DEFAULT_MODEL_PATH"]

MODEL_FORMAT = "ballistic-pair-model/1"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "pair_model.json"

#: (feature, transform) pairs: "atanh" for correlations (Fisher z), "identity" for fractions,
#: "log_um" for distances. Three ACES-like quantities (Zemmels et al.): how well the whole
#: surfaces agree under the registration, how many cells agree on one translation (DBSCAN, both
#: directions), and how many of them agree on it *at the registration's pose* (the consensus
#: discounted by its distance from the pose, ``cluster_pose_frac_mean``). A first, five-feature
#: set (registration NCC, cluster fraction, cluster correlation, share of cells above 0.5, prior
#: margin) chosen before any fit transferred badly from Fadul to DFSC (23 of 30 same-gun pairs
#: missed): every feature separates Fadul perfectly, so its weights were arbitrary there. The
#: second set read the consensus's distance from the pose as a feature by itself
#: (``cluster_offset_max_um``, log): every false positive it made over ten rotation draws (19 of
#: 19) was a different-source pair whose small chance cluster (11-24 % of the cells) happened to
#: sit 9-31 um from the registration, so it was replaced by the discounted fraction (2026-12-04;
#: figures in benchmarks/results/generalization_draws.json and README).
MODEL_FEATURES: tuple[tuple[str, str], ...] = (
    ("ncc", "atanh"),
    ("cluster_frac_mean", "identity"),
    ("cluster_pose_frac_mean", "identity"),
)

#: Penalty of the shipped model (mild; keeps the fit finite on separable training sets).
DEFAULT_L2 = 0.1


def _transform(v: np.ndarray, how: str) -> np.ndarray:
    if how == "atanh":
        return np.arctanh(np.clip(v, -0.99, 0.99))
    if how == "identity":
        return v
    if how == "log_um":          # distances in um: log(1 + d / 25 um), 25 um = the CMC translation tolerance
        return np.log1p(np.clip(v, 0.0, None) / 25.0)
    raise PairModelError(f"unknown feature transform {how!r}")


def design_matrix(features: Sequence[Mapping[str, float]] | Mapping[str, float],
                  spec: Sequence[tuple[str, str]] = MODEL_FEATURES) -> np.ndarray:
    """Rows of transformed features, shape (n_pairs, len(spec)); one dict gives one row."""
    rows = [features] if isinstance(features, Mapping) else list(features)
    try:
        X = np.array([[float(r[name]) for name, _ in spec] for r in rows], dtype=float).reshape(len(rows), len(spec))
    except KeyError as e:
        raise PairModelError(f"feature {e.args[0]!r} missing; compute the features with "
                             "ballistic.cartridge.score.features.pair_features") from None
    for j, (_, how) in enumerate(spec):
        X[:, j] = _transform(X[:, j], how)
    if not np.isfinite(X).all():
        raise PairModelError("features contain NaN or inf")
    return X


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = DEFAULT_L2, balanced: bool = True, strata=None,
                 iterations: int = 50) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised columns.

    Parameters
    ----------
    X : ndarray, shape (n, k)
    y : ndarray of bool, shape (n,)
    l2 : float, keyword-only
        Penalty ``l2 / 2 * |w|^2`` on the standardised coefficients (not the intercept),
        with the loss a weighted mean over pairs (mild; it keeps the fit finite when the
        training pairs are separable, which they often are).
    balanced : bool, keyword-only
        Weigh each class to half the total, so that the score is the log-odds at equal priors.
    strata : array_like, optional
        A group per pair (e.g. the data-set family): every group present weighs the same
        within each class, so that a big, easy set does not decide the fit alone.

    Returns
    -------
    coef : ndarray, shape (k,)
        On the standardised columns.
    intercept : float
    mean, scale : ndarray, shape (k,)
        Standardisation (``(X - mean) / scale``).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=bool)
    if X.ndim != 2 or X.shape[0] != y.size:
        raise PairModelError(f"X {X.shape} and y {y.shape} do not match")
    if y.sum() < 2 or (~y).sum() < 2:
        raise PairModelError(f"need at least 2 pairs of each class, got {int(y.sum())} same / "
                             f"{int((~y).sum())} different")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale <= 1e-12] = 1.0
    Z = np.hstack([np.ones((X.shape[0], 1)), (X - mean) / scale])
    if balanced:
        sw = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum())
    else:
        sw = np.full(y.size, 1.0 / y.size)
    if strata is not None:
        g = np.asarray(strata).astype(str)
        sw = np.zeros(y.size)
        for cls in (True, False):
            groups = [k for k in np.unique(g[y == cls])]
            for k in groups:
                sel = (y == cls) & (g == k)
                sw[sel] = (0.5 if balanced else (y == cls).mean()) / (len(groups) * sel.sum())
    t = y.astype(float)
    w = np.zeros(Z.shape[1])
    pen = np.full(Z.shape[1], l2)
    pen[0] = 0.0
    for _ in range(iterations):
        eta = np.clip(Z @ w, -35, 35)
        prob = 1.0 / (1.0 + np.exp(-eta))
        g = Z.T @ (sw * (prob - t)) + pen * w
        H = (Z * (sw * prob * (1 - prob))[:, None]).T @ Z + np.diag(pen) + 1e-12 * np.eye(Z.shape[1])
        step = np.linalg.solve(H, g)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[1:], float(w[0]), mean, scale


@dataclass
class PairModel:
    """A fitted pair model: apply with :meth:`score` / :meth:`log10_lr` (numpy only)."""

    features: list = field(default_factory=lambda: [list(f) for f in MODEL_FEATURES])
    coef: list = field(default_factory=list)
    intercept: float = 0.0
    mean: list = field(default_factory=list)
    scale: list = field(default_factory=list)
    l2: float = DEFAULT_L2
    calibrator: dict | None = None            # ScoreLRCalibrator.to_dict() on CV scores
    population: dict = field(default_factory=dict)
    performance: dict = field(default_factory=dict)
    format: str = MODEL_FORMAT
    feature_version: str = ""
    algorithm_version: str = ""

    @classmethod
    def fit(cls, features: Sequence[Mapping[str, float]], labels, *, l2: float = DEFAULT_L2,
            spec: Sequence[tuple[str, str]] = MODEL_FEATURES, strata=None) -> "PairModel":
        X = design_matrix(features, spec)
        coef, b, mean, scale = fit_logistic(X, np.asarray(labels, dtype=bool), l2=l2, strata=strata)
        return cls(features=[list(f) for f in spec], coef=coef.tolist(), intercept=b, mean=mean.tolist(),
                   scale=scale.tolist(), l2=l2)

    @property
    def spec(self) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self.features]

    def score(self, features: Sequence[Mapping[str, float]] | Mapping[str, float]) -> np.ndarray | float:
        """Log-odds of same source at equal priors; a float for one feature dict."""
        X = design_matrix(features, self.spec)
        s = self.intercept + ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)
        return float(s[0]) if isinstance(features, Mapping) else s

    def contributions(self, features: Mapping[str, float]) -> dict[str, float]:
        """Each feature's additive share of the score (standardised value times coefficient)."""
        x = design_matrix(features, self.spec)[0]
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale) * np.asarray(self.coef)
        return {name: round(float(v), 4) for (name, _), v in zip(self.spec, z)}

    def log10_lr(self, features: Sequence[Mapping[str, float]] | Mapping[str, float]) -> np.ndarray | float | None:
        """Calibrated, bounded log10 likelihood ratio; None when the model has no calibrator."""
        if not self.calibrator:
            return None
        from ballistic.stats.calibrate import ScoreLRCalibrator
        cal = ScoreLRCalibrator.from_dict(self.calibrator)
        v = cal.log10_lr(np.atleast_1d(self.score(features)))
        return float(v[0]) if isinstance(features, Mapping) else v

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairModel":
        if d.get("format") != MODEL_FORMAT:
            raise PairModelError(f"not a {MODEL_FORMAT} model (format {d.get('format')!r})")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically (the folder is created if missing)."""
        from ballistic.io.atomic import atomic_write_bytes
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path) -> "PairModel":
        return cls.from_dict(json.loads(Path(path).read_text()))


def firearm_cv_scores(features: Sequence[Mapping[str, float]], labels, source_a, source_b, *, l2: float = DEFAULT_L2,
                      spec: Sequence[tuple[str, str]] = MODEL_FEATURES, train_mask=None, strata=None) -> np.ndarray:
    """Cross-validated model scores: each pair scored by a model fitted on the pairs that
    involve neither of its two firearms.

    Parameters
    ----------
    features : sequence of dict
        :func:`ballistic.cartridge.score.features.pair_features` of every pair.
    labels : array_like of bool
        Same source.
    source_a, source_b : array_like of str
        Firearm of each pair's two items; make them unique across data sets ("fadul:3").
    train_mask : array_like of bool, optional
        Only these pairs may be used for fitting (e.g. one data set, to test transfer);
        every pair is still scored.
    strata : array_like, optional
        Passed to :func:`fit_logistic` (data-set family of each pair).

    Returns
    -------
    ndarray, shape (n_pairs,)
        NaN where too few training pairs were left.
    """
    X = design_matrix(features, spec)
    y = np.asarray(labels, dtype=bool)
    a = np.asarray(source_a).astype(str)
    b = np.asarray(source_b).astype(str)
    allowed = np.ones(y.size, bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    out = np.full(y.size, np.nan)
    keys = [tuple(sorted((u, v))) for u, v in zip(a, b)]
    for key in sorted(set(keys)):
        held = set(key)
        test = np.array([k == key for k in keys])
        train = allowed & np.array([u not in held and v not in held for u, v in zip(a, b)])
        if y[train].sum() < 2 or (~y[train]).sum() < 2:
            continue
        coef, b0, mean, scale = fit_logistic(X[train], y[train], l2=l2,
                                             strata=None if strata is None else np.asarray(strata)[train])
        out[test] = b0 + ((X[test] - mean) / scale) @ coef
    return out


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime: float) -> PairModel:
    return PairModel.load(path)


def default_model(path: str | Path | None = None) -> PairModel | None:
    """The shipped model (``ballistic/cartridge/score/data/pair_model.json``), or None when it is absent."""
    p = Path(path) if path is not None else DEFAULT_MODEL_PATH
    if not p.is_file():
        return None
    return _load_cached(str(p), p.stat().st_mtime)
