"""2D breech-face images: segmentation, photometric preprocessing, comparison (ballistic.cartridge.image2d)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.cartridge.breech_face import preprocess_cartridge
from ballistic.cartridge.image2d import (SMALL_PISTOL_PRIMER_DIAMETER_UM, compare_images, find_breech_face_image,
                                         flatten_illumination, normalize_contrast, preprocess_image)
from ballistic.errors import PreprocessError
from ballistic.io.image import read_image
from ballistic.io.x3p import read_x3p
from ballistic.surface import Surface
from ballistic.viz.render import render_surface_as_image

# synthetic ring-light photograph: geometry in pixels
SHAPE = (360, 480)
CENTRE = (183.0, 235.0)
R_BF, R_PRIMER, R_AP = 110.0, 150.0, 45.0
AP_OFFSET = (15.0, -10.0)


def _texture(seed: int, n: int = 700, sigma: float = 3.0) -> np.ndarray:
    t = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(n, n)), sigma)
    return t / t.std()


def _synthetic_photo(seed: int = 0, *, angle_deg: float = 0.0, noise: float = 0.0, noise_seed: int = 99) -> Surface:
    """Intensities in [0, 1]: grey case head, dark primer annulus, bright textured breech-face disc with a
    firing-pin aperture (dark ring, grey centre). The texture rotates with the cartridge by ``angle_deg``
    (counter-clockwise as displayed) about the primer centre."""
    ny, nx = SHAPE
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    cy, cx = CENTRE
    a = math.radians(angle_deg)
    # sample the cartridge frame: p_cart = R(-a) (p - c)
    dy, dx = yy - cy, xx - cx
    uy = math.cos(a) * dy + math.sin(a) * dx
    ux = -math.sin(a) * dy + math.cos(a) * dx
    tex = _texture(seed)
    n = tex.shape[0]
    t = ndi.map_coordinates(tex, [uy + n / 2, ux + n / 2], order=1)
    r = np.hypot(dy, dx)
    img = 0.30 + 0.02 * t
    img = np.where((r >= R_PRIMER) & (r < R_PRIMER + 4), 0.6, img)
    img = np.where(r < R_PRIMER, 0.06 + 0.005 * t, img)
    img = np.where(r < R_BF, 0.45 + 0.08 * t, img)
    ay = AP_OFFSET[0] * math.cos(a) - AP_OFFSET[1] * math.sin(a)  # the aperture turns with the cartridge
    ax = AP_OFFSET[0] * math.sin(a) + AP_OFFSET[1] * math.cos(a)
    ra = np.hypot(yy - (cy + ay), xx - (cx + ax))
    img = np.where(ra < R_AP, 0.08, img)
    img = np.where(ra < 0.6 * R_AP, 0.22, img)
    if noise:
        img = img + noise * np.random.default_rng(noise_seed).normal(size=img.shape)
    return Surface(np.clip(img, 0.0, 1.0), 1.0, meta={"kind": "image2d", "spacing_calibrated": False,
                                                      "source": f"synthetic-{seed}"})


@pytest.fixture(scope="module")
def photo() -> Surface:
    return _synthetic_photo(0)


def test_segmentation_finds_disc_primer_and_aperture(photo):
    g = find_breech_face_image(photo)
    assert math.hypot(g.center_yx[0] - CENTRE[0], g.center_yx[1] - CENTRE[1]) < 2.0
    assert g.breech_face_radius_px == pytest.approx(R_BF, rel=0.03)
    assert g.primer_radius_px == pytest.approx(R_PRIMER, rel=0.03)
    assert math.hypot(g.aperture_center_yx[0] - CENTRE[0] - AP_OFFSET[0],
                      g.aperture_center_yx[1] - CENTRE[1] - AP_OFFSET[1]) < 4.0
    assert g.aperture_radius_px == pytest.approx(R_AP, rel=0.15)
    assert g.spacing_um() == pytest.approx(SMALL_PISTOL_PRIMER_DIAMETER_UM / (2 * R_PRIMER), rel=0.03)
    m = g.mask
    assert m.shape == photo.shape and m.dtype == bool
    cy, cx = CENTRE
    assert m[int(cy - 0.8 * R_BF), int(cx)]                           # on the breech face
    assert not m[int(cy + AP_OFFSET[0]), int(cx + AP_OFFSET[1])]       # in the aperture
    assert not m[int(cy), int(cx + 1.2 * R_BF)]                       # dark primer edge
    yy, xx = np.nonzero(m)
    assert np.hypot(yy - cy, xx - cx).max() < R_BF


def test_preprocess_image_shapes_masks_and_meta(photo):
    before = photo.heights.copy()
    out = preprocess_image(photo)
    np.testing.assert_array_equal(photo.heights, before)  # input untouched
    assert out.spacing_um == 6.25
    s = out.meta["spacing_estimated_um"]
    assert s == pytest.approx(SMALL_PISTOL_PRIMER_DIAMETER_UM / (2 * R_PRIMER), rel=0.03)
    # the breech-face disc (radius R_BF px minus the 60 um margin) at 6.25 um
    side = 2 * (R_BF * s - 60.0) / 6.25
    assert max(out.shape) == pytest.approx(side, rel=0.05)
    assert 0.4 < out.valid_fraction < 0.85
    v = out.heights[out.mask]
    assert abs(float(np.median(v))) < 0.05
    assert 1.4826 * float(np.median(np.abs(v - np.median(v)))) == pytest.approx(1.0, rel=0.05)
    assert out.meta["preprocess"].startswith("image2d:") and "segment:primer" in out.meta["preprocess"]
    assert out.meta["image_geometry"]["primer_radius_px"] == pytest.approx(R_PRIMER, rel=0.03)


def test_explicit_spacing_wins(photo):
    out = preprocess_image(photo, spacing_um=10.0)
    assert out.meta["spacing_estimated_um"] == 10.0
    assert max(out.shape) == pytest.approx(2 * (R_BF * 10.0 - 60.0) / 6.25, rel=0.05)


def test_masked_uncalibrated_image_needs_a_spacing(photo):
    h = photo.heights.copy()
    h[:, :300] = np.nan  # mostly masked: auto does not segment
    with pytest.raises(PreprocessError, match="spacing_um") as ei:
        preprocess_image(Surface(h, 1.0, meta={"spacing_calibrated": False}))
    assert ei.value.reason == "image_uncalibrated"


def test_rendered_views_are_not_segmented_and_keep_their_spacing():
    rng = np.random.default_rng(3)
    h = ndi.gaussian_filter(rng.normal(size=(200, 200)), 3) * 5.0
    yy, xx = np.mgrid[0:200, 0:200]
    h[np.hypot(yy - 100, xx - 100) > 90] = np.nan
    view = render_surface_as_image(Surface(h, 6.25))
    out = preprocess_image(view)
    assert "segment:none" in out.meta["preprocess"]
    assert out.meta["spacing_estimated_um"] == 6.25
    assert out.spacing_um == 6.25 and 0.5 < out.valid_fraction <= 1.0


def test_bad_arguments_and_unusable_images(photo):
    with pytest.raises(ValueError, match="segment"):
        preprocess_image(photo, segment="guess")
    with pytest.raises(ValueError, match="spacing_um"):
        preprocess_image(photo, spacing_um=-1.0)
    flat = Surface(np.full((120, 160), 0.4), 1.0)
    with pytest.raises(PreprocessError):
        preprocess_image(flat)


def test_flatten_illumination_removes_a_multiplicative_gradient():
    rng = np.random.default_rng(5)
    pattern = 1.0 + 0.1 * ndi.gaussian_filter(rng.normal(size=(200, 200)), 2) / 0.14
    yy, xx = np.mgrid[0:200, 0:200]
    light = 0.3 + 0.5 * xx / 200.0
    s = Surface(pattern * light, 5.0)
    out = flatten_illumination(s, background_cutoff_um=200.0, method="divide")
    inner = (slice(30, 170), slice(30, 170))
    # the left-right trend is gone: both halves have the same mean contrast
    left, right = out.heights[inner][:, :70], out.heights[inner][:, 70:]
    assert abs(left.mean() - right.mean()) < 0.02
    r = np.corrcoef(out.heights[inner].ravel(), pattern[inner].ravel())[0, 1]
    assert r > 0.9
    sub = flatten_illumination(s, background_cutoff_um=200.0, method="subtract")
    assert np.isfinite(sub.heights).all()
    with pytest.raises(ValueError, match="method"):
        flatten_illumination(s, method="gamma")


def test_normalize_contrast_is_robust_and_clips():
    z = np.r_[np.random.default_rng(2).normal(3.0, 2.0, 5000), [1e6, np.nan]].reshape(1, -1)
    out = normalize_contrast(Surface(z, 1.0), clip_sigma=3.0)
    v = out.heights[np.isfinite(out.heights)]
    assert abs(np.median(v)) < 0.05 and v.max() == 3.0
    assert np.isnan(out.heights[0, -1])
    assert np.all(normalize_contrast(Surface(np.ones((3, 3)), 1.0)).heights == 0.0)


def test_compare_images_matches_a_rotated_reshoot_and_not_another_case():
    a = _synthetic_photo(0, noise=0.02, noise_seed=1)
    b = _synthetic_photo(0, angle_deg=40.0, noise=0.02, noise_seed=2)  # same "pistol", case turned, new noise
    c = _synthetic_photo(7, angle_deg=40.0, noise=0.02, noise_seed=3)  # other texture
    pa = preprocess_image(a)
    same = compare_images(pa, b)
    assert same.identification and same.cmc_count >= 10, same.summary()
    # b turned by 40 deg counter-clockwise: registering b onto a turns it back by 320 deg
    err = (same.registration.angle_deg - 320.0 + 180.0) % 360.0 - 180.0
    assert abs(err) < 2.0
    diff = compare_images(pa, c)
    assert not diff.identification, diff.summary()


# --------------------------------------------------------------------------- real data

NBIDE = ("images2d", "nbide")


@pytest.fixture(scope="module")
def nbide(shared_data):
    folder = shared_data.joinpath(*NBIDE)
    return {n: preprocess_image(read_image(folder / f"NBIDE_R_BF_{n}.png")) for n in ("118", "129")}


@pytest.mark.realdata
def test_nbide_scale_estimate_is_consistent(nbide):
    s118, s129 = (nbide[n].meta["spacing_estimated_um"] for n in ("118", "129"))
    assert 2.0 < s118 < 2.3 and 2.0 < s129 < 2.3
    assert abs(s118 - s129) / s118 < 0.02
    for n in nbide:
        assert 420 <= max(nbide[n].shape) <= 540  # 3.2 mm breech-face disc at 6.25 um
        assert 0.3 < nbide[n].valid_fraction < 0.6


@pytest.mark.realdata
def test_nbide_photographs_of_the_same_pistol_match(nbide):
    r = compare_images(nbide["118"], nbide["129"])
    assert r.identification and r.cmc_count >= 6, r.summary()
    assert r.registration.ncc > 0.3


@pytest.mark.realdata
@pytest.mark.parametrize("fadul", ["Fadul 1-1.x3p", "Fadul 2-1.x3p"])
def test_nbide_does_not_match_rendered_scans_of_other_pistols(shared_data, nbide, fadul):
    scan = read_x3p(shared_data / "cartridge" / "fadul" / fadul)
    view = render_surface_as_image(preprocess_cartridge(scan))
    r = compare_images(nbide["118"], view)
    assert not r.identification and r.cmc_count <= 3, r.summary()


@pytest.mark.realdata
def test_rendered_scans_of_the_same_slide_match_through_the_2d_path(shared_data):
    # positive control for the non-matches above: rendered views can match when the source is the same
    views = [preprocess_image(render_surface_as_image(preprocess_cartridge(
        read_x3p(shared_data / "cartridge" / "fadul" / f"Fadul {n}.x3p")))) for n in ("1-1", "1-2")]
    r = compare_images(*views)
    assert r.identification and r.cmc_count >= 6, r.summary()
