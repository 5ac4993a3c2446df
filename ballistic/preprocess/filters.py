"""Mask-aware filters and resampling of surfaces: levelling, Gaussian band-pass, resampling, rotation.

All functions are stateless, take a :class:`~ballistic.surface.Surface` first and
return a new one (inputs are never mutated). Lengths are micrometres (um).
NaN means "not measured / masked" and is carried through every step by
normalized (mask-aware) convolution rather than zero-filled.

* :func:`remove_trend` - robust (iteratively trimmed) plane fit, subtracted;
* :func:`gaussian_lowpass`, :func:`bandpass_filter` - ISO 16610-21 Gaussian filters, cut-offs in um;
* :func:`resample` - to a new spacing (area average down, bilinear up);
* :func:`rotate` - about the centre, bilinear and NaN-aware (numba kernel :func:`_warp_rotate`,
  also used by :func:`ballistic.cartridge.cmc.register.warp_to_reference`);
* :func:`crop_to_mask` - to the bounding box of the measured points.

Evidence-specific preprocessing builds on these: breech faces in
:mod:`ballistic.cartridge.breech_face`, firing pins in :mod:`ballistic.cartridge.firing_pin`,
2D images in :mod:`ballistic.cartridge.image2d`.

The numba kernel :func:`_warp_rotate` is private: call it through :func:`rotate` or
``warp_to_reference``. Its slow pure-numpy twin is in ``tests/naive.py``. Arrays are
C-contiguous float64; coordinates are (row, col) = (y, x) in pixels, angles in radians,
counter-clockwise as seen on the image with row 0 at the top.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np
import scipy.ndimage as ndi

from ballistic.errors import PreprocessError
from ballistic.io.grid import resample_grid
from ballistic.surface import Surface

__all__ = [
    "remove_trend",
    "bandpass_filter",
    "gaussian_lowpass",
    "resample",
    "rotate",
    "crop_to_mask",
]

_NB = dict(nogil=True, cache=True, fastmath=False)

# ISO 16610-21 Gaussian: sigma = cutoff * sqrt(ln 2 / 2) / pi
_SIGMA_PER_CUTOFF = math.sqrt(math.log(2.0) / 2.0) / math.pi


def _require_valid(surface: Surface, what: str, min_points: int = 16) -> None:
    if int(surface.mask.sum()) < min_points:
        raise PreprocessError(
            f"{what}: surface has only {int(surface.mask.sum())} valid points "
            f"(need at least {min_points}); check the scan is not empty or fully masked")


def _plane_design(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return yy.astype(np.float64), xx.astype(np.float64)


def _robust_poly(z: np.ndarray, sel: np.ndarray, init: np.ndarray, *, order: int, iterations: int,
                 k: float, tol_min: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Iteratively trimmed least-squares polynomial surface (order 1 = plane, 2 = quadric).

    Starts from the points ``init``; each pass keeps the points of ``sel`` within
    ``max(k * sigma, tol_min)`` of the fit, sigma = 1.4826 * MAD of the current
    inliers. Returns (trend over the whole grid, final inliers, sigma).
    """
    yy, xx = _plane_design(z.shape)
    yy /= max(1, z.shape[0])
    xx /= max(1, z.shape[1])
    cols = [np.ones_like(xx), xx, yy]
    if order >= 2:
        cols += [xx * xx, xx * yy, yy * yy]
    D = np.stack(cols, axis=-1)
    inl = init.copy()
    sigma = float("nan")
    trend = np.zeros_like(z)
    for _ in range(max(1, iterations)):
        if inl.sum() < len(cols):
            break
        coef, *_ = np.linalg.lstsq(D[inl], z[inl], rcond=None)
        trend = D @ coef
        r = z - trend
        sigma = 1.4826 * float(np.median(np.abs(r[inl])))
        if not np.isfinite(sigma) or sigma == 0:
            break
        new = sel & (np.abs(r) < max(k * sigma, tol_min))
        if np.array_equal(new, inl):
            break
        inl = new
    return trend, inl, sigma


