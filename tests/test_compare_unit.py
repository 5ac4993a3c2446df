"""Unit tests of :mod:`ballistic.cartridge.cmc` on small synthetic data."""
from __future__ import annotations

import math

import naive
import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.cartridge.cmc.cells import cell_division, compare_cells
from ballistic.cartridge.cmc.params import CMCParams, mirrored, prepare
from ballistic.cartridge.cmc.register import (Registration, invert_registration, masked_ncc, register_global,
                                             register_thorough, rotation_step_deg, search_rotation,
                                             warp_to_reference)
from ballistic.preprocess.filters import crop_to_mask, rotate
from ballistic.surface import Surface


def _nan_rand(rng, shape, frac=0.2):
    a = rng.normal(size=shape)
    a[rng.random(shape) < frac] = np.nan
    return a


NCC_SHAPES = [((9, 11), (5, 7)), ((6, 5), (8, 9)), ((4, 4), (4, 4)), ((1, 3), (2, 2))]


@pytest.mark.parametrize("fshape,mshape", NCC_SHAPES)
@pytest.mark.parametrize("min_overlap", [1, 4, 10])
@pytest.mark.parametrize("centred", [True, False])
def test_masked_ncc_matches_twin_float64(fshape, mshape, min_overlap, centred):
    rng = np.random.default_rng(sum(fshape) * 7 + sum(mshape))
    fixed, moving = _nan_rand(rng, fshape), _nan_rand(rng, mshape)
    got, n = masked_ncc(fixed, moving, min_overlap=min_overlap, centred=centred)
    want, wn = naive.masked_ncc(fixed, moving, min_overlap, centred=centred)
    assert got.shape == (fshape[0] + mshape[0] - 1, fshape[1] + mshape[1] - 1)
    np.testing.assert_array_equal(n, wn)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("fshape,mshape", NCC_SHAPES[:2])
