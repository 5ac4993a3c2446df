"""Rotation-invariant global descriptors of breech faces, for candidate retrieval.

A descriptor is a short float32 vector (L2-normalised) whose inner product with
another ranks a national database before the expensive CMC comparison
(:func:`ballistic.cartridge.cmc.pair.compare_pair`) re-ranks the few best candidates.

:func:`breech_face_descriptor` ("bf-polar-fft"):

1. resample the preprocessed breech face to a coarse spacing (default 25 um);
2. find the centre of the annulus: a robust circle fit to the convex hull of
   the measured points (the outer edge of the breech face). The hull, and so
   the centre, turns with the surface; a valid bounding-box centre would not
   when sectors are missing;
3. resample in polar coordinates about that centre (rings every ``spacing_um``
   from 0 to ``r_max_um``, ``n_theta`` angles), mask-aware; each ring minus its
   mean, missing points set to 0;
4. per ring the power of the angular FFT at harmonics ``1..n_harmonics``; a
   rotation about the centre only changes the phases, so the power is
   rotation-invariant. Rings are pooled into ``n_bands`` radial bands (sum of
   power over the band's rings, which also absorbs a small centre error);
5. per band the square root of the pooled power, L2-normalised (bands with
   too little data are zeros); optionally a radial profile (log band energies,
   centred); all concatenated and L2-normalised.

Settings were chosen on the real Fadul set (40 scans, randomly rotated; mates =
same slide) hidden among 3000 synthetic distractors, after PCA whitening fitted
on the distractors (128 dimensions): 10 bands of 200 um out to 2 mm, 64
harmonics at 25 um put every Fadul mate in the top 50 (12 bands x 32 harmonics
out to 2.4 mm, version 1: 0.95). Raw cosine among the 40 Fadul scans alone: top-1
mate 0.80, mean recall@5 of its mates (2 to 4, same slide) 0.60. Weighting bands by their
measured fraction and adding the radial profile lowered recall.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import scipy.ndimage as ndi

from ballistic.errors import DescriptorError
from ballistic.io.atomic import atomic_write_bytes
from ballistic.preprocess.filters import resample
from ballistic.surface import Surface

__all__ = [
    "DESCRIPTOR_VERSION",
    "DESCRIPTOR_DIM",
    "annulus_centre",
    "aperture_centre",
    "polar_centre",
    "fit_circle",
    "breech_face_descriptor",
    "ring_spectra",
    "radial_bands",
    "unit_bands",
    "DescriptorModel",
    "PolarFFTDescriptor",
    "PCAWhitener",
    "descriptor_version",
]

DESCRIPTOR_VERSION = "bf-polar-fft/2"

_N_BANDS = 10
_N_HARMONICS = 64
_N_THETA = 256
_R_MAX_UM = 2000.0

#: Length of :func:`breech_face_descriptor` with its default settings.
DESCRIPTOR_DIM = _N_BANDS * _N_HARMONICS


def annulus_centre(surface: Surface, *, iterations: int = 10) -> tuple[float, float, float]:
    """Centre (row, col) and radius of the outer edge of the measured region, in pixels.

    Robust (iteratively trimmed) algebraic circle fit to the boundary of the convex
    hull of the valid points. The hull turns with the surface, so the centre is
    rotation-covariant; trimming drops straight hull edges where a scan was cut.

    Parameters
    ----------
    surface : Surface
        Heights (um), NaN = missing.

    Returns
    -------
    (cy, cx, radius) : tuple of float
        Pixels of ``surface``.
    """
    m = surface.mask
    if m.sum() < 3:
        raise DescriptorError("annulus_centre: fewer than 3 valid points; preprocess the scan first")
    pts = np.argwhere(m)[:, ::-1].astype(np.float32)  # (x, y)
    hull = cv2.convexHull(pts)[:, 0, :].astype(np.float64)
    # sample the hull boundary about every pixel so long edges and dense arcs weigh by length
    nxt = np.roll(hull, -1, axis=0)
    seg = np.hypot(*(nxt - hull).T)
    samples = [hull[i] + (nxt[i] - hull[i]) * t[:, None]
               for i in range(len(hull)) for t in (np.arange(max(1, int(seg[i]))) / max(1, int(seg[i])),)]
    b = np.concatenate(samples, axis=0)
    return fit_circle(b, iterations=iterations)


def aperture_centre(surface: Surface, *, min_radius_um: float = 300.0) -> tuple[float, float, float] | None:
    """Centre (row, col) and radius, in pixels, of the firing-pin aperture of a processed breech face.

    The aperture is the largest unmeasured region inside the convex hull of the measured points
    (opened by 2 pixels, so thin gaps between measured areas do not join it); a robust circle is fitted
    to the pixels of its rim that touch measured ones. Rotation-covariant like the hull.

    Returns
    -------
    (cy, cx, radius) or None
        None when no aperture of at least ``min_radius_um`` is found (e.g. a scan without the hole).
    """
    m = surface.mask
    if m.sum() < 16:
        return None
    pts = np.argwhere(m)[:, ::-1].astype(np.float32)
    hull = cv2.convexHull(pts).astype(np.int32)
    inside = np.zeros(m.shape, dtype=np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    hole = ndi.binary_opening((inside > 0) & ~m, iterations=2)
    lab, n = ndi.label(hole)
    if n == 0:
        return None
    sizes = ndi.sum_labels(hole, lab, index=np.arange(1, n + 1))
    comp = lab == int(np.argmax(sizes)) + 1
    rim = np.argwhere(comp & ndi.binary_dilation(m))[:, ::-1].astype(np.float64)
    if len(rim) < 8:
        return None
    cy, cx, r = fit_circle(rim)
    if np.mean(np.abs(np.hypot(rim[:, 0] - cx, rim[:, 1] - cy) - r) <= _RIM_TOLERANCE_PX) < _RIM_INLIERS:
        # the hole joins a drop-out or a drag mark: the circle most of the rim agrees with
        cy, cx, r = _consensus_circle(rim, min_radius_px=min_radius_um / surface.spacing_um)
    if not (r * surface.spacing_um >= min_radius_um and 0 <= cy < m.shape[0] and 0 <= cx < m.shape[1]):
        return None
    return cy, cx, r


#: rim pixels within this distance of the fitted aperture circle agree with it (pixels) ...
_RIM_TOLERANCE_PX = 1.5
#: ... and when fewer than half of them do, the hole is taken to join a drop-out or a drag mark (real apertures:
#: 55-100 % of the rim on the 17 DFSC scans, 93-100 % on Fadul; a hole joined to a drop-out: 8-41 % on synthetic
#: firings, whose centre was then 4-15 px off)
_RIM_INLIERS = 0.5


def _consensus_circle(points: np.ndarray, *, min_radius_px: float, trials: int = 300) -> tuple[float, float, float]:
    """Circle through the most of ``points`` ((x, y), pixels): the circles through seeded random triples
    (:func:`fit_circle` of three points), the one with most points within :data:`_RIM_TOLERANCE_PX` (radius at
    least ``min_radius_px``), refitted to those points by :func:`fit_circle`. Deterministic."""
    rng = np.random.default_rng(0)
    x, y = points[:, 0], points[:, 1]
    best, best_n = None, -1
    for tri in points[rng.integers(0, len(points), size=(trials, 3))]:
        (ax, ay), (bx, by), (cx, cy) = tri
        if abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax)) < 1e-9:      # collinear (or repeated): no circle
            continue
        uy, ux, r = fit_circle(tri, iterations=1)
        if r < min_radius_px:
            continue
        inl = np.abs(np.hypot(x - ux, y - uy) - r) <= _RIM_TOLERANCE_PX
        if inl.sum() > best_n:
            best, best_n = inl, int(inl.sum())
    if best is None or best_n < 8:
        return fit_circle(points)
    return fit_circle(points[best])


def polar_centre(surface: Surface) -> tuple[float, float]:
    """Centre of a polar grid about the firing pin: the aperture's (:func:`aperture_centre`), else the outer
    edge's (:func:`annulus_centre`). Pixels of ``surface``; (row, col).

    The firing-pin hole is part of the breech face, so a firearm's marks sit at the same place relative to it
    at every firing; the primer's outer edge moves with the cartridge in the chamber and with how a scan was
    cropped. The learned embedding (``models/``) and the rotation-searched polar descriptor
    (:mod:`ballistic.retrieval.polar_phase`) sample about this centre.
    """
    ap = aperture_centre(surface)
    if ap is not None:
        return ap[0], ap[1]
    cy, cx, _ = annulus_centre(surface)
    return cy, cx


def fit_circle(points: np.ndarray, *, iterations: int = 10) -> tuple[float, float, float]:
    """Robust circle through 2-D points: algebraic least-squares fit, points farther than 3 MAD (at least
    1 unit) from the circle dropped and the fit repeated until nothing changes (at most ``iterations`` fits).

    Parameters
    ----------
    points : ndarray, shape (n, 2)
        (x, y) = (column, row) coordinates, e.g. pixels.
    iterations : int, keyword-only
        Most fits.

    Returns
    -------
    (cy, cx, radius) : tuple of float
        Same units as ``points``; zeros for fewer than 3 points.
    """
    b = np.asarray(points, dtype=np.float64)
    keep = np.ones(len(b), dtype=bool)
    cx = cy = r = 0.0
    for _ in range(max(1, iterations)):
        x, y = b[keep, 0], b[keep, 1]
        if len(x) < 3:
            break
        A = np.stack([x, y, np.ones_like(x)], axis=1)
        sol, *_ = np.linalg.lstsq(A, x * x + y * y, rcond=None)
        cx, cy = sol[0] / 2.0, sol[1] / 2.0
        r = math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))
        res = np.abs(np.hypot(b[:, 0] - cx, b[:, 1] - cy) - r)
        mad = 1.4826 * float(np.median(res[keep]))
        new = res <= max(3.0 * mad, 1.0)
        if np.array_equal(new, keep):
            break
        keep = new
    return float(cy), float(cx), float(r)


def ring_spectra(surface: Surface, *, spacing_um: float = 25.0, n_theta: int = _N_THETA,
                 r_max_um: float = _R_MAX_UM, centre: str = "annulus",
                 offsets_um: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Angular spectra of the rings of a breech face about its annulus centre (:func:`annulus_centre`) or its
    firing-pin aperture's (``centre="aperture"``: :func:`polar_centre`).

    The surface is resampled to ``spacing_um`` (when finer), then sampled in polar coordinates: rings every
    pixel from the centre out to ``r_max_um``, ``n_theta`` angles counter-clockwise as displayed (row 0 on
    top), bilinear and mask-aware; each ring minus its mean, missing points 0. A rotation of the surface about
    the centre by ``a`` multiplies harmonic ``m`` by ``exp(-i m a)``; its mirror image (rows reversed)
    conjugates every harmonic.

    Parameters
    ----------
    surface : Surface
        Preprocessed breech face (heights um, NaN outside), any orientation.
    spacing_um, n_theta, r_max_um : keyword-only
        As :func:`breech_face_descriptor`.
    centre : {"annulus", "aperture"}, keyword-only
        Centre of the rings: the outer edge's, or the firing-pin aperture's where one is found (else the
        outer edge's).
    offsets_um : array_like of float, shape (n_offsets, 2), optional, keyword-only
        Also sample about centres moved by these ``(down, right)`` offsets (um, rows down and columns right
        as displayed) from the one found, the centre found once: a query described about several centres near
        its own (:meth:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor.query_variants`).

    Returns
    -------
    spec : ndarray of complex, shape (n_rings, n_theta // 2 + 1), or (n_offsets, n_rings, n_theta // 2 + 1)
        ``numpy.fft.rfft`` of each ring (ring ``j`` at radius ``(j + 0.5)`` pixels of the working spacing);
        with ``offsets_um``, one such array per offset.
    counts : ndarray of int, shape (n_rings,), or (n_offsets, n_rings)
        Measured samples of each ring.

    Raises
    ------
    DescriptorError
        Fewer than 64 measured points at the working spacing.
    """
    if centre not in ("annulus", "aperture"):
        raise DescriptorError(f"centre must be 'annulus' or 'aperture', got {centre!r}")
    s = resample(surface, spacing_um=max(spacing_um, surface.spacing_um)) if surface.spacing_um < spacing_um \
        else surface
    m = s.mask
    if m.sum() < 64:
        raise DescriptorError(f"breech-face descriptor: only {int(m.sum())} valid points at {s.spacing_um} um; "
                              "is this a preprocessed breech face (preprocess_cartridge)?")
    off = None
    if offsets_um is not None:
        off = np.asarray(offsets_um, dtype=np.float64)
        if off.ndim != 2 or off.shape[1] != 2 or len(off) == 0 or not np.isfinite(off).all():
            raise DescriptorError(f"offsets_um must be finite (down, right) pairs of shape (n, 2), got {off.shape}")
    cy, cx = polar_centre(s) if centre == "aperture" else annulus_centre(s)[:2]
    n_r = int(math.ceil(r_max_um / s.spacing_um))
    radii = np.arange(n_r) + 0.5  # ring radii, pixels (one ring per pixel of spacing)
    theta = np.arange(n_theta) * (2.0 * math.pi / n_theta)
    ring_x = radii[:, None] * np.cos(theta)[None, :]
    ring_y = -radii[:, None] * np.sin(theta)[None, :]
    z0 = np.where(m, s.heights, 0.0).astype(np.float32)
    mf = m.astype(np.float32)

    def about(y: float, x: float) -> tuple[np.ndarray, np.ndarray]:
        map_x = (x + ring_x).astype(np.float32)
        map_y = (y + ring_y).astype(np.float32)
        zp = cv2.remap(z0, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mp = cv2.remap(mf, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        ok = mp > 0.5
        with np.errstate(invalid="ignore", divide="ignore"):
            zp = np.where(ok, zp / np.where(ok, mp, 1.0), 0.0)
        cnt = ok.sum(axis=1)
        mean = np.where(cnt > 0, zp.sum(axis=1) / np.maximum(cnt, 1), 0.0)
        zp = np.where(ok, zp - mean[:, None], 0.0)
        return np.fft.rfft(zp, axis=1), cnt

    if off is None:
        return about(cy, cx)
    got = [about(cy + dy / s.spacing_um, cx + dx / s.spacing_um) for dy, dx in off]
    return np.stack([g[0] for g in got]), np.stack([g[1] for g in got])


def radial_bands(counts: np.ndarray, *, n_bands: int, n_theta: int) -> tuple[np.ndarray, np.ndarray]:
    """Band of each ring (``n_bands`` equal runs of rings from the centre) and each band's measured fraction.

    Returns
    -------
    band_of : ndarray of int, shape (n_rings,)
    measured : ndarray of float, shape (n_bands,)
        Fraction of the band's polar samples that were measured.
    """
    n_r = len(counts)
    band_of = np.minimum((np.arange(n_r) * n_bands) // n_r, n_bands - 1)
    measured = np.bincount(band_of, weights=counts, minlength=n_bands) / \
        (np.bincount(band_of, minlength=n_bands) * n_theta)
    return band_of, measured


def _check_polar_settings(*, spacing_um: float, r_max_um: float, n_harmonics: int, n_theta: int,
                          n_bands: int) -> None:
    """The polar descriptors' settings, or a DescriptorError that says which is wrong."""
    if not (spacing_um > 0 and r_max_um > spacing_um):
        raise DescriptorError(f"need 0 < spacing_um < r_max_um, got spacing_um={spacing_um}, r_max_um={r_max_um}")
    if not (1 <= n_harmonics < n_theta // 2):
        raise DescriptorError(f"n_harmonics must be in [1, n_theta/2), got {n_harmonics} with n_theta={n_theta}")
    if n_bands < 1:
        raise DescriptorError(f"n_bands must be >= 1, got {n_bands}")


def unit_bands(bands: np.ndarray, measured: np.ndarray, *, min_valid: float, r_max_um: float,
               what: str) -> np.ndarray:
    """Scale each band (row) of ``bands`` to unit norm in place, zero the bands measured below ``min_valid``
    (or without energy); returns the mask of the bands kept.

    Raises
    ------
    DescriptorError
        No band is kept (``what`` names the caller in the message).
    """
    norms = np.linalg.norm(bands, axis=1)
    use = (measured >= min_valid) & (norms > 0)
    if not use.any():
        raise DescriptorError(f"{what}: no radial band has enough measured points; "
                              f"raise r_max_um (now {r_max_um} um) or lower min_valid (now {min_valid})",
                              reason="descriptor_no_band")
    bands[use] /= norms[use, None]
    bands[~use] = 0.0
    return use


def breech_face_descriptor(surface: Surface, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS,
                           n_harmonics: int = _N_HARMONICS, n_theta: int = _N_THETA,
                           r_max_um: float = _R_MAX_UM, min_valid: float = 0.1,
                           radial_profile: bool = False) -> np.ndarray:
    """Rotation-invariant global descriptor of a preprocessed breech face.

    Parameters
    ----------
    surface : Surface
        Output of :func:`ballistic.cartridge.breech_face.preprocess_cartridge` (heights um,
        NaN outside the breech face), in any orientation.
    spacing_um : float, keyword-only
        Working spacing, um (default 25). Coarser is faster and keeps only longer
        wavelengths.
    n_bands : int, keyword-only
        Radial bands between 0 and ``r_max_um`` from the annulus centre.
    n_harmonics : int, keyword-only
        Angular harmonics 1..n_harmonics kept per band (``< n_theta / 2``).
    n_theta : int, keyword-only
        Angular samples per ring.
    r_max_um : float, keyword-only
        Outer radius of the polar grid, um (a 9 mm primer is ~2.2 mm in radius).
    min_valid : float, keyword-only
        A band whose measured fraction is below this contributes zeros.
    radial_profile : bool, keyword-only
        Append the radial profile of band energies (``n_bands`` more values,
        weight 0.25 of the spectral part). Off by default: it lowered mate
        recall on Fadul.

    Returns
    -------
    ndarray of float32, shape (n_bands * n_harmonics [+ n_bands],)
        L2-normalised; ``DESCRIPTOR_DIM`` long with the defaults.

    Raises
    ------
    DescriptorError
        When the surface has too few valid points or the settings do not fit.
    """
    _check_polar_settings(spacing_um=spacing_um, r_max_um=r_max_um, n_harmonics=n_harmonics, n_theta=n_theta,
                          n_bands=n_bands)
    spec, cnt = ring_spectra(surface, spacing_um=spacing_um, n_theta=n_theta, r_max_um=r_max_um)
    power = (spec.real[:, 1:n_harmonics + 1] ** 2 + spec.imag[:, 1:n_harmonics + 1] ** 2).astype(np.float64)
    band_of, bvalid = radial_bands(cnt, n_bands=n_bands, n_theta=n_theta)
    bp = np.zeros((n_bands, n_harmonics))
    np.add.at(bp, band_of, power)
    amp = np.sqrt(bp)
    use = unit_bands(amp, bvalid, min_valid=min_valid, r_max_um=r_max_um, what="breech_face_descriptor")
    d = amp.ravel()
    d /= max(np.linalg.norm(d), 1e-12)
    if radial_profile:
        energy = np.zeros(n_bands)
        # log RMS amplitude per band (per measured point), centred over the used bands
        energy[use] = 0.5 * np.log(bp[use].sum(axis=1) / (bvalid[use] * n_theta) ** 2 + 1e-12)
        energy[use] -= energy[use].mean()
        d = np.concatenate([d, 0.25 * energy / max(np.linalg.norm(energy), 1e-12)])
        d /= max(np.linalg.norm(d), 1e-12)
    return d.astype(np.float32)


@runtime_checkable
class DescriptorModel(Protocol):
    """Anything that turns a preprocessed breech face into a fixed-length vector.

    A learned embedding (e.g. a torch model under ``models/``) implements this
    protocol; torch must be imported lazily inside it, never at module top.
    ``name`` is stored with every index built from it (changing the model means
    rebuilding the index). An optional ``version`` (:func:`descriptor_version`) is what the service records
    with every stored descriptor and search record (a new version re-describes the stored exhibits).
    """

    name: str
    dim: int

    def __call__(self, surface: Surface) -> np.ndarray:  # float32 (dim,), L2-normalised
        ...


class PolarFFTDescriptor:
    """:func:`breech_face_descriptor` as a :class:`DescriptorModel`.

    Parameters are those of :func:`breech_face_descriptor` (keyword-only); ``name``
    records the version and every setting so two indexes can be checked for
    compatibility.
    """

    def __init__(self, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS, n_harmonics: int = _N_HARMONICS,
                 n_theta: int = _N_THETA, r_max_um: float = _R_MAX_UM, min_valid: float = 0.1,
                 radial_profile: bool = False) -> None:
        self.kwargs = dict(spacing_um=float(spacing_um), n_bands=int(n_bands), n_harmonics=int(n_harmonics),
                           n_theta=int(n_theta), r_max_um=float(r_max_um), min_valid=float(min_valid),
                           radial_profile=bool(radial_profile))
        self.dim = self.kwargs["n_bands"] * (self.kwargs["n_harmonics"] + int(self.kwargs["radial_profile"]))
        self.name = DESCRIPTOR_VERSION + "?" + "&".join(f"{k}={v:g}" for k, v in self.kwargs.items())
        #: DESCRIPTOR_VERSION with the default settings, else the full name
        self.version = DESCRIPTOR_VERSION if self.kwargs == PolarFFTDescriptor._DEFAULTS else self.name

    def __call__(self, surface: Surface) -> np.ndarray:
        return breech_face_descriptor(surface, **self.kwargs)

    def __repr__(self) -> str:
        return f"PolarFFTDescriptor({self.name!r})"


PolarFFTDescriptor._DEFAULTS = dict(spacing_um=25.0, n_bands=_N_BANDS, n_harmonics=_N_HARMONICS, n_theta=_N_THETA,
                                    r_max_um=_R_MAX_UM, min_valid=0.1, radial_profile=False)


def descriptor_version(model) -> str:
    """The version a descriptor model records: its ``version`` when it has one, else its ``name``."""
    return str(getattr(model, "version", None) or model.name)


def _as_2d_float(X, what: str) -> np.ndarray:
    A = np.asarray(X)
    if A.ndim == 1:
        A = A[None, :]
    if A.ndim != 2:
        raise ValueError(f"{what}: expected shape (n, dim) or (dim,), got {A.shape}")
    if not np.issubdtype(A.dtype, np.number):
        raise ValueError(f"{what}: expected numbers, got dtype {A.dtype}")
    if not np.isfinite(A).all():
        bad = int((~np.isfinite(A)).any(axis=1).sum())
        raise ValueError(f"{what}: {bad} row(s) contain NaN or infinity; recompute those descriptors")
    return A


class PCAWhitener:
    """PCA projection with whitening, fitted on a descriptor sample; rows come out L2-normalised.

    ``transform(x) = normalise(((x - mean) @ components.T) / sqrt(eigenvalues + eps))``.
    Stored with the index (:meth:`save` / :meth:`load`, ``.npz``) because every
    vector in it went through the same projection.

    Attributes
    ----------
    mean : ndarray of float64, shape (dim_in,)
    components : ndarray of float64, shape (out_dim, dim_in)
    eigenvalues : ndarray of float64, shape (out_dim,)
    eps : float
    in_dim, out_dim : int
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, eigenvalues: np.ndarray, eps: float = 1e-6,
                 *, descriptor: str = "") -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.eps = float(eps)
        self.descriptor = str(descriptor)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0] \
                or self.eigenvalues.shape != (self.components.shape[0],):
            raise ValueError("PCAWhitener: inconsistent shapes of mean, components and eigenvalues")
        self._scale = (1.0 / np.sqrt(self.eigenvalues + self.eps))[:, None] * self.components  # (out, in)

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, X: np.ndarray, *, dim: int | None = None, eps: float = 1e-6, descriptor: str = "") -> "PCAWhitener":
        """Fit on a sample of raw descriptors.

        Parameters
        ----------
        X : array_like, shape (n, dim_in)
            Raw descriptors (finite).
        dim : int, optional, keyword-only
            Output dimension, at most ``min(n - 1, dim_in)``; default all of that.
        eps : float, keyword-only
            Added to the eigenvalues before whitening (keeps noise directions tame).
        descriptor : str, keyword-only
            Name of the descriptor model the sample came from (stored, checked by users).
        """
        A = _as_2d_float(X, "PCAWhitener.fit").astype(np.float64)
        n, d = A.shape
        if n < 2:
            raise ValueError(f"PCAWhitener.fit needs at least 2 descriptors, got {n}")
        max_dim = min(n - 1, d)
        dim = max_dim if dim is None else int(dim)
        if not 1 <= dim <= max_dim:
            raise ValueError(f"PCAWhitener.fit: dim must be in [1, {max_dim}] for {n} samples of length {d}, "
                             f"got {dim}; fit on more descriptors or ask for fewer dimensions")
        mean = A.mean(axis=0)
        C = A - mean
        if n >= d:
            cov = (C.T @ C) / (n - 1)
            w, V = np.linalg.eigh(cov)
            order = np.argsort(w)[::-1][:dim]
            comps, ev = V[:, order].T, w[order]
        else:
            _, sv, Vt = np.linalg.svd(C, full_matrices=False)
            comps, ev = Vt[:dim], (sv[:dim] ** 2) / (n - 1)
        # deterministic signs: largest-magnitude coefficient positive
        sign = np.sign(comps[np.arange(dim), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
        return cls(mean, comps, np.maximum(ev, 0.0), eps, descriptor=descriptor)

    def transform(self, X) -> np.ndarray:
        """Project, whiten and L2-normalise.

        Parameters
        ----------
        X : array_like, shape (n, in_dim) or (in_dim,)

        Returns
        -------
        ndarray of float32, shape (n, out_dim) (or (out_dim,) for a 1-D input)
        """
        single = np.ndim(X) == 1
        A = _as_2d_float(X, "PCAWhitener.transform")
        if A.shape[1] != self.in_dim:
            raise ValueError(f"PCAWhitener.transform: descriptors have length {A.shape[1]}, the whitener was "
                             f"fitted on length {self.in_dim}; use the whitener stored with this index")
        Y = (A.astype(np.float64) - self.mean) @ self._scale.T
        Y /= np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
        Y = Y.astype(np.float32)
        return Y[0] if single else Y

    def save(self, path) -> None:
        """Write to ``path`` (.npz) atomically: temp file in the same folder, fsync, rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, eigenvalues=self.eigenvalues,
                 eps=np.float64(self.eps), descriptor=np.str_(self.descriptor), version=np.str_("pca-whiten/1"))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> "PCAWhitener":
        """Read a whitener written by :meth:`save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                if str(z["version"]) != "pca-whiten/1":
                    raise KeyError(f"unknown whitener version {z['version']!s}")
                return cls(z["mean"], z["components"], z["eigenvalues"], float(z["eps"]),
                           descriptor=str(z["descriptor"]))
        except (KeyError, OSError, EOFError, ValueError) as e:
            raise ValueError(f"{path}: not a PCAWhitener file ({e}); rebuild it with PCAWhitener.fit(...).save()") \
                from e

    def __repr__(self) -> str:
        return f"PCAWhitener(in_dim={self.in_dim}, out_dim={self.out_dim})"
