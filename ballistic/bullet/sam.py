"""Bullets, step 7: bullet-to-bullet score by sequence average maximum (SAM) over the land phases."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ballistic.bullet.features import LandFeatures, land_features
from ballistic.errors import BulletError

__all__ = ["BulletScore", "sequence_average_maximum", "bullet_score", "BULLET_SAM_THRESHOLD"]


#: Bullet-level decision threshold on the SAM of land ccfs used by the benchmark. Not
#: calibrated: on Hamby 252 and Hamby 44 no different-source land pair reached a ccf of
#: 0.68 and no same-source pair fell below 0.87; 0.8 sits between them.
BULLET_SAM_THRESHOLD = 0.8


@dataclass(frozen=True, eq=False)
class BulletScore:
    """Bullet-to-bullet comparison by sequence average maximum (SAM).

    Attributes
    ----------
    sam : float
        Highest phase average of land scores.
    phase : int
        The best phase ``k``: land ``i`` of bullet A pairs with land ``(i + k) % n``
        of bullet B.
    phase_scores : ndarray, shape (n,)
        Average land score for each phase (NaN where no land pair exists).
    pairs : list of (int, int, float)
        The land pairs (index in A, index in B, land score) of the best phase.
    scores : ndarray, shape (n, n)
        All land scores (NaN where a land is missing).
    """

    sam: float
    phase: int
    phase_scores: np.ndarray
    pairs: list
    scores: np.ndarray


def sequence_average_maximum(scores) -> tuple[float, int, np.ndarray]:
    """Sequence average maximum of an (n, n) land-score matrix.

    ``scores[i, j]`` compares land ``i`` of bullet A with land ``j`` of bullet B
    (NaN where either land is missing). Phase ``k`` pairs ``i`` with
    ``(i + k) % n``; its score is the mean of the finite scores of those pairs.

    Returns
    -------
    (sam, phase, phase_scores)
        The best phase average, the best phase and every phase's average (NaN
        where a phase has no finite pair).
    """
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise BulletError(f"sequence_average_maximum: need a square (n, n) land-score matrix, got shape {S.shape}; "
                          "give both bullets the same number of land positions (None for a missing land)")
    n = S.shape[0]
    i = np.arange(n)
    phase_scores = np.full(n, np.nan)
    for k in range(n):
        v = S[i, (i + k) % n]
        v = v[np.isfinite(v)]
        if v.size:
            phase_scores[k] = float(v.mean())
    if not np.isfinite(phase_scores).any():
        raise BulletError("sequence_average_maximum: no pair of lands has a score; both bullets need at least "
                          "one usable land")
    k = int(np.nanargmax(phase_scores))
    return float(phase_scores[k]), k, phase_scores


def bullet_score(lands_a: Sequence, lands_b: Sequence, *,
                 features: Callable[..., LandFeatures] | None = None, **feature_kw) -> BulletScore:
    """Compare two bullets land by land and score them by sequence average maximum.

    Parameters
    ----------
    lands_a, lands_b : sequence, same length n
        The lands of each bullet in their order around the bullet: each a
        Signature, a list of Signatures (one land at several heights,
        :func:`land_signatures`), or ``None`` for a land that is missing or too
        damaged to use (keeps the positions right).
    features : callable, keyword-only
        Land comparison returning :class:`LandFeatures` (default :func:`land_features`).
    **feature_kw
        Passed to ``features``.

    Returns
    -------
    BulletScore
        SAM, best phase, every phase's average, the land pairs of the best phase
        and the full land-score matrix.
    """
    if len(lands_a) != len(lands_b):
        raise BulletError(f"bullet_score: bullets have {len(lands_a)} and {len(lands_b)} land positions; pass "
                          "the same number (None for a missing land) so phases line up")
    fn = land_features if features is None else features
    n = len(lands_a)
    S = np.full((n, n), np.nan)
    for i, la in enumerate(lands_a):
        for j, lb in enumerate(lands_b):
            if la is not None and lb is not None:
                S[i, j] = fn(la, lb, **feature_kw).score
    sam, phase, ph = sequence_average_maximum(S)
    idx = np.arange(n)
    pairs = [(int(i), int((i + phase) % n), float(S[i, (i + phase) % n])) for i in idx
             if np.isfinite(S[i, (i + phase) % n])]
    return BulletScore(sam=sam, phase=phase, phase_scores=ph, pairs=pairs, scores=S)
