"""Unit tests of :mod:`ballistic.preprocess.filters` and :mod:`ballistic.cartridge.breech_face` on small
synthetic surfaces."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.cartridge.breech_face import find_breech_face, looks_processed, preprocess_cartridge
from ballistic.errors import PreprocessError
from ballistic.preprocess.filters import bandpass_filter, crop_to_mask, gaussian_lowpass, remove_trend, resample, rotate
from ballistic.surface import Surface


def _copy(s: Surface) -> tuple[np.ndarray, float, dict]:
    return s.heights.copy(), s.spacing_um, dict(s.meta)


def _assert_unchanged(s: Surface, before) -> None:
    h, sp, meta = before
    np.testing.assert_array_equal(s.heights, h)
    assert s.spacing_um == sp and s.meta == meta


def _plane(ny=60, nx=80):
    yy, xx = np.mgrid[0:ny, 0:nx]
    return 3.0 + 0.5 * yy - 0.2 * xx


def _sine(wavelength_um: float, spacing_um: float = 1.0, shape=(40, 600), amp: float = 1.0) -> Surface:
    x = np.arange(shape[1]) * spacing_um
    z = np.broadcast_to(amp * np.sin(2 * np.pi * x / wavelength_um), shape).copy()
    return Surface(z, spacing_um)


def _amplitude(z: np.ndarray, wavelength_um: float, spacing_um: float, margin: int) -> float:
    """Least-squares amplitude of the sine at that wavelength over the interior columns."""
    x = np.arange(z.shape[1]) * spacing_um
    sl = slice(margin, z.shape[1] - margin)
    row = np.nanmean(z[:, sl], axis=0)
    w = 2 * np.pi * x[sl] / wavelength_um
    D = np.stack([np.sin(w), np.cos(w), np.ones_like(w)], axis=1)
    coef, *_ = np.linalg.lstsq(D, row, rcond=None)
    return float(np.hypot(coef[0], coef[1]))


# --------------------------------------------------------------------------- remove_trend

def test_remove_trend_exact_plane_with_outliers_and_nans():
    rng = np.random.default_rng(0)
    z = _plane()
    out = rng.random(z.shape) < 0.3
    z[out] += rng.choice([-1.0, 1.0], out.sum()) * rng.uniform(20, 200, out.sum())
    nan = rng.random(z.shape) < 0.1
    z[nan] = np.nan
    s = Surface(z, 5.0)
    before = _copy(s)
    r = remove_trend(s)
    _assert_unchanged(s, before)
    np.testing.assert_array_equal(np.isnan(r.heights), nan)
    assert np.abs(r.heights[~out & ~nan]).max() < 1e-9
    assert r.spacing_um == 5.0 and r.shape == s.shape


def _one_sided(seed):
    rng = np.random.default_rng(seed)
    z = _plane()
    out = rng.random(z.shape) < 0.3
    z[out] += rng.uniform(10, 200, out.sum())
    return Surface(z, 5.0), out


@pytest.mark.parametrize("seed", [1, 3])
def test_remove_trend_one_sided_spread_outliers_converges(seed):
    s, out = _one_sided(seed)
    r = remove_trend(s, iterations=10)
    assert np.abs(r.heights[~out]).max() < 1e-9


def test_remove_trend_one_sided_spread_outliers_default_iterations():
    s, out = _one_sided(3)
    r = remove_trend(s)
    assert np.abs(r.heights[~out]).max() < 1e-6


def test_remove_trend_plateau_outliers():
    rng = np.random.default_rng(2)
    z = _plane()
    out = rng.random(z.shape) < 0.3
    z[out] += 100.0
    r = remove_trend(Surface(z, 5.0))
    assert np.abs(r.heights[~out]).max() < 1e-6


def test_remove_trend_least_squares_and_too_few_points():
    z = _plane(10, 12)
    r = remove_trend(Surface(z, 1.0), robust=False)
    assert np.abs(r.heights).max() < 1e-9
    with pytest.raises(PreprocessError):
        remove_trend(Surface(np.full((5, 5), np.nan), 1.0))


# --------------------------------------------------------------------------- filters

def test_gaussian_lowpass_nan_and_constant():
    rng = np.random.default_rng(3)
    z = np.full((50, 60), 4.2)
    nan = rng.random(z.shape) < 0.2
    nan[10:20, 10:25] = True
    z[nan] = np.nan
    s = Surface(z, 2.0)
    before = _copy(s)
    out = gaussian_lowpass(s, cutoff_um=16.0)
    _assert_unchanged(s, before)
    assert np.isnan(out.heights[nan]).all()
    ok = np.isfinite(out.heights)
    assert ok.sum() > 0.5 * z.size
    np.testing.assert_allclose(out.heights[ok], 4.2, rtol=1e-12)
    with pytest.raises(ValueError):
        gaussian_lowpass(s, cutoff_um=0.0)


def test_gaussian_lowpass_smooths_noise():
    rng = np.random.default_rng(4)
    s = Surface(rng.normal(size=(64, 64)), 1.0)
    out = gaussian_lowpass(s, cutoff_um=8.0)
    assert np.nanstd(out.heights[10:-10, 10:-10]) < 0.5 * np.std(s.heights)


def test_bandpass_nan_positions_stay_nan():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(80, 90))
    nan = rng.random(z.shape) < 0.05
    nan[30:45, 40:60] = True
    z[nan] = np.nan
    s = Surface(z, 2.0)
    before = _copy(s)
    out = bandpass_filter(s, short_cutoff_um=8.0, long_cutoff_um=80.0)
    _assert_unchanged(s, before)
    assert out.shape == s.shape and out.spacing_um == 2.0
    assert np.isnan(out.heights[nan]).all()
    assert np.isfinite(out.heights).sum() > 0.3 * z.size


def test_bandpass_removes_long_wavelength():
    short, long_ = 4.0, 40.0
    lam = 5 * long_
    s = _sine(lam)
    before = _copy(s)
    out = bandpass_filter(s, short_cutoff_um=short, long_cutoff_um=long_)
    _assert_unchanged(s, before)
    ratio = _amplitude(out.heights, lam, 1.0, margin=40) / _amplitude(s.heights, lam, 1.0, margin=40)
    assert ratio < 0.1   # ISO Gaussian: 1 - exp(-ln 2 / 25) ~ 0.027


def test_bandpass_keeps_mid_band():
    short, long_ = 4.0, 40.0
    lam = float(np.sqrt(short * long_))
    s = _sine(lam)
    out = bandpass_filter(s, short_cutoff_um=short, long_cutoff_um=long_)
    ratio = _amplitude(out.heights, lam, 1.0, margin=40) / _amplitude(s.heights, lam, 1.0, margin=40)
    assert ratio > 0.7


def test_bandpass_cutoff_at_half_amplitude():
    """ISO 16610-21: a sine at the cut-off wavelength keeps 50% of its amplitude."""
    s = _sine(40.0)
    out = bandpass_filter(s, short_cutoff_um=None, long_cutoff_um=40.0)
    ratio = _amplitude(out.heights, 40.0, 1.0, margin=40) / _amplitude(s.heights, 40.0, 1.0, margin=40)
    assert ratio == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("short,long_", [(40.0, 40.0), (50.0, 40.0)])
def test_bandpass_rejects_short_not_below_long(short, long_):
    with pytest.raises(ValueError):
        bandpass_filter(_sine(20.0), short_cutoff_um=short, long_cutoff_um=long_)


# --------------------------------------------------------------------------- resample, rotate, crop

def test_resample_halves_shape_and_keeps_nan_regions():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(40, 60))
    z[:, :20] = np.nan
    s = Surface(z, 5.0)
    before = _copy(s)
    out = resample(s, spacing_um=10.0)
    _assert_unchanged(s, before)
    assert out.shape == (20, 30) and out.spacing_um == 10.0
    assert np.isnan(out.heights[:, :10]).all()
    assert np.isfinite(out.heights[:, 10:]).all()
    # downsampling by 2 averages 2x2 blocks
    np.testing.assert_allclose(out.heights[:, 10:], z[:, 20:].reshape(20, 2, 30 - 10, 2).mean(axis=(1, 3)),
                               rtol=1e-5, atol=1e-5)


def test_resample_same_spacing_and_upsampling():
    rng = np.random.default_rng(7)
    s = Surface(rng.normal(size=(10, 12)), 5.0)
    assert resample(s, spacing_um=5.0).shape == (10, 12)
    up = resample(s, spacing_um=2.5)
    assert up.shape == (20, 24) and up.spacing_um == 2.5
    with pytest.raises(ValueError):
        resample(s, spacing_um=0.0)


def test_rotate_and_crop_do_not_mutate():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(20, 30))
    z[:3] = np.nan
    s = Surface(z, 5.0)
    before = _copy(s)
    r = rotate(s, 37.0)
    _assert_unchanged(s, before)
    assert r.shape[0] >= 20 and r.spacing_um == 5.0
    same = rotate(s, 0.0, expand=False)
    np.testing.assert_array_equal(same.heights, z)
    c = crop_to_mask(s, pad_px=1)
    _assert_unchanged(s, before)
    assert c.shape == (18, 30)        # rows 3..19 valid, one row of padding above
    np.testing.assert_array_equal(crop_to_mask(s).heights, z[3:])
    with pytest.raises(PreprocessError):
        crop_to_mask(Surface(np.full((4, 4), np.nan), 1.0))


# --------------------------------------------------------------------------- looks_processed, preprocess_cartridge

def _annulus_surface(n=64, spacing=6.25, seed=9) -> Surface:
    rng = np.random.default_rng(seed)
    z = ndi.gaussian_filter(rng.normal(size=(n, n)), 1.5)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    z[(r > 0.45 * n) | (r < 0.12 * n)] = np.nan
    return Surface(z, spacing)


def test_looks_processed():
    rng = np.random.default_rng(10)
    s = Surface(rng.normal(0.0, 0.5, size=(80, 80)), 6.25)
    before = _copy(s)
    assert looks_processed(s) is True
    _assert_unchanged(s, before)
    z = s.heights.copy()
    yy, xx = np.mgrid[0:80, 0:80]
    z[np.hypot(yy - 40, xx - 40) < 14] -= 200.0   # 200 um deep pit, ~10% of the scan
    assert looks_processed(Surface(z, 6.25)) is False


def test_looks_processed_decides_on_a_strided_sample_of_a_fine_scan(monkeypatch):
    import ballistic.cartridge.breech_face as bf

    rng = np.random.default_rng(11)
    n = 600                                          # 360 000 points: above max_points
    yy, xx = np.mgrid[0:n, 0:n]
    processed = ndi.gaussian_filter(rng.normal(0.0, 3.0, size=(n, n)), 2.0) + 0.01 * yy   # tilted, narrow band
    processed[np.hypot(yy - n / 2, xx - n / 2) > 0.48 * n] = np.nan
    raw = processed.copy()
    raw[np.hypot(yy - n / 2, xx - n / 2) < 0.15 * n] -= 150.0                            # firing-pin pit
    seen = []
    real_remove_trend = bf.remove_trend
    monkeypatch.setattr(bf, "remove_trend", lambda s, **kw: seen.append(s.heights.size) or real_remove_trend(s, **kw))
    for z, expect in ((processed, True), (raw, False)):
        s = Surface(z, 0.8)
        before = _copy(s)
        assert bf.looks_processed(s, max_points=40_000) is expect
        assert seen[-1] <= 40_000                     # the sample, not the whole grid
        assert bf.looks_processed(s, max_points=10 ** 7) is expect
        assert seen[-1] == n * n                      # the whole grid agrees
        _assert_unchanged(s, before)
    # a sample with too few measured points falls back to the whole grid
    sparse = np.full((n, n), np.nan)
    sparse[::7, 3::7] = rng.normal(size=sparse[::7, 3::7].shape)
    assert bf.looks_processed(Surface(sparse, 0.8), max_points=40_000) is True
    assert seen[-1] == n * n
    with pytest.raises(ValueError, match="max_points"):
        bf.looks_processed(Surface(processed, 0.8), max_points=4)


def test_preprocess_cartridge_processed_keeps_spacing():
    s = _annulus_surface()
    before = _copy(s)
    out = preprocess_cartridge(s, kind="processed")
    _assert_unchanged(s, before)
    assert out.spacing_um == 6.25
    assert "processed" in out.meta["preprocess"]
    # processed scans are normalised too (form removed, outliers rejected): same mask here,
    # heights = the input minus its form
    ref = crop_to_mask(s).heights
    np.testing.assert_array_equal(np.isnan(out.heights), np.isnan(ref))
    ok = np.isfinite(ref)
    assert np.corrcoef(out.heights[ok], ref[ok])[0, 1] > 0.95
    auto = preprocess_cartridge(s)                       # small heights: auto -> processed
    assert auto.meta["preprocess"].startswith("processed")
    fine = preprocess_cartridge(_annulus_surface(n=128, spacing=3.125), kind="processed")
    assert fine.spacing_um == 6.25


def test_preprocess_cartridge_errors():
    with pytest.raises(PreprocessError):
        preprocess_cartridge(Surface(np.full((50, 50), np.nan), 6.25))
    with pytest.raises(PreprocessError):
        preprocess_cartridge(Surface(np.zeros((5, 5)), 6.25))
    with pytest.raises(ValueError):
        preprocess_cartridge(_annulus_surface(), kind="bogus")


def test_preprocess_cartridge_refuses_a_scan_read_in_the_wrong_units():
    """A scan written in millimetres is read as micrometres (an increment of 0.00625 >= the metre
    threshold): 1000 times too small. It must be refused with the reason, not 'no valid points'."""
    good = _annulus_surface()
    assert preprocess_cartridge(good, kind="processed").spacing_um == good.spacing_um
    mm = Surface(good.heights / 1000.0, good.spacing_um / 1000.0, {"units_in_file": "um"})
    with pytest.raises(PreprocessError, match=r"spans .* um .*units were probably read wrongly.*millimetres"):
        preprocess_cartridge(mm, kind="processed")
    nm = Surface(good.heights * 1000.0, good.spacing_um * 1000.0)
    with pytest.raises(PreprocessError, match="nanometres"):
        preprocess_cartridge(nm, kind="processed")


# --------------------------------------------------------------------------- find_breech_face

SP = 5.0          # um per pixel
N = 600


@pytest.fixture(scope="module")
def raw_cartridge():
    """Primer disc R 1.3 mm with +-2 um texture, 100 um deep firing-pin hole R 0.35 mm,
    a 150 um deep gap ring 0.3 mm wide outside the primer, then the case head."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:N, 0:N]
    rr = np.hypot(yy - (N - 1) / 2, xx - (N - 1) / 2) * SP / 1000.0   # mm
    tex = ndi.gaussian_filter(rng.normal(size=(N, N)), 1.5)
    z = 2.0 * tex / np.abs(tex).max()
    hole = rr < 0.35
    gap = (rr >= 1.3) & (rr < 1.6)
    z[hole] -= 100.0
    z[gap] -= 150.0
    annulus = (rr >= 0.35) & (rr < 1.3)
    return Surface(z, SP), annulus, hole, gap


