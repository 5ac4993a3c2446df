"""Bullets: land engraved areas (LEAs) from 3D scans, signatures, land and bullet scores.

The pipeline follows the open CSAFE approach (Hare, Hofmann & Carriquiry 2017;
the R packages bulletxtrctr and grooveFinder), written from the papers'
descriptions:

1. :func:`estimate_striation_direction` / :func:`orient_striae` - find whether
   the striae run along x or y (with a confidence; an ambiguous scan gets a
   documented default and a flag, never an exception) and turn the scan (a
   rotation, never a mirror) so that they run along **x**. Convention used everywhere below: striae along x, so a
   *crosscut* is a column (or a band of columns) and a *profile* runs down the
   rows, across the land; profile position ``k`` is ``k * spacing_um`` um from
   row 0.
2. :func:`choose_crosscut` - the position along the striae where consecutive
   crosscuts stay most alike (away from break-off and damage); the profile is
   the mean of a band of columns there.
3. :func:`locate_grooves` - the groove engraved areas (shoulders) at both ends
   of the profile: departures from a robust quadratic fitted to the middle of
   the land.
4. :func:`extract_signature` - between the grooves: robust quadratic (curvature)
   removed, Gaussian high-pass (long cut-off) and low-pass (short cut-off), NaN
   kept as missing.
5. :func:`align_signatures` - NaN-aware cross-correlation with a minimum overlap.
6. :func:`land_features` / :func:`land_score` - ccf, consecutive matching striae
   (CMS), matches and mismatches per mm, distance D, sum of peaks... and a
   transparent score.
7. :func:`bullet_score` - sequence average maximum (SAM) over the phase of the
   land sequences, and the :func:`phase_test`: does the best phase stand out
   from the bullets' other phases (land correspondence unknown)?
8. :func:`bullet_descriptor` - a fixed-length, shift-invariant vector for the
   retrieval index.

:func:`land_signature` runs steps 1-4 on one scan (one crosscut);
:func:`land_signatures` does so at many heights along the land (grooves made
consistent along the land), and
:func:`land_features` given two such lists keeps the best-matching pair of
heights. That is what the benchmark uses: the striae of a land change along its
length, and on Hamby 44 Barrel 1, Bullet 1 Land 6 agrees with its mate only in
a band about 300 um from one end, while its single most stable crosscut lies
elsewhere (ccf 0.38 with the one-crosscut pipeline, 0.87 with the many-heights
one). :func:`run_bullet_bench` is the labelled benchmark behind
``ballistic bench bullet``.

A measured land always gets a signature: weak or ambiguous striae, grooves that
cannot be located or a scan without a stable crosscut lead to documented
fallbacks, and the signature carries ``low_confidence``, ``meta["flags"]`` (why)
and a ``quality`` in [0, 1]. Only scans without a usable land (no measured
points, fewer than 32 measured rows across the land, sampled coarser than the
signature's short cut-off) raise :class:`UnusableLandError`.

Measured (``ballistic bench bullet ../shared/data/bullet --labels
../shared/data/bullet/labels.csv --json out/bullet.json``): land score = ccf;
Hamby 252 (11 lands, 4 same-source pairs of 55) same-source min 0.910 vs
different-source max 0.670; Hamby 44 (12 lands, 6 of 66) 0.871 vs 0.627: AUC 1
in both, no failing pair. Bullet SAM: same barrel 0.934 (Hamby 252, phase 2;
phase test p = 4e-16) and 0.927 (Hamby 44, phase 4; p = 1e-40), the
different-barrel Hamby 252 Barrel 2 land 0.577 and 0.623 (a single land: no
phase test).

Houston (``--labels ../shared/data/bullet/houston/labels.csv --grooves
../shared/data/bullet/houston/grooves.csv``; Sensofar, Ruger LCP, worn
barrels, land correspondence unknown): 30 of 30 lands give signatures (9 were
refused before the mounting tilt was removed from the direction test). SAM
does not separate the barrels (same barrel 0.539-0.721, different barrels
0.484-0.566; none reaches 0.8); the phase test calls the three barrel-A pairs
(p = 2e-5, 5e-7, 5e-12) and no different-barrel pair (p >= 0.51), and misses the
barrel-B pair (p = 0.65). Grooves against the six manual ones: median error 97
um, at most 241 um, ours on average 74 um further out.

All lengths are micrometres (um); NaN means "not measured". Functions are
stateless, take the data first, never mutate their inputs and raise
:class:`BulletError` with a message that says how to fix the problem.
"""
from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import scipy.ndimage as ndi

from ballistic import _bullet_kernels as _bk
from ballistic.surface import Surface

__all__ = [
    "BulletError",
    "UnusableLandError",
    "StriationDirection",
    "PhaseTest",
    "Crosscut",
    "Grooves",
    "Signature",
    "Alignment",
    "LandFeatures",
    "BulletScore",
    "striation_direction",
    "estimate_striation_direction",
    "orient_striae",
    "choose_crosscut",
    "locate_grooves",
    "extract_signature",
    "land_signature",
    "land_signatures",
    "align_signatures",
    "land_features",
    "land_score",
    "LAND_SCORE_MODEL",
    "sequence_average_maximum",
    "phase_test",
    "bullet_score",
    "bullet_descriptor",
    "BULLET_DESCRIPTOR_VERSION",
    "BULLET_DESCRIPTOR_DIM",
    "BULLET_SAM_THRESHOLD",
    "BULLET_PHASE_ALPHA",
    "read_manual_grooves",
    "read_bullet_labels",
    "run_bullet_bench",
    "format_bullet_summary",
]

# ISO 16610-21 Gaussian: sigma = cutoff * sqrt(ln 2 / 2) / pi
_SIGMA_PER_CUTOFF = math.sqrt(math.log(2.0) / 2.0) / math.pi


class BulletError(ValueError):
    """A bullet scan, profile or signature cannot be processed as asked."""


class UnusableLandError(BulletError):
    """The scan holds no usable land engraved area at all: no measured points, too few
    measured neighbours, or too small to take a profile across. Weak striae, an
    ambiguous striation direction or grooves that cannot be found are *not* this
    error: :func:`land_signature` / :func:`land_signatures` then fall back to a
    documented default and flag the signature (``Signature.low_confidence``)."""


# --------------------------------------------------------------------------- result types
@dataclass(frozen=True, eq=False)
class Crosscut:
    """A profile across the land, averaged over a band of columns (striae along x).

    Attributes
    ----------
    profile : ndarray, shape (ny,)
        Heights in um down the rows of the oriented scan; NaN where missing.
    spacing_um : float
        Sample spacing of ``profile`` in um.
    position_um : float
        Centre of the band along x (um from the left edge of column 0).
    band_um : float
        Width of the averaged band along x, um.
    stability : float
        Cross-correlation of the quick signatures of this crosscut and its
        neighbours (the smaller of the two), in [-1, 1]; NaN if not computed.
    candidates_um, candidate_stability : ndarray, shape (k,)
        Every position examined and its stability (NaN where unusable).
    """

    profile: np.ndarray
    spacing_um: float
    position_um: float
    band_um: float
    stability: float = float("nan")
    candidates_um: np.ndarray = field(default_factory=lambda: np.empty(0))
    candidate_stability: np.ndarray = field(default_factory=lambda: np.empty(0))


class Grooves(NamedTuple):
    """Positions (um from profile sample 0) of the inner edges of the left and right
    groove engraved areas; the land engraved area lies between them."""

    left_um: float
    right_um: float


@dataclass(frozen=True, eq=False)
class Signature:
    """A land signature: the striation profile between the grooves.

    Attributes
    ----------
    values : ndarray, shape (n,)
        Heights in um (form and waviness removed, noise smoothed); NaN = missing.
    spacing_um : float
        Sample spacing, um.
    start_um : float
        Position of ``values[0]`` along the crosscut profile it came from, um.
    meta : dict
        Provenance (source, crosscut position, grooves); never used in computations.
    """

    values: np.ndarray
    spacing_um: float
    start_um: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def length_um(self) -> float:
        """Length covered by ``values`` (n * spacing_um), um."""
        return self.values.shape[0] * self.spacing_um

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.values).mean()) if self.values.size else 0.0

    @property
    def quality(self) -> float:
        """Quality of the land this signature came from, in [0, 1] (``meta["quality"]``,
        set by :func:`land_signature` / :func:`land_signatures`; NaN when unknown):
        the smallest of the striation-direction confidence, the crosscut stability
        (clipped at 0) and the measured fraction of the signature."""
        q = self.meta.get("quality")
        return float(q) if q is not None else float("nan")

    @property
    def low_confidence(self) -> bool:
        """True when a fallback was used or the striae are weak (``meta["flags"]`` says
        why; see :func:`land_signatures`)."""
        return bool(self.meta.get("low_confidence", False))


@dataclass(frozen=True, eq=False)
class Alignment:
    """Best alignment of signature ``b`` on signature ``a``.

    ``b[j]`` sits on ``a[j + lag]`` with ``lag = lag_um / spacing_um`` samples.
    ``ccf`` is the pairwise-complete Pearson correlation there, ``overlap_um``
    the length both signatures measured (jointly finite samples * spacing).
    ``lags_um`` and ``ccfs`` hold the whole cross-correlation function.
    """

    lag_um: float
    ccf: float
    overlap_um: float
    spacing_um: float
    lags_um: np.ndarray
    ccfs: np.ndarray

    @property
    def lag(self) -> int:
        """The lag in samples."""
        return int(round(self.lag_um / self.spacing_um))


@dataclass(frozen=True)
class LandFeatures:
    """Land-to-land features of two aligned signatures (see :func:`land_features`).

    Lengths in um, rates per mm of overlap.
    """

    ccf: float
    lag_um: float
    overlap_um: float
    overlap_fraction: float
    distance_um: float
    distance_sd_um: float
    matches: int
    mismatches: int
    cms: int
    non_cms: int
    matches_per_mm: float
    mismatches_per_mm: float
    cms_per_mm: float
    non_cms_per_mm: float
    sum_peaks_per_mm: float
    crosscut_a_um: float
    crosscut_b_um: float
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


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


# --------------------------------------------------------------------------- small helpers
def _as_surface(surface: Surface, what: str) -> Surface:
    if not isinstance(surface, Surface):
        raise BulletError(f"{what}: expected a ballistic.surface.Surface (e.g. from ballistic.io.read_x3p), "
                          f"got {type(surface).__name__}")
    if surface.valid_fraction == 0.0:
        raise UnusableLandError(f"{what}: the surface has no measured points; check the scan is not empty")
    return surface


def _gauss1d(z: np.ndarray, cutoff_um: float, spacing_um: float, *, min_weight: float) -> np.ndarray:
    """Mask-aware 1-D Gaussian low-pass (normalized convolution); NaN where the valid
    weight is below ``min_weight`` or the input was NaN."""
    m = np.isfinite(z)
    sigma = cutoff_um * _SIGMA_PER_CUTOFF / spacing_um
    z0 = np.where(m, z, 0.0)
    num = ndi.gaussian_filter1d(z0, sigma, mode="constant", truncate=3.0)
    den = ndi.gaussian_filter1d(m.astype(np.float64), sigma, mode="constant", truncate=3.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(m & (den >= min_weight), out, np.nan)


def _robust_poly1d(z: np.ndarray, seed: np.ndarray, *, order: int = 2, k: float = 3.0,
                   iterations: int = 20) -> tuple[np.ndarray, np.ndarray, float]:
    """Iteratively trimmed polynomial fit of ``z`` (NaN = missing).

    Starts from the points ``seed``; each pass keeps the finite points within
    ``k`` robust standard deviations (1.4826 MAD of the current inliers) of the
    fit. Returns (fit over the whole index range, inliers, robust sigma).
    """
    n = z.shape[0]
    x = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) / max(n, 1)
    m = np.isfinite(z)
    inl = seed & m
    fit = np.zeros(n)
    sigma = float("nan")
    for _ in range(max(1, iterations)):
        if inl.sum() <= order + 1:
            break
        coef = np.polyfit(x[inl], z[inl], order)
        fit = np.polyval(coef, x)
        r = z - fit
        sigma = 1.4826 * float(np.median(np.abs(r[inl])))
        if not np.isfinite(sigma) or sigma <= 0:
            break
        with np.errstate(invalid="ignore"):
            new = m & (np.abs(r) <= k * sigma)
        if np.array_equal(new, inl):
            break
        inl = new
    return fit, inl, sigma


