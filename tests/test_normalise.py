"""Unit tests of the one normalisation for every breech-face scan (:func:`preprocess_cartridge`, :mod:`ballistic.cartridge.normalise`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.cartridge import normalise as N
from ballistic.cartridge.breech_face import preprocess_cartridge
from ballistic.errors import PreprocessError
from ballistic.surface import Surface


def _rms(a):
    a = a[np.isfinite(a)]
    return float(np.sqrt(np.mean(a * a)))


def _texture(n, seed):
    w = np.random.default_rng(seed).normal(size=(n, n))
    z = ndi.gaussian_filter(w, 2.0) - ndi.gaussian_filter(w, 10.0)
    return z / z.std()


def _processed_scan(n=300, spacing=6.25, seed=0, roll_off_um=0.0, tilt=True):
    """An annulus of texture (~1 um), optionally tilted/domed and with a roll-off band at the edges."""
    z = _texture(n, seed)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * spacing
    r_out, r_in = 0.47 * n * spacing, 0.28 * n * spacing
    if tilt:
        z = z + 0.004 * xx * spacing + 2e-6 * (r ** 2)
    if roll_off_um:
        d = np.minimum(r_out - r, r - r_in)
        z = z - 8.0 * np.exp(-np.clip(d, 0, None) / roll_off_um)
    z[(r > r_out) | (r < r_in)] = np.nan
    return Surface(z, spacing, {"source": "synthetic"})


def test_drop_islands_removes_small_fragments_only():
    z = np.full((60, 60), np.nan)
    z[5:45, 5:45] = 1.0
    z[50:52, 50:52] = 2.0                      # 4 points: < 1 % of 1604
    s = Surface(z, 5.0)
    out, frac = N.drop_islands(s)
    assert np.isnan(out.heights[50:52, 50:52]).all()
    assert np.isfinite(out.heights[5:45, 5:45]).all()
    assert frac == pytest.approx(4 / 1604)
    same, f0 = N.drop_islands(out)
    assert f0 == 0.0 and same is out


def test_roll_off_bands_find_a_synthetic_band():
    n, sp = 240, 6.25
    z = 0.5 * _texture(n, 1)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) * sp
    r_out = 0.46 * n * sp
    band = (r_out - r) < 50.0                  # 50 um wide band, 5 um low, at the outer edge only
    z = np.where(band, z - 5.0, z)
    z[(r > r_out) | (r < 0.2 * n * sp)] = np.nan
    trim, info = N.roll_off_bands(Surface(z, sp))
    m = np.isfinite(z)
    assert trim[band & m].mean() > 0.9
    assert trim[~band & m].mean() < 0.02
    assert all(d >= 37.5 for d in info["outer"]) and max(info["aperture"]) == 0.0
    clean, _ = N.roll_off_bands(Surface(np.where(band, np.nan, z), sp))
    assert not clean.any()


def test_roll_off_bands_rejects_inconsistent_thresholds():
    with pytest.raises(ValueError):
        N.roll_off_bands(_processed_scan(), start_sigma=1.0, continue_sigma=2.0)


def test_normalise_processed_scan_flat_recorded_and_unchanged_input():
    s = _processed_scan(seed=2)
    before = s.heights.copy()
    out = preprocess_cartridge(s)
    np.testing.assert_array_equal(s.heights, before)
    assert out.spacing_um == 6.25
    assert out.meta["preprocess"].startswith("processed:")
    prov = out.meta["provenance"]
    json.dumps(prov)                                              # JSON-able
    assert prov["kind"] == "processed" and prov["converged"] is True
    assert prov["normalisation"] == N.NORMALISATION_VERSION
    assert prov["input"]["spacing_um"] == 6.25 and prov["output"]["shape"] == list(out.shape)
    steps = [st["step"] for st in prov["steps"]]
    assert steps[-1] == "summary" and any(st.startswith("remove_form") for st in steps)
    # tilt and dome are gone: heights are texture-sized and centred
    assert abs(float(np.nanmean(out.heights))) < 0.1
    assert _rms(out.heights) < 1.5


def test_normalise_resamples_and_keeps_the_physical_size():
    s = _processed_scan(n=254, spacing=7.38, seed=4)
    out = preprocess_cartridge(s)
    assert out.spacing_um == 6.25
    assert out.extent_um[0] == pytest.approx(0.94 * 254 * 7.38, rel=0.03)


@pytest.mark.parametrize("roll_off_um", [0.0, 15.0])
def test_normalise_is_idempotent(roll_off_um):
    s = _processed_scan(seed=6, roll_off_um=roll_off_um)
    once = preprocess_cartridge(s)
    twice = preprocess_cartridge(once)
    assert twice.shape == once.shape
    both = once.mask & twice.mask
    assert both.sum() >= 0.995 * once.mask.sum()
    assert _rms(twice.heights[both] - once.heights[both]) < 0.01 * _rms(once.heights[both])


def test_normalise_rejects_the_deep_roll_off_and_optionally_trims_the_band():
    s = _processed_scan(n=480, seed=8, roll_off_um=25.0)     # 8 um deep at the edges, texture ~1 um
    out = preprocess_cartridge(s)
    passes = [st for st in out.meta["provenance"]["steps"] if "pass" in st]
    sigma = passes[-1]["robust_sigma_um"]
    h = out.heights[out.mask]
    assert h.min() >= -6.0 * sigma * 1.05                      # nothing beyond the 6 sigma rejection
    frac_in = np.mean(s.heights[s.mask] - np.median(s.heights[s.mask]) < -4.0)
    trimmed = preprocess_cartridge(s, params=N.NormalisationParams(trim_roll_off=True))
    t = trimmed.heights[trimmed.mask]
    assert np.mean(t < -4.0) < 0.1 * frac_in                   # bands followed inwards while 1.5 sigma off
    depths = [d for st in trimmed.meta["provenance"]["steps"] if "pass" in st
              for d in st["outer_depth_um"] + st["aperture_depth_um"]]
    assert max(depths) >= 25.0
    assert trimmed.meta["provenance"]["converged"] is True


def test_normalise_short_cutoff_option_is_recorded():
    out = preprocess_cartridge(_processed_scan(seed=9), params=N.NormalisationParams(short_cutoff_um=16.0))
    assert "lowpass(16)" in out.meta["preprocess"]
    assert any(st["step"] == "gaussian_lowpass" for st in out.meta["provenance"]["steps"])


def test_normalise_errors():
    with pytest.raises(PreprocessError):
        preprocess_cartridge(Surface(np.full((40, 40), np.nan), 6.25))
    with pytest.raises(ValueError):
        preprocess_cartridge(_processed_scan(), kind="bogus")
    with pytest.raises(ValueError):
        preprocess_cartridge(_processed_scan(), long_cutoff_um=0.0)


def test_provenance_records_how_the_reader_found_missing_points(tmp_path):
    """Points an exporter marked as no data (here +-FLT_MAX in a float32 file) are missing, not heights of
    1e32 m, and the result's provenance says how many there were and how the points were stored."""
    from ballistic.io.x3p import read_x3p, write_x3p

    s = _processed_scan(seed=3)
    h = s.heights.copy()
    holes = np.flatnonzero(np.isfinite(h.ravel()))[::97][:25]
    h.ravel()[holes] = np.finfo(np.float32).max            # um; written in metres: 3.4e32, a no-data sentinel
    write_x3p(Surface(h, s.spacing_um), tmp_path / "sentinel.x3p", dtype="float32")
    read = read_x3p(tmp_path / "sentinel.x3p")
    assert read.meta["sentinel_points"] == len(holes) and np.isnan(read.heights.ravel()[holes]).all()
    out = preprocess_cartridge(read)
    inp = out.meta["provenance"]["input"]
    assert inp["sentinel_points"] == len(holes) and inp["invalid_points"] == 0 and inp["point_storage"] == "binary"
    assert np.nanmax(np.abs(out.heights)) < 50.0                    # no sentinel reached the heights
