"""Accuracy metrics for same-source / different-source scores (no sklearn dependency)."""
from __future__ import annotations

import numpy as np

__all__ = ["roc_curve", "roc_auc", "equal_error_rate", "error_counts", "recall_at_k"]


def _split(scores, labels):
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    if not y.any() or y.all():
        raise ValueError("need both same-source (True) and different-source (False) labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf; drop or score those pairs first")
    return s, y


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a same-source pair > different-source), ties count 1/2."""
    s, y = _split(scores, labels)
    from scipy.stats import rankdata
    r = rankdata(s)
    n1 = int(y.sum())
    n0 = y.size - n1
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) for thresholds 'score >= t', descending."""
    s, y = _split(scores, labels)
    thr = np.unique(s)[::-1]
    tpr = np.array([(s[y] >= t).mean() for t in thr])
    fpr = np.array([(s[~y] >= t).mean() for t in thr])
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def equal_error_rate(scores, labels) -> float:
    """Rate where false-positive and false-negative rates meet (linear interpolation on the ROC)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    fnr = 1.0 - tpr
    d = fpr - fnr
    k = int(np.argmax(d >= 0))
    if k == 0:
        return float(fpr[0])
    x0, x1 = d[k - 1], d[k]
    w = 0.0 if x1 == x0 else -x0 / (x1 - x0)
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def error_counts(scores, labels, threshold: float) -> dict:
    """False positives / negatives for the decision 'score >= threshold'."""
    s, y = _split(scores, labels)
    fp = int(((s >= threshold) & ~y).sum())
    fn = int(((s < threshold) & y).sum())
    return {"false_positives": fp, "false_negatives": fn, "errors": fp + fn}


def recall_at_k(ranked_ids, relevant, k: int) -> float:
    """Fraction of ``relevant`` ids found among the first ``k`` of ``ranked_ids``."""
    rel = set(relevant)
    if not rel:
        raise ValueError("recall_at_k needs at least one relevant id")
    return len(rel.intersection(list(ranked_ids)[:k])) / len(rel)
