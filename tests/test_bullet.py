"""Bullet land signatures on synthetic lands: direction, crosscut, grooves, signature,
alignment, features, SAM and the descriptor (no real data needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.bullet.align import align_signatures
from ballistic.bullet.crosscut import _crosscut_candidates, choose_crosscut
from ballistic.bullet.descriptor import BULLET_DESCRIPTOR_DIM, bullet_descriptor
from ballistic.bullet.features import land_features, land_score
from ballistic.bullet.grooves import _consensus_grooves, _robust_offset, locate_grooves
from ballistic.bullet.orient import estimate_striation_direction, orient_striae, striation_direction
from ballistic.bullet.profile import Grooves, Signature
from ballistic.bullet.sam import PhaseTest, _phase_contrast_sf, bullet_score, phase_test, sequence_average_maximum
from ballistic.bullet.signature import extract_signature, land_signature, land_signatures
from ballistic.errors import BulletError, UnusableLandError
from ballistic.surface import Surface

SP = 1.5625  # um, as the Hamby scans


def striae_signal(n, seed, amplitude_um=0.5, sigma_px=4.0):
    rng = np.random.default_rng(seed)
    s = ndi.gaussian_filter1d(rng.normal(size=n), sigma_px)
    return s / s.std() * amplitude_um


def synthetic_land(*, ny=800, nx=120, seed=0, shoulders_um=(150.0, 1100.0), radius_um=4000.0,
                   damaged_cols=None, striae=None, noise_um=0.02):
    """A land with striae along x: arc + shoulders (grooves) + striae, the same in every column."""
    rng = np.random.default_rng(seed + 1000)
    y = np.arange(ny) * SP
    c = y[-1] / 2
    z = np.sqrt(radius_um ** 2 - (y - c) ** 2) - radius_um
    left, right = shoulders_um
    z = z + 15.0 / (1 + np.exp(-(left - y) / 5.0)) + 15.0 / (1 + np.exp(-(y - right) / 5.0))
    z = z + (striae_signal(ny, seed) if striae is None else striae)
    h = np.repeat(z[:, None], nx, axis=1) + rng.normal(scale=noise_um, size=(ny, nx))
    if damaged_cols is not None:
        c0, c1 = damaged_cols
        h[:, c0:c1] += rng.normal(scale=3.0, size=(ny, c1 - c0))
    return Surface(h, SP, meta={"source": f"synthetic-{seed}"})


# --------------------------------------------------------------------------- direction
def test_striation_direction_and_orientation_is_a_rotation_not_a_mirror():
    s = synthetic_land()
    assert striation_direction(s) == "x"
    t = Surface(np.ascontiguousarray(s.heights.T), SP)           # striae along y
    assert striation_direction(t) == "y"
    before = t.heights.copy()
    o = orient_striae(t)
    np.testing.assert_array_equal(t.heights, before)                # input untouched
    assert striation_direction(o) == "x"
    assert o.meta["striae_rotated_deg"] == -90
    # column j of the input is row j of the output: the profile across the land keeps its order
    np.testing.assert_array_equal(o.heights[:, 0], t.heights[-1, :])
    np.testing.assert_array_equal(o.heights, np.rot90(t.heights, -1))   # det +1: a rotation
    assert orient_striae(s).heights is not None and orient_striae(s).meta["striae_rotated_deg"] == 0


def test_ambiguous_direction_is_flagged_not_refused():
    rng = np.random.default_rng(0)
    iso = Surface(ndi.gaussian_filter(rng.normal(size=(200, 200)), 3), SP)        # square, no striae
    est = estimate_striation_direction(iso)
    assert est.low_confidence and est.source == "data-weak" and est.aspect_direction is None
    assert est.direction == est.data_direction and est.confidence < 0.5
    assert striation_direction(iso) == est.direction                             # a default, no exception
    # an isotropic scan wider across x than along y: the aspect ratio decides (striae along the short side)
    wide = Surface(ndi.gaussian_filter(rng.normal(size=(150, 450)), 3), SP)
    e2 = estimate_striation_direction(wide)
    assert (e2.direction, e2.source, e2.low_confidence) == ("y", "aspect", True)
    e3 = estimate_striation_direction(Surface(np.ascontiguousarray(wide.heights.T), SP))
    assert (e3.direction, e3.source) == ("x", "aspect")
    o = orient_striae(wide)
    assert o.meta["direction_low_confidence"] and o.meta["direction_source"] == "aspect"
    assert o.meta["striae_rotated_deg"] == -90
    with pytest.raises(BulletError, match="direction must be"):
        orient_striae(iso, direction="z")
    with pytest.raises(BulletError, match="Surface"):
        striation_direction(np.zeros((10, 10)))


def test_unusable_scans_raise_a_typed_error():
    with pytest.raises(UnusableLandError, match="no measured points"):
        striation_direction(Surface(np.full((10, 10), np.nan), SP))
    with pytest.raises(UnusableLandError, match="too small"):
        estimate_striation_direction(Surface(np.ones((3, 3)), SP))
    with pytest.raises(UnusableLandError, match="no measured points"):
        land_signatures(Surface(np.full((50, 50), np.nan), SP))
    few = np.full((400, 60), np.nan)
    few[:20, :] = 1.0                                        # 20 measured rows across the land: no profile
    with pytest.raises(UnusableLandError, match="at least 32"):
        land_signatures(Surface(few, SP), direction="x")
    coarse = synthetic_land(seed=1)
    coarse = Surface(coarse.heights[::8, ::8], SP * 8)       # 12.5 um: coarser than the 6.25 um short cut-off
    with pytest.raises(UnusableLandError, match="cannot resolve striation marks"):
        land_signatures(coarse)
    with pytest.raises(UnusableLandError, match="cannot resolve striation marks"):
        land_signature(coarse)
    assert issubclass(UnusableLandError, BulletError) and issubclass(BulletError, ValueError)


def test_direction_survives_a_tilt_along_the_striae():
    """A bullet mounted tilted along its axis adds a slope along the striae; the plane is removed
    before the energies are compared (the raw energies would call this land ambiguous)."""
    s = synthetic_land(nx=300, noise_um=0.05)
    ny, nx = s.shape
    tilted = s.with_heights(s.heights + 0.25 * np.arange(nx)[None, :] * np.ones((ny, 1)))
    h = tilted.heights
    raw_ex = np.median((h[:, 4:] - h[:, :-4]) ** 2)
    raw_ey = np.median((h[4:] - h[:-4]) ** 2)
    assert raw_ex > raw_ey / 2                                   # the old test (ratio >= 2) would refuse it
    est = estimate_striation_direction(tilted)
    assert est.direction == "x" and est.source == "data" and not est.low_confidence and est.anisotropy > 2


def test_weak_striae_give_a_flagged_signature_not_an_exception():
    rng = np.random.default_rng(5)
    ny, nx = 700, 700
    y = np.arange(ny) * SP
    arc = np.sqrt(40000.0 ** 2 - (y - y[-1] / 2) ** 2) - 40000.0                 # a nearly flat land
    texture = ndi.gaussian_filter(rng.normal(size=(ny, nx)), 3) * 10.0         # isotropic, ~1 um, dominant
    weak = striae_signal(ny, 4, amplitude_um=0.05)[:, None]                       # striae along x, 20x weaker
    s = Surface(arc[:, None] + texture + weak, SP)
    assert estimate_striation_direction(s).low_confidence
    sigs = land_signatures(s)
    assert sigs and all(isinstance(g, Signature) for g in sigs)
    assert all(g.low_confidence for g in sigs)
    assert any("striation direction ambiguous" in f for f in sigs[0].meta["flags"])
    assert all(0.0 <= g.quality < 0.5 for g in sigs)                            # the direction confidence caps it
    one = land_signature(s)
    assert one.low_confidence and one.meta["direction_source"] in ("data-weak", "aspect")
    # a clearly striated land: no flag, high quality
    good = land_signatures(synthetic_land(seed=2))
    assert not any(g.low_confidence for g in good) and min(g.quality for g in good) > 0.8
    assert good[0].meta["flags"] == [] and good[0].meta["grooves_source"] in ("crosscut", "land-line")


def test_grooves_that_cannot_be_located_fall_back_to_the_middle_and_flag():
    s = synthetic_land(seed=3)
    with pytest.raises(BulletError, match="min_land_fraction|leave less"):
        locate_grooves(choose_crosscut(s), min_land_fraction=0.99)
    sig = land_signature(s, grooves={"min_land_fraction": 0.99})
    assert sig.low_confidence and sig.meta["grooves_source"] == "middle-fallback"
    assert any("grooves not located" in f for f in sig.meta["flags"])
    prof_len = sig.meta["profile_length_um"]
    left, right = sig.meta["grooves_um"]
    assert left == pytest.approx(0.125 * (prof_len - SP), abs=2 * SP)
    assert right == pytest.approx(0.875 * (prof_len - SP), abs=2 * SP)
    many = land_signatures(s, grooves={"min_land_fraction": 0.99})
    assert many and all(g.meta["grooves_source"] == "middle-fallback" and g.low_confidence for g in many)
    assert many[0].meta["land_grooves"] is None


def test_a_scan_too_short_for_two_crosscuts_is_averaged_whole_and_flagged():
    s = synthetic_land(nx=20, seed=6)                       # 31 um along the striae: one band, no neighbour
    with pytest.raises(BulletError, match="no two neighbouring crosscuts"):
        choose_crosscut(s)
    sig = land_signature(s)
    assert sig.low_confidence and any("mean over the whole scan" in f for f in sig.meta["flags"])
    assert sig.meta["grooves_source"] == "crosscut" and 0.0 <= sig.quality <= 1.0
    ref = land_signature(synthetic_land(nx=200, seed=6))
    assert land_features(sig, ref).ccf > 0.95             # the same striae, found from the whole-scan mean
    many = land_signatures(s)                             # one band over the whole scan, not an exception
    assert len(many) == 1 and not many[0].low_confidence
    with pytest.raises(BulletError, match="heel"):        # parameter errors still raise
        land_signature(s, crosscut={"heel": "nose"})


def test_signature_quality_properties_default_without_meta():
    sig = Signature(striae_signal(100, 1), SP)
    assert np.isnan(sig.quality) and sig.low_confidence is False
    stored = Signature(sig.values, SP, meta={"quality": None, "low_confidence": True})   # NaN stored as null
    assert np.isnan(stored.quality) and stored.low_confidence is True
    many = land_signatures(synthetic_land(seed=4))
    many[0].meta["land_grooves"]["left_um"] = -1.0                    # one signature's meta is its own
    assert many[1].meta["land_grooves"]["left_um"] != -1.0


def test_groove_lines_follow_the_striae_tilt_and_replace_outliers():
    pos = np.arange(0.0, 600.0, 50.0)
    tilt = -0.1
    truth = [Grooves(300.0 + tilt * p, 2000.0 + tilt * p) for p in pos]
    own = list(truth)
    own[2] = Grooves(own[2].left_um - 200.0, own[2].right_um)       # left groove in the groove area: outside
    own[5] = Grooves(own[5].left_um + 400.0, own[5].right_um)       # inside (damaged edge): kept
    own[7] = None                                                      # not found: the line's value
    out, src, land = _consensus_grooves(own, pos, tolerance_um=50.0, tilt=tilt)
    assert land["tilt"] == tilt and land["inlier_fraction"][1] == 1.0
    assert land["left_um"] == pytest.approx(300.0 + tilt * np.median(pos))
    assert out[2].left_um == pytest.approx(truth[2].left_um) and src[2] == "land-line"
    assert out[5].left_um == pytest.approx(truth[5].left_um + 400.0) and src[5] == "crosscut"
    assert out[7].left_um == pytest.approx(truth[7].left_um) and src[7] == "land-line"
    assert src[0] == "crosscut" and out[0] == truth[0]
    none, src_none, land_none = _consensus_grooves([None, None], pos[:2], tolerance_um=50.0)
    assert none == [None, None] and src_none == ["none", "none"] and land_none is None
    a, inl = _robust_offset(pos, 5.0 + 0.2 * pos + np.where(pos == 100.0, 500.0, 0.0), 0.2, 10.0)
    assert a == pytest.approx(5.0) and inl.sum() == pos.size - 1


def test_striae_tilt_is_measured_from_neighbouring_crosscuts():
    ny, nx = 900, 400
    z = striae_signal(ny + 200, 9, amplitude_um=1.0)
    slope = 0.08                                        # the striae drift 0.08 um across per um along
    cols = [np.interp(np.arange(ny) + 100 - slope * j, np.arange(ny + 200), z) for j in range(nx)]
    s = Surface(np.stack(cols, axis=1), SP)
    *_, tilt = _crosscut_candidates(s, band_um=10.0, step_um=50.0, edge_um=20.0, max_lag_um=25.0,
                                      max_missing=0.5)
    assert tilt == pytest.approx(slope, abs=0.02)
    sigs = land_signatures(s, direction="x")
    assert sigs[0].meta["striae_tilt"] == pytest.approx(slope, abs=0.02)


# --------------------------------------------------------------------------- crosscut
def test_choose_crosscut_avoids_a_damaged_band_and_averages_um_profile():
    s = synthetic_land(nx=200, damaged_cols=(0, 110))
    before = s.heights.copy()
    cc = choose_crosscut(s)
    np.testing.assert_array_equal(s.heights, before)
    assert cc.profile.shape == (s.shape[0],)
    assert cc.spacing_um == SP
    assert cc.position_um > 110 * SP                      # outside the damaged columns
    assert cc.stability > 0.9
    assert cc.band_um == pytest.approx(16 * SP)
    assert len(cc.candidates_um) == len(cc.candidate_stability)
    # the profile is the mean of the band's columns, in um
    c0 = int(round(cc.position_um / SP - 8))
    np.testing.assert_allclose(cc.profile, s.heights[:, c0:c0 + 16].mean(axis=1), atol=1e-9)
    # heel given: first stable crosscut from that end
    cc_end = choose_crosscut(s, heel="end")
    assert cc_end.position_um > 150 * SP


def test_choose_crosscut_errors_say_what_to_do():
    s = synthetic_land()
    with pytest.raises(BulletError, match="orient_striae"):
        choose_crosscut(Surface(np.ascontiguousarray(s.heights.T), SP))
    with pytest.raises(BulletError, match="lower band_um"):
        choose_crosscut(s, band_um=1e4)
    with pytest.raises(BulletError, match="heel"):
        choose_crosscut(s, heel="nose")


# --------------------------------------------------------------------------- grooves
def test_locate_grooves_finds_the_shoulders():
    s = synthetic_land(shoulders_um=(200.0, 1050.0))
    cc = choose_crosscut(s)
    g = locate_grooves(cc)
    assert isinstance(g, Grooves)
    assert 190 <= g.left_um <= 240 and 1010 <= g.right_um <= 1060
    # a plain array needs its spacing
    with pytest.raises(BulletError, match="spacing_um"):
        locate_grooves(cc.profile)
    g2 = locate_grooves(cc.profile, spacing_um=SP)
    assert g2 == g
    with pytest.raises(BulletError, match="at least 32"):
        locate_grooves(np.full(100, np.nan), spacing_um=SP)


def test_locate_grooves_is_not_stopped_by_a_short_gap_or_a_deep_stria():
    st = striae_signal(800, 3)
    st[500:506] -= 6.0                                   # a deep, narrow stria (< min_run_um)
    s = synthetic_land(striae=st)
    h = s.heights.copy()
    h[300:305, :] = np.nan                               # a short gap across the land
    cc = choose_crosscut(s.with_heights(h))
    g = locate_grooves(cc)
    assert g.left_um < 200 and g.right_um > 1050


# --------------------------------------------------------------------------- signature
def test_extract_signature_length_units_and_missing_data():
    st = striae_signal(800, 5, amplitude_um=0.8)
    s = synthetic_land(striae=st)
    cc = choose_crosscut(s)
    prof = cc.profile.copy()
    prof[400:420] = np.nan
    before = prof.copy()
    g = Grooves(200.0, 1000.0)
    sig = extract_signature(prof, g, spacing_um=SP)
    np.testing.assert_array_equal(prof, before)
    assert sig.spacing_um == SP
    assert sig.length_um == pytest.approx(800.0, abs=2 * SP)
    assert sig.start_um == pytest.approx(200.0, abs=SP)
    # the gap stays missing (at the same place on the profile)
    k = int(round((410 * SP - sig.start_um) / SP))
    assert np.isnan(sig.values[k])
    # units: the recovered striae have the amplitude (um) of those put in
    i0 = int(round(sig.start_um / SP))
    ref = st[i0:i0 + sig.values.size]
    ok = np.isfinite(sig.values)
    assert np.corrcoef(sig.values[ok], ref[ok])[0, 1] > 0.9
    assert 0.5 < np.nanstd(sig.values) / np.std(ref) < 1.2
    assert abs(np.nanmean(sig.values)) < 0.1           # form removed
    with pytest.raises(BulletError, match="left_um < right_um"):
        extract_signature(prof, (900.0, 100.0), spacing_um=SP)
    with pytest.raises(BulletError, match="short_cutoff_um < long_cutoff_um"):
        extract_signature(prof, g, spacing_um=SP, short_cutoff_um=300.0)


def test_land_signature_pipeline_on_a_land_scanned_either_way():
    s = synthetic_land(seed=7)
    a = land_signature(s)
    b = land_signature(Surface(np.ascontiguousarray(np.rot90(s.heights, 1)), SP))   # striae along y
    assert b.meta["striae_rotated_deg"] == -90
    f = land_features(a, b)
    assert f.ccf > 0.99 and abs(f.lag_um) <= 2 * SP
    many = land_signatures(s, step_um=50.0)
    assert len(many) >= 2 and all(m.meta["crosscut_um"] > 0 for m in many)


# --------------------------------------------------------------------------- alignment
def test_align_signatures_recovers_a_known_shift_with_missing_data():
    z = striae_signal(1200, 11)
    a = z[100:1000].copy()
    b = z[160:1100].copy()                      # b[j] = z[160 + j] = a[j + 60]
    b[300:340] = np.nan
    a[10:20] = np.nan
    al = align_signatures(a, b, spacing_um=SP)
    assert al.lag == 60 and al.lag_um == pytest.approx(60 * SP)
    assert al.ccf == pytest.approx(1.0)
    assert al.overlap_um == pytest.approx((840 - 40) * SP)
    assert al.ccfs.shape == al.lags_um.shape
    # max_lag_um that excludes the true lag
    al2 = align_signatures(a, b, spacing_um=SP, max_lag_um=30 * SP)
    assert abs(al2.lag) <= 30 and al2.ccf < 0.9


def test_align_signatures_errors():
    z = striae_signal(500, 2)
    with pytest.raises(BulletError, match="spacings differ"):
        align_signatures(Signature(z, SP), Signature(z, 2 * SP))
    with pytest.raises(BulletError, match="fewer than 2"):
        align_signatures(np.full(10, np.nan), z, spacing_um=SP)
    with pytest.raises(BulletError, match="min_overlap_um"):
        align_signatures(z, z, spacing_um=SP, min_overlap_um=-1)
    with pytest.raises(BulletError, match="lower min_overlap_um"):
        align_signatures(np.ones(50), np.ones(50), spacing_um=SP)     # constant: no variation anywhere


# --------------------------------------------------------------------------- features and scores
def test_land_features_same_and_different_sources():
    z = striae_signal(1400, 21)
    noise = np.random.default_rng(1).normal(scale=0.1, size=1400)
    a = Signature(z[0:1300], SP)
    b = Signature(z[20:1320] + noise[:1300], SP)
    c = Signature(striae_signal(1300, 99), SP)
    same = land_features(a, b)
    diff = land_features(a, c)
    assert same.ccf > 0.9 and same.lag_um == pytest.approx(20 * SP)
    assert same.score == same.ccf and same.score > diff.score
    assert same.matches_per_mm > diff.matches_per_mm
    assert same.cms >= diff.cms and same.cms <= same.matches
    assert same.mismatches_per_mm < diff.mismatches_per_mm
    assert same.distance_um < diff.distance_um
    assert 0.9 < same.overlap_fraction <= 1.0
    assert same.overlap_um == pytest.approx(1280 * SP)
    self_f = land_features(a, a)
    assert self_f.ccf == pytest.approx(1.0) and self_f.mismatches == 0 and self_f.cms == self_f.matches
    assert self_f.distance_um == pytest.approx(0.0, abs=1e-12)
    d = self_f.as_dict()
    assert {"ccf", "lag_um", "cms", "non_cms", "matches_per_mm", "mismatches_per_mm", "distance_um",
            "sum_peaks_per_mm", "score"} <= set(d)


def test_land_features_on_lists_keeps_the_best_pair_of_heights():
    z = striae_signal(1300, 5)
    good = Signature(z.copy(), SP, meta={"crosscut_um": 300.0})
    others = [Signature(striae_signal(1300, k), SP, meta={"crosscut_um": 50.0 * k}) for k in range(30, 36)]
    f = land_features([others[0], good, others[1]], others[2:] + [good])
    assert f.ccf == pytest.approx(1.0)
    assert f.crosscut_a_um == 300.0 and f.crosscut_b_um == 300.0
    exhaustive = land_features([others[0], good, others[1]], others[2:] + [good], coarse_um=None)
    assert exhaustive.ccf == pytest.approx(f.ccf)


def test_land_score_models():
    f = {"ccf": 0.5, "cms_per_mm": 4.0}
    assert land_score(f) == 0.5
    m = {"intercept": -1.0, "coef": {"ccf": 2.0, "cms_per_mm": 0.5}, "link": "logistic"}
    assert land_score(f, model=m) == pytest.approx(1 / (1 + math.exp(-(-1 + 1 + 2))))
    with pytest.raises(BulletError, match="needs feature"):
        land_score({"lag_um": 1.0})
    with pytest.raises(BulletError, match="link"):
        land_score(f, model={"intercept": 0, "coef": {"ccf": 1}, "link": "probit"})


def test_sequence_average_maximum_by_hand():
    S = np.array([[0.1, 0.9, 0.2],
                  [0.3, 0.1, 0.8],
                  [np.nan, 0.2, 0.1]])
    sam, phase, ph = sequence_average_maximum(S)
    assert phase == 1 and sam == pytest.approx((0.9 + 0.8) / 2)     # the missing pair is left out
    np.testing.assert_allclose(ph, [(0.1 + 0.1 + 0.1) / 3, 0.85, (0.2 + 0.3 + 0.2) / 3])
    with pytest.raises(BulletError, match="square"):
        sequence_average_maximum(np.zeros((2, 3)))
    with pytest.raises(BulletError, match="at least one usable land"):
        sequence_average_maximum(np.full((3, 3), np.nan))


def test_bullet_score_finds_the_phase_and_skips_missing_lands():
    lands = [Signature(striae_signal(1300, 40 + k), SP) for k in range(6)]
    rng = np.random.default_rng(3)
    # bullet B = bullet A's lands rotated by 2 positions, with noise; its land 4 missing
    b = [Signature(lands[(j - 2) % 6].values + rng.normal(scale=0.1, size=1300), SP) for j in range(6)]
    b[4] = None
    r = bullet_score(lands, b)
    assert r.phase == 2
    assert r.sam > 0.9
    assert len(r.pairs) == 5 and all(j == (i + 2) % 6 for i, j, _ in r.pairs)
    assert np.isnan(r.scores[:, 4]).all()
    other = [Signature(striae_signal(1300, 80 + k), SP) for k in range(6)]
    assert bullet_score(lands, other).sam < r.sam - 0.3
    with pytest.raises(BulletError, match="same number"):
        bullet_score(lands, lands[:5])


def test_phase_contrast_tail_matches_simulation():
    rng = np.random.default_rng(11)
    for n in (2, 3, 6):
        X = np.sort(rng.normal(size=(200_000, n)), axis=1)
        T = X[:, -1] - X[:, n // 2 - 1]
        for t in (0.5, 1.0, 2.0, 3.0):
            assert _phase_contrast_sf(t, n) == pytest.approx((T > t).mean(), abs=0.004)
    tails = [_phase_contrast_sf(t, 6) for t in (4.0, 8.0, 16.0, 32.0)]
    assert all(0 < b < a for a, b in zip(tails, tails[1:]))            # far tails stay positive and monotone
    assert _phase_contrast_sf(0.0, 6) == 1.0 and _phase_contrast_sf(-1.0, 6) == 1.0


def test_phase_test_on_land_score_matrices():
    rng = np.random.default_rng(4)
    n = 6
    chance = rng.normal(0.45, 0.06, size=(n, n))
    mates = chance.copy()
    i = np.arange(n)
    mates[i, (i + 2) % n] = rng.normal(0.75, 0.06, size=n)           # phase 2 stands out, SAM well below 0.8
    pt = phase_test(mates)
    assert isinstance(pt, PhaseTest) and pt.n == n
    assert pt.best_mean == pytest.approx(mates[i, (i + 2) % n].mean())
    assert pt.contrast == pytest.approx(pt.best_mean - np.sort([mates[i, (i + k) % n].mean() for k in range(n)])[2])
    assert pt.p_value < 1e-4 and pt.best_mean < 0.8
    assert phase_test(chance).p_value > 0.01
    r = bullet_score([Signature(striae_signal(1300, 40 + k), SP) for k in range(n)],
                       [Signature(striae_signal(1300, 40 + (j - 1) % n), SP) for j in range(n)])
    assert r.phase == 1 and r.phase_test is not None and r.phase_test.p_value < 1e-6
    # one land on one bullet: every phase holds one pair, no sequence to test
    single = np.full((n, n), np.nan)
    single[:, 0] = [0.3, 0.9, 0.35, 0.4, 0.38, 0.36]
    assert np.isnan(phase_test(single).p_value)
    constant = np.full((n, n), 0.5)
    assert np.isnan(phase_test(constant).p_value)                   # no spread: no test
    with pytest.raises(BulletError, match="square"):
        phase_test(np.zeros((2, 3)))
    one_phase = np.full((n, n), np.nan)
    one_phase[0, 0] = 0.9
    with pytest.raises(BulletError, match="fewer than two phases"):
        phase_test(one_phase)


# --------------------------------------------------------------------------- descriptor
def test_bullet_descriptor_is_fixed_length_unit_norm_and_shift_invariant():
    z = striae_signal(2000, 8)
    a = Signature(z[0:1300], SP)
    b = Signature(z[200:1500], SP)               # the same land, shifted
    c = Signature(striae_signal(1300, 9, sigma_px=12.0), SP)   # coarser striae
    da, db, dc = (bullet_descriptor(s) for s in (a, b, c))
    assert da.shape == (BULLET_DESCRIPTOR_DIM,) and da.dtype == np.float32
    assert np.linalg.norm(da) == pytest.approx(1.0, abs=1e-6)
    assert float(da @ db) > 0.95
    assert float(da @ db) > float(da @ dc)
    bullet = bullet_descriptor([a, None, c])
    assert bullet.shape == da.shape
    nan_sig = Signature(np.where(np.arange(1300) % 50 == 0, np.nan, z[:1300]), SP)
    assert np.isfinite(bullet_descriptor(nan_sig)).all()
    with pytest.raises(BulletError, match="min_wavelength_um"):
        bullet_descriptor(a, min_wavelength_um=2.0)
    with pytest.raises(BulletError, match="no signature"):
        bullet_descriptor([None])
