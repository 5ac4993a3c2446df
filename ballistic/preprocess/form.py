"""Form removal by least squares onto a fixed smooth space: a long-wavelength filter that is a
projection, so that filtering an already filtered surface changes it by (numerically) nothing.

A Gaussian high-pass (:func:`ballistic.preprocess.filters.bandpass_filter`) attenuates every
wavelength by a factor between 0 and 1: applied twice it attenuates twice, so a scan that
someone else already band-passed is filtered again by a different amount than a raw one,
and processing our own output again changes it by 10-20 % RMS (measured on Fadul and DFSC
scans). :func:`remove_form` fits the form - everything longer than about ``cutoff_um`` - as
a tensor product of cubic Legendre polynomials and cubic B-splines with knots every
``cutoff_um / 2`` by weighted least squares over the measured points, and subtracts it. A
least-squares fit is a projection: fitting the residual again removes nothing. The cut is
steep: the form takes nothing of a sine at 0.6 ``cutoff_um``, ~5 % at 0.8, about half at
``cutoff_um`` and ~95 % at 1.6 ``cutoff_um`` (synthetic sines, full mask).

B-splines with too few measured points under them (under a quarter of their mass, judged
on the measured region with small holes filled) are left out - at the edge of a thin
annulus they would fit texture - and the polynomials, global, carry the form there (a
primer's dome). The normal equations are solved by a rank-revealing QR (relative cut
1e-10), which keeps the fit an exact projection where polynomials and splines overlap.
``robust=True`` adds Tukey-biweight reweighting (4.685 robust sigmas); the breech-face
normalisation instead rejects outliers explicitly and refits, which keeps exactness.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

from ballistic.surface import Surface

__all__ = ["bspline_basis", "fit_form", "remove_form"]

#: Tukey biweight tuning constant (95 % efficiency at the normal distribution).
_TUKEY_C = 4.685


def bspline_basis(n: int, spacing_um: float, knot_spacing_um: float, *, length_um: float | None = None,
                  offset_um: float = 0.0) -> np.ndarray:
    """Uniform cubic B-spline basis sampled on a regular grid.

    Parameters
    ----------
    n : int
        Number of samples; sample ``i`` lies at ``offset_um + i * spacing_um``.
    spacing_um, knot_spacing_um : float
        Sample and knot spacing, um.
    length_um : float, keyword-only, optional
        Extent the knots must cover (default: that of the samples); knots are centred on
        ``[0, length_um]`` so that two grids of one surface (coarse and fine) share them.
    offset_um : float, keyword-only
        Position of sample 0, um.

    Returns
    -------
    ndarray, shape (n, p)
        ``B[i, k]`` = value of basis function ``k`` at sample ``i``; every row sums to 1.
    """
    if n < 1 or not spacing_um > 0 or not knot_spacing_um > 0:
        raise ValueError(f"need n >= 1 and positive spacings, got n={n}, spacing_um={spacing_um}, "
                         f"knot_spacing_um={knot_spacing_um}")
    h = float(knot_spacing_um)
    L = float((n - 1) * spacing_um if length_um is None else length_um)
    nk = int(math.ceil(L / h - 1e-9)) + 3
    t0 = (L - (nk - 1) * h) / 2.0
    x = offset_um + np.arange(n) * spacing_um
    a = np.abs((x[:, None] - (t0 + h * np.arange(nk))[None, :]) / h)
    return np.where(a < 1.0, (4.0 - 6.0 * a * a + 3.0 * a ** 3) / 6.0,
                    np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))


def _augmented_basis(n: int, spacing_um: float, knot_spacing_um: float, degree: int, *, length_um: float,
                     offset_um: float = 0.0) -> np.ndarray:
    """Legendre polynomials of degree 0..``degree`` over ``[0, length_um]``, then the B-splines,
    sampled at ``offset_um + i * spacing_um``.

    Their tensor products hold every polynomial of degree <= ``degree`` in each axis, so
    a primer's dome is fitted globally even where edge B-splines are left out.
    """
    B = bspline_basis(n, spacing_um, knot_spacing_um, length_um=length_um, offset_um=offset_um)
    if degree < 0:
        return B
    x = offset_um + np.arange(n) * spacing_um
    u = (2.0 * x - length_um) / length_um if length_um > 0 else np.zeros(n)
    return np.hstack([np.polynomial.legendre.legvander(u, degree), B])


def _block_mean(z0: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means of ``k`` x ``k`` blocks and their weights (sum of ``w`` / k^2)."""
    if k == 1:
        return z0, w
    ny, nx = z0.shape
    Ny, Nx = -(-ny // k), -(-nx // k)
    pz = np.zeros((Ny * k, Nx * k))
    pw = np.zeros((Ny * k, Nx * k))
    pz[:ny, :nx] = z0 * w
    pw[:ny, :nx] = w
    sw = pw.reshape(Ny, k, Nx, k).sum(axis=(1, 3))
    sz = pz.reshape(Ny, k, Nx, k).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        zb = np.where(sw > 0, sz / sw, 0.0)
    return zb, sw / (k * k)


def _footprint(mask: np.ndarray, spacing_um: float, *, small_um: float) -> np.ndarray:
    """The measured region with its small holes (under ``small_um`` squared) filled."""
    import scipy.ndimage as ndi

    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    lab, n = ndi.label(holes)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes * spacing_um ** 2 < small_um ** 2
    small[0] = False
    return mask | small[lab]


def _pairs(B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (b, d) of columns of ``B`` whose product is not identically zero."""
    nz = np.abs(B) > 0
    overlap = (nz.T.astype(np.float64) @ nz.astype(np.float64)) > 0
    return np.nonzero(overlap)


def _normal_equations(w: np.ndarray, By: np.ndarray, Bx: np.ndarray) -> np.ndarray:
    """``A = sum_ij w_ij (By_i (x) Bx_j)(By_i (x) Bx_j)^T``, shape (py px, py px), from the
    column pairs that overlap (B-splines overlap only within 3 knots), as two matrix products."""
    py, px = By.shape[1], Bx.shape[1]
    ya, yc = _pairs(By)
    xb, xd = _pairs(Bx)
    T = w @ (Bx[:, xb] * Bx[:, xd])                    # (ny, n_xpairs)
    S = (By[:, ya] * By[:, yc]).T @ T                  # (n_ypairs, n_xpairs)
    A = np.zeros((py, px, py, px))
    A[ya[:, None], xb[None, :], yc[:, None], xd[None, :]] = S
    return A.reshape(py * px, py * px)


def _solve(z0: np.ndarray, w: np.ndarray, By: np.ndarray, Bx: np.ndarray, min_support: float,
           footprint: np.ndarray) -> np.ndarray:
    """Coefficients (py, px) minimising ``sum w (z - By C Bx^T)^2`` by exact least squares.

    Coefficients whose basis function has less than ``min_support`` of its (absolute) mass
    over ``footprint`` (the measured region, small holes filled) stay 0 (they would only bend the fit towards a few edge
    points); the others are solved with a pseudo-inverse, so that the fit is an
    orthogonal projection in the weighted data space: fitting its residual again gives 0.
    """
    py, px = By.shape[1], Bx.shape[1]
    Ay, Ax = np.abs(By), np.abs(Bx)
    support = (Ay.T @ footprint @ Ax).ravel()
    full = np.outer(Ay.sum(axis=0), Ax.sum(axis=0)).ravel()
    keep = support >= min_support * full
    C = np.zeros(py * px)
    if keep.any():
        A = _normal_equations(w, By, Bx)[np.ix_(keep, keep)]
        rhs = (By.T @ (w * z0) @ Bx).ravel()[keep]
        # The polynomials and the B-splines overlap, so A is (nearly) singular. A rank-revealing
        # least-squares solve (QR with column pivoting, relative cut 1e-10) fits the data with the
        # well-determined combinations only: the fit stays an exact projection (a ridge would not).
        C[keep] = scipy.linalg.lstsq(A, rhs, cond=1e-10, lapack_driver="gelsy", check_finite=False)[0]
    return C.reshape(py, px)


def fit_form(surface: Surface, *, cutoff_um: float = 2000.0, robust: bool = True, iterations: int = 4,
             min_support: float = 0.25, poly_degree: int = 3, work_spacing_um: float | None = None) -> np.ndarray:
    """The form of a surface: its robust least-squares cubic B-spline fit (knots every
    ``cutoff_um / 2``), on the surface's own grid.

    Parameters
    ----------
    surface : Surface
        Heights in um, NaN = missing.
    cutoff_um : float, keyword-only
        Wavelength (um) near which half of a sine is taken as form.
    robust : bool, keyword-only
        Re-weight the fit with Tukey biweights of the residual (4.685 robust standard
        deviations, from the median absolute residual) for ``iterations`` passes.
    poly_degree : int, keyword-only
        Legendre polynomials up to this degree per axis join the B-splines (-1: none).
    min_support : float, keyword-only
        A basis function enters the fit only when the measured points under it weigh at
        least this fraction of a fully measured one; at the edges of a thin annulus the
        others would fit short-wave texture, not form.

    work_spacing_um : float or None, keyword-only
        The fit runs on block means of ``floor(work_spacing_um / spacing)`` pixels a side
        (the form is smooth; 12.5 um is 40 samples per cut-off); None fits every pixel.

    Returns
    -------
    ndarray, shape ``surface.shape``
        The fitted form (finite everywhere, also where the surface is NaN).
    """
    from ballistic.errors import PreprocessError

    if not cutoff_um > 0:
        raise ValueError(f"cutoff_um must be > 0 um, got {cutoff_um!r}")
    if not 0.0 < min_support <= 1.0:
        raise ValueError(f"min_support must be in (0, 1], got {min_support!r}")
    m = surface.mask
    if m.sum() < 16:
        raise PreprocessError(f"fit_form: only {int(m.sum())} valid points; need at least 16")
    h = cutoff_um / 2.0
    sp = surface.spacing_um
    ny, nx = surface.shape
    Ly, Lx = (ny - 1) * sp, (nx - 1) * sp
    # fit on k x k block means (block centres on a regular grid, so the basis stays separable)
    k = max(1, int(work_spacing_um // sp)) if work_spacing_um else 1
    z0 = np.where(m, surface.heights, 0.0)
    zb, wb = _block_mean(z0, m.astype(np.float64), k)
    off = (k - 1) * sp / 2.0
    By = _augmented_basis(zb.shape[0], k * sp, h, poly_degree, length_um=Ly, offset_um=off)
    Bx = _augmented_basis(zb.shape[1], k * sp, h, poly_degree, length_um=Lx, offset_um=off)
    mb = wb > 0
    # which B-splines enter the fit depends on the footprint of the measured region (small
    # dropouts and single rejected points filled), not on every point: removing a few
    # points must not switch a basis function on or off
    foot = _footprint(m, sp, small_um=cutoff_um / 10.0).astype(np.float64)
    if k > 1:
        foot = _block_mean(foot, np.ones_like(foot), k)[0]
    if mb.sum() < 16:
        raise PreprocessError("fit_form: too few measured blocks; the surface is too small for this cut-off")
    w = wb
    C = _solve(zb, w, By, Bx, min_support, foot)
    if robust:
        for _ in range(max(0, iterations)):
            r = np.where(mb, zb - By @ C @ Bx.T, 0.0)
            sigma = 1.4826 * float(np.median(np.abs(r[mb])))
            if not np.isfinite(sigma) or sigma <= 0:
                break
            u = r / (_TUKEY_C * sigma)
            w_new = np.where(mb & (np.abs(u) < 1.0), wb * (1.0 - u * u) ** 2, 0.0)
            if (w_new > 0).sum() < 16:
                break
            if np.allclose(w_new, w, rtol=0.0, atol=1e-3):
                w = w_new
                break
            w = w_new
            C = _solve(zb, w, By, Bx, min_support, foot)
    fy = _augmented_basis(ny, sp, h, poly_degree, length_um=Ly)
    fx = _augmented_basis(nx, sp, h, poly_degree, length_um=Lx)
    return fy @ C @ fx.T


def remove_form(surface: Surface, *, cutoff_um: float = 2000.0, robust: bool = True) -> Surface:
    """Subtract the form (wavelengths longer than about ``cutoff_um``) from a surface.

    See :func:`fit_form`. Unlike a Gaussian high-pass this is (nearly) idempotent:
    ``remove_form(remove_form(s))`` differs from ``remove_form(s)`` by well under 1 % RMS.

    Returns
    -------
    Surface
        Same shape and spacing; NaN where the input was NaN.
    """
    form = fit_form(surface, cutoff_um=cutoff_um, robust=robust)
    return surface.with_heights(np.where(surface.mask, surface.heights - form, np.nan))
