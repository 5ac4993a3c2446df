"""Bullets, step 7: bullet-to-bullet score by sequence average maximum (SAM) over the land phases."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ballistic.bullet.features import LandFeatures, land_features
from ballistic.errors import BulletError

__all__ = ["BulletScore", "PhaseTest", "sequence_average_maximum", "phase_test", "bullet_score",
           "BULLET_SAM_THRESHOLD", "BULLET_PHASE_ALPHA"]


#: Bullet-level decision threshold on the SAM of land ccfs used by the benchmark. Not
#: calibrated: on Hamby 252 and Hamby 44 no different-source land pair reached a ccf of
#: 0.68 and no same-source pair fell below 0.87; 0.8 sits between them.
BULLET_SAM_THRESHOLD = 0.8

#: Significance level of the bullet-level :func:`phase_test` decision in the benchmark
#: (same barrel when the p-value is at most this). A conventional 1 % false-positive
#: rate per comparison under the test's model, not fitted to any set.
BULLET_PHASE_ALPHA = 0.01


class PhaseTest(NamedTuple):
    """Does the best phase of two bullets stand out from the others? (:func:`phase_test`)

    Attributes
    ----------
    contrast : float
        ``best_mean - reference_mean``: the test statistic, in land-score units.
    best_mean : float
        Mean land score of the best phase (the SAM).
    reference_mean : float
        The ``floor(n / 2)``-th smallest phase mean (a typical wrong phase).
    sigma : float
        Standard deviation of one phase mean when no phase is special, estimated
        from the land scores outside the best phase.
    p_value : float
        Probability of a contrast at least this large when no phase is special;
        NaN when ``sigma`` cannot be estimated or a typical phase holds fewer
        than two land pairs (one bullet with a single land: no sequence to test).
    n : int
        Number of phases with a score.
    """

    contrast: float
    best_mean: float
    reference_mean: float
    sigma: float
    p_value: float
    n: int


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
    phase_test : PhaseTest or None
        Whether the best phase stands out from the others (:func:`phase_test`);
        None when it cannot be computed (fewer than two phases with scores).
    """

    sam: float
    phase: int
    phase_scores: np.ndarray
    pairs: list
    scores: np.ndarray
    phase_test: "PhaseTest | None" = None


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


def _phase_contrast_sf(t: float, n: int) -> float:
    """P(max - r-th smallest > t) for ``n`` independent standard normals, r = n // 2.

    With ``C = n! / ((r-1)! (n-r)!)`` the r-th order statistic has density
    ``C F^(r-1) f (1-F)^(n-r)``; given it at x, the contrast stays below t when the
    n - r larger values all fall in (x, x + t], so
    ``P(T > t) = int C F(x)^(r-1) f(x) [(1 - F(x))^(n-r) - (F(x+t) - F(x))^(n-r)] dx``;
    the bracket is expanded as ``c * sum_k a^k (a - c)^(m-1-k)`` (a = 1 - F(x),
    c = 1 - F(x + t), m = n - r), which keeps tiny tails accurate.
    """
    from scipy.special import log_ndtr, ndtr

    if not t > 0:
        return 1.0
    r = n // 2
    m = n - r
    logC = math.lgamma(n + 1) - math.lgamma(r) - math.lgamma(m + 1)
    # the integrand is smooth on the scale of the standard normal: trapezoids 0.005 wide
    x = np.arange(-(t + 12.0), 12.0 + 0.005, 0.005)
    a = ndtr(-x)
    c = ndtr(-(x + t))
    b = np.maximum(a - c, 0.0)
    bracket = c * sum(a ** k * b ** (m - 1 - k) for k in range(m))
    logw = logC + (r - 1) * log_ndtr(x) - 0.5 * x * x - 0.5 * math.log(2.0 * math.pi)
    y = np.exp(logw) * bracket
    val = float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(x)))
    return float(min(1.0, max(0.0, val)))


def phase_test(scores) -> PhaseTest:
    """Phase test of two bullets: does the best phase of the land scores stand out?

    Two bullets fired from one barrel agree land by land in one phase (land ``i``
    of A with land ``(i + k) % n`` of B) and no better than chance in the others;
    which phase is not known beforehand. The test (the phase test of the CSAFE
    bulletxtrctr package, written here from its description) compares the best
    phase mean with the ``floor(n / 2)``-th smallest phase mean:
    ``contrast = best - reference``. When no phase is special the n phase means
    are modelled as independent normals with the spread ``sigma`` of one phase
    mean, estimated as the standard deviation of the land scores outside the best
    phase divided by the square root of the (median) number of scores per phase.
    The p-value is the upper tail of the contrast of the order statistics under
    that model (:func:`_phase_contrast_sf`).

    Unlike SAM itself, the contrast is measured against the same two bullets'
    wrong phases, so it does not depend on how high chance land scores run for a
    scanner, a surface or a worn barrel: on weak striae SAM stays low for mates,
    while the right phase still stands out.

    The p-value needs at least two land pairs in a typical phase (the median
    count): with a single land on one bullet there is no sequence, only the best
    of that land's scores, and the spread of 4 or 5 single scores is too rough
    an estimate; it is NaN then.

    Limits: the land scores of different phases share lands, so the phase means
    are not quite independent (a land that scores high with everything lifts
    every phase alike, which cancels in the contrast); the p-value is a
    screening statistic, not a likelihood ratio.

    Parameters
    ----------
    scores : array_like, shape (n, n)
        Land scores as for :func:`sequence_average_maximum` (NaN = missing).

    Returns
    -------
    PhaseTest

    Raises
    ------
    BulletError
        Not a square matrix, or fewer than two phases with a score.
    """
    S = np.asarray(scores, dtype=np.float64)
    sam, best, ph = sequence_average_maximum(S)
    n = S.shape[0]
    fin = np.isfinite(ph)
    if fin.sum() < 2:
        raise BulletError("phase_test: fewer than two phases have a land score; the test needs at least two "
                          "land positions compared on both bullets")
    srt = np.sort(ph[fin])
    m = int(srt.size)
    ref = float(srt[m // 2 - 1])
    contrast = float(sam - ref)
    i = np.arange(n)
    off = np.concatenate([S[i, (i + k) % n] for k in range(n) if k != best])
    off = off[np.isfinite(off)]
    counts = [int(np.isfinite(S[i, (i + k) % n]).sum()) for k in range(n) if fin[k]]
    per_phase = float(np.median(counts))
    sigma = float(np.std(off, ddof=1) / math.sqrt(per_phase)) if off.size >= 2 else float("nan")
    if per_phase >= 2 and np.isfinite(sigma) and sigma > 0:
        p = _phase_contrast_sf(contrast / sigma, m)
    else:
        p = float("nan")
    return PhaseTest(contrast=contrast, best_mean=float(sam), reference_mean=ref, sigma=sigma, p_value=p, n=m)


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
        SAM, best phase, every phase's average, the land pairs of the best phase,
        the full land-score matrix and the :func:`phase_test` of the matrix.
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
    pt = phase_test(S) if np.isfinite(ph).sum() >= 2 else None
    return BulletScore(sam=sam, phase=phase, phase_scores=ph, pairs=pairs, scores=S, phase_test=pt)