def _profile_and_spacing(profile, spacing_um, what: str) -> tuple[np.ndarray, float]:
    if isinstance(profile, (Crosscut, Signature)):
        sp = profile.spacing_um
        z = profile.profile if isinstance(profile, Crosscut) else profile.values
        if spacing_um is not None and abs(float(spacing_um) - sp) > 1e-9 * sp:
            raise BulletError(f"{what}: spacing_um={spacing_um} contradicts the {type(profile).__name__}'s own "
                              f"spacing ({sp} um); leave spacing_um out for Crosscut / Signature inputs")
    else:
        if spacing_um is None:
            raise BulletError(f"{what}: a plain array carries no spacing; pass spacing_um= (um per sample) "
                              "or give a Crosscut / Signature")
        sp = float(spacing_um)
        z = profile
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1:
        raise BulletError(f"{what}: expected a 1-D profile, got shape {z.shape}; take a crosscut first "
                          "(choose_crosscut)")
    if not (np.isfinite(sp) and sp > 0):
        raise BulletError(f"{what}: spacing_um must be a positive number of um, got {sp!r}")
    z = np.where(np.isfinite(z), z, np.nan)
    return z, sp


# --------------------------------------------------------------------------- 1. direction
class _NoStableCrosscut(BulletError):
    """choose_crosscut found no two neighbouring crosscuts to compare (data, not parameters)."""


class StriationDirection(NamedTuple):
    """Where the striae of a land scan run, and how sure that is (see
    :func:`estimate_striation_direction`).

    Attributes
    ----------
    direction : {"x", "y"}
        The direction used: ``"x"`` when the striae run along x (heights vary down
        the rows), ``"y"`` when they run along y.
    confidence : float
        ``1 - weaker / stronger`` of the two directional height-change energies, in
        [0, 1]: 0 for an isotropic surface, near 1 for clear striae.
    anisotropy : float
        ``stronger / weaker`` energy (>= 1; NaN when both are 0).
    data_direction : {"x", "y"}
        The direction the energies point to, however weakly.
    aspect_direction : {"x", "y"} or None
        The direction the scan's shape points to: a land engraved area is scanned
        wider across the land than along it, so the striae run along the shorter
        side; None when the sides differ by less than ``min_aspect``.
    source : {"data", "aspect", "data-weak"}
        What decided: the energies (``anisotropy >= min_ratio``), the scan's aspect
        ratio (energies ambiguous), or the energies' weak vote (both ambiguous).
    low_confidence : bool
        True unless ``source == "data"``.
    """

    direction: str
    confidence: float
    anisotropy: float
    data_direction: str
    aspect_direction: str | None
    source: str
    low_confidence: bool


def estimate_striation_direction(surface: Surface, *, lag_um: float = 6.25, min_ratio: float = 2.0,
                                 min_aspect: float = 1.5) -> StriationDirection:
    """Estimate whether the striae of a land scan run along x or along y, with a confidence.

    Across the striae the heights change fast (striae and the curvature of the
    land); along them slowly. The height differences over ``lag_um`` are taken
    along x and along y, each direction's median difference (the tilt of the
    mounted bullet, a plane, which says nothing about the striae: a land tilted
    along its striae would otherwise look striated the wrong way) is removed, and
    the median squared remainder along y is compared with that along x (medians:
    spikes and dropouts do not count).

    This never refuses a measured land for being ambiguous. When the two energies
    differ by less than ``min_ratio`` times, the scan's aspect ratio decides (a land
    engraved area is scanned wider across the land than along it, as the CSAFE
    tools assume when they turn a scan whose x side is the shorter one); when the
    scan is about square too, the energies' weak vote decides. Either way
    ``low_confidence`` is set and ``confidence`` says how weak the striae are.

    Parameters
    ----------
    surface : Surface
        A land engraved area scan, heights in um (NaN = missing).
    lag_um : float, keyword-only
        Distance over which differences are taken, um (at least one pixel). A few
        um avoids the pixel-scale noise, which is the same in both directions.
    min_ratio : float, keyword-only
        The stronger energy must exceed the weaker this many times for the data
        alone to decide.
    min_aspect : float, keyword-only
        The longer side of the scan must exceed the shorter this many times for the
        aspect ratio to count.

    Returns
    -------
    StriationDirection

    Raises
    ------
    UnusableLandError
        The scan has no measured points, is too small for the lag, or has fewer than
        16 pairs of measured neighbours in either direction.
    """
    s = _as_surface(surface, "estimate_striation_direction")
    if not min_ratio > 1.0:
        raise BulletError(f"estimate_striation_direction: min_ratio must be > 1, got {min_ratio!r}")
    if not min_aspect >= 1.0:
        raise BulletError(f"estimate_striation_direction: min_aspect must be >= 1, got {min_aspect!r}")
    step = max(1, int(round(lag_um / s.spacing_um)))
    h = s.heights
    if h.shape[0] <= step or h.shape[1] <= step:
        raise UnusableLandError(f"estimate_striation_direction: a scan of shape {h.shape} is too small for a lag "
                                f"of {step} pixels; lower lag_um or check the scan")
    with np.errstate(invalid="ignore"):
        gx = h[:, step:] - h[:, :-step]
        gy = h[step:, :] - h[:-step, :]
    gx = gx[np.isfinite(gx)]
    gy = gy[np.isfinite(gy)]
    if gx.size < 16 or gy.size < 16:
        raise UnusableLandError("estimate_striation_direction: fewer than 16 pairs of measured neighbours; the "
                                "scan is (nearly) empty")
    # the tilt (a location) from every 4th difference is plenty; the energies use them all
    ex = float(np.median((gx - np.median(gx[::4])) ** 2))
    ey = float(np.median((gy - np.median(gy[::4])) ** 2))
    hi, lo = max(ex, ey), min(ex, ey)
    anis = hi / lo if lo > 0 else (float("inf") if hi > 0 else float("nan"))
    conf = 1.0 - lo / hi if hi > 0 else 0.0
    data_dir = "x" if ey > ex else "y"
    ny, nx = h.shape
    aspect_dir = None
    if max(ny, nx) >= min_aspect * min(ny, nx):
        aspect_dir = "x" if nx < ny else "y"     # striae along the shorter side
    if np.isfinite(anis) and anis >= min_ratio:
        return StriationDirection(data_dir, conf, anis, data_dir, aspect_dir, "data", False)
    if aspect_dir is not None:
        return StriationDirection(aspect_dir, conf, anis, data_dir, aspect_dir, "aspect", True)
    return StriationDirection(data_dir, conf, anis, data_dir, aspect_dir, "data-weak", True)


def striation_direction(surface: Surface, *, lag_um: float = 6.25, min_ratio: float = 2.0) -> str:
    """Whether the striae of a land scan run along ``"x"`` or ``"y"``.

    The direction of :func:`estimate_striation_direction` (which also says how
    sure it is). An ambiguous scan gets a principled default, never an exception:
    see there.

    Raises
    ------
    UnusableLandError
        Only for scans without enough measured points.
    """
    return estimate_striation_direction(surface, lag_um=lag_um, min_ratio=min_ratio).direction


def orient_striae(surface: Surface, *, direction: str | None = None) -> Surface:
    """Return the scan turned so that its striae run along x.

    Parameters
    ----------
    surface : Surface
        Land scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Where the striae run in ``surface``; estimated with
        :func:`estimate_striation_direction` when None.

    Returns
    -------
    Surface
        The same surface when the striae already run along x; otherwise rotated
        by 90 degrees clockwise as displayed (``np.rot90(h, -1)``: a rotation,
        not a mirror, so two scans of one land stay comparable): column ``j`` of
        the input becomes row ``j`` of the output, i.e. the profile across the
        land keeps its order. ``meta`` records ``striae_rotated_deg`` (0 or -90),
        ``striae_direction`` (in the input), ``direction_source`` (``"given"`` or
        the estimate's source), ``direction_confidence`` (NaN when given) and
        ``direction_low_confidence``.
    """
    s = _as_surface(surface, "orient_striae")
    if direction is None:
        est = estimate_striation_direction(s)
        d, info = est.direction, dict(direction_source=est.source, direction_confidence=est.confidence,
                                      direction_low_confidence=est.low_confidence)
    elif direction in ("x", "y"):
        d, info = direction, dict(direction_source="given", direction_confidence=float("nan"),
                                  direction_low_confidence=False)
    else:
        raise BulletError(f"orient_striae: direction must be 'x', 'y' or None, got {direction!r}")
    if d == "x":
        return s.with_heights(s.heights, striae_rotated_deg=0, striae_direction=d, **info)
    return s.with_heights(np.ascontiguousarray(np.rot90(s.heights, -1)), striae_rotated_deg=-90,
                          striae_direction=d, **info)


# --------------------------------------------------------------------------- 2. crosscut
def _quick_signature(z: np.ndarray, spacing_um: float, *, trim: float, long_cutoff_um: float,
                     short_cutoff_um: float) -> np.ndarray:
    """Middle of a profile (``trim`` cut at each end of its measured extent) with a
    robust quadratic removed and band-passed; NaN elsewhere."""
    out = np.full_like(z, np.nan)
    idx = np.flatnonzero(np.isfinite(z))
    if idx.size < 16:
        return out
    lo, hi = idx[0], idx[-1] + 1
    a = lo + int(trim * (hi - lo))
    b = hi - int(trim * (hi - lo))
    if b - a < 16:
        return out
    seg = z[a:b]
    if np.isfinite(seg).sum() < 16:
        return out
    fit, _, _ = _robust_poly1d(seg, np.isfinite(seg), order=2)
    r = seg - fit
    r = r - _gauss1d(r, long_cutoff_um, spacing_um, min_weight=1e-3)
    out[a:b] = _gauss1d(r, short_cutoff_um, spacing_um, min_weight=0.5)
    return out


def choose_crosscut(surface: Surface, *, band_um: float = 25.0, step_um: float = 25.0,
                    edge_um: float = 50.0, max_lag_um: float = 25.0, max_missing: float = 0.5,
                    min_ccf: float = 0.9, heel: str | None = None,
                    check_direction: bool = True) -> Crosscut:
    """Choose a stable crosscut of a land scan (striae along x) and average a band there.

    Crosscuts (bands of ``band_um`` columns) are taken every ``step_um`` along x.
    Each one's middle (the outer 15 % of its measured extent, where the grooves
    are, dropped) is reduced to a quick signature (robust quadratic removed,
    250 um / 6.25 um Gaussian band-pass). The stability of a crosscut is the
    smaller of its cross-correlations (lags within ``max_lag_um``) with its two
    neighbours: where the land is damaged, at the break-off at the heel, or
    where the scan is mostly missing, consecutive crosscuts disagree.

    Parameters
    ----------
    surface : Surface
        Land scan with striae along x (see :func:`orient_striae`), heights in um.
    band_um : float, keyword-only
        Width along x of the band of columns averaged into the profile, um.
    step_um : float, keyword-only
        Distance between candidate crosscuts, um.
    edge_um : float, keyword-only
        Candidates stay this far from both ends of the scan along x, um.
    max_lag_um : float, keyword-only
        Largest shift between neighbouring crosscuts searched, um.
    max_missing : float, keyword-only
        Candidates whose middle is missing more than this fraction are skipped.
    min_ccf : float, keyword-only
        With ``heel`` given: the first candidate from the heel whose stability
        reaches ``min_ccf`` is taken (as bulletxtrctr's ``x3p_crosscut_optimize``:
        striae are best expressed near the heel).
    heel : {"start", "end"} or None, keyword-only
        The end of the x axis (column 0 or the last column) at the heel of the
        bullet, if known. ``None`` (default) takes the most stable candidate.
    check_direction : bool, keyword-only
        Verify with :func:`estimate_striation_direction` that the striae run along
        x (only a confident estimate of y is refused).

    Returns
    -------
    Crosscut
        ``profile`` (shape (ny,), um) averaged over the band (a row needs half
        of the band measured, otherwise NaN) and where it was taken.

    Raises
    ------
    BulletError
        Striae along y, scan too short for the band, or no usable candidate.
    """
    s = _as_surface(surface, "choose_crosscut")
    if heel not in (None, "start", "end"):
        raise BulletError(f"choose_crosscut: heel must be 'start', 'end' or None, got {heel!r}")
    if check_direction:
        est = estimate_striation_direction(s)
        if est.direction != "x" and not est.low_confidence:
            raise BulletError("choose_crosscut: the striae of this scan run along y; call orient_striae(surface) "
                              "first (or pass check_direction=False if you are sure)")
    starts, width, profiles, stab, _ = _crosscut_candidates(s, band_um=band_um, step_um=step_um, edge_um=edge_um,
                                                         max_lag_um=max_lag_um, max_missing=max_missing)
    K = len(starts)
    if not np.isfinite(stab).any():
        raise _NoStableCrosscut("choose_crosscut: no two neighbouring crosscuts could be compared (too much "
                                "missing data or a scan too short along x); lower step_um / edge_um / max_missing, "
                                "or check the scan")
    best = int(np.nanargmax(stab))
    if heel is not None:
        order = range(K) if heel == "start" else range(K - 1, -1, -1)
        for k in order:
            if np.isfinite(stab[k]) and stab[k] >= min_ccf:
                best = k
                break
    sp = s.spacing_um
    centres = (starts + width / 2.0) * sp
    return Crosscut(profile=profiles[best].copy(), spacing_um=sp, position_um=float(centres[best]),
                    band_um=width * sp, stability=float(stab[best]), candidates_um=centres,
                    candidate_stability=stab)


