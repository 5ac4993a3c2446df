"""Score-based likelihood ratios for comparison scores, against a declared reference population.

The comparison score (``PairResult.similarity``) is mapped to a likelihood ratio

    LR(s) = p(s | same source) / p(s | different source)

by logistic regression with balanced class weights (``lir.LogitCalibrator``),
then limited by the Invariance Verification bounds of Alberink et al.
(``lir.algorithms.invariance_bounds``), which depend on how many reference
pairs back the extreme values: no LR is stronger than the reference data can
support. Uncertainty is a bootstrap interval over the reference pairs.

:func:`cross_validated_log10_lr` scores each pair with a calibrator fitted
without any pair involving the firearms of that pair (leave-one-firearm-out),
so that reported performance (:func:`cllr`) is never measured on the pairs
the calibration was fitted on.

``lir`` is imported lazily (only to fit and to compute Cllr); applying a fitted
calibrator needs numpy only.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ScoreLRCalibrator", "cross_validated_log10_lr", "cllr", "cllr_min", "misleading_evidence",
           "calibration_report"]


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/inf; drop pairs that could not be compared before calibrating")
    if y.sum() < 2 or (~y).sum() < 2:
        raise ValueError(f"need at least 2 same-source and 2 different-source reference pairs, got "
                         f"{int(y.sum())} and {int((~y).sum())}")
    return s, y


@dataclass
class ScoreLRCalibrator:
    """Logistic score-to-LR map with invariance bounds. Fit with :meth:`fit`.

    Attributes
    ----------
    intercept, slope : float
        ``ln LR(s) = intercept + slope * s`` before bounding.
    log10_lower, log10_upper : float
        Invariance Verification bounds on log10 LR.
    n_same, n_different : int
        Size of the reference population.
    population : str
        What the reference population is (data set, firearms, algorithm version).
    """

    intercept: float = 0.0
    slope: float = 0.0
    log10_lower: float = 0.0
    log10_upper: float = 0.0
    n_same: int = 0
    n_different: int = 0
    population: str = ""
    bootstrap: list = field(default_factory=list)   # [(intercept, slope)] for intervals

    @classmethod
    def fit(cls, scores, labels, *, population: str = "", n_bootstrap: int = 200, seed: int = 0,
            C: float = 1.0) -> "ScoreLRCalibrator":
        """Fit on reference scores; ``labels`` True = same source."""
        s, y = _check(scores, labels)
        b0, b1 = _logit(s, y, C)
        lo, hi = _iv_bounds(b0 + b1 * s, y)
        rng = np.random.default_rng(seed)
        boots = []
        idx1, idx0 = np.flatnonzero(y), np.flatnonzero(~y)
        for _ in range(n_bootstrap):
            k = np.r_[rng.choice(idx1, idx1.size), rng.choice(idx0, idx0.size)]
            boots.append(_logit(s[k], y[k], C))
        return cls(float(b0), float(b1), float(lo), float(hi), int(y.sum()), int((~y).sum()), population,
                   [tuple(map(float, b)) for b in boots])

    def log10_lr(self, scores) -> np.ndarray:
        """Bounded log10 likelihood ratio of each score."""
        s = np.asarray(scores, dtype=float)
        raw = (self.intercept + self.slope * s) / math.log(10.0)
        return np.clip(raw, self.log10_lower, self.log10_upper)

    def interval(self, scores, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap interval of the bounded log10 LR at each score."""
        if not self.bootstrap:
            raise ValueError("this calibrator was fitted with n_bootstrap=0; refit with n_bootstrap > 0")
        s = np.asarray(scores, dtype=float)
        b = np.asarray(self.bootstrap)
        v = (b[:, :1] + b[:, 1:] * s.ravel()[None, :]) / math.log(10.0)
        v = np.clip(v, self.log10_lower, self.log10_upper)
        a = (1.0 - level) / 2.0
        lo, hi = np.quantile(v, [a, 1.0 - a], axis=0)
        return lo.reshape(s.shape), hi.reshape(s.shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreLRCalibrator":
        return cls(**{**d, "bootstrap": [tuple(b) for b in d.get("bootstrap", [])]})

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically (temp file, fsync, rename)."""
        from ballistic.io.atomic import atomic_write_bytes
        atomic_write_bytes(path, json.dumps(self.to_dict()).encode())

    @classmethod
    def load(cls, path: str | Path) -> "ScoreLRCalibrator":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _logit(s: np.ndarray, y: np.ndarray, C: float) -> tuple[float, float]:
    from lir.algorithms.logistic_regression import LogitCalibrator
    cal = LogitCalibrator(C=C)
    cal.fit(s.reshape(-1, 1), y.astype(int))
    return float(cal._logit.intercept_[0]), float(cal._logit.coef_.ravel()[0])


def _iv_bounds(ln_lr: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from lir.algorithms.invariance_bounds import calculate_invariance_bounds
    lrs = np.exp(np.clip(ln_lr, -700, 700))
    lo, hi = calculate_invariance_bounds(lrs.copy(), y.astype(int))[:2]
    return float(np.log10(lo)), float(np.log10(hi))


def cross_validated_log10_lr(scores, labels, source_a, source_b, **fit_kw) -> np.ndarray:
    """Leave-one-source-out log10 LRs.

    For each source (firearm) f, a calibrator is fitted on the pairs involving
    neither f nor, for the pairs it then scores, the other firearm of that pair;
    a pair (f, g) is scored once, by the calibrator fitted without any pair that
    involves f or g.

    Parameters
    ----------
    scores, labels : array_like, shape (n_pairs,)
    source_a, source_b : array_like of str, shape (n_pairs,)
        Firearm of each pair's two items.
    """
    s, y = _check(scores, labels)
    a = np.asarray(source_a).astype(str)
    b = np.asarray(source_b).astype(str)
    out = np.full(s.shape, np.nan)
    keys = sorted({tuple(sorted((x, z))) for x, z in zip(a, b)})
    cache: dict = {}
    for k in keys:
        held = set(k)
        test = np.array([tuple(sorted((x, z))) == k for x, z in zip(a, b)])
        train = np.array([x not in held and z not in held for x, z in zip(a, b)])
        if y[train].sum() < 2 or (~y[train]).sum() < 2:
            raise ValueError(f"too few reference pairs left when holding out {sorted(held)}")
        key = frozenset(held)
        if key not in cache:
            cache[key] = ScoreLRCalibrator.fit(s[train], y[train], n_bootstrap=0, **fit_kw)
        out[test] = cache[key].log10_lr(s[test])
    return out


def cllr(log10_lrs, labels) -> float:
    """Log-likelihood-ratio cost (Brummer & du Preez 2006), via lir."""
    from lir.data.models import LLRData
    from lir.metrics import cllr as _cllr
    v, y = _check(log10_lrs, labels)
    return float(_cllr(LLRData(features=v, labels=y.astype(int))))


def cllr_min(log10_lrs, labels) -> float:
    """Cllr after the best monotone recalibration (discrimination only), via lir."""
    from lir.data.models import LLRData
    from lir.metrics import cllr_min as _cllr_min
    v, y = _check(log10_lrs, labels)
    return float(_cllr_min(LLRData(features=v, labels=y.astype(int))))


def misleading_evidence(log10_lrs, labels, *, strengths=(0, 1, 2)) -> dict:
    """Rates of misleading evidence at several strengths (Meuwly, Haraksim & Ramos 2017).

    Parameters
    ----------
    log10_lrs : array_like, shape (n,)
        log10 likelihood ratios, finite.
    labels : array_like of bool, shape (n,)
        Same source.
    strengths : sequence of float, keyword-only
        ``k`` in log10 units: a different-source pair is misleading at ``k`` when its LR is at least
        ``10**k`` (support for same source at least that strong), a same-source pair when its LR is at
        most ``10**-k``. ``k = 0`` counts every LR on the wrong side of 1 (ties included).

    Returns
    -------
    dict
        ``{"lr_10^k": {"different_source": count, "different_source_rate": rate, "same_source": count,
        "same_source_rate": rate}}`` per strength; a decision at LR ``>= 10**k`` makes exactly the
        different-source count of false positives.
    """
    v, y = _check(log10_lrs, labels)
    out = {}
    for k in strengths:
        d = int((v[~y] >= k).sum())
        sm = int((v[y] <= -k).sum())
        out[f"lr_10^{k:g}"] = {"different_source": d, "different_source_rate": d / int((~y).sum()),
                               "same_source": sm, "same_source_rate": sm / int(y.sum())}
    return out


def calibration_report(scores, labels, source_a, source_b) -> dict:
    """Cross-validated (leave-one-firearm-out) LR performance of a score."""
    s, y = _check(scores, labels)
    v = cross_validated_log10_lr(s, y, source_a, source_b)
    full = ScoreLRCalibrator.fit(s, y, n_bootstrap=0)
    me = misleading_evidence(v, y)
    return {
        "pairs": int(s.size), "same_source": int(y.sum()), "different_source": int((~y).sum()),
        "cllr": cllr(v, y), "cllr_min": cllr_min(v, y),
        "log10_lr_min": float(v.min()), "log10_lr_max": float(v.max()),
        "same_source_lr_gt_1": float((v[y] > 0).mean()), "different_source_lr_lt_1": float((v[~y] < 0).mean()),
        "misleading_same_source": me["lr_10^0"]["same_source"],
        "misleading_different_source": me["lr_10^0"]["different_source"],
        "misleading_evidence": me,
        "full_fit": {"intercept": full.intercept, "slope": full.slope, "log10_lower": full.log10_lower,
                     "log10_upper": full.log10_upper},
    }
