"""Firing-pin impressions: find, extract, compare, fuse (ballistic.cartridge.firing_pin)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.cartridge.firing_pin import (FIRING_PIN_THRESHOLD, compare_firing_pins, extract_firing_pin,
                                            find_firing_pin, fuse_scores)
from ballistic.errors import FiringPinError
from ballistic.io.x3p import read_x3p
from ballistic.surface import Surface

SPACING = 6.25
N = 320
CRATER_OFFSET = (10.0, -7.0)          # px from the scan centre
A_UM, WALL_UM, DEPTH_UM, RIM_UM = 500.0, 150.0, 150.0, 30.0
# outline at half depth between the rim (+30) and the floor (-150): -60 um on the linear wall
EXPECTED_RADIUS_UM = A_UM - WALL_UM * 60.0 / DEPTH_UM


def _marks(seed: int, n: int = 600) -> np.ndarray:
    t = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(n, n)), 4.0)
    return t / t.std()


def _raw_scan(seed: int = 0, *, angle_deg: float = 0.0, floor_missing: bool = False, noise: float = 0.0,
              noise_seed: int = 11) -> Surface:
    """A raw primer: tilted plane, raised rim, crater (flat floor, linear walls) with 1 um marks that
    turn with the cartridge by ``angle_deg`` about the crater centre; NaN outside the primer."""
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    cy, cx = (N - 1) / 2 + CRATER_OFFSET[0], (N - 1) / 2 + CRATER_OFFSET[1]
    r_um = np.hypot(yy - cy, xx - cx) * SPACING
    z = 0.01 * (xx - yy) * SPACING  # 1 % tilt
    z = np.where((r_um >= A_UM) & (r_um < A_UM + 150.0), z + RIM_UM, z)
    wall = np.clip((A_UM - r_um) / WALL_UM, 0.0, 1.0)
    z = z - DEPTH_UM * wall
    a = math.radians(angle_deg)
    dy, dx = yy - cy, xx - cx
    uy = math.cos(a) * dy + math.sin(a) * dx
    ux = -math.sin(a) * dy + math.cos(a) * dx
    m = _marks(seed)
    z = z + ndi.map_coordinates(m, [uy + m.shape[0] / 2, ux + m.shape[1] / 2], order=1)
    if noise:
        z = z + noise * np.random.default_rng(noise_seed).normal(size=z.shape)
    primer = np.hypot(yy - (N - 1) / 2, xx - (N - 1) / 2) <= 0.47 * N
    z = np.where(primer, z, np.nan)
    if floor_missing:
        z = np.where(r_um < A_UM - WALL_UM + 20.0, np.nan, z)  # optical scanners lose the dark floor
    return Surface(z, SPACING, meta={"source": f"synthetic-{seed}"})


@pytest.mark.parametrize("floor_missing", [False, True])
def test_find_firing_pin_on_a_synthetic_primer(floor_missing):
    s = _raw_scan(floor_missing=floor_missing)
    g = find_firing_pin(s)
    cy, cx = (N - 1) / 2 + CRATER_OFFSET[0], (N - 1) / 2 + CRATER_OFFSET[1]
    assert math.hypot(g.center_yx[0] - cy, g.center_yx[1] - cx) < 2.0
    assert g.radius_um == pytest.approx(EXPECTED_RADIUS_UM, rel=0.08)
    assert g.spacing_um == SPACING and g.radius_px == pytest.approx(g.radius_um / SPACING)
    assert g.mask.shape == s.shape and g.mask[int(cy), int(cx)] and not g.mask[5, 5]
    assert g.depth_um > 100.0
    assert (g.measured_fraction < 0.5) if floor_missing else (g.measured_fraction == 1.0)


def test_processed_or_flat_scans_have_no_firing_pin():
    rng = np.random.default_rng(0)
    flat = ndi.gaussian_filter(rng.normal(size=(200, 200)), 3)
    with pytest.raises(FiringPinError):
        find_firing_pin(Surface(flat, SPACING))
    # a processed breech face: small heights, the aperture masked out as a NaN hole
    yy, xx = np.mgrid[0:200, 0:200]
    holed = np.where(np.hypot(yy - 100, xx - 100) < 40, np.nan, flat)
    with pytest.raises(FiringPinError, match="RAW|processed"):
        find_firing_pin(Surface(holed, SPACING))
    with pytest.raises(TypeError):
        find_firing_pin(flat)


def test_extract_is_centred_levelled_and_tagged():
    s = _raw_scan()
    before = s.heights.copy()
    g = find_firing_pin(s)
    e = extract_firing_pin(s, geometry=g, margin_um=100.0, spacing_um=SPACING)
    np.testing.assert_array_equal(s.heights, before)
    ny, nx = e.shape
    assert ny == nx and ny % 2 == 1
    yy, xx = np.mgrid[0:ny, 0:nx]
    r_um = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2) * e.spacing_um
    assert not np.isfinite(e.heights[r_um > g.radius_um + 100.0 + 2 * SPACING]).any()
    assert np.isfinite(e.heights[r_um < g.radius_um]).mean() > 0.95
    # crater form (150 um deep, 30 um rim) gone: only the 1 um marks and filter edges remain
    assert float(np.nanstd(e.heights[r_um < g.radius_um])) < 2.0
    assert e.meta["preprocess"].startswith("firing_pin:")
    assert e.meta["firing_pin"]["radius_um"] == pytest.approx(g.radius_um)


def test_extract_works_on_a_fine_scan_at_half_the_output_spacing(monkeypatch):
    import cv2

    import ballistic.cartridge.firing_pin as fpm

    coarse = _raw_scan(0, noise=0.3)
    f = 4                                               # 1.5625 um: a confocal scan's spacing
    z = coarse.heights
    up = cv2.resize(np.where(np.isfinite(z), z, 0.0), None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
    keep = cv2.resize(np.isfinite(z).astype(np.uint8), None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST) > 0
    fine = Surface(np.where(keep, up, np.nan), SPACING / f)
    g = find_firing_pin(fine)
    spacings = []
    real_resample = fpm.resample
    monkeypatch.setattr(fpm, "resample", lambda s, **kw: spacings.append((s.spacing_um, kw["spacing_um"]))
                        or real_resample(s, **kw))
    e = extract_firing_pin(fine, geometry=g, margin_um=100.0)
    assert spacings[0] == (SPACING / f, SPACING / 2)   # first to the working spacing, 3.125 um
    spacings.clear()
    own = extract_firing_pin(fine, geometry=g, margin_um=100.0, work_spacing_um=SPACING / f)
    assert spacings[0] == (SPACING / f, SPACING)       # at its own spacing: straight to the output
    assert e.spacing_um == own.spacing_um == SPACING
    # the centre is reported in the input's pixels, where the two agree to a fraction of a working pixel
    (ey, ex), (oy, ox) = e.meta["firing_pin"]["center_yx"], own.meta["firing_pin"]["center_yx"]
    assert math.hypot(ey - oy, ex - ox) < 1.0
    ty, tx = [((N - 1) / 2 + o + 0.5) * f - 0.5 for o in CRATER_OFFSET]      # the crater's true centre
    assert math.hypot(ey - ty, ex - tx) < 0.5 and math.hypot(oy - ty, ox - tx) < 0.5   # (0.05 px measured)
    assert compare_firing_pins(own, e).score > 0.95
    with pytest.raises(ValueError, match="work_spacing_um"):
        extract_firing_pin(fine, geometry=g, work_spacing_um=0.0)


def test_compare_firing_pins_finds_the_rotation_and_separates_sources():
    a = extract_firing_pin(_raw_scan(0, noise=0.3, noise_seed=1))
    b = extract_firing_pin(_raw_scan(0, angle_deg=60.0, noise=0.3, noise_seed=2))
    c = extract_firing_pin(_raw_scan(5, angle_deg=60.0, noise=0.3, noise_seed=3))
    same = compare_firing_pins(a, b)
    diff = compare_firing_pins(a, c)
    assert same.score > 0.6 and same.score > diff.score + 0.3, (same, diff)
    err = (same.angle_deg - 300.0 + 180.0) % 360.0 - 180.0  # b turned by 60: turned back by 300
    assert abs(err) < 2.0
    assert same.identification() and same.angular_z > diff.angular_z
    assert same.overlap_mm2 > 0.5


def test_compare_without_overlap_gives_nan_not_an_error():
    a = extract_firing_pin(_raw_scan(0))
    h = a.heights.copy()
    ny, nx = h.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    r = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2)
    inner = a.with_heights(np.where(r < 0.3 * ny, h, np.nan))
    outer = a.with_heights(np.where(r > 0.45 * ny, h, np.nan))
    res = compare_firing_pins(inner, outer)
    assert math.isnan(res.score) and not res.identification()


def test_fuse_scores_normalised_and_calibrated():
    # each score at its own threshold -> 1.0
    assert fuse_scores(6.0, FIRING_PIN_THRESHOLD) == pytest.approx(1.0)
    # a missing mark falls back to the other one
    assert fuse_scores(12.0, None) == pytest.approx(2.0)
    assert fuse_scores(float("nan"), FIRING_PIN_THRESHOLD / 2) == pytest.approx(0.5)
    assert math.isnan(fuse_scores(None, None))
    # clipping: an overwhelming breech face cannot hide a firing-pin exclusion completely
    assert fuse_scores(600.0, 0.0) == pytest.approx(1.5)
    assert fuse_scores(6.0, 0.0, weights=(1.0, 0.0)) == pytest.approx(1.0)
    # calibrated: sum of log10 LRs
    assert fuse_scores(10.0, 0.5, breech_face_log10_lr=lambda s: s / 5.0,
                       firing_pin_log10_lr=lambda s: 4 * s - 1.0) == pytest.approx(3.0)
    assert fuse_scores(None, 0.5, breech_face_log10_lr=lambda s: s,
                       firing_pin_log10_lr=lambda s: 2.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="both calibrations"):
        fuse_scores(1.0, 0.5, breech_face_log10_lr=lambda s: s)
    with pytest.raises(ValueError, match="weights"):
        fuse_scores(1.0, 0.5, weights=(0.0, 0.0))


# --------------------------------------------------------------------------- real data

RAW = ("fadul1.1_raw", "fadul1.2_raw", "fadul2.1_raw")


@pytest.fixture(scope="module")
def fadul_raw(shared_data):
    out = {}
    for name in RAW:
        s = read_x3p(shared_data / "cartridge" / "fadul-raw" / f"{name}.x3p")
        g = find_firing_pin(s)
        out[name] = (s, g, extract_firing_pin(s, geometry=g))
    return out


@pytest.mark.realdata
def test_firing_pin_found_inside_the_primer_of_raw_fadul_scans(fadul_raw):
    for name, (s, g, _) in fadul_raw.items():
        assert 300.0 <= g.radius_um <= 1000.0, (name, g.radius_um)
        primer = ndi.binary_fill_holes(ndi.binary_closing(s.mask, iterations=3))
        iy, ix = (int(round(v)) for v in g.center_yx)
        assert primer[iy, ix], name
        assert (g.mask & primer).sum() > 0.95 * g.mask.sum(), name  # the whole crater lies on the primer
        assert g.depth_um > 30.0


SAME = ("fadul1.1_raw", "fadul1.2_raw")
DIFFERENT = (("fadul1.1_raw", "fadul2.1_raw"), ("fadul1.2_raw", "fadul2.1_raw"))


@pytest.fixture(scope="module")
def fadul_scores(fadul_raw):
    e = {k: v[2] for k, v in fadul_raw.items()}
    return {pair: compare_firing_pins(e[pair[0]], e[pair[1]]) for pair in (SAME,) + DIFFERENT}


@pytest.mark.realdata
def test_fadul_firing_pin_comparisons_are_well_posed(fadul_scores):
    for pair, r in fadul_scores.items():
        assert np.isfinite(r.score) and -1.0 <= r.score <= 1.0, (pair, r)
        assert r.overlap_mm2 > 0.5, (pair, r)  # walls and collar: enough surface to correlate
    # the provisional threshold sits above every real score: the firing pin alone never identifies
    assert not any(r.identification() for r in fadul_scores.values())


@pytest.mark.realdata
def test_same_firing_pin_scores_higher_than_a_different_one(fadul_scores):
    # measured 0.367 against 0.334 and 0.345: a thin margin, see the ballistic.cartridge.firing_pin notes
    same = fadul_scores[SAME]
    for pair in DIFFERENT:
        assert same.score > fadul_scores[pair].score, (same, pair, fadul_scores[pair])


@pytest.mark.realdata
def test_baldwin_raw_pair_firing_pins(shared_data):
    ex = {}
    for name in ("K013sA1", "K013sA2"):
        s = read_x3p(shared_data / "cartridge" / "baldwin" / f"{name}.x3p")
        g = find_firing_pin(s)
        assert 300.0 <= g.radius_um <= 1000.0 and g.measured_fraction > 0.95  # gel scans measure the floor
        ex[name] = extract_firing_pin(s, geometry=g)
    r = compare_firing_pins(ex["K013sA1"], ex["K013sA2"])
    assert np.isfinite(r.score) and r.score > 0.25 and r.overlap_mm2 > 1.0, r