def remove_trend(surface: Surface, *, robust: bool = True, iterations: int = 30, k: float = 3.0) -> Surface:
    """Subtract a (robustly fitted) plane from the heights.

    Parameters
    ----------
    surface : Surface
        Heights in um, NaN = missing.
    robust : bool, keyword-only
        Start from the points within ``k`` robust standard deviations
        (1.4826 * MAD) of the median height, then repeatedly fit and keep the
        points within ``k`` robust standard deviations of the plane until that set
        stops changing (at most ``iterations`` passes). So outliers - even a
        plateau holding a third of the points - do not pull the plane.
        A plain least-squares fit when False.

    Returns
    -------
    Surface
        Same shape; heights minus the plane, NaN where the input was NaN.
    """
    _require_valid(surface, "remove_trend", 3)
    z = surface.heights
    m = surface.mask
    z0 = np.where(m, z, 0.0)
    if not robust:
        trend, _, _ = _robust_poly(z0, m, m, order=1, iterations=1, k=k)
    else:
        med = float(np.median(z[m]))
        mad = 1.4826 * float(np.median(np.abs(z[m] - med)))
        init = m & (np.abs(z0 - med) <= k * mad) if mad > 0 else m
        if init.sum() < 3:
            init = m
        trend, _, _ = _robust_poly(z0, m, init, order=1, iterations=iterations, k=k)
    return surface.with_heights(np.where(m, z - trend, np.nan))