def test_find_breech_face_synthetic(raw_cartridge):
    s, annulus, hole, gap = raw_cartridge
    before = _copy(s)
    g = find_breech_face(s)
    _assert_unchanged(s, before)
    assert g.mask.shape == s.shape and g.spacing_um == SP
    cover = (g.mask & annulus).sum() / annulus.sum()
    # the default margins (60 um inside the primer edge, 40 um around the aperture)
    # cap the coverage at ~88%
    assert cover > 0.75
    assert (g.mask & (hole | gap)).sum() / (hole | gap).sum() < 0.03
    assert np.hypot(g.center_yx[0] - (N - 1) / 2, g.center_yx[1] - (N - 1) / 2) < 2.0
    assert g.primer_radius_um == pytest.approx(1300.0, abs=80.0)
    assert g.aperture_radius_um == pytest.approx(350.0, abs=80.0)


def test_find_breech_face_geometry_accuracy(raw_cartridge):
    s, annulus, _, _ = raw_cartridge
    g = find_breech_face(s)
    assert g.primer_radius_um == pytest.approx(1300.0, abs=20.0)
    assert g.aperture_radius_um == pytest.approx(350.0, abs=20.0)
    assert (g.mask & annulus).sum() / annulus.sum() > 0.80


def test_preprocess_cartridge_raw_end_to_end(raw_cartridge):
    s, annulus, hole, gap = raw_cartridge
    assert looks_processed(s) is False
    out = preprocess_cartridge(s, kind="auto", spacing_um=12.5)
    assert out.meta["preprocess"].startswith("raw:")
    assert out.spacing_um == 12.5
    # cropped to the annulus: about 2 x 1.3 mm / 12.5 um across, minus the margins
    assert 180 <= out.shape[0] <= 210 and 180 <= out.shape[1] <= 210
    assert 0.4 < np.isfinite(out.heights).mean() < 0.9
    assert np.nanmax(np.abs(out.heights)) < 5.0


def test_find_breech_face_rejects_flat_noise():
    rng = np.random.default_rng(12)
    with pytest.raises(PreprocessError) as ei:
        find_breech_face(Surface(rng.normal(0, 50.0, size=(200, 200)), 5.0))
    assert ei.value.reason in ("breech_face_not_planar", "breech_face_too_small")  # a code callers can act on
    z = np.full((200, 200), np.nan)
    z[:20] = 1.0  # nothing measured in the centre
    with pytest.raises(PreprocessError) as ei:
        find_breech_face(Surface(z, 5.0))
    assert ei.value.reason == "breech_face_centre_sparse"