def test_masked_ncc_matches_twin_float32(fshape, mshape):
    rng = np.random.default_rng(3)
    fixed, moving = _nan_rand(rng, fshape), _nan_rand(rng, mshape)
    got, n = masked_ncc(fixed, moving, min_overlap=4, dtype=np.float32)
    want, wn = naive.masked_ncc(fixed, moving, 4)
    np.testing.assert_array_equal(n, wn)
    np.testing.assert_allclose(got, want, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("shifts", [(-2, 3, -4, 1), (0, 0, 0, 0), (-4, -4, 6, 10), (-4, 8, -6, 10), (2, 5, -1, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("centred", [True, False])
def test_masked_ncc_shift_window_matches_twin(shifts, dtype, centred):
    rng = np.random.default_rng(5)
    fixed, moving = _nan_rand(rng, (9, 11)), _nan_rand(rng, (5, 7))
    got, n = masked_ncc(fixed, moving, min_overlap=3, shifts=shifts, dtype=dtype, centred=centred)
    want, wn = naive.masked_ncc(fixed, moving, 3, shifts, centred=centred)
    assert got.shape == (shifts[1] - shifts[0] + 1, shifts[3] - shifts[2] + 1)
    np.testing.assert_array_equal(n, wn)
    tol = dict(rtol=1e-6, atol=1e-9) if dtype is np.float64 else dict(atol=1e-3)
    np.testing.assert_allclose(got, want, equal_nan=True, **tol)


def test_masked_ncc_index_convention():
    """moving = fixed[2:7, 3:9] (plus an offset and scale) peaks at d = (2, 3) with ncc 1."""
    rng = np.random.default_rng(6)
    fixed = _nan_rand(rng, (12, 14), 0.1)
    moving = 3.0 * fixed[2:7, 3:9] + 5.0
    ncc, n = masked_ncc(fixed, moving, min_overlap=10)
    i, j = np.unravel_index(np.nanargmax(ncc), ncc.shape)
    assert (i - (moving.shape[0] - 1), j - (moving.shape[1] - 1)) == (2, 3)
    assert ncc[i, j] == pytest.approx(1.0, abs=1e-9)
    sub, _ = masked_ncc(fixed, moving, min_overlap=10, shifts=(1, 3, 2, 4))
    assert np.nanargmax(sub) == np.ravel_multi_index((1, 1), sub.shape)


def test_masked_ncc_all_nan_and_constant():
    rng = np.random.default_rng(7)
    moving = rng.normal(size=(4, 5))
    ncc, n = masked_ncc(np.full((6, 6), np.nan), moving, min_overlap=1)
    assert np.isnan(ncc).all() and (n == 0).all()
    # zero variance: Pearson undefined; never a meaningful correlation
    ncc, _ = masked_ncc(np.full((6, 6), 2.0), moving, min_overlap=4)
    assert np.all(np.isnan(ncc) | (np.abs(ncc) < 1e-3))
    # uncentred: a side that is zero over the overlap has no correlation either (NaN, not 0 or inf)
    ncc, n = masked_ncc(np.zeros((6, 6)), moving, min_overlap=4, centred=False)
    assert np.isnan(ncc).all() and (n > 0).any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_masked_ncc_batched_equals_per_slice(dtype):
    rng = np.random.default_rng(9)
    fixed = _nan_rand(rng, (10, 9))
    stack = np.stack([_nan_rand(rng, (4, 6)) for _ in range(3)])
    ncc, n = masked_ncc(fixed, stack, min_overlap=5, dtype=dtype)
    assert ncc.shape == (3, 13, 14)
    # float32 transforms of a batch and of one slice may take different vector paths (MKL on AMD EPYC: 35 ulp
    # apart on one value, 2.9e-6), and the NCC's differences of sums amplify rounding: tolerance per precision
    tol = 1e-6 if dtype == np.float64 else 2e-5
    for k in range(3):
        one, n1 = masked_ncc(fixed, stack[k], min_overlap=5, dtype=dtype)
        np.testing.assert_array_equal(n[k], n1)
        np.testing.assert_allclose(ncc[k], one, rtol=tol, atol=tol, equal_nan=True)
    # stacked fixed and moving pair up slice by slice (as compare_cells uses it)
    fixed3 = np.stack([_nan_rand(rng, (8, 8)) for _ in range(3)])
    ncc, n = masked_ncc(fixed3, stack, min_overlap=5, shifts=(0, 4, 0, 2), dtype=dtype)
    for k in range(3):
        one, n1 = masked_ncc(fixed3[k], stack[k], min_overlap=5, shifts=(0, 4, 0, 2), dtype=dtype)
        np.testing.assert_array_equal(n[k], n1)
        np.testing.assert_allclose(ncc[k], one, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("shifts", [(-5, 0, 0, 0), (0, 9, 0, 0), (0, 0, -7, 0), (0, 0, 0, 11),
                                    (2, 1, 0, 0), (0, 0, 3, 2)])
def test_masked_ncc_rejects_impossible_shifts(shifts):
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError):
        masked_ncc(rng.normal(size=(9, 11)), rng.normal(size=(5, 7)), shifts=shifts)


def test_masked_ncc_accepts_extreme_shifts():
    rng = np.random.default_rng(1)
    ncc, n = masked_ncc(rng.normal(size=(9, 11)), rng.normal(size=(5, 7)), min_overlap=1,
                          shifts=(-4, 8, -6, 10))
    assert ncc.shape == (13, 17) and n[0, 0] == 1 and n[-1, -1] == 1


# --------------------------------------------------------------------------- synthetic surfaces

PARAMS = CMCParams(spacing_um=12.5, coarse_spacing_um=25.0, prior_spacing_um=50.0)


@pytest.fixture(scope="module")
def annulus() -> Surface:
    rng = np.random.default_rng(42)
    n = 120
    z = ndi.gaussian_filter(rng.normal(size=(n, n)), 2.0)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    z[(r > 56) | (r < 15)] = np.nan
    return Surface(z, 12.5, {"source": "synthetic"})


@pytest.fixture(scope="module")
def ref_prep(annulus):
    return prepare(annulus, PARAMS)


def _adiff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("angle", [123.0, 37.0, -70.0])
def test_register_global_recovers_rotation(annulus, ref_prep, angle):
    target = prepare(crop_to_mask(rotate(annulus, angle)), PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    # rotating the target by +a: the registration (target onto reference) undoes it, -a mod 360
    assert _adiff(reg.angle_deg, -angle) <= 2.0, reg
    assert 0.0 <= reg.angle_deg < 360.0
    assert abs(reg.dy_um) <= 12.5 and abs(reg.dx_um) <= 12.5
    assert reg.ncc > 0.9


def test_search_rotation_prior_peaks_at_the_inverse_angle(annulus, ref_prep):
    target = prepare(crop_to_mask(rotate(annulus, 123.0)), PARAMS)
    res = search_rotation(ref_prep.prior, target.prior, np.arange(0.0, 360.0, 3.0), min_overlap=50)
    assert len(res) == 120
    best = max(res)
    assert _adiff(best[1], -123.0) <= 3.0
    assert abs(best[2]) <= 1.5 and abs(best[3]) <= 1.5
    assert all(0.0 <= a < 360.0 for _, a, _, _ in res)


def test_register_global_recovers_translation(annulus, ref_prep):
    # 8 NaN columns on the left: the target centre moves 4 px right of the content
    h = np.pad(annulus.heights, ((0, 0), (8, 0)), constant_values=np.nan)
    target = prepare(annulus.with_heights(h), PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    assert _adiff(reg.angle_deg, 0.0) <= 1.0
    assert reg.dy_um == pytest.approx(0.0, abs=12.5)
    assert reg.dx_um == pytest.approx(-4 * 12.5, abs=12.5)


def test_register_global_sign_against_np_rot90(annulus, ref_prep):
    target = prepare(annulus.with_heights(np.rot90(annulus.heights, 1).copy()), PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    assert _adiff(reg.angle_deg, 270.0) <= 2.0, reg


def test_compare_cells_self_comparison(ref_prep):
    reg = register_global(ref_prep, ref_prep, PARAMS)
    assert _adiff(reg.angle_deg, 0.0) <= 1.0
    res = compare_cells(ref_prep, ref_prep, reg, PARAMS)
    corr = np.array([c.corr for c in res.cells])
    assert len(res.cells) >= 30
    assert np.mean(corr > 0.9) >= 0.9
    for c in res.cells:
        assert len(c.per_angle) == len(PARAMS.cell_angles_deg)
        if c.corr > 0.9:
            assert abs(c.dy_um) <= 12.5 and abs(c.dx_um) <= 12.5
            assert _adiff(c.angle_deg, 0.0) <= 3.0


def test_compare_cells_rotated_target(annulus, ref_prep):
    target = prepare(crop_to_mask(rotate(annulus, 123.0)), PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    res = compare_cells(ref_prep, target, reg, PARAMS)
    corr = np.array([c.corr for c in res.cells])
    assert np.mean(corr > 0.9) >= 0.8


def test_prepare_rejects_empty_and_tiny(annulus):
    with pytest.raises(ValueError):
        prepare(Surface(np.full((50, 50), np.nan), 12.5), PARAMS)
    with pytest.raises(ValueError):
        prepare(Surface(np.random.default_rng(0).normal(size=(6, 6)), 12.5), PARAMS)


def test_prepare_centres_heights(annulus):
    p = prepare(annulus.with_heights(annulus.heights + 100.0), PARAMS)
    for a in (p.fine, p.coarse, p.prior):
        assert abs(np.nanmean(a)) < 1e-9
    assert p.fine.shape == annulus.shape and p.coarse.shape == (60, 60) and p.prior.shape == (30, 30)
    assert p.name == "synthetic"


def test_prepare_puts_an_upstream_filtered_scan_and_its_raw_scan_on_one_band(annulus):
    """A scan band-passed upstream (cmcR's 500 um long cut-off) and the same scan with 1-1.5 mm waviness left
    (a raw scan after a 2 mm form removal) must give the comparison the same views; without the comparison
    band they differ."""
    import dataclasses

    from ballistic.preprocess.filters import gaussian_lowpass

    h = annulus.heights / np.nanstd(annulus.heights)                 # texture of unit RMS (um)
    yy, xx = np.mgrid[0:h.shape[0], 0:h.shape[1]] * annulus.spacing_um
    raw = annulus.with_heights(h + np.sin(2 * np.pi * xx / 1500.0) + np.cos(2 * np.pi * yy / 1000.0))
    filtered = raw.with_heights(raw.heights - gaussian_lowpass(raw, cutoff_um=500.0, min_weight=1e-3).heights)

    def corr(x, y):
        m = np.isfinite(x) & np.isfinite(y)
        return np.corrcoef(x[m], y[m])[0, 1]

    assert PARAMS.highpass_um == 500.0
    a, b = prepare(raw, PARAMS), prepare(filtered, PARAMS)
    assert corr(a.fine, b.fine) > 0.98 and corr(a.coarse, b.coarse) > 0.98
    whole = dataclasses.replace(PARAMS, highpass_um=None)
    assert corr(prepare(raw, whole).fine, prepare(filtered, whole).fine) < 0.8


def test_compare_pair_refuses_a_surface_prepared_on_another_band(annulus):
    import dataclasses

    from ballistic.cartridge.cmc.pair import compare_pair

    other = dataclasses.replace(PARAMS, highpass_um=None)
    with pytest.raises(ValueError, match="another band"):
        compare_pair(prepare(annulus, other), prepare(annulus, PARAMS), PARAMS, model=None)


# --------------------------------------------------------------------------- cell_division

@pytest.mark.parametrize("grid,min_valid", [(8, 0.15), (4, 0.5), (3, 0.0), (5, 1.0)])
def test_cell_division_valid_fraction(annulus, grid, min_valid):
    h = annulus.heights
    cells = cell_division(h, grid=grid, min_valid=min_valid)
    m = np.isfinite(h)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    size = max(4, math.ceil(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / grid))
    seen = set()
    for (i, j, y0, x0, sz, frac) in cells:
        assert sz == size and (y0, x0) == (rows[0] + i * size, cols[0] + j * size)
        # points outside the array count as missing
        assert frac == pytest.approx(m[y0:y0 + size, x0:x0 + size].sum() / size ** 2)
        assert frac >= min_valid
        seen.add((i, j))
    # the cells left out are those below min_valid
    for i in range(grid):
        for j in range(grid):
            if (i, j) in seen:
                continue
            y0, x0 = rows[0] + i * size, cols[0] + j * size
            assert m[y0:y0 + size, x0:x0 + size].sum() / size ** 2 < min_valid


def test_cell_division_all_nan_and_full():
    assert cell_division(np.full((20, 20), np.nan)) == []
    cells = cell_division(np.zeros((32, 32)), grid=4, min_valid=0.5)
    assert len(cells) == 16 and all(c[4] == 8 and c[5] == 1.0 for c in cells)


# --------------------------------------------------------------------------- invert_registration

@pytest.mark.parametrize("seed", range(5))
def test_invert_registration_is_an_involution(seed):
    rng = np.random.default_rng(seed)
    r = Registration(float(rng.uniform(0, 360)), float(rng.normal(0, 300)), float(rng.normal(0, 300)), 0.7)
    back = invert_registration(invert_registration(r))
    assert _adiff(back.angle_deg, r.angle_deg) < 1e-9
    assert back.dy_um == pytest.approx(r.dy_um, abs=1e-9)
    assert back.dx_um == pytest.approx(r.dx_um, abs=1e-9)
    inv = invert_registration(r)
    assert _adiff(inv.angle_deg, -r.angle_deg) < 1e-9 and 0.0 <= inv.angle_deg < 360.0
    assert math.hypot(inv.dy_um, inv.dx_um) == pytest.approx(math.hypot(r.dy_um, r.dx_um))


@pytest.mark.parametrize("angle", [90.0, 37.5, 200.0])
def test_invert_registration_undoes_the_warp(angle):
    """Warping target -> reference with r then back with invert(r) returns the target
    (exact on a linear ramp, which bilinear interpolation reproduces)."""
    yy, xx = np.mgrid[0:15, 0:21].astype(np.float64)
    target = 0.3 * yy - 0.8 * xx + 2.0
    r = Registration(angle, 2.0, -3.0, 1.0)     # translations in px here
    fwd = warp_to_reference(target, r.angle_deg, r.dy_um, r.dx_um, (17, 19))
    inv = invert_registration(r)
    back = warp_to_reference(fwd, inv.angle_deg, inv.dy_um, inv.dx_um, target.shape)
    ok = np.isfinite(back)
    assert ok.sum() >= 60
    np.testing.assert_allclose(back[ok], target[ok], atol=1e-9)


# --------------------------------------------------------------------------- mirror search

def test_mirrored_flips_every_view(ref_prep):
    m = mirrored(ref_prep)
    np.testing.assert_array_equal(m.fine, ref_prep.fine[::-1])
    np.testing.assert_array_equal(m.coarse, ref_prep.coarse[::-1])
    np.testing.assert_array_equal(m.prior, ref_prep.prior[::-1])
    assert m.spacing_um == ref_prep.spacing_um and m.name == ref_prep.name


@pytest.mark.parametrize("angle", [0.0, 71.0])
def test_register_global_finds_a_mirrored_target(annulus, ref_prep, angle):
    """A scan stored with the other y convention (rows reversed), then rotated, is found with
    mirrored=True; the warp of the flipped target by the registration lands on the reference."""
    flipped = annulus.with_heights(annulus.heights[::-1].copy())
    target = prepare(crop_to_mask(rotate(flipped, angle)) if angle else flipped, PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    assert reg.mirrored is True
    assert reg.ncc > 0.9
    assert np.isfinite(reg.prior_ncc) and reg.prior_ncc > reg.runner_up_ncc
    s = PARAMS.spacing_um
    warped = warp_to_reference(target.fine[::-1], reg.angle_deg, reg.dy_um / s, reg.dx_um / s,
                                 ref_prep.fine.shape)
    ok = np.isfinite(warped) & np.isfinite(ref_prep.fine)
    assert np.corrcoef(warped[ok], ref_prep.fine[ok])[0, 1] > 0.9


def test_register_global_without_mirror_search_cannot_undo_a_mirror(annulus, ref_prep):
    from dataclasses import replace
    flipped = prepare(annulus.with_heights(annulus.heights[::-1].copy()), PARAMS)
    reg = register_global(ref_prep, flipped, replace(PARAMS, mirror=False))
    assert reg.mirrored is False
    assert reg.ncc < 0.6


def test_unmirrored_target_is_not_reported_mirrored(annulus, ref_prep):
    target = prepare(crop_to_mask(rotate(annulus, 37.0)), PARAMS)
    reg = register_global(ref_prep, target, PARAMS)
    assert reg.mirrored is False and reg.ncc > 0.9


def test_invert_registration_keeps_mirror_and_prior():
    r = Registration(30.0, 5.0, -2.0, 0.7, (30.0,), True, 0.6, 0.2)
    inv = invert_registration(r)
    assert inv.mirrored is True and inv.prior_ncc == 0.6 and inv.runner_up_ncc == 0.2


def test_search_rotation_mirror_matches_searching_the_flipped_target(annulus, ref_prep):
    """The shared-transform mirror search equals searching the flipped target directly."""
    target = prepare(crop_to_mask(rotate(annulus.with_heights(annulus.heights[::-1].copy()), 50.0)), PARAMS)
    angles = np.arange(0.0, 360.0, 8.0)
    both = search_rotation(ref_prep.prior, target.prior, angles, min_overlap=50, max_shift_px=10, mirror=True)
    direct = search_rotation(ref_prep.prior, target.prior[::-1].copy(), angles, min_overlap=50, max_shift_px=10)
    assert len(both) == 2 * len(angles)
    got = {round(a, 6): (v, cy, cx) for v, a, cy, cx, f in both if f}
    for v, a, cy, cx in direct:
        gv, gcy, gcx = got[round(a, 6)]
        if v > 0.3:                     # where there is a peak, the same peak at the same place
            assert gv == pytest.approx(v, abs=0.02)
            assert gcy == pytest.approx(cy, abs=1.0) and gcx == pytest.approx(cx, abs=1.0)
    # the unmirrored half, on an unmirrored target: the same best pose as the plain search
    t2 = prepare(crop_to_mask(rotate(annulus, 50.0)), PARAMS)
    both2 = search_rotation(ref_prep.prior, t2.prior, angles, min_overlap=50, max_shift_px=10, mirror=True)
    plain2 = search_rotation(ref_prep.prior, t2.prior, angles, min_overlap=50, max_shift_px=10)
    b2, p2 = max(both2), max(plain2)
    assert b2[4] is False and b2[1] == p2[1] and b2[0] == pytest.approx(p2[0], abs=1e-6)
    assert (b2[2], b2[3]) == (p2[2], p2[3])
    best = max(both)
    assert best[4] is True and best[0] > 0.6          # 8 degree steps: up to 4 degrees off the pose


# --------------------------------------------------------------------------- rotation-prior sampling

def _textured_annulus(spacing_um=12.5, r_out_um=2300.0, r_in_um=700.0, seed=3) -> Surface:
    """A breech-face-sized annulus with texture at every wavelength from ~25 um to ~1 mm."""
    n = int(2 * r_out_um / spacing_um) + 8
    rng = np.random.default_rng(seed)
    z = sum(ndi.gaussian_filter(rng.normal(size=(n, n)), s / spacing_um) * (s / 50.0) ** 0.5
            for s in (25.0, 50.0, 100.0, 200.0, 400.0))
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * spacing_um
    z[(r > r_out_um) | (r < r_in_um)] = np.nan
    return Surface(z, spacing_um)


def _half_step_ratio(surface, params, theta):
    """Rotation-prior correlation half an angle step off the true pose, over the one at the pose."""
    a, b = prepare(surface, params), prepare(crop_to_mask(rotate(surface, theta)), params)
    mo = int(0.4 * min(np.isfinite(a.prior).sum(), np.isfinite(b.prior).sum()))
    h = (params.prior_step_deg or rotation_step_deg(b.prior, rim_shift_px=params.prior_rim_shift_px)) / 2.0
    v = {round(ang, 6): c for c, ang, _, _ in search_rotation(a.prior, b.prior, [-theta, -theta + h, -theta - h],
                                                               min_overlap=mo, max_shift_px=20)}
    return min(v[round((-theta + d) % 360.0, 6)] for d in (h, -h)) / v[round(-theta % 360.0, 6)]


def test_rotation_prior_resolves_its_peak_between_grid_angles():
    """A pose half-way between two prior angles keeps most of its correlation, so the true peak is
    not lost to noise whatever the scans' orientation (with 4 degree steps on the 100-1000 um band,
    a third of the peak was lost at the rim and real same-gun pairs failed at some orientations)."""
    s = _textured_annulus()
    step = rotation_step_deg(prepare(s, CMCParams()).prior, rim_shift_px=CMCParams().prior_rim_shift_px)
    assert 1.8 <= step <= 1.95                      # 2.3 mm rim at 50 um: 3/4 pixel in half a step
    assert _half_step_ratio(s, CMCParams(), 31.0) > 0.88
    from dataclasses import replace
    old = replace(CMCParams(), prior_step_deg=4.0)
    assert _half_step_ratio(s, old, 30.0) < 0.72


def test_rotation_step_follows_the_rim_and_divides_the_circle():
    def disc(r_px, n=201):
        yy, xx = np.mgrid[0:n, 0:n]
        z = np.ones((n, n))
        z[np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) > r_px] = np.nan
        return z
    for r in (20, 34, 46, 90):
        for shift in (1.0, 0.75):
            step = rotation_step_deg(disc(r), rim_shift_px=shift)
            assert (360.0 / step) == pytest.approx(round(360.0 / step), abs=1e-9)
            # half a step moves the rim by at most that many pixels, and not far less (the largest such step)
            assert 0.9 * shift <= r * math.radians(step / 2.0) <= shift + 1e-9
    assert rotation_step_deg(disc(34)) > rotation_step_deg(disc(46))
    assert rotation_step_deg(np.full((5, 5), np.nan)) == 90.0
    assert rotation_step_deg(disc(1.5, 5), max_step_deg=30.0) == 30.0
    with pytest.raises(ValueError, match="rim_shift_px"):
        rotation_step_deg(disc(20), rim_shift_px=0.0)


def test_register_global_finds_a_pose_half_way_between_prior_angles_on_an_off_centre_part():
    """The prior's peak half a rim-rule step off the true angle, on a target that is only one side
    of the breech face (its best translation moves as the angle turns): the screened angle (a parabola
    through the grid neighbours) and the refinement's translation window still recover the pose."""
    s = _textured_annulus()
    ref = prepare(s, CMCParams())
    h = s.heights.copy()
    h[:, : int(0.45 * h.shape[1])] = np.nan                 # keep the right 55 %: an off-centre overlap
    part = crop_to_mask(s.with_heights(h))
    step = rotation_step_deg(prepare(part, CMCParams()).prior, rim_shift_px=CMCParams().prior_rim_shift_px)
    theta = 20 * step + step / 2.0
    target = prepare(crop_to_mask(rotate(part, theta)), CMCParams())
    reg = register_global(ref, target, CMCParams())
    assert _adiff(reg.angle_deg, -theta) <= 0.75, reg
    assert reg.ncc > 0.8 and not reg.mirrored


@pytest.mark.parametrize("near_decoy", [False, True])
def test_register_global_finds_a_true_pose_the_prior_ranks_below_noise(monkeypatch, near_decoy):
    """Prior peaks (both parities) that out-rank the true pose are screened out at the coarse spacing;
    with ``near_decoy`` one of them sits a grid step from the true angle but 8 prior pixels away, and must
    not hide the true pose as 'the same peak' (it did on a cross-kit DFSC pair)."""
    import ballistic.cartridge.cmc.register as reg_mod

    s = _textured_annulus()
    ref = prepare(s, CMCParams())
    theta = 100.0
    target = prepare(crop_to_mask(rotate(s, theta)), CMCParams())
    real_search = reg_mod.search_rotation

    def rigged(*args, **kwargs):
        out = real_search(*args, **kwargs)
        top = max(v for v, *_ in out)
        rng = np.random.default_rng(1)
        rigged_out = []
        truth = min(range(len(out)), key=lambda k: _adiff(out[k][1], -theta) + 1000 * out[k][4])
        step = abs(out[1][1] - out[0][1])
        for k, (v, a, cy, cx, f) in enumerate(out):
            if k % 40 == 7 and _adiff(a, -theta) > 20:          # ~5 decoys of each parity
                v = top + 0.05 + 0.01 * rng.random()
            if near_decoy and k == truth + 1:                       # the next grid angle, same parity
                assert not f and _adiff(a, out[truth][1]) == pytest.approx(step)
                v, cy, cx = top + 0.1, cy + 8.0, cx - 8.0
            rigged_out.append((v, a, cy, cx, f))
        assert sum(v > top for v, *_ in rigged_out) >= 9
        return rigged_out

    monkeypatch.setattr(reg_mod, "search_rotation", rigged)
    r = register_global(ref, target, CMCParams())
    assert _adiff(r.angle_deg, -theta) <= 0.75, r
    assert r.ncc > 0.8 and not r.mirrored


@pytest.mark.parametrize("asked", [7.0, 2.517, 4.0])
def test_a_prior_step_that_does_not_divide_the_circle_is_lowered_to_one_that_does(monkeypatch, asked):
    """The peaks' parabolas take grid neighbours as index +- 1 all round; a step not dividing 360 would
    put the last angle's neighbour across 0 degrees at another distance, so the grid is made even."""
    from dataclasses import replace

    import ballistic.cartridge.cmc.register as R

    seen = {}
    real = R.search_rotation

    def spy(fixed, moving, angles, **kw):
        seen.setdefault("angles", np.asarray(angles, float))
        return real(fixed, moving, angles, **kw)

    monkeypatch.setattr(R, "search_rotation", spy)
    s = _textured_annulus(seed=3)
    p = replace(CMCParams(), prior_step_deg=asked)
    R.register_global(prepare(s, p), prepare(crop_to_mask(rotate(s, 11.0)), p), p)
    g = seen["angles"]
    gaps = np.diff(np.r_[g, g[0] + 360.0])
    assert np.allclose(gaps, gaps[0]) and gaps[0] <= asked + 1e-9
    assert gaps[0] == pytest.approx(360.0 / math.ceil(360.0 / asked - 1e-9))


# --------------------------------------------------------------------------- thorough registration

@pytest.mark.parametrize("angle,flip", [(123.0, False), (-70.0, True)])
def test_register_thorough_recovers_rotation_and_mirror(annulus, ref_prep, angle, flip):
    src = annulus.with_heights(annulus.heights[::-1].copy()) if flip else annulus
    target = prepare(crop_to_mask(rotate(src, angle)), PARAMS)
    reg = register_thorough(ref_prep, target, PARAMS)
    assert reg.mirrored is flip
    if not flip:
        assert _adiff(reg.angle_deg, -angle) <= 2.0, reg
    assert reg.ncc > 0.9 and reg.prior_ncc > reg.runner_up_ncc
    # the target, as registered (flipped first when mirrored), lands on the reference
    s = PARAMS.spacing_um
    moving = target.fine[::-1] if reg.mirrored else target.fine
    warped = warp_to_reference(moving, reg.angle_deg, reg.dy_um / s, reg.dx_um / s, ref_prep.fine.shape)
    ok = np.isfinite(warped) & np.isfinite(ref_prep.fine)
    assert np.corrcoef(warped[ok], ref_prep.fine[ok])[0, 1] > 0.9


def test_register_thorough_finds_a_pose_long_wavelength_residue_hides_from_the_prior(annulus, ref_prep):
    """Another pipeline's residue at wavelengths the rotation prior keeps (up to 1 mm) but the comparison band
    (up to 500 um) mostly drops: the prior's peaks miss the pose, the search at the coarse spacing finds it, and
    by the shared objective (fine NCC) it is the better pose."""
    z = annulus.heights
    residue = ndi.gaussian_filter(np.random.default_rng(100).normal(size=z.shape), 8.0)
    residue *= 4.0 * np.nanstd(z) / residue.std()
    target = prepare(crop_to_mask(rotate(annulus.with_heights(z + residue), 123.0)), PARAMS)
    standard = register_global(ref_prep, target, PARAMS)
    thorough = register_thorough(ref_prep, target, PARAMS)
    assert _adiff(thorough.angle_deg, -123.0) <= 2.0, thorough
    assert _adiff(standard.angle_deg, -123.0) > 2.0, "the prior no longer misses this pose: strengthen the residue"
    assert thorough.ncc > standard.ncc + 0.1


def test_register_thorough_needs_a_peak(ref_prep):
    with pytest.raises(ValueError, match="peaks_per_parity"):
        register_thorough(ref_prep, ref_prep, PARAMS, peaks_per_parity=0)


def test_compare_pair_search_is_checked_and_recorded(ref_prep):
    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.errors import InputError

    with pytest.raises(InputError, match="search must be one of"):
        compare_pair(ref_prep, ref_prep, PARAMS, model=None, search="fast")
    r = compare_pair(ref_prep, ref_prep, PARAMS, model=None, search="thorough")
    assert r.search == "thorough" and r.summary()["search"] == "thorough"
    assert r.identification and _adiff(r.registration.angle_deg, 0.0) <= 1.0
    assert compare_pair(ref_prep, ref_prep, PARAMS, model=None).summary()["search"] == "standard"


def _naive_window(a, y0, x0, h, w):
    """One window of ``a`` by explicit loops, NaN outside (the twin of cells._windows)."""
    out = np.full((h, w), np.nan)
    for i in range(h):
        for j in range(w):
            y, x = y0 + i, x0 + j
            if 0 <= y < a.shape[0] and 0 <= x < a.shape[1]:
                out[i, j] = a[y, x]
    return out


def test_cell_windows_match_naive_windows_inside_and_across_every_edge():
    from ballistic.cartridge.cmc.cells import _windows

    rng = np.random.default_rng(3)
    a = rng.standard_normal((23, 17))
    a[rng.random(a.shape) < 0.2] = np.nan
    before = a.copy()
    # inside, across each edge and corner, wholly outside, and larger than the array
    corners = [(0, 0), (5, 4), (-3, 2), (2, -4), (20, 3), (4, 14), (-6, -6), (21, 15), (40, 40), (-30, 1)]
    y0 = np.array([c[0] for c in corners])
    x0 = np.array([c[1] for c in corners])
    for h, w in ((6, 6), (7, 3), (30, 25)):
        got = _windows(a, y0, x0, h, w)
        assert got.shape == (len(corners), h, w) and got.dtype == np.float64
        for k, (y, x) in enumerate(corners):
            np.testing.assert_array_equal(got[k], _naive_window(a, y, x, h, w))
        got[:] = 0.0                                   # a copy: writing it leaves the input alone
    np.testing.assert_array_equal(a, before)
    assert _windows(a, np.array([], int), np.array([], int), 4, 4).shape == (0, 4, 4)


# --------------------------------------------------------------------------- stored prepared views

def test_prepared_views_round_trip_exactly(annulus, ref_prep, tmp_path):
    from ballistic.cartridge.cmc.params import load_prepared, save_prepared

    before = {v: getattr(ref_prep, v).copy() for v in ("fine", "coarse", "prior")}
    src = tmp_path / "scan.x3p"
    src.write_bytes(b"a scan")
    path = save_prepared(ref_prep, tmp_path / "v.npz", params=PARAMS, source=src)
    got = load_prepared(path, PARAMS, source=src)
    for v, a in before.items():      # bit for bit, NaN where NaN; the input untouched
        assert np.array_equal(getattr(got, v), a, equal_nan=True) and getattr(got, v).dtype == np.float64
        assert np.array_equal(getattr(ref_prep, v), a, equal_nan=True)
    assert got.name == ref_prep.name
    for f in ("spacing_um", "coarse_spacing_um", "prior_spacing_um", "prior_highpass_um", "highpass_um"):
        assert getattr(got, f) == getattr(ref_prep, f), f
    assert load_prepared(path, PARAMS, name="other").name == "other"
    # a comparison of loaded views is the comparison of the prepared ones
    target = prepare(crop_to_mask(rotate(annulus, 40.0)), PARAMS)
    assert register_global(got, target, PARAMS) == register_global(ref_prep, target, PARAMS)


def test_prepared_views_refused_when_stale_foreign_or_damaged(ref_prep, tmp_path):
    import os

    from ballistic.cartridge.cmc.params import load_prepared, save_prepared
    from ballistic.errors import PreparedViewsError, StateError

    src = tmp_path / "scan.x3p"
    src.write_bytes(b"a scan")
    path = save_prepared(ref_prep, tmp_path / "v.npz", params=PARAMS, source=src)
    with pytest.raises(PreparedViewsError, match="other comparison settings"):
        load_prepared(path, CMCParams(highpass_um=250.0))
    with pytest.raises(PreparedViewsError, match="other comparison settings"):
        load_prepared(path, CMCParams(grid=7))
    load_prepared(path, CMCParams(corr_threshold=0.4))      # a setting prepare does not use: still current
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # the scan rewritten since
    with pytest.raises(PreparedViewsError, match="changed since"):
        load_prepared(path, PARAMS, source=src)
    load_prepared(path, PARAMS)                              # without a source to check: served
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:200])                 # truncated
    with pytest.raises(PreparedViewsError, match="prepare the surface again") as e:
        load_prepared(bad, PARAMS)
    assert isinstance(e.value, StateError)
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array('{"format": "something/9"}'))
    with pytest.raises(PreparedViewsError, match="format"):
        load_prepared(other, PARAMS)
    with pytest.raises(FileNotFoundError):
        load_prepared(tmp_path / "missing.npz", PARAMS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_prepared(ref_prep, tmp_path / "no" / "v.npz", params=PARAMS)


def test_load_or_prepare_reads_the_scan_only_when_the_views_must_be_made(annulus, tmp_path):
    import os

    from ballistic.cartridge.cmc.params import load_or_prepare

    src = tmp_path / "scan.x3p"
    src.write_bytes(b"a scan")
    reads = []

    def read():
        reads.append(1)
        return annulus

    want = prepare(annulus, PARAMS, name="A")
    path = tmp_path / "v.npz"
    got = load_or_prepare(path, read, PARAMS, source=src, name="A")          # missing: made and stored
    assert len(reads) == 1 and path.is_file() and np.array_equal(got.fine, want.fine, equal_nan=True)
    again = load_or_prepare(path, read, PARAMS, source=src, name="A")        # stored: the scan is not read
    assert len(reads) == 1 and again.name == "A" and np.array_equal(again.prior, want.prior, equal_nan=True)
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))               # stale: made again
    load_or_prepare(path, read, PARAMS, source=src, name="A")
    assert len(reads) == 2
    load_or_prepare(path, read, PARAMS, source=src, name="A")
    assert len(reads) == 2
    # a folder that cannot be written: the views are made, not stored, and no error
    got = load_or_prepare(tmp_path / "no" / "v.npz", read, PARAMS)
    assert len(reads) == 3 and np.array_equal(got.coarse, want.coarse, equal_nan=True)
