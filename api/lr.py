"""Likelihood ratios of breech-face candidates and how deep to review a candidate list.

The calibration is a :class:`ballistic.stats.calibrate.ScoreLRCalibrator` (logistic score-to-LR map with
invariance bounds and bootstrap coefficients for an interval), configured by ``calibration_path``.
The service ships ``api/calibration/breech_face_fadul.json``, written by
``benchmarks/fit_calibration.py`` from the real Fadul all-pairs bench: that composite file holds the
calibrator's coefficients and bounds, a description of the reference population, its cross-validated
performance and the two summary statistics the review depth needs (below). A plain
``ScoreLRCalibrator`` JSON (``ScoreLRCalibrator.save``) is accepted too; it gives LRs but no review
depth (it carries no population statistics).

Review depth (``review_depth`` of a breech-face candidate list)
----------------------------------------------------------------
How far down the list must an examiner look to find the true mate with probability about ``r``
(0.95, 0.99)? From the calibration population:

* ``q_r``: the same-source score threshold that a fraction ``r`` of same-source reference pairs reach
  (the ``floor(n_same (1 - r)) + 1``-th smallest same-source score);
* ``k_r``: how many of the ``n_diff`` different-source reference pairs score at least ``q_r``;
  ``p_r = (k_r + 1/2) / (n_diff + 1)`` estimates ``P(different-source score >= q_r)`` (Jeffreys: never
  0 just because the reference set is small), ``p_r_upper`` its one-sided 95% Jeffreys upper bound.

With ``N`` exhibits eligible in the partition now (the database size that matters: the ones the
query can be compared with), a mate scoring at least ``q_r`` (probability ``r``) has on average
``N p_r`` different-source candidates above it, so the depth is ``ceil(N p_r) + 1`` ranks
(``depth_upper`` uses ``p_r_upper``), capped at ``N``. Assumptions, stated in the response: the
calibration population is representative of the casework (same firearm model, scanner and
processing), different-source scores are independent of each other, and the first stage (vector
search, ``RERANK_K`` re-ranked) did not lose the mate - a depth beyond ``RERANK_K`` cannot be
reached without raising it.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CALIBRATION_FORMAT", "Calibration", "same_source_threshold", "depth_statistics"]

CALIBRATION_FORMAT = "ballistic-calibration/1"
RECALL_TARGETS = (0.95, 0.99)


def same_source_threshold(same_source_scores, recall: float) -> float:
    """The largest score that at least ``recall`` of the same-source scores reach."""
    s = np.sort(np.asarray(same_source_scores, dtype=float))
    if s.size == 0:
        raise ValueError("no same-source scores")
    i = int(math.floor(s.size * (1.0 - recall) + 1e-9))
    return float(s[min(i, s.size - 1)])


def depth_statistics(scores, labels, recalls=(0.9, 0.95, 0.99)) -> dict:
    """Summary statistics of a reference population for :meth:`Calibration.review_depth`."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    km, knm = s[y], s[~y]
    targets = []
    for r in recalls:
        q = same_source_threshold(km, r)
        targets.append({"recall": float(r), "score_threshold": q,
                        "same_source_at_or_above": int((km >= q).sum()),
                        "different_source_at_or_above": int((knm >= q).sum())})
    return {"n_same": int(km.size), "n_different": int(knm.size), "targets": targets}


def _jeffreys(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import beta

    return (k + 0.5) / (n + 1.0), float(beta.ppf(0.95, k + 0.5, n - k + 0.5))


@dataclass
class Calibration:
    """A loaded calibration (see the module notes)."""

    calibrator: Any
    id: str
    path: str
    region: str = "breech_face"
    score: str = "similarity"
    algorithm_version: str | None = None
    population: dict = field(default_factory=dict)
    performance: dict | None = None
    depth: dict | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        from ballistic.stats.calibrate import ScoreLRCalibrator

        p = Path(path)
        raw = p.read_bytes()
        d = json.loads(raw)
        cid = f"{p.stem}@{hashlib.sha256(raw).hexdigest()[:16]}"
        if d.get("format") == CALIBRATION_FORMAT:
            return cls(ScoreLRCalibrator.from_dict(d["calibrator"]), cid, str(p), d.get("region", "breech_face"),
                       d.get("score", "similarity"), d.get("algorithm_version"), d.get("population") or {},
                       d.get("performance"), d.get("review_depth"))
        cal = ScoreLRCalibrator.from_dict(d)
        return cls(cal, cid, str(p), population={"description": cal.population, "same_source_pairs": cal.n_same,
                                                  "different_source_pairs": cal.n_different})

    def lr(self, score: float) -> tuple[float, float | None, float | None]:
        """Bounded log10 LR of one score and its bootstrap 95% interval (None without bootstrap)."""
        v = float(self.calibrator.log10_lr(np.asarray([score]))[0])
        if not self.calibrator.bootstrap:
            return v, None, None
        lo, hi = self.calibrator.interval(np.asarray([score]))
        return v, float(lo[0]), float(hi[0])

    def describe(self) -> dict:
        c = self.calibrator
        return {"id": self.id, "region": self.region, "score": self.score, "algorithm_version": self.algorithm_version,
                "population": self.population or {"description": c.population},
                "log10_lr_bounds": [c.log10_lower, c.log10_upper], "intercept": c.intercept, "slope": c.slope,
                "same_source_pairs": c.n_same, "different_source_pairs": c.n_different,
                "performance": self.performance}

    def review_depth(self, n_eligible: int, rerank_k: int) -> dict | None:
        """Ranks to review for each recall target at ``n_eligible`` comparable exhibits (module notes)."""
        if not self.depth:
            return None
        n_eligible = max(0, int(n_eligible))
        n_diff = int(self.depth["n_different"])
        targets = []
        for t in self.depth["targets"]:
            if round(float(t["recall"]), 4) not in RECALL_TARGETS:
                continue
            k = int(t["different_source_at_or_above"])
            p, p_hi = _jeffreys(k, n_diff)
            depth = min(n_eligible, math.ceil(n_eligible * p) + 1) if n_eligible else 0
            depth_hi = min(n_eligible, math.ceil(n_eligible * p_hi) + 1) if n_eligible else 0
            targets.append({"recall": float(t["recall"]), "score_threshold": float(t["score_threshold"]),
                            "p_different_source_at_or_above": p, "p_different_source_upper95": p_hi,
                            "expected_different_source_above": n_eligible * p, "depth": depth,
                            "depth_upper": depth_hi, "within_rerank_k": depth_hi <= rerank_k})
        return {"n_eligible": n_eligible, "rerank_k": int(rerank_k), "calibration_id": self.id,
                "same_source_pairs": int(self.depth["n_same"]), "different_source_pairs": n_diff,
                "targets": targets,
                "method": ("q_r = score reached by a fraction r of same-source reference pairs; p_r = Jeffreys "
                           "estimate of P(different-source score >= q_r) on the reference pairs; depth = "
                           "ceil(n_eligible * p_r) + 1 (depth_upper with the 95% upper bound of p_r), capped at "
                           "n_eligible. Assumes the reference population represents the casework and that the "
                           "vector stage kept the mate among the re-ranked RERANK_K.")}