def _crosscut_candidates(s: Surface, *, band_um: float, step_um: float, edge_um: float, max_lag_um: float,
                         max_missing: float) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, float]:
    """Band profiles every ``step_um`` along x and their stability (see :func:`choose_crosscut`).

    Returns (first column of each band, band width in px, profiles (K, ny), stability (K,)
    with NaN for unusable candidates, tilt). ``tilt`` is the median drift of the
    striae across the land per um along them (um/um, from the lag at which
    neighbouring crosscuts agree best; NaN when no neighbours could be compared):
    a stria at row ``r`` of one crosscut lies at about ``r + tilt * d / spacing``
    ``d`` um further along x."""
    for name, v in (("band_um", band_um), ("step_um", step_um), ("max_lag_um", max_lag_um)):
        if not (np.isfinite(v) and v > 0):
            raise BulletError(f"{name} must be a positive length in um, got {v!r}")
    if not (np.isfinite(edge_um) and edge_um >= 0):
        raise BulletError(f"edge_um must be a length >= 0 um, got {edge_um!r}")
    if not 0.0 <= max_missing < 1.0:
        raise BulletError(f"max_missing must be a fraction in [0, 1), got {max_missing!r}")
    sp = s.spacing_um
    ny, nx = s.shape
    width = max(1, int(round(band_um / sp)))
    if width > nx:
        raise BulletError(f"the crosscut band ({band_um} um = {width} px) is wider than the scan ({nx} px along "
                          "x); lower band_um")
    step = max(1, int(round(step_um / sp)))
    edge = max(0, int(round(edge_um / sp)))
    first = min(edge, max(0, (nx - width) // 2))
    last = max(first, nx - width - first)
    starts = np.arange(first, last + 1, step, dtype=np.int64)
    h = np.ascontiguousarray(s.heights, dtype=np.float64)
    profiles = _bk.band_profiles(h, starts, width, max(1, (width + 1) // 2))
    quick = [_quick_signature(p, sp, trim=0.15, long_cutoff_um=250.0, short_cutoff_um=6.25) for p in profiles]
    need = max(32.0, (1.0 - max_missing) * 0.7 * ny)
    usable = np.array([np.isfinite(q).sum() >= need for q in quick], dtype=bool)
    K = len(starts)
    maxlag = max(1, int(round(max_lag_um / sp)))
    lags = np.arange(-maxlag, maxlag + 1, dtype=np.int64)
    pair = np.full(max(K - 1, 0), np.nan)
    drift = np.full(max(K - 1, 0), np.nan)
    for k in range(K - 1):
        if usable[k] and usable[k + 1]:
            c, _ = _bk.ccf_at_lags(quick[k], quick[k + 1], lags, 32)
            if np.isfinite(c).any():
                j = int(np.nanargmax(c))
                pair[k] = float(c[j])
                # quick[k+1][i] sits on quick[k][i + lag]: the striae move by -lag rows per step
                drift[k] = -float(lags[j]) / float(starts[k + 1] - starts[k])
    stab = np.full(K, np.nan)
    for k in range(K):
        if usable[k]:
            nb = [pair[j] for j in (k - 1, k) if 0 <= j < K - 1 and np.isfinite(pair[j])]
            if nb:
                stab[k] = min(nb)
    tilt = float(np.median(drift[np.isfinite(drift)])) if np.isfinite(drift).any() else float("nan")
    return starts, width, profiles, stab, tilt


# --------------------------------------------------------------------------- 3. grooves
def locate_grooves(profile, *, spacing_um: float | None = None, smooth_um: float = 25.0, k: float = 5.0,
                   min_threshold_um: float = 5.0, min_run_um: float = 20.0, margin_um: float = 10.0,
                   min_land_fraction: float = 0.3) -> Grooves:
    """Locate the groove engraved areas (shoulders) at both ends of a crosscut profile.

    The land engraved area is close to an arc; at the grooves the profile leaves
    it (the shoulders rise, the land's edge rolls off, or the scan stops). So a
    quadratic is fitted robustly to the land (seeded on the middle half of the
    measured extent, then iteratively trimmed at 3 robust sigma), and from the
    middle outwards each side stops at the first run of at least ``min_run_um``
    where the (lightly smoothed) profile departs from it by more than
    ``max(k * sigma, min_threshold_um)`` or is missing.

    Parameters
    ----------
    profile : Crosscut or ndarray, shape (n,)
        Heights across the land in um, NaN = missing.
    spacing_um : float, keyword-only
        Sample spacing in um; required for a plain array.
    smooth_um : float, keyword-only
        Gaussian cut-off applied before thresholding, um.
    k, min_threshold_um : float, keyword-only
        Departure threshold: ``max(k * sigma, min_threshold_um)`` um, sigma being
        the robust standard deviation of the residuals on the land.
    min_run_um : float, keyword-only
        A departure must last this long (um) to count; shorter ones are striae.
    margin_um : float, keyword-only
        Each groove edge is moved this far towards the middle, um.
    min_land_fraction : float, keyword-only
        The land between the grooves must cover at least this fraction of the
        measured extent; otherwise the grooves are not trusted.

    Returns
    -------
    Grooves
        ``(left_um, right_um)``, positions from profile sample 0 in um, with
        ``left_um < right_um``.

    Raises
    ------
    BulletError
        Too few measured points, or grooves that would leave less than
        ``min_land_fraction`` of the profile (pass grooves yourself then).
    """
    z, sp = _profile_and_spacing(profile, spacing_um, "locate_grooves")
    m = np.isfinite(z)
    idx = np.flatnonzero(m)
    if idx.size < 32:
        raise BulletError(f"locate_grooves: the profile has {idx.size} measured points, need at least 32; "
                          "choose another crosscut")
    lo, hi = int(idx[0]), int(idx[-1])
    extent = hi - lo + 1
    zs = _gauss1d(z, smooth_um, sp, min_weight=0.5) if smooth_um and smooth_um > 0 else z
    seed = np.zeros_like(m)
    seed[lo + extent // 4: hi + 1 - extent // 4] = True
    fit, inl, _ = _robust_poly1d(zs, seed & np.isfinite(zs), order=2, k=3.0)
    r = zs - fit
    mid_r = r[seed & np.isfinite(r)]
    if mid_r.size < 16:
        raise BulletError("locate_grooves: the middle of the profile is mostly missing; choose another crosscut")
    sigma = 1.4826 * float(np.median(np.abs(mid_r - np.median(mid_r))))
    thr = max(k * sigma, min_threshold_um)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(r) | (np.abs(r) > thr)
    run = max(1, int(round(min_run_um / sp)))
    centre = (lo + hi) // 2
    if bad[centre]:
        good_mid = np.flatnonzero(~bad & seed)
        if good_mid.size == 0:
            raise BulletError("locate_grooves: no part of the middle of the profile follows the land's arc; "
                              "choose another crosscut or pass grooves yourself")
        centre = int(good_mid[np.argmin(np.abs(good_mid - centre))])

    def walk(direction: int) -> int:
        i = centre
        last_good = centre
        count = 0
        while 0 <= i < z.shape[0]:
            if bad[i]:
                count += 1
                if count >= run:
                    break
            else:
                count = 0
                last_good = i
            i += direction
        return last_good

    left = walk(-1)
    right = walk(+1)
    margin = margin_um / sp
    left_px = left + margin
    right_px = right - margin
    if right_px - left_px < min_land_fraction * extent:
        raise BulletError(
            f"locate_grooves: the grooves found ({left_px * sp:.0f} um, {right_px * sp:.0f} um) leave less than "
            f"{min_land_fraction:.0%} of the measured {extent * sp:.0f} um; the crosscut is probably damaged - "
            "choose another crosscut or pass Grooves(left_um, right_um) yourself")
    return Grooves(float(left_px * sp), float(right_px * sp))


# --------------------------------------------------------------------------- 4. signature
def extract_signature(profile, grooves: Grooves | tuple[float, float], *, spacing_um: float | None = None,
                      long_cutoff_um: float = 250.0, short_cutoff_um: float = 6.25,
                      min_valid: float = 0.5) -> Signature:
    """Signature of a land: the crosscut between the grooves, form and noise removed.

    1. keep the samples between ``grooves`` (inclusive);
    2. subtract a robust quadratic (iteratively trimmed at 3 robust sigma): the
       curvature of the bullet;
    3. subtract a mask-aware Gaussian low-pass with cut-off ``long_cutoff_um``
       (waviness; normalized convolution, so ends and gaps are not pulled to 0);
    4. mask-aware Gaussian low-pass with cut-off ``short_cutoff_um`` (noise).

    Parameters
    ----------
    profile : Crosscut or ndarray, shape (n,)
        Heights across the land in um, NaN = missing.
    grooves : Grooves or (float, float)
        Left and right groove positions in um from profile sample 0.
    spacing_um : float, keyword-only
        Sample spacing in um; required for a plain array.
    long_cutoff_um, short_cutoff_um : float, keyword-only
        Gaussian (ISO 16610-21) cut-offs, um. ``short_cutoff_um=0`` skips smoothing.
    min_valid : float, keyword-only
        A smoothed sample is NaN when less than this fraction of its Gaussian
        weight was measured.

    Returns
    -------
    Signature
        ``values`` shape (m,), um, NaN = missing (leading/trailing missing samples
        trimmed); ``start_um`` = position of ``values[0]`` on the profile.
    """
    z, sp = _profile_and_spacing(profile, spacing_um, "extract_signature")
    try:
        left_um, right_um = (float(v) for v in grooves)
    except (TypeError, ValueError) as exc:
        raise BulletError(f"extract_signature: grooves must be (left_um, right_um), got {grooves!r}") from exc
    if not (np.isfinite(left_um) and np.isfinite(right_um) and left_um < right_um):
        raise BulletError(f"extract_signature: need left_um < right_um, got {grooves!r}; see locate_grooves")
    if not long_cutoff_um > 0 or short_cutoff_um < 0 or (short_cutoff_um and short_cutoff_um >= long_cutoff_um):
        raise BulletError(f"extract_signature: need 0 <= short_cutoff_um < long_cutoff_um, got "
                          f"{short_cutoff_um!r}, {long_cutoff_um!r}")
    n = z.shape[0]
    i0 = max(0, int(math.ceil(left_um / sp - 1e-9)))
    i1 = min(n - 1, int(math.floor(right_um / sp + 1e-9)))
    if i1 - i0 + 1 < 16 or np.isfinite(z[i0:i1 + 1]).sum() < 16:
        raise BulletError(f"extract_signature: fewer than 16 measured samples between the grooves "
                          f"({left_um:.1f} um, {right_um:.1f} um) of a {n * sp:.0f} um profile; check the grooves")
    seg = z[i0:i1 + 1].copy()
    fit, _, _ = _robust_poly1d(seg, np.isfinite(seg), order=2)
    r = seg - fit
    r = r - _gauss1d(r, long_cutoff_um, sp, min_weight=1e-3)
    if short_cutoff_um:
        r = _gauss1d(r, short_cutoff_um, sp, min_weight=min_valid)
    fin = np.flatnonzero(np.isfinite(r))
    if fin.size < 16:
        raise BulletError("extract_signature: fewer than 16 samples survive filtering; lower min_valid or check "
                          "the grooves")
    a, b = int(fin[0]), int(fin[-1]) + 1
    meta = {"grooves_um": (left_um, right_um), "long_cutoff_um": long_cutoff_um,
            "short_cutoff_um": short_cutoff_um}
    if isinstance(profile, Crosscut):
        meta.update(crosscut_um=profile.position_um, crosscut_stability=profile.stability)
    return Signature(values=r[a:b].copy(), spacing_um=sp, start_um=(i0 + a) * sp, meta=meta)


def _middle_grooves(z: np.ndarray, spacing_um: float, *, keep: float = 0.75) -> Grooves:
    """Fallback grooves: the middle ``keep`` of the measured extent of a profile (the
    "middle" method of the CSAFE grooveFinder, default 75 %); for crosscuts whose
    grooves cannot be located."""
    idx = np.flatnonzero(np.isfinite(z))
    if idx.size < 32:
        raise UnusableLandError(f"a profile across the land has {idx.size} measured points, need at least 32; the "
                                "scan holds no usable land engraved area")
    lo, hi = int(idx[0]), int(idx[-1])
    cut = (1.0 - keep) / 2.0 * (hi - lo)
    return Grooves(float((lo + cut) * spacing_um), float((hi - cut) * spacing_um))


def _robust_offset(x: np.ndarray, v: np.ndarray, slope: float, tol: float) -> tuple[float, np.ndarray]:
    """Intercept ``a`` of the line ``v ~ a + slope * x`` (slope known) that the most
    points lie within ``tol`` of (then the smallest summed distance), refined as
    the median of those points. Returns (a, inlier mask)."""
    c = v - slope * x
    best_key, best = None, None
    for ci in c:
        d = np.abs(c - ci)
        inl = d <= tol
        key = (int(inl.sum()), -float(d[inl].sum()))
        if best_key is None or key > best_key:
            best_key, best = key, inl
    a = float(np.median(c[best]))
    return a, np.abs(c - a) <= tol


def _consensus_grooves(own: Sequence[Grooves | None], positions_um: np.ndarray, *, tolerance_um: float,
                       tilt: float = 0.0) -> tuple[list[Grooves | None], list[str], dict | None]:
    """Grooves of one land at many heights, made consistent.

    The groove edges are straight lines parallel to the striae: with the striae
    at ``tilt`` (um across per um along, :func:`_crosscut_candidates`), each
    side's grooves over the crosscuts are fitted by a line of that slope through
    the largest group of grooves within ``tolerance_um`` of it
    (:func:`_robust_offset`). A crosscut whose groove lies *outside* the land's
    line by more than ``tolerance_um`` (it would take in part of the groove
    engraved area), or that found no grooves, takes the line's value; a groove
    inside the line is kept (that crosscut's land edge is damaged or rolled off).

    Returns (grooves per crosscut or None, source per crosscut ("crosscut",
    "land-line" or "none"), the land's groove lines or None: ``{"left_um",
    "right_um"}`` at the middle crosscut, ``"tilt"``, ``"inlier_fraction"``
    (left and right)).
    """
    pos = np.asarray(positions_um, dtype=np.float64)
    ok = np.array([g is not None for g in own], dtype=bool)
    if not ok.any():
        return [None] * len(own), ["none"] * len(own), None
    L = np.array([g.left_um for g in own if g is not None])
    R = np.array([g.right_um for g in own if g is not None])
    bl = br = float(tilt) if np.isfinite(tilt) else 0.0
    al, il = _robust_offset(pos[ok], L, bl, tolerance_um)
    ar, ir = _robust_offset(pos[ok], R, br, tolerance_um)
    mid = float(np.median(pos))
    land = {"left_um": al + bl * mid, "right_um": ar + br * mid, "tilt": bl,
            "inlier_fraction": (float(il.mean()), float(ir.mean()))}
    out: list[Grooves | None] = []
    src: list[str] = []
    for p, g in zip(pos, own):
        ll, lr = al + bl * p, ar + br * p
        if g is None:
            out.append(Grooves(float(ll), float(lr)) if ll < lr else None)
            src.append("land-line" if ll < lr else "none")
            continue
        left = ll if g.left_um < ll - tolerance_um else g.left_um
        right = lr if g.right_um > lr + tolerance_um else g.right_um
        if left >= right:
            left, right = g
        out.append(Grooves(float(left), float(right)))
        src.append("crosscut" if (left, right) == tuple(g) else "land-line")
    return out, src, land


def _signature_quality(sig: Signature, direction_confidence: float, stability: float) -> float:
    parts = [sig.valid_fraction]
    if np.isfinite(direction_confidence):
        parts.append(direction_confidence)
    if np.isfinite(stability):
        parts.append(max(0.0, stability))
    return float(min(parts))


def _finish_meta(sig: Signature, s: Surface, *, profile_length_um: float, grooves_source: str,
                 land_flags: Sequence[str], stability: float, extra: dict | None = None) -> Signature:
    """Provenance and quality of a land signature (see :func:`land_signatures`)."""
    flags = list(land_flags)
    if grooves_source == "middle-fallback":
        flags.append("grooves not located: the middle 75 % of the measured profile is used")
    conf = s.meta.get("direction_confidence")
    conf = float(conf) if conf is not None else float("nan")
    sig.meta.update(source=s.meta.get("source"), striae_rotated_deg=s.meta.get("striae_rotated_deg"),
                    striae_direction=s.meta.get("striae_direction"), direction_source=s.meta.get("direction_source"),
                    direction_confidence=conf, profile_length_um=profile_length_um, grooves_source=grooves_source,
                    quality=_signature_quality(sig, conf, stability), low_confidence=bool(flags), flags=flags,
                    **{k: (dict(v) if isinstance(v, dict) else v) for k, v in (extra or {}).items()})
    return sig


def _check_resolution(s: Surface, signature: dict | None, what: str) -> None:
    """A scan sampled coarser than the signature's short cut-off holds nothing in the signature's band."""
    short = float((signature or {}).get("short_cutoff_um", 6.25)) or 6.25
    if s.spacing_um > short:
        raise UnusableLandError(f"{what}: the scan's spacing ({s.spacing_um:g} um) is coarser than the signature's "
                                f"short cut-off ({short:g} um), so it cannot resolve striation marks; a land engraved "
                                "area needs a scan at a few um or finer")


def _land_flags(s: Surface) -> list[str]:
    if s.meta.get("direction_low_confidence"):
        return [f"striation direction ambiguous (confidence {s.meta.get('direction_confidence', float('nan')):.2f}); "
                f"decided by {s.meta.get('direction_source')}"]
    return []


def _whole_scan_crosscut(s: Surface, reason: str) -> Crosscut:
    """Fallback crosscut: the mean over every column of the oriented scan."""
    h = np.ascontiguousarray(s.heights, dtype=np.float64)
    ny, nx = h.shape
    prof = _bk.band_profiles(h, np.zeros(1, dtype=np.int64), nx, 1)[0]
    if np.isfinite(prof).sum() < 32:
        raise UnusableLandError(f"the scan has {int(np.isfinite(prof).sum())} measured rows across the land, need at "
                                f"least 32 ({reason}); it holds no usable land engraved area")
    return Crosscut(profile=prof, spacing_um=s.spacing_um, position_um=nx * s.spacing_um / 2.0,
                    band_um=nx * s.spacing_um)


def land_signature(surface: Surface, *, direction: str | None = None, crosscut: dict | None = None,
                   grooves: dict | Grooves | None = None, signature: dict | None = None) -> Signature:
    """Steps 1-4 on one land scan: orient, choose a crosscut, locate grooves, extract the signature.

    A measured land always gets a signature: an ambiguous striation direction is
    decided by :func:`estimate_striation_direction`'s defaults, a scan without two
    comparable neighbouring crosscuts is averaged over its whole length, grooves
    that cannot be located are replaced by the middle 75 % of the profile; each
    fallback sets ``low_confidence`` and says why in ``meta["flags"]``.

    Parameters
    ----------
    surface : Surface
        Land engraved area scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Striae direction if known (see :func:`orient_striae`).
    crosscut, signature : dict, keyword-only
        Keyword arguments for :func:`choose_crosscut` / :func:`extract_signature`.
    grooves : dict or Grooves, keyword-only
        Keyword arguments for :func:`locate_grooves`, or the grooves themselves.

    Returns
    -------
    Signature
        With ``meta`` holding ``source`` (from the surface), ``crosscut_um``,
        ``crosscut_stability``, ``grooves_um``, ``grooves_source``,
        ``striae_rotated_deg``, ``striae_direction``, ``direction_source``,
        ``direction_confidence``, ``quality``, ``low_confidence`` and ``flags``.

    Raises
    ------
    UnusableLandError
        No usable land at all (no measured points, fewer than 32 measured rows
        across the land, or sampled coarser than the signature's short cut-off).
    """
    _check_resolution(_as_surface(surface, "land_signature"), signature, "land_signature")
    s = orient_striae(surface, direction=direction)
    flags = _land_flags(s)
    kw = dict(crosscut or {})
    band = float(kw.get("band_um", 25.0))
    if np.isfinite(band) and band > 0:
        kw["band_um"] = min(band, s.shape[1] * s.spacing_um)       # a scan shorter than the band: one band
    try:
        cc = choose_crosscut(s, check_direction=False, **kw)
    except _NoStableCrosscut as exc:
        cc = _whole_scan_crosscut(s, str(exc))
        flags.append(f"no stable crosscut ({exc}); the mean over the whole scan is used")
    if isinstance(grooves, Grooves):
        g, src = grooves, "given"
    else:
        try:
            g, src = locate_grooves(cc, **(grooves or {})), "crosscut"
        except BulletError:
            g, src = _middle_grooves(cc.profile, cc.spacing_um), "middle-fallback"
    try:
        sig = extract_signature(cc, g, **(signature or {}))
    except BulletError as exc:
        if src != "crosscut":
            raise (UnusableLandError(f"land_signature: no signature between the fallback grooves: {exc}")
                   if src == "middle-fallback" else exc)
        g, src = _middle_grooves(cc.profile, cc.spacing_um), "middle-fallback"
        sig = extract_signature(cc, g, **(signature or {}))
    return _finish_meta(sig, s, profile_length_um=cc.profile.shape[0] * cc.spacing_um, grooves_source=src,
                        land_flags=flags, stability=cc.stability)


def land_signatures(surface: Surface, *, direction: str | None = None, step_um: float = 50.0,
                    band_um: float = 25.0, edge_um: float = 50.0, max_missing: float = 0.5,
                    grooves: dict | None = None, signature: dict | None = None,
                    groove_tolerance_um: float = 50.0) -> list[Signature]:
    """Signatures of one land at many heights along the striae (every ``step_um``).

    The striae of a land change along its length (break-off at the heel, damage,
    wear), and two bullets may show the same marks best at different heights: on
    Hamby 44 Barrel 1, Bullet 1 Land 6 matches its mate (Bullet 2 Land 4) only
    in a band about 300 um from one end, while its most stable crosscut lies
    elsewhere. Comparing every height of one land with every height of the other
    (:func:`land_features` given two lists) finds that band without knowing where
    the heel is.

    Grooves are located on every crosscut (:func:`locate_grooves`) and made
    consistent over the land: the groove edges are straight lines parallel to
    the striae, so each side gets a line with the striae's tilt (measured from
    the lag at which neighbouring crosscuts agree) through the largest group of
    crosscut grooves that agree with it, and a crosscut whose groove lies outside that line by more than
    ``groove_tolerance_um`` (it would take in part of the groove engraved area),
    or that found none, takes the line's value. When no crosscut finds its
    grooves, the middle 75 % of each profile is used (flagged).

    A measured land never fails for weak striae: an ambiguous direction is decided
    by :func:`estimate_striation_direction`'s defaults, and when no crosscut yields
    a signature the mean over the whole scan is used; such signatures carry
    ``low_confidence`` and ``meta["flags"]`` saying why, and every signature a
    ``quality`` in [0, 1] (:attr:`Signature.quality`).

    Parameters
    ----------
    surface : Surface
        Land engraved area scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Striae direction if known (see :func:`orient_striae`).
    step_um, band_um, edge_um, max_missing : float, keyword-only
        Crosscut spacing, band width (clipped to the scan's length along the
        striae), distance kept from the scan's ends, and the largest missing
        fraction of a crosscut's middle (as :func:`choose_crosscut`).
    grooves, signature : dict, keyword-only
        Keyword arguments for :func:`locate_grooves` and :func:`extract_signature`.
    groove_tolerance_um : float, keyword-only
        How far (um) a crosscut's groove may lie outside the land's groove line
        before the line replaces it; also the inlier distance of the robust line
        fit. The default, 50 um, is twice the 25 um smoothing of
        :func:`locate_grooves`.

    Returns
    -------
    list of Signature
        In order along x; crosscuts with fewer than 32 measured rows or whose
        signature cannot be extracted are left out. ``meta`` as
        :func:`land_signature`, plus ``striae_tilt`` (um across per um along the
        striae) and ``land_grooves`` (the land's groove lines: ``left_um`` /
        ``right_um`` at the middle crosscut, ``tilt`` and ``inlier_fraction`` per
        side; None when no crosscut found its grooves).

    Raises
    ------
    UnusableLandError
        No usable land at all (no measured points, fewer than 32 measured rows
        across the land, or sampled coarser than the signature's short cut-off).
    """
    if not (np.isfinite(groove_tolerance_um) and groove_tolerance_um >= 0):
        raise BulletError(f"land_signatures: groove_tolerance_um must be a length >= 0 um, got "
                          f"{groove_tolerance_um!r}")
    _check_resolution(_as_surface(surface, "land_signatures"), signature, "land_signatures")
    s = orient_striae(surface, direction=direction)
    sp = s.spacing_um
    flags = _land_flags(s)
    band = min(float(band_um), s.shape[1] * sp) if np.isfinite(band_um) and band_um > 0 else band_um
    starts, width, profiles, stab, tilt = _crosscut_candidates(s, band_um=band, step_um=step_um, edge_um=edge_um,
                                                               max_lag_um=25.0, max_missing=max_missing)
    usable = [k for k in range(len(starts)) if np.isfinite(profiles[k]).sum() >= 32]
    own: list[Grooves | None] = []
    for k in usable:
        try:
            own.append(locate_grooves(profiles[k], spacing_um=sp, **(grooves or {})))
        except UnusableLandError:
            raise
        except BulletError:
            own.append(None)
    centres = (starts[usable] + width / 2.0) * sp
    chosen, sources, land_g = _consensus_grooves(own, centres, tolerance_um=groove_tolerance_um, tilt=tilt)
    extra = {"land_grooves": land_g, "striae_tilt": tilt}
    out: list[Signature] = []
    errors = []
    for k, g, src in zip(usable, chosen, sources):
        prof = profiles[k]
        cc = Crosscut(profile=prof, spacing_um=sp, position_um=float((starts[k] + width / 2.0) * sp),
                      band_um=width * sp, stability=float(stab[k]))
        if g is None:
            g, src = _middle_grooves(prof, sp), "middle-fallback"
        try:
            sig = extract_signature(cc, g, **(signature or {}))
        except BulletError as exc:
            errors.append(f"{cc.position_um:.0f} um: {exc}")
            continue
        out.append(_finish_meta(sig, s, profile_length_um=prof.shape[0] * sp, grooves_source=src, land_flags=flags,
                                stability=cc.stability, extra=extra))
    if not out:
        detail = "; ".join(errors[:3]) or "every crosscut is mostly missing"
        cc = _whole_scan_crosscut(s, detail)
        try:
            g, src = locate_grooves(cc, **(grooves or {})), "crosscut"
            sig = extract_signature(cc, g, **(signature or {}))
        except UnusableLandError:
            raise
        except BulletError:
            g, src = _middle_grooves(cc.profile, sp), "middle-fallback"
            try:
                sig = extract_signature(cc, g, **(signature or {}))
            except BulletError as exc:
                raise UnusableLandError(f"land_signatures: no crosscut of this scan yields a signature, not even its "
                                        f"mean over the whole scan ({exc}; crosscuts: {detail})") from exc
        flags.append(f"no crosscut yields a signature ({detail}); the mean over the whole scan is used")
        out.append(_finish_meta(sig, s, profile_length_um=cc.profile.shape[0] * sp, grooves_source=src,
                                land_flags=flags, stability=float("nan"), extra=extra))
    return out


# --------------------------------------------------------------------------- 5. alignment
def align_signatures(a, b, *, spacing_um: float | None = None, min_overlap_um: float = 500.0,
                     max_lag_um: float | None = None) -> Alignment:
    """Align two signatures by NaN-aware cross-correlation.

    For every lag with at least ``min_overlap_um`` of jointly measured samples
    the Pearson correlation of the overlapping samples is computed (pairwise
    complete: a sample missing in either signature is left out); the lag with
    the highest correlation wins.

    Parameters
    ----------
    a, b : Signature or ndarray, shape (n,), (m,)
        Signatures in um, NaN = missing, with the same spacing.
    spacing_um : float, keyword-only
        Sample spacing for plain arrays, um.
    min_overlap_um : float, keyword-only
        Least jointly measured length for a lag to count, um (capped at the
        measured length of the shorter signature).
    max_lag_um : float or None, keyword-only
        Search only ``|lag| <= max_lag_um``; None searches every lag.

    Returns
    -------
    Alignment
        ``lag_um`` (``b[j]`` lies on ``a[j + lag]``), ``ccf``, ``overlap_um`` and
        the whole function (``lags_um``, ``ccfs``; NaN where the overlap is short).

    Raises
    ------
    BulletError
        Different spacings (resample one signature first), or no lag with enough
        overlap.
    """
    za, spa = _profile_and_spacing(a, spacing_um, "align_signatures")
    zb, spb = _profile_and_spacing(b, spacing_um, "align_signatures")
    if abs(spa - spb) > 1e-6 * max(spa, spb):
        raise BulletError(f"align_signatures: spacings differ ({spa} um vs {spb} um); resample one signature "
                          "to the other's spacing first")
    sp = spa
    if not (np.isfinite(min_overlap_um) and min_overlap_um > 0):
        raise BulletError(f"align_signatures: min_overlap_um must be a positive length, got {min_overlap_um!r}")
    va, vb = int(np.isfinite(za).sum()), int(np.isfinite(zb).sum())
    if min(va, vb) < 2:
        raise BulletError("align_signatures: a signature has fewer than 2 measured samples")
    min_count = max(2, min(int(math.ceil(min_overlap_um / sp - 1e-9)), va, vb))
    na, nb = za.shape[0], zb.shape[0]
    lo, hi = -(nb - 1), na - 1
    if max_lag_um is not None:
        ml = int(math.floor(max_lag_um / sp + 1e-9))
        lo, hi = max(lo, -ml), min(hi, ml)
    if lo > hi:
        raise BulletError("align_signatures: no lag in range; raise max_lag_um")
    lags = np.arange(lo, hi + 1, dtype=np.int64)
    ccfs, counts = _bk.ccf_at_lags(np.ascontiguousarray(za), np.ascontiguousarray(zb), lags, min_count)
    if not np.isfinite(ccfs).any():
        raise BulletError(f"align_signatures: no lag has {min_count * sp:.0f} um of jointly measured samples "
                          "with variation on both sides; lower min_overlap_um or check the signatures")
    k = int(np.nanargmax(ccfs))
    return Alignment(lag_um=float(lags[k] * sp), ccf=float(ccfs[k]), overlap_um=float(counts[k] * sp),
                     spacing_um=sp, lags_um=lags * sp, ccfs=ccfs)


# --------------------------------------------------------------------------- 6. land features
def _striae(z: np.ndarray, sp: float, cutoff_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Peaks (+1) and valleys (-1) of the smoothed signature and their windows.

    Returns (positions, types, heights (of ``z``), windows (k, 2)) in samples.
    A window reaches a third of the way to the neighbouring extrema.
    """
    s = _gauss1d(z, cutoff_um, sp, min_weight=0.5)
    n = s.shape[0]
    if n < 3:
        e = np.empty(0)
        return e.astype(np.int64), e.astype(np.int64), e, np.empty((0, 2))
    c, l, r = s[1:-1], s[:-2], s[2:]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(c) & np.isfinite(l) & np.isfinite(r)
        peak = ok & (c >= l) & (c > r)
        valley = ok & (c <= l) & (c < r)
    pos = np.flatnonzero(peak | valley) + 1
    typ = np.where(peak[pos - 1], 1, -1).astype(np.int64)
    if pos.size == 0:
        return pos, typ, np.empty(0), np.empty((0, 2))
    d = np.diff(pos).astype(np.float64)
    before = np.r_[d[:1], d] if d.size else np.array([1.0])
    after = np.r_[d, d[-1:]] if d.size else np.array([1.0])
    win = np.stack([pos - before / 3.0, pos + after / 3.0], axis=1)
    return pos, typ, z[pos], win


def _match_striae(pa, ta, ha, wa, pb, tb, hb, wb) -> tuple[np.ndarray, np.ndarray]:
    """Group overlapping striation windows of two aligned signatures.

    A group (a connected run of overlapping windows) is a match when it holds
    striae of both signatures, all of one type (all peaks or all valleys).
    Returns (match flags per group in order along the signature, mean |height|
    per group).
    """
    if pa.size + pb.size == 0:
        return np.zeros(0, bool), np.zeros(0)
    starts = np.r_[wa[:, 0], wb[:, 0]]
    ends = np.r_[wa[:, 1], wb[:, 1]]
    src = np.r_[np.zeros(pa.size, np.int64), np.ones(pb.size, np.int64)]
    typ = np.r_[ta, tb]
    hts = np.r_[ha, hb]
    order = np.argsort(starts, kind="stable")
    match, height = [], []
    cur_end = -np.inf
    g_src: list = []
    g_typ: list = []
    g_h: list = []
    for o in order:
        if g_src and starts[o] > cur_end:
            match.append(len(set(g_src)) == 2 and len(set(g_typ)) == 1)
            height.append(float(np.mean(np.abs(g_h))))
            g_src, g_typ, g_h = [], [], []
            cur_end = -np.inf
        g_src.append(src[o])
        g_typ.append(typ[o])
        g_h.append(hts[o])
        cur_end = max(cur_end, ends[o])
    if g_src:
        match.append(len(set(g_src)) == 2 and len(set(g_typ)) == 1)
        height.append(float(np.mean(np.abs(g_h))))
    return np.array(match, bool), np.array(height)


def _longest_run(flags: np.ndarray) -> int:
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def _as_signature_list(x, spacing_um, what: str) -> list[tuple[np.ndarray, float, float]]:
    """(values, spacing, crosscut position or NaN) for a Signature, an array or a sequence of them."""
    if isinstance(x, (Signature, np.ndarray)):
        items = [x]
    elif isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]):
        items = list(x)
    else:
        items = [x]
    out = []
    for it in items:
        z, sp = _profile_and_spacing(it, spacing_um, what)
        pos = float(it.meta.get("crosscut_um", np.nan)) if isinstance(it, Signature) else float("nan")
        out.append((z, sp, pos))
    return out


def _block_mean(z: np.ndarray, f: int) -> np.ndarray:
    """NaN-aware means of consecutive blocks of ``f`` samples (a last partial block kept)."""
    if f <= 1:
        return z
    n = z.shape[0]
    pad = (-n) % f
    zz = np.r_[z, np.full(pad, np.nan)].reshape(-1, f)
    m = np.isfinite(zz)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(m, zz, 0.0).sum(axis=1) / cnt
    return np.where(cnt * 2 >= f, out, np.nan)


def land_features(a, b, *, spacing_um: float | None = None, min_overlap_um: float = 500.0,
                  max_lag_um: float | None = 250.0, striae_cutoff_um: float = 50.0,
                  coarse_um: float | None = 6.25, refine: int = 4) -> LandFeatures:
    """Features of a land-to-land comparison (after bulletxtrctr's ``extract_features_all``).

    The signatures are aligned (:func:`align_signatures`); given lists of
    signatures (one land at several heights, :func:`land_signatures`), every
    pair is aligned and the pair with the highest correlation is kept. Then, on
    the samples both signatures measured:

    * ``ccf``, ``lag_um``, ``overlap_um``, ``overlap_fraction`` (of the shorter
      signature's measured length), ``crosscut_a_um``/``crosscut_b_um`` (heights
      of the kept pair, NaN when unknown);
    * ``distance_um`` D = root mean squared difference, um; ``distance_sd_um`` the
      sum of the two standard deviations (the scale D is judged against);
    * striae: peaks and valleys of each signature smoothed with
      ``striae_cutoff_um``, each with a window reaching a third of the way to its
      neighbours; overlapping windows form groups; a group is a *match* when it
      holds striae of both signatures, all peaks or all valleys.
      ``matches``/``mismatches`` (counts and per mm of overlap), ``cms`` (longest
      run of consecutive matching striae) and ``non_cms`` (longest run of
      non-matches), per mm too, and ``sum_peaks_per_mm`` (sum of the mean
      |height| of matched groups, um per mm);
    * ``score`` = :func:`land_score` of the above.

    Parameters
    ----------
    a, b : Signature, ndarray, or a list of them
        Land signatures (um), all with the same spacing.
    spacing_um : float, keyword-only
        Sample spacing for plain arrays, um.
    min_overlap_um : float, keyword-only
        Passed to :func:`align_signatures`.
    max_lag_um : float or None, keyword-only
        Largest shift searched, um (default 250). Signatures run from groove to
        groove, so the same land on two bullets lines up within the uncertainty
        of the groove positions; larger shifts only find chance agreement over
        part of the land. None searches every shift.
    striae_cutoff_um : float, keyword-only
        Gaussian cut-off of the smoothing before peaks and valleys are found, um.
    coarse_um, refine : keyword-only
        With more than ``refine`` signature pairs, every pair is first aligned on
        copies block-averaged to about ``coarse_um`` (the signatures hold little
        below their short cut-off) and only the ``refine`` best are aligned at full
        resolution. ``coarse_um=None`` aligns every pair at full resolution.

    Returns
    -------
    LandFeatures
    """
    la = _as_signature_list(a, spacing_um, "land_features")
    lb = _as_signature_list(b, spacing_um, "land_features")
    for _, sp, _ in la + lb:
        if abs(sp - la[0][1]) > 1e-6 * max(sp, la[0][1]):
            raise BulletError(f"land_features: spacings differ ({la[0][1]} um vs {sp} um); resample the "
                              "signatures to one spacing first")
    sp0 = la[0][1]
    candidates = [(i, j) for i in range(len(la)) for j in range(len(lb))]
    f = max(1, int(round(coarse_um / sp0))) if coarse_um else 1
    if f > 1 and len(candidates) > refine:
        ca = [_block_mean(z, f) for z, _, _ in la]
        cb = [_block_mean(z, f) for z, _, _ in lb]
        coarse = []
        for i, j in candidates:
            try:
                c = align_signatures(ca[i], cb[j], spacing_um=sp0 * f, min_overlap_um=min_overlap_um,
                                     max_lag_um=max_lag_um).ccf
            except BulletError:
                continue
            coarse.append((c, i, j))
        coarse.sort(key=lambda t: -t[0])
        candidates = [(i, j) for _, i, j in coarse[:max(1, refine)]] or candidates
    best = None
    last_error: BulletError | None = None
    for i, j in candidates:
        (za, sp, pa), (zb, _, pb) = la[i], lb[j]
        try:
            al = align_signatures(za, zb, spacing_um=sp, min_overlap_um=min_overlap_um, max_lag_um=max_lag_um)
        except BulletError as exc:
            last_error = exc
            continue
        if best is None or al.ccf > best[0].ccf:
            best = (al, za, zb, pa, pb)
    if best is None:
        raise BulletError(f"land_features: no pair of signatures could be aligned ({last_error})")
    al, za, zb, pa, pb = best
    sp = al.spacing_um
    lag = al.lag
    # put both on a's index: b[j] -> a[j + lag]; overlap range of a
    i0, i1 = max(0, lag), min(za.shape[0], zb.shape[0] + lag)
    xa = za[i0:i1]
    xb = zb[i0 - lag:i1 - lag]
    both = np.isfinite(xa) & np.isfinite(xb)
    n_both = int(both.sum())
    d = float(np.sqrt(np.mean((xa[both] - xb[both]) ** 2)))
    sd = float(np.std(xa[both]) + np.std(xb[both]))
    ya = np.where(both, xa, np.nan)
    yb = np.where(both, xb, np.nan)
    sa_ = _striae(ya, sp, striae_cutoff_um)
    sb_ = _striae(yb, sp, striae_cutoff_um)
    match, height = _match_striae(*sa_, *sb_)
    mm = max(n_both * sp / 1000.0, 1e-9)
    n_match = int(match.sum())
    n_mis = int((~match).sum())
    cms = _longest_run(match)
    non = _longest_run(~match)
    shorter = min(np.isfinite(za).sum(), np.isfinite(zb).sum())
    partial = dict(ccf=al.ccf, lag_um=al.lag_um, overlap_um=n_both * sp, overlap_fraction=n_both / max(shorter, 1),
                   distance_um=d, distance_sd_um=sd, matches=n_match, mismatches=n_mis, cms=cms, non_cms=non,
                   matches_per_mm=n_match / mm, mismatches_per_mm=n_mis / mm, cms_per_mm=cms / mm,
                   non_cms_per_mm=non / mm, sum_peaks_per_mm=float(height[match].sum()) / mm if n_match else 0.0,
                   crosscut_a_um=pa, crosscut_b_um=pb)
    return LandFeatures(**partial, score=land_score(partial))


#: The land score model (see :func:`land_score`): the cross-correlation alone.
LAND_SCORE_MODEL: dict[str, Any] = {
    "intercept": 0.0,
    "coef": {"ccf": 1.0},
    "link": "identity",
    "fitted_on": "not fitted: ccf alone separates Hamby 252 and Hamby 44 (see land_score)",
}


def land_score(features: LandFeatures | dict, *, model: dict | None = None) -> float:
    """A transparent land-to-land score from :class:`LandFeatures`.

    ``model`` (default :data:`LAND_SCORE_MODEL`) holds ``intercept``, ``coef``
    (feature name -> coefficient) and ``link`` (``"identity"`` or
    ``"logistic"``); the score is ``link(intercept + sum(coef[f] * features[f]))``.

    The default is the cross-correlation ``ccf`` itself, in [-1, 1]. With the
    many-heights comparison it alone puts every same-source land pair above every
    different-source pair on both sets (Hamby 252: 0.910 vs 0.671; Hamby 44:
    0.871 vs 0.627), while CMS per mm (AUC 0.97 on Hamby 44) and the sum of
    peaks per mm (0.985 / 0.981) do not. A logistic model fitted on one set and tested on the
    other would need a penalty to exist at all (both sets are separable, so the
    unpenalised fit diverges) and could not beat AUC 1; the simpler score is
    kept. Pass a fitted ``model`` to use a combination.
    """
    m = LAND_SCORE_MODEL if model is None else model
    f = features.as_dict() if isinstance(features, LandFeatures) else features
    try:
        eta = float(m["intercept"]) + sum(float(c) * float(f[name]) for name, c in m["coef"].items())
    except KeyError as exc:
        raise BulletError(f"land_score: the model needs feature {exc.args[0]!r}, which the features lack; "
                          f"available: {sorted(f)}") from exc
    if m.get("link", "identity") == "logistic":
        return float(1.0 / (1.0 + math.exp(-eta)))
    if m.get("link", "identity") != "identity":
        raise BulletError(f"land_score: link must be 'identity' or 'logistic', got {m.get('link')!r}")
    return float(eta)


# --------------------------------------------------------------------------- 7. bullets
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


# --------------------------------------------------------------------------- 8. descriptor
BULLET_DESCRIPTOR_VERSION = "bullet-spectrum/1"
_DESC_BINS = 32
_DESC_MIN_WAVELENGTH_UM = 10.0
_DESC_MAX_WAVELENGTH_UM = 250.0
#: Length of :func:`bullet_descriptor` with its default settings.
BULLET_DESCRIPTOR_DIM = _DESC_BINS


def _signature_power(sig: Signature, edges_um: np.ndarray) -> np.ndarray:
    z = np.asarray(sig.values, dtype=np.float64)
    m = np.isfinite(z)
    if m.sum() < 16:
        raise BulletError("bullet_descriptor: a signature has fewer than 16 measured samples")
    z = np.where(m, z - z[m].mean(), 0.0) * np.hanning(z.shape[0])
    n = z.shape[0]
    nfft = int(2 ** math.ceil(math.log2(max(n, 2) * 2)))
    P = np.abs(np.fft.rfft(z, nfft)) ** 2
    freq = np.fft.rfftfreq(nfft, d=sig.spacing_um)  # cycles per um
    with np.errstate(divide="ignore"):
        wl = np.where(freq > 0, 1.0 / freq, np.inf)
    out = np.zeros(edges_um.shape[0] - 1)
    for k in range(out.shape[0]):
        hi, lo = edges_um[k], edges_um[k + 1]          # edges descending in wavelength
        sel = (wl <= hi) & (wl > lo)
        if sel.any():
            out[k] = P[sel].mean()
    return out / max(float(m.sum()), 1.0)


def bullet_descriptor(signature: Signature | Sequence[Signature | None], *, n_bins: int = _DESC_BINS,
                      min_wavelength_um: float = _DESC_MIN_WAVELENGTH_UM,
                      max_wavelength_um: float = _DESC_MAX_WAVELENGTH_UM) -> np.ndarray:
    """A fixed-length, shift-invariant vector for the retrieval index.

    The power spectrum of the signature (missing samples set to the mean, Hann
    window), averaged in ``n_bins`` logarithmically spaced wavelength bands
    between ``max_wavelength_um`` and ``min_wavelength_um``; square root, then
    L2-normalised. For a bullet (a sequence of land signatures) the land spectra
    are averaged first, so the vector does not depend on the land order either.

    Limits: the magnitude spectrum discards where each striation is, keeping only
    how rough the land is at each scale; lands of one barrel share it only
    loosely, and different barrels of one make and rifling resemble each other.
    It is a coarse pre-filter that orders candidates for :func:`bullet_score`,
    never evidence of a common source.

    Returns
    -------
    ndarray of float32, shape (n_bins,)
        L2-normalised (a zero vector only if every band is empty).
    """
    if not (0 < min_wavelength_um < max_wavelength_um) or n_bins < 1:
        raise BulletError("bullet_descriptor: need 0 < min_wavelength_um < max_wavelength_um and n_bins >= 1")
    sigs = [signature] if isinstance(signature, Signature) else [s for s in signature if s is not None]
    if not sigs:
        raise BulletError("bullet_descriptor: no signature given")
    edges = np.geomspace(max_wavelength_um, min_wavelength_um, n_bins + 1)
    for s in sigs:
        if not isinstance(s, Signature):
            raise BulletError(f"bullet_descriptor: expected Signature objects, got {type(s).__name__}")
        if 2 * s.spacing_um > min_wavelength_um:
            raise BulletError(f"bullet_descriptor: spacing {s.spacing_um} um cannot resolve "
                              f"min_wavelength_um={min_wavelength_um}; raise it to at least {2 * s.spacing_um}")
    P = np.mean([_signature_power(s, edges) for s in sigs], axis=0)
    v = np.sqrt(P)
    nrm = float(np.linalg.norm(v))
    return (v / nrm if nrm > 0 else v).astype(np.float32)


# --------------------------------------------------------------------------- benchmark
#: Bullet-level decision threshold on the SAM of land ccfs used by the benchmark. Not
#: calibrated: on Hamby 252 and Hamby 44 no different-source land pair reached a ccf of
#: 0.68 and no same-source pair fell below 0.87; 0.8 sits between them.
BULLET_SAM_THRESHOLD = 0.8

#: Significance level of the bullet-level :func:`phase_test` decision in the benchmark
#: (same barrel when the p-value is at most this). A conventional 1 % false-positive
#: rate per comparison under the test's model, not fitted to any set.
BULLET_PHASE_ALPHA = 0.01

_LAND_NUMBER = re.compile(r"(\d+)\s*$")


def read_bullet_labels(directory: str | Path, labels_csv: str | Path) -> list[dict]:
    """Read a bullet labels CSV.

    Required columns: ``path`` (relative to ``directory``, or a file name found in
    it) and ``same_source_group`` (equal = same land of the same barrel).
    Optional: ``land_id`` (name), ``barrel``, ``bullet``, ``land`` (e.g. ``L3``;
    its trailing number is the land's position around the bullet). The *set* of a
    scan is the first folder of its ``path`` (e.g. ``hamby252``): lands are only
    compared within a set.

    Returns
    -------
    list of dict
        Keys ``name``, ``path`` (Path), ``set``, ``group``, ``barrel``, ``bullet``,
        ``land`` (int or None).
    """
    directory = Path(directory)
    out = []
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        cols = set(rd.fieldnames or [])
        if not {"path", "same_source_group"} <= cols:
            raise BulletError(f"{labels_csv}: need columns 'path' and 'same_source_group', found {sorted(cols)}")
        for row in rd:
            rel = Path(row["path"])
            p = directory / rel
            if not p.exists():
                p = directory / rel.name
            if not p.exists():
                raise FileNotFoundError(f"{row['path']} listed in {labels_csv} is missing from {directory}")
            m = _LAND_NUMBER.search(row.get("land") or "")
            out.append({"name": row.get("land_id") or p.stem, "path": p,
                        "set": rel.parts[0] if len(rel.parts) > 1 else directory.name,
                        "group": row["same_source_group"].strip(), "barrel": (row.get("barrel") or "").strip(),
                        "bullet": (row.get("bullet") or "").strip(), "land": int(m.group(1)) if m else None})
    if len(out) < 2:
        raise BulletError(f"{labels_csv}: fewer than two scans")
    return out


def _auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    from ballistic.metrics import roc_auc
    if y.all() or not y.any():
        return None
    return roc_auc(scores, y)


def _bullet_plots(rows: list[dict], bullets: list[dict], out_prefix: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ballistic.metrics import roc_auc, roc_curve
    sets = sorted({r["set"] for r in rows})
    files = []
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.8), squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, st in zip(axes[0], sets):
        s = np.array([r["score"] for r in rows if r["set"] == st])
        y = np.array([r["same_source"] for r in rows if r["set"] == st], dtype=bool)
        ax.hist(s[~y], bins=bins, alpha=0.7, color="tab:blue", label=f"different source (n={int((~y).sum())})")
        ax.hist(s[y], bins=bins, alpha=0.7, color="tab:red", label=f"same source (n={int(y.sum())})")
        ax.set_title(st)
        ax.set_xlabel("land score (ccf)")
        ax.set_ylabel("land pairs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    f = out_prefix.with_name(out_prefix.name + "_hist.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for st in sets:
        s = np.array([r["score"] for r in rows if r["set"] == st])
        y = np.array([r["same_source"] for r in rows if r["set"] == st], dtype=bool)
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(s, y)
            ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{st} AUC={roc_auc(s, y):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("land-to-land ROC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    f = out_prefix.with_name(out_prefix.name + "_roc.png")
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    if bullets:
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(bullets) + 1.2))
        labels = [f"{b['set']}: {b['bullet_a']} vs {b['bullet_b']}" for b in bullets]
        vals = [b["sam"] for b in bullets]
        colors = ["tab:red" if b["same_barrel"] else "tab:blue" for b in bullets]
        ax.barh(range(len(bullets)), vals, color=colors)
        ax.axvline(BULLET_SAM_THRESHOLD, color="k", ls="--", lw=1)
        ax.set_yticks(range(len(bullets)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlabel("bullet score (SAM of land ccf); red = same barrel")
        fig.tight_layout()
        f = out_prefix.with_name(out_prefix.name + "_bullets.png")
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    return files


def _jsonable(o):
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (Path, np.ndarray)):
        return str(o) if isinstance(o, Path) else o.tolist()
    return str(o)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_manual_grooves(path: str | Path) -> dict[str, dict]:
    """Manually chosen groove positions (bulletAnalyzr's export: columns ``filename``,
    ``left_groove``, ``right_groove`` in um across the land, ``crosscut_y`` in um
    along it). Returns ``{file stem: {"left_um", "right_um", "crosscut_um"}}``.
    Used only to check :func:`locate_grooves`, never as its input."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        need = {"filename", "left_groove", "right_groove"}
        if not need <= set(rd.fieldnames or []):
            raise BulletError(f"{path}: need columns {sorted(need)}, found {rd.fieldnames}")
        for row in rd:
            cy = row.get("crosscut_y")
            out[Path(row["filename"]).stem] = {"left_um": float(row["left_groove"]),
                                               "right_um": float(row["right_groove"]),
                                               "crosscut_um": float(cy) if cy not in (None, "", "NA") else None}
    return out


def _land_report(sigs: list[Signature]) -> dict:
    """Per-land summary of :func:`land_signatures` output for the benchmark JSON."""
    m0 = sigs[0].meta
    flags: list[str] = []
    for sg in sigs:
        for f in sg.meta.get("flags", []):
            if f not in flags:
                flags.append(f)
    src: dict[str, int] = {}
    for sg in sigs:
        src[sg.meta.get("grooves_source", "?")] = src.get(sg.meta.get("grooves_source", "?"), 0) + 1
    stab = [float(sg.meta.get("crosscut_stability", np.nan)) for sg in sigs]
    return {"signatures": len(sigs), "striae_direction": m0.get("striae_direction"),
            "direction_source": m0.get("direction_source"),
            "direction_confidence": _clean(float(m0.get("direction_confidence", np.nan))),
            "striae_tilt": _clean(float(m0.get("striae_tilt", np.nan))),
            "low_confidence": any(sg.low_confidence for sg in sigs),
            "low_confidence_signatures": sum(sg.low_confidence for sg in sigs), "flags": flags,
            "quality_median": _clean(float(np.median([sg.quality for sg in sigs]))),
            "quality_max": _clean(float(np.max([sg.quality for sg in sigs]))),
            "best_crosscut_stability": _clean(float(np.nanmax(stab))) if np.isfinite(stab).any() else None,
            "land_grooves": m0.get("land_grooves"), "grooves_sources": src,
            "length_um_median": float(np.median([sg.length_um for sg in sigs]))}


def _groove_agreement(sigs: list[Signature], scan_shape: tuple[int, int], spacing_um: float, manual: dict) -> dict:
    """Our grooves at the crosscut nearest to the manual one against the manual grooves."""
    rotated = sigs[0].meta.get("striae_rotated_deg") == -90
    cy = manual.get("crosscut_um")
    if cy is None:
        k = len(sigs) // 2
        at = None
    else:
        # x3p rows run along y from row 0; the oriented scan's column j is original row ny - 1 - j
        at = (scan_shape[0] - 1) * spacing_um - cy if rotated else cy
        k = int(np.argmin([abs(float(sg.meta.get("crosscut_um", np.inf)) - at) for sg in sigs]))
    g = sigs[k].meta["grooves_um"]
    el, er = float(g[0]) - manual["left_um"], float(g[1]) - manual["right_um"]
    return {"manual_um": [manual["left_um"], manual["right_um"]], "ours_um": [float(g[0]), float(g[1])],
            "error_um": [el, er], "outward_um": [-el, er], "crosscut_um": float(sigs[k].meta.get("crosscut_um")),
            "manual_crosscut_um": at, "grooves_source": sigs[k].meta.get("grooves_source")}


def run_bullet_bench(directory: str | Path, labels_csv: str | Path, *, json_out: str | Path,
                     threshold: float = BULLET_SAM_THRESHOLD, alpha: float = BULLET_PHASE_ALPHA,
                     step_um: float = 50.0, grooves_csv: str | Path | None = None,
                     progress: bool = False) -> dict:
    """Labelled bullet benchmark: every land pair within each set, every bullet pair.

    Lands are reduced to signatures at many heights (:func:`land_signatures`,
    every ``step_um``), every pair of lands within a set is compared
    (:func:`land_features`; score = :func:`land_score`), and every pair of
    bullets within a set is scored by SAM over the land scores
    (:func:`sequence_average_maximum`) and by the :func:`phase_test`; a bullet
    pair is called same-barrel when its SAM reaches ``threshold`` (column
    ``identified``) and, separately, when the phase test's p-value is at most
    ``alpha`` (``identified_phase_test``). The land descriptors
    (:func:`bullet_descriptor`) are checked by the rank of each land's mate.

    Every land gets a report (``lands``: direction and its confidence, grooves,
    quality, low-confidence flags). With ``grooves_csv`` (manually chosen grooves,
    :func:`read_manual_grooves`) the grooves found are compared with them
    (``groove_agreement``); they are never used to find the grooves.

    Writes ``<json_out>`` (summary), ``<stem>.pairs.csv`` (per land pair),
    ``<stem>.bullets.csv`` (per bullet pair) and plots ``<stem>_hist.png``,
    ``<stem>_roc.png``, ``<stem>_bullets.png``; returns the summary.
    """
    t0 = time.perf_counter()
    scans = read_bullet_labels(directory, labels_csv)
    from ballistic.io import read_x3p
    manual = read_manual_grooves(grooves_csv) if grooves_csv else {}
    sigs: dict[str, list[Signature]] = {}
    failed: dict[str, str] = {}
    lands_report: dict[str, dict] = {}
    agreement: dict[str, dict] = {}
    it = scans
    if progress:
        from tqdm import tqdm
        it = tqdm(scans, desc="lands", unit="land")
    for sc in it:
        try:
            surf = read_x3p(sc["path"])
            sigs[sc["name"]] = land_signatures(surf, step_um=step_um)
        except BulletError as exc:
            failed[sc["name"]] = f"{type(exc).__name__}: {exc}"
            continue
        lands_report[sc["name"]] = _land_report(sigs[sc["name"]])
        stem = Path(sc["path"]).stem
        if stem in manual:
            agreement[sc["name"]] = _groove_agreement(sigs[sc["name"]], surf.shape, surf.spacing_um, manual[stem])
    t_extract = time.perf_counter() - t0
    by_name = {sc["name"]: sc for sc in scans}
    rows: list[dict] = []
    t1 = time.perf_counter()
    sets = sorted({sc["set"] for sc in scans})
    pairs = [(a, b) for st in sets for a, b in combinations([sc for sc in scans if sc["set"] == st], 2)
             if a["name"] in sigs and b["name"] in sigs]
    it2 = pairs
    if progress:
        from tqdm import tqdm
        it2 = tqdm(pairs, desc="land pairs", unit="pair")
    for a, b in it2:
        f = land_features(sigs[a["name"]], sigs[b["name"]])
        row = {"set": a["set"], "land_a": a["name"], "land_b": b["name"],
               "bullet_a": f"{a['barrel']}-{a['bullet']}", "bullet_b": f"{b['barrel']}-{b['bullet']}",
               "same_source": a["group"] == b["group"]}
        row.update({k: _clean(v) for k, v in f.as_dict().items()})
        rows.append(row)
    t_compare = time.perf_counter() - t1
    if not rows:
        raise BulletError("run_bullet_bench: no land pair could be compared; check the labels and scans")

    summary: dict[str, Any] = {"sets": {}}
    feature_names = ["ccf", "cms_per_mm", "matches_per_mm", "mismatches_per_mm", "distance_um", "sum_peaks_per_mm"]
    for st in sets:
        rs = [r for r in rows if r["set"] == st]
        if not rs:
            continue
        s = np.array([r["score"] for r in rs])
        y = np.array([r["same_source"] for r in rs], dtype=bool)
        d: dict[str, Any] = {"lands": sum(1 for sc in scans if sc["set"] == st and sc["name"] in sigs),
                             "pairs": len(rs), "same_source_pairs": int(y.sum()),
                             "different_source_pairs": int((~y).sum()), "auc": _auc(s, y)}
        d["feature_auc"] = {k: _auc(np.array([r[k] for r in rs], dtype=float), y) for k in feature_names}
        if y.any() and (~y).any():
            km_min, knm_max = float(s[y].min()), float(s[~y].max())
            d.update(same_source_min=km_min, different_source_max=knm_max, margin=km_min - knm_max,
                     separated=bool(km_min > knm_max))
            d["failing_pairs"] = [
                {"land_a": r["land_a"], "land_b": r["land_b"], "same_source": r["same_source"], "score": r["score"]}
                for r in rs if (r["same_source"] and r["score"] <= knm_max)
                or (not r["same_source"] and r["score"] >= km_min)]
        d["same_source_scores"] = [{"land_a": r["land_a"], "land_b": r["land_b"], "score": r["score"],
                                    "lag_um": r["lag_um"], "cms": r["cms"]} for r in rs if r["same_source"]]
        summary["sets"][st] = d

    # bullet level
    score_of = {frozenset((r["land_a"], r["land_b"])): r["score"] for r in rows}
    bullets: list[dict] = []
    for st in sets:
        members = [sc for sc in scans if sc["set"] == st and sc["land"] is not None]
        n = max((sc["land"] for sc in members), default=0)
        keys = sorted({(sc["barrel"], sc["bullet"]) for sc in members})
        for ka, kb in combinations(keys, 2):
            la = {sc["land"]: sc["name"] for sc in members if (sc["barrel"], sc["bullet"]) == ka}
            lb = {sc["land"]: sc["name"] for sc in members if (sc["barrel"], sc["bullet"]) == kb}
            S = np.full((n, n), np.nan)
            for i in range(n):
                for j in range(n):
                    na, nb_ = la.get(i + 1), lb.get(j + 1)
                    if na and nb_ and frozenset((na, nb_)) in score_of:
                        S[i, j] = score_of[frozenset((na, nb_))]
            try:
                sam, phase, ph = sequence_average_maximum(S)
            except BulletError:
                continue
            pt = phase_test(S) if np.isfinite(ph).sum() >= 2 else None
            idx = [(i, (i + phase) % n) for i in range(n) if np.isfinite(S[i, (i + phase) % n])]
            p_val = pt.p_value if pt is not None else float("nan")
            bullets.append({"set": st, "bullet_a": "-".join(ka), "bullet_b": "-".join(kb),
                            "same_barrel": ka[0] == kb[0], "sam": sam, "phase": phase,
                            "lands_compared": len(idx), "identified": bool(sam >= threshold),
                            "phase_contrast": _clean(pt.contrast) if pt else None,
                            "phase_sigma": _clean(pt.sigma) if pt else None,
                            "phase_p_value": _clean(p_val),
                            "identified_phase_test": bool(np.isfinite(p_val) and p_val <= alpha),
                            "pairs": "; ".join(f"L{i + 1}~L{j + 1}:{S[i, j]:.3f}" for i, j in idx),
                            "phase_scores": [_clean(float(v)) for v in ph]})
    if bullets:
        sb = np.array([b["sam"] for b in bullets])
        yb = np.array([b["same_barrel"] for b in bullets], dtype=bool)
        # a pair without a phase test (a single land on one bullet) is not identified by it: p = 1 for the AUC
        pv = np.array([b["phase_p_value"] if b["phase_p_value"] is not None else np.nan for b in bullets])
        bs: dict[str, Any] = {"bullet_pairs": len(bullets), "same_barrel_pairs": int(yb.sum()),
                              "threshold": threshold, "alpha": alpha,
                              "errors": int(sum(b["identified"] != b["same_barrel"] for b in bullets)),
                              "errors_phase_test": int(sum(b["identified_phase_test"] != b["same_barrel"]
                                                           for b in bullets))}
        if yb.any() and (~yb).any():
            bs.update(same_barrel_min=float(sb[yb].min()), different_barrel_max=float(sb[~yb].max()),
                      separated=bool(sb[yb].min() > sb[~yb].max()),
                      same_barrel_p_max=_clean(float(np.nanmax(pv[yb]))) if np.isfinite(pv[yb]).any() else None,
                      different_barrel_p_min=(_clean(float(np.nanmin(pv[~yb]))) if np.isfinite(pv[~yb]).any()
                                              else None),
                      phase_test_not_computed=int((~np.isfinite(pv)).sum()),
                      auc_sam=_auc(sb, yb),
                      auc_phase_test=_auc(-np.log10(np.maximum(np.where(np.isfinite(pv), pv, 1.0), 1e-300)), yb))
        summary["bullet_summary"] = bs
    summary["bullets"] = bullets

    # land level for sets without land ground truth: the best-phase land pairs of same-barrel bullets
    # (the putative mates the phase test picked) against every other land pair, descriptive only
    for st in sets:
        d = summary["sets"].get(st)
        if d is None or d["same_source_pairs"]:
            continue
        members = {sc["name"]: sc for sc in scans if sc["set"] == st}
        best = set()
        for b in bullets:
            if b["set"] == st and b["same_barrel"]:
                for part in b["pairs"].split("; "):
                    la_, lb_ = part.split(":")[0].split("~")
                    na = next((nm for nm, sc in members.items() if f"{sc['barrel']}-{sc['bullet']}" == b["bullet_a"]
                               and sc["land"] == int(la_[1:])), None)
                    nb_ = next((nm for nm, sc in members.items() if f"{sc['barrel']}-{sc['bullet']}" == b["bullet_b"]
                                and sc["land"] == int(lb_[1:])), None)
                    best.add(frozenset((na, nb_)))
        rs = [r for r in rows if r["set"] == st]
        inb = np.array([r["score"] for r in rs if frozenset((r["land_a"], r["land_b"])) in best])
        other = np.array([r["score"] for r in rs if frozenset((r["land_a"], r["land_b"])) not in best])

        def q(v):
            return {k: _clean(float(np.quantile(v, x))) for k, x in (("min", 0), ("q10", .1), ("median", .5),
                                                                     ("q90", .9), ("max", 1))} if v.size else None
        d["land_scores_without_ground_truth"] = {
            "note": ("land correspondence unknown: 'best_phase_same_barrel' are the land pairs of the best phase of "
                     "each same-barrel bullet pair (putative mates chosen by the comparison itself), 'other' every "
                     "other land pair; descriptive, not a validation"),
            "best_phase_same_barrel": q(inb), "other": q(other), "n_best_phase_same_barrel": int(inb.size),
            "n_other": int(other.size)}

    # retrieval descriptor: rank of each land's nearest mate
    ranks = []
    for st in sets:
        names = [sc["name"] for sc in scans if sc["set"] == st and sc["name"] in sigs]
        if len(names) < 2:
            continue
        D = np.stack([bullet_descriptor(sigs[nm]) for nm in names])
        Ssim = D @ D.T
        np.fill_diagonal(Ssim, -np.inf)
        for i, nm in enumerate(names):
            mates = [j for j, o in enumerate(names) if j != i and by_name[o]["group"] == by_name[nm]["group"]]
            if mates:
                order = np.argsort(-Ssim[i], kind="stable")
                ranks.append(int(np.flatnonzero(np.isin(order, mates))[0]) + 1)
    summary["descriptor"] = {"version": BULLET_DESCRIPTOR_VERSION, "dim": BULLET_DESCRIPTOR_DIM,
                             "lands_with_mate": len(ranks), "mate_ranks": ranks,
                             "top1": float(np.mean(np.array(ranks) == 1)) if ranks else None}
    summary["lands"] = lands_report
    summary["lands_with_signature"] = len(sigs)
    summary["lands_low_confidence"] = sorted(nm for nm, r in lands_report.items() if r["low_confidence"])
    if agreement:
        err = np.array([e for a_ in agreement.values() for e in a_["error_um"]])
        outw = np.array([e for a_ in agreement.values() for e in a_["outward_um"]])
        summary["groove_agreement"] = {
            "source": str(grooves_csv), "lands": len(agreement),
            "median_abs_error_um": float(np.median(np.abs(err))), "max_abs_error_um": float(np.max(np.abs(err))),
            "median_outward_um": float(np.median(outw)),
            "note": ("error = ours - manual, um across the land at the crosscut nearest the manual one; outward > 0 "
                     "means our groove lies further out (more land kept) than the manual one"),
            "per_land": agreement}
    summary.update({"failed_lands": failed, "extract_seconds": t_extract, "compare_seconds": t_compare,
                    "land_pairs_per_second": len(rows) / max(t_compare, 1e-9), "step_um": step_um,
                    "land_score_model": LAND_SCORE_MODEL, "directory": str(directory)})
    json_out = Path(json_out)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    from ballistic.bench import write_rows_csv
    summary["pairs_csv"] = str(write_rows_csv(rows, json_out.with_suffix(".pairs.csv")))
    bcsv = json_out.with_suffix(".bullets.csv")
    with open(bcsv, "w", newline="") as fh:
        cols = ["set", "bullet_a", "bullet_b", "same_barrel", "sam", "phase", "lands_compared", "identified",
                "phase_contrast", "phase_sigma", "phase_p_value", "identified_phase_test", "pairs"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(bullets)
    summary["bullets_csv"] = str(bcsv)
    summary["plots"] = _bullet_plots(rows, bullets, json_out.with_suffix(""))
    json_out.write_text(json.dumps(summary, indent=2, default=_jsonable))
    return summary


def format_bullet_summary(summary: dict) -> str:
    """A plain-text table of a :func:`run_bullet_bench` summary (one line per set and per bullet pair)."""
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)
    lines = [f"{'set':<10} {'lands':>5} {'pairs':>5} {'KM':>3} {'AUC':>6} {'KM min':>7} {'KNM max':>7} "
             f"{'margin':>7}  failing pairs"]
    for st, d in summary["sets"].items():
        fails = ", ".join(f"{p['land_a']}~{p['land_b']} ({p['score']:.3f})" for p in d.get("failing_pairs", []))
        lines.append(f"{st:<10} {d['lands']:>5} {d['pairs']:>5} {d['same_source_pairs']:>3} {f(d['auc']):>6} "
                     f"{f(d.get('same_source_min')):>7} {f(d.get('different_source_max')):>7} "
                     f"{f(d.get('margin'), '{:+.3f}'):>7}  {fails or 'none'}")
    lines.append("")
    lines.append(f"{'set':<10} {'bullet A':<8} {'bullet B':<8} {'same barrel':>11} {'SAM':>6} {'phase':>5} "
                 f"{'lands':>5} {'called':>6} {'contrast':>8} {'p (phase)':>9} {'called':>6}")
    for b in summary.get("bullets", []):
        lines.append(f"{b['set']:<10} {b['bullet_a']:<8} {b['bullet_b']:<8} {str(b['same_barrel']):>11} "
                     f"{b['sam']:>6.3f} {b['phase']:>5} {b['lands_compared']:>5} "
                     f"{'same' if b['identified'] else 'diff':>6} {f(b.get('phase_contrast')):>8} "
                     f"{f(b.get('phase_p_value'), '{:.2g}'):>9} "
                     f"{'same' if b.get('identified_phase_test') else 'diff':>6}")
    bs = summary.get("bullet_summary", {})
    if bs:
        lines.append(f"bullet pairs: {bs['bullet_pairs']}, errors at SAM >= {bs['threshold']}: {bs['errors']}, "
                     f"same-barrel min {f(bs.get('same_barrel_min'))}, different-barrel max "
                     f"{f(bs.get('different_barrel_max'))}")
        if "errors_phase_test" in bs:
            lines.append(f"phase test: errors at p <= {bs['alpha']}: {bs['errors_phase_test']}, same-barrel p max "
                         f"{f(bs.get('same_barrel_p_max'), '{:.2g}')}, different-barrel p min "
                         f"{f(bs.get('different_barrel_p_min'), '{:.2g}')}"
                         + (f" ({bs['phase_test_not_computed']} pair(s) without a test: a single land on one "
                            "bullet)" if bs.get("phase_test_not_computed") else ""))
    if "lands_with_signature" in summary:
        n_all = summary["lands_with_signature"] + len(summary.get("failed_lands", {}))
        low = summary.get("lands_low_confidence", [])
        lines.append(f"lands with a signature: {summary['lands_with_signature']} of {n_all}; low confidence: "
                     f"{len(low)}" + (f" ({', '.join(low)})" if low else ""))
    ga = summary.get("groove_agreement")
    if ga:
        lines.append(f"grooves vs {ga['lands']} manual lands: median |error| {ga['median_abs_error_um']:.0f} um, max "
                     f"{ga['max_abs_error_um']:.0f} um, median outward {ga['median_outward_um']:+.0f} um")
    de = summary.get("descriptor", {})
    if de.get("mate_ranks"):
        lines.append(f"descriptor {de['version']} ({de['dim']}-d): mate ranked first for "
                     f"{f(de['top1'], '{:.0%}')} of {de['lands_with_mate']} lands, ranks {de['mate_ranks']}")
    lines.append(f"extract {summary['extract_seconds']:.1f} s, compare {summary['compare_seconds']:.1f} s "
                 f"({summary['land_pairs_per_second']:.1f} land pairs/s)")
    return "\n".join(lines)
