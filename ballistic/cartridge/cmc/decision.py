"""Congruent Matching Cells counts and decisions.

* :func:`cmc_count` - the original rule (Song 2013): a cell is a CMC when its
  correlation reaches ``corr_threshold`` and its own best pose (angle,
  translation) agrees with the consensus pose of the cells within
  ``angle_threshold_deg`` and ``translation_threshold_um``.
* :func:`high_cmc_count` - the High-CMC rule (Tong 2015): CMCs are counted per
  angle (cells whose translation agrees with that angle's consensus); when the
  angles whose count is within ``tau`` of the best lie within
  ``angle_threshold_deg`` of it, the count at the best angle is the result;
  otherwise the original count is used.
* :func:`decide` - identification when the count reaches the decision threshold
  (C >= 6, Song 2013).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ballistic.cartridge.cmc.cells import DirectionResult
from ballistic.cartridge.cmc.params import CMCParams

__all__ = ["CMCOutcome", "cmc_count", "high_cmc_count", "decide", "angle_difference"]


@dataclass(frozen=True)
class CMCOutcome:
    count: int
    cmc_mask: tuple[bool, ...]     # per cell of the DirectionResult
    consensus_angle_deg: float
    consensus_dy_um: float
    consensus_dx_um: float
    rule: str
    mean_cmc_corr: float


def angle_difference(a, b):
    """Signed smallest difference a - b in degrees, in [-180, 180)."""
    return (np.asarray(a, dtype=float) - np.asarray(b, dtype=float) + 180.0) % 360.0 - 180.0


def _circular_median(angles: np.ndarray) -> float:
    if angles.size == 0:
        return float("nan")
    ref = angles[0]
    return float((ref + np.median(angle_difference(angles, ref))) % 360.0)


def _outcome(cells_corr, ok, consensus, rule) -> CMCOutcome:
    ok = np.asarray(ok, dtype=bool)
    mean_corr = float(np.mean(np.asarray(cells_corr)[ok])) if ok.any() else 0.0
    return CMCOutcome(int(ok.sum()), tuple(bool(x) for x in ok), *consensus, rule, mean_corr)


def cmc_count(result: DirectionResult, params: CMCParams | None = None) -> CMCOutcome:
    """Original CMC rule on one direction's cells (see module docstring)."""
    p = params or CMCParams()
    cells = result.cells
    corr = np.array([c.corr for c in cells], dtype=float)
    ang = np.array([c.angle_deg for c in cells], dtype=float)
    dy = np.array([c.dy_um for c in cells], dtype=float)
    dx = np.array([c.dx_um for c in cells], dtype=float)
    good = np.isfinite(corr) & (corr >= p.corr_threshold) & np.isfinite(dy) & np.isfinite(dx)
    if not good.any():
        return _outcome(corr, np.zeros(len(cells), bool), (float("nan"),) * 3, "original")
    a0 = _circular_median(ang[good])
    y0 = float(np.median(dy[good]))
    x0 = float(np.median(dx[good]))
    with np.errstate(invalid="ignore"):
        ok = (good & (np.abs(angle_difference(ang, a0)) <= p.angle_threshold_deg)
              & (np.abs(dy - y0) <= p.translation_threshold_um) & (np.abs(dx - x0) <= p.translation_threshold_um))
    return _outcome(corr, ok, (a0, y0, x0), "original")


def high_cmc_count(result: DirectionResult, params: CMCParams | None = None) -> CMCOutcome:
    """High-CMC rule (Tong 2015) on one direction's cells (see module docstring)."""
    p = params or CMCParams()
    cells = result.cells
    if not cells or not cells[0].per_angle:
        return cmc_count(result, p)
    n_ang = min(len(c.per_angle) for c in cells)
    table = np.array([[c.per_angle[k] for k in range(n_ang)] for c in cells], dtype=float)  # (cell, angle, 4)
    angles = table[0, :, 0]
    per_angle_ok = np.zeros((len(cells), n_ang), dtype=bool)
    poses = []
    for k in range(n_ang):
        dy, dx, corr = table[:, k, 1], table[:, k, 2], table[:, k, 3]
        good = np.isfinite(corr) & (corr >= p.corr_threshold) & np.isfinite(dy) & np.isfinite(dx)
        if not good.any():
            poses.append((angles[k], np.nan, np.nan))
            continue
        y0, x0 = float(np.median(dy[good])), float(np.median(dx[good]))
        with np.errstate(invalid="ignore"):
            per_angle_ok[:, k] = (good & (np.abs(dy - y0) <= p.translation_threshold_um)
                                  & (np.abs(dx - x0) <= p.translation_threshold_um))
        poses.append((angles[k], y0, x0))
    counts = per_angle_ok.sum(axis=0)
    kmax = int(np.argmax(counts))
    high = counts >= counts[kmax] - p.high_cmc_tau
    original = cmc_count(result, p)
    if counts[kmax] == 0 or np.any(np.abs(angle_difference(angles[high], angles[kmax])) > p.angle_threshold_deg):
        return CMCOutcome(original.count, original.cmc_mask, original.consensus_angle_deg,
                          original.consensus_dy_um, original.consensus_dx_um, "high-cmc:fallback-original",
                          original.mean_cmc_corr)
    return _outcome(table[:, kmax, 3], per_angle_ok[:, kmax], poses[kmax], "high-cmc")


def decide(count: int, params: CMCParams | None = None) -> bool:
    """Identification (same source) when the CMC count reaches the threshold (default 6)."""
    p = params or CMCParams()
    return int(count) >= p.decision_threshold
