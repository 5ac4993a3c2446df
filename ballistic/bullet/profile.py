"""What the bullet steps pass on: a crosscut profile, the grooves, a land signature; and the 1-D
mask-aware helpers they share (Gaussian filter with a cut-off in um, robust polynomial fit).

Convention (see :mod:`ballistic.bullet`): striae along x, a profile runs down the rows across
the land, profile position ``k`` is ``k * spacing_um`` um from row 0. NaN = not measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.ndimage as ndi

from ballistic.errors import BulletError, UnusableLandError
from ballistic.preprocess.filters import _SIGMA_PER_CUTOFF
from ballistic.surface import Surface

__all__ = ["Crosscut", "Grooves", "Signature"]


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


def _as_surface(surface: Surface, what: str) -> Surface:
    if not isinstance(surface, Surface):
        raise BulletError(f"{what}: expected a ballistic.surface.Surface (e.g. from ballistic.io.x3p.read_x3p), "
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
