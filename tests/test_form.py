"""Unit tests of :mod:`ballistic.form` (robust least-squares B-spline form removal)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.preprocess import form as F
from ballistic.errors import PreprocessError
from ballistic.surface import Surface


def _rms(a):
    a = a[np.isfinite(a)]
    return float(np.sqrt(np.mean(a * a)))


def _annulus_texture(n=220, spacing=6.25, seed=0, r_in=0.3, r_out=0.48):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, n))
    z = ndi.gaussian_filter(w, 3.0) - ndi.gaussian_filter(w, 12.0)   # texture of ~20-75 um, no form
    z /= z.std()
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) / n
    z[(r > r_out) | (r < r_in)] = np.nan
    return Surface(z, spacing)


def test_bspline_basis_partition_of_unity_and_shape():
    B = F.bspline_basis(101, 5.0, 100.0)
    assert B.shape[0] == 101
    np.testing.assert_allclose(B.sum(axis=1), 1.0, atol=1e-12)
    assert (B >= 0).all()
    # knots cover [0, 500] um centred: ceil(500 / 100) + 3 functions
    assert B.shape[1] == 8
    with pytest.raises(ValueError):
        F.bspline_basis(10, 0.0, 100.0)


def test_bspline_basis_shared_between_grids():
    """A coarse grid (block centres) and the fine grid see the same functions."""
    fine = F.bspline_basis(40, 5.0, 50.0)
    coarse = F.bspline_basis(20, 10.0, 50.0, length_um=39 * 5.0, offset_um=2.5)
    x_f = np.arange(40) * 5.0
    x_c = 2.5 + np.arange(20) * 10.0
    for k in range(fine.shape[1]):
        np.testing.assert_allclose(np.interp(x_c, x_f, fine[:, k]), coarse[:, k], atol=0.02)


def test_normal_equations_match_dense_products():
    rng = np.random.default_rng(1)
    By = F._augmented_basis(30, 5.0, 40.0, 3, length_um=145.0)
    Bx = F._augmented_basis(25, 5.0, 40.0, 3, length_um=120.0)
    w = rng.random((30, 25)) * (rng.random((30, 25)) > 0.3)
    A = F._normal_equations(w, By, Bx)
    D = np.einsum("ia,jb->ijab", By, Bx).reshape(30 * 25, -1)
    np.testing.assert_allclose(A, D.T @ (w.ravel()[:, None] * D), atol=1e-9)


def test_remove_form_removes_dome_tilt_and_long_waves_keeps_texture():
    s = _annulus_texture()
    n = s.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] * s.spacing_um
    form = 20.0 + 0.01 * xx - 0.02 * yy + 3e-5 * ((xx - 700) ** 2 + (yy - 680) ** 2) \
        + 2.0 * np.sin(2 * np.pi * xx / 3000.0)
    noisy = s.with_heights(s.heights + form)
    before = noisy.heights.copy()
    out = F.remove_form(noisy, cutoff_um=500.0)
    np.testing.assert_array_equal(noisy.heights, before)          # input untouched
    np.testing.assert_array_equal(np.isnan(out.heights), np.isnan(s.heights))
    # the form (tens of um) is gone: the result is what the filter leaves of the texture alone
    alone = F.remove_form(s, cutoff_um=500.0).heights
    assert _rms(out.heights - alone) < 1e-3 * _rms(np.where(s.mask, form, np.nan))
    assert np.corrcoef(out.heights[s.mask], s.heights[s.mask])[0, 1] > 0.9


@pytest.mark.parametrize("wavelength, kept", [(200.0, (0.9, 1.1)), (300.0, (0.85, 1.15)), (1000.0, (0.0, 0.1))])
def test_remove_form_transfer(wavelength, kept):
    n, sp = 300, 6.25
    x = np.arange(n) * sp
    z = np.broadcast_to(np.sin(2 * np.pi * x / wavelength), (n, n)).copy()
    out = F.remove_form(Surface(z, sp), cutoff_um=500.0, robust=False)
    c = slice(60, -60)
    ratio = _rms(out.heights[c, c]) / _rms(z[c, c])
    assert kept[0] <= ratio <= kept[1]


@pytest.mark.parametrize("robust", [False, True])
def test_remove_form_is_idempotent(robust):
    s = _annulus_texture(seed=3)
    n = s.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] * s.spacing_um
    s = s.with_heights(s.heights + 1e-4 * (xx - 600) ** 2 + 0.5 * np.cos(2 * np.pi * yy / 900.0))
    once = F.remove_form(s, cutoff_um=500.0, robust=robust)
    twice = F.remove_form(once, cutoff_um=500.0, robust=robust)
    assert _rms(twice.heights - once.heights) < (1e-6 if not robust else 1e-3) * _rms(once.heights)


def test_remove_form_robust_ignores_spikes():
    s = _annulus_texture(seed=5)
    z = s.heights.copy()
    rng = np.random.default_rng(0)
    idx = np.flatnonzero(np.isfinite(z))
    spikes = rng.choice(idx, size=idx.size // 50, replace=False)
    z.ravel()[spikes] += 200.0
    out = F.remove_form(s.with_heights(z), cutoff_um=500.0, robust=True)
    ok = np.isfinite(z)
    ok.ravel()[spikes] = False
    # without robustness the 2 % of +200 um spikes would lift the whole form by ~4 um
    assert abs(float(np.median(out.heights[ok] - s.heights[ok]))) < 0.1


def test_fit_form_errors():
    with pytest.raises(PreprocessError):
        F.fit_form(Surface(np.full((20, 20), np.nan), 5.0))
    with pytest.raises(ValueError):
        F.fit_form(_annulus_texture(), cutoff_um=0.0)
    with pytest.raises(ValueError):
        F.fit_form(_annulus_texture(), min_support=0.0)


def test_fit_form_on_block_means_is_close_to_the_full_fit():
    s = _annulus_texture(seed=7)
    n = s.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] * s.spacing_um
    s = s.with_heights(s.heights + 5e-3 * xx + 2e-5 * (yy - 500) ** 2)
    full = F.fit_form(s, robust=False)
    block = F.fit_form(s, robust=False, work_spacing_um=12.5)
    m = s.mask
    assert _rms((full - block)[m]) < 0.05 * _rms(s.heights[m] - full[m])