def gaussian_lowpass(surface: Surface, *, cutoff_um: float, min_weight: float = 0.5) -> Surface:
    """Mask-aware Gaussian low-pass (normalized convolution), ISO 16610-21 cut-off in um.

    ``out = G*(z m) / G*m``; points whose local valid weight ``G*m`` falls below
    ``min_weight`` (or that were missing) stay NaN, so edges are not pulled to zero.
    """
    if not cutoff_um > 0:
        raise ValueError(f"cutoff_um must be > 0 um, got {cutoff_um!r}")
    sigma_px = cutoff_um * _SIGMA_PER_CUTOFF / surface.spacing_um
    m = surface.mask
    z0 = np.where(m, surface.heights, 0.0)
    num = ndi.gaussian_filter(z0, sigma_px, mode="constant", truncate=3.0)
    den = ndi.gaussian_filter(m.astype(np.float64), sigma_px, mode="constant", truncate=3.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out = np.where(m & (den >= min_weight), out, np.nan)
    return surface.with_heights(out)


def bandpass_filter(surface: Surface, *, short_cutoff_um: float | None = 16.0,
                    long_cutoff_um: float | None = 500.0) -> Surface:
    """Gaussian band-pass: keep wavelengths between ``short_cutoff_um`` and ``long_cutoff_um``.

    Parameters
    ----------
    surface : Surface
        Heights in um, NaN = missing.
    short_cutoff_um : float or None, keyword-only
        Low-pass cut-off (noise removal), um. ``None`` skips it.
    long_cutoff_um : float or None, keyword-only
        High-pass cut-off (form / waviness removal), um. ``None`` skips it.
        The defaults (16 um, 500 um) are those used for breech faces by cmcR.

    Returns
    -------
    Surface
        Same shape and spacing; NaN where the input was NaN or too close to
        missing data for the filter to be defined.
    """
    if short_cutoff_um is not None and long_cutoff_um is not None and short_cutoff_um >= long_cutoff_um:
        raise ValueError(f"short_cutoff_um ({short_cutoff_um}) must be below long_cutoff_um ({long_cutoff_um})")
    _require_valid(surface, "bandpass_filter")
    out = surface
    if short_cutoff_um is not None:
        out = gaussian_lowpass(out, cutoff_um=short_cutoff_um)
    if long_cutoff_um is not None:
        form = gaussian_lowpass(out, cutoff_um=long_cutoff_um, min_weight=1e-3)
        out = out.with_heights(out.heights - form.heights)
    return out


def resample(surface: Surface, *, spacing_um: float, min_valid: float = 0.5) -> Surface:
    """Resample to a new pixel spacing (um), mask-aware.

    Downsampling averages the valid points falling in each new pixel (area
    interpolation of ``z m`` divided by that of ``m``); upsampling is bilinear.
    A new pixel is NaN when less than ``min_valid`` of its footprint was measured
    (:func:`ballistic.io.grid.resample_grid`, which also squares non-square pixels).
    """
    if not spacing_um > 0:
        raise ValueError(f"spacing_um must be > 0 um, got {spacing_um!r}")
    f = surface.spacing_um / spacing_um
    if abs(f - 1.0) < 1e-6:
        return surface
    s = surface.spacing_um
    out = resample_grid(surface.heights, (s, s), spacing_um=spacing_um, min_valid=min_valid)
    return surface.with_heights(out, spacing_um=spacing_um)


def rotate(surface: Surface, angle_deg: float, *, expand: bool = True) -> Surface:
    """Rotate a surface counter-clockwise (as displayed, row 0 on top) about its centre.

    Bilinear, NaN-aware: a point whose neighbours include a missing one is missing.
    With ``expand`` the canvas grows so that nothing is cut off.
    """
    h = np.ascontiguousarray(surface.heights, dtype=np.float64)
    ny, nx = h.shape
    a = math.radians(angle_deg)
    if expand:
        c, s = abs(math.cos(a)), abs(math.sin(a))
        ony, onx = int(math.ceil(ny * c + nx * s)), int(math.ceil(nx * c + ny * s))
    else:
        ony, onx = ny, nx
    out = _warp_rotate(h, a, (ny - 1) / 2.0, (nx - 1) / 2.0, ony, onx,
                               (ony - 1) / 2.0, (onx - 1) / 2.0, 0.0, 0.0)
    return surface.with_heights(out, rotated_deg=float(angle_deg))


def crop_to_mask(surface: Surface, *, pad_px: int = 0) -> Surface:
    """Crop to the bounding box of the valid points (plus ``pad_px`` pixels)."""
    m = surface.mask
    if not m.any():
        raise PreprocessError("crop_to_mask: surface has no valid points")
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1 = max(0, rows[0] - pad_px), min(m.shape[0], rows[-1] + 1 + pad_px)
    c0, c1 = max(0, cols[0] - pad_px), min(m.shape[1], cols[-1] + 1 + pad_px)
    return surface.with_heights(surface.heights[r0:r1, c0:c1].copy())


# --------------------------------------------------------------------------- kernel
@nb.njit(**_NB)
def _warp_rotate(img, angle, cy, cx, out_ny, out_nx, ocy, ocx, ty, tx):
    """Rotate ``img`` by ``angle`` about (cy, cx) and place it so that point lands at
    (ocy + ty, ocx + tx) of an (out_ny, out_nx) output. Bilinear; an output pixel is
    NaN when it falls outside ``img`` or any neighbour that carries weight is NaN.

    The output pixel (r, c) samples the input at
    ``R(-angle) @ ((r, c) - (ocy + ty, ocx + tx)) + (cy, cx)``.
    """
    ny, nx = img.shape
    out = np.empty((out_ny, out_nx), dtype=np.float64)
    ca = math.cos(angle)
    sa = math.sin(angle)
    for r in range(out_ny):
        dy = r - (ocy + ty)
        for c in range(out_nx):
            dx = c - (ocx + tx)
            # inverse rotation R(-angle); R(angle) turns counter-clockwise as displayed:
            # R(a) (dy, dx) = (cos a dy - sin a dx, sin a dy + cos a dx) with rows pointing down
            sy = cy + ca * dy + sa * dx
            sx = cx - sa * dy + ca * dx
            y0 = math.floor(sy)
            x0 = math.floor(sx)
            fy = sy - y0
            fx = sx - x0
            if y0 < -1 or x0 < -1 or y0 >= ny or x0 >= nx:
                out[r, c] = np.nan
                continue
            acc = 0.0
            ok = True
            for k in range(4):
                yy = y0 + (k >> 1)
                xx = x0 + (k & 1)
                w = (fy if (k >> 1) else 1.0 - fy) * (fx if (k & 1) else 1.0 - fx)
                if w <= 1e-12:
                    continue
                if yy < 0 or xx < 0 or yy >= ny or xx >= nx:
                    ok = False
                    break
                v = img[yy, xx]
                if v != v:
                    ok = False
                    break
                acc += w * v
            out[r, c] = acc if ok else np.nan
    return out
