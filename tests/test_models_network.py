"""Tests of the learned breech-face embedding's building blocks (models/breech_face): polar input,
network invariance, loss, a smoke training of a few steps. No shipped weights needed here."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a runtime dependency of models/")

from ballistic.preprocess.filters import crop_to_mask, rotate  # noqa: E402
from ballistic.cartridge.synth import fire, synthetic_firearm  # noqa: E402
from models.breech_face.data import AugmentConfig, augment, make_view, synthetic_pool  # noqa: E402
from models.breech_face.network import CartesianEmbeddingNet, PolarEmbeddingNet  # noqa: E402
from models.breech_face.polar import PolarGrid, polar_input  # noqa: E402
from models.breech_face.train import TrainConfig, supcon_loss, train  # noqa: E402


@pytest.fixture(scope="module")
def face():
    return fire(synthetic_firearm(3), 1, spacing_um=12.5)


def test_polar_input_shape_range_and_input_untouched(face):
    before = face.heights.copy()
    g = PolarGrid()
    x = polar_input(face, g)
    assert x.shape == g.shape == (2, 64, 256) and x.dtype == np.float32 and np.isfinite(x).all()
    assert 0.0 <= x[1].min() and x[1].max() <= 1.0 and 0.2 < x[1].mean() < 0.6
    assert np.abs(x[0]).max() <= 4.0 + 1e-6 and (x[0][x[1] == 0] == 0).all()
    np.testing.assert_array_equal(face.heights, before)
    with pytest.raises(ValueError, match="preprocessed breech face"):
        polar_input(face.with_heights(np.full(face.shape, np.nan)), g)


def test_rotation_is_a_circular_shift_of_the_polar_input(face):
    from ballistic.preprocess.filters import resample
    from models.breech_face.polar import normalise_heights, polar_centre

    g = PolarGrid()
    s = resample(face, spacing_um=g.spacing_um)
    cy, cx = polar_centre(s)
    for angle in (45.0, 123.0):
        x1 = polar_input(crop_to_mask(rotate(face, angle)), g)
        # the unrotated face sampled with the angle offset: a (fractional) circular shift of its polar image
        zp, mp = g.sample(normalise_heights(s.heights), s.mask, cy, cx, rotation_rad=math.radians(angle))
        both = (mp > 0.9) & (x1[1] > 0.9)
        assert both.sum() > 2000
        assert np.corrcoef(zp[both], x1[0][both])[0, 1] > 0.9, angle


def test_network_exactly_invariant_to_shifts_by_its_angular_stride_and_close_in_between():
    torch.manual_seed(0)
    net = PolarEmbeddingNet().eval()
    x = torch.from_numpy(polar_input(fire(synthetic_firearm(5), 2, spacing_um=25.0))[None])
    with torch.no_grad():
        y0 = net(x)
        for s in (8, 64, 136):                                    # multiples of the total stride (8)
            torch.testing.assert_close(net(torch.roll(x, s, -1)), y0, atol=2e-5, rtol=0)
        worst = min(float((net(torch.roll(x, s, -1)) * y0).sum()) for s in range(1, 8))
    assert worst > 0.99                                            # untrained; the trained net: tests/test_models_descriptor


def test_network_shapes_norm_and_batch_equals_single():
    torch.manual_seed(0)
    for net, shape in ((PolarEmbeddingNet().eval(), (5, 2, 64, 256)),
                       (CartesianEmbeddingNet().eval(), (5, 2, 168, 168))):
        x = torch.randn(*shape)
        with torch.no_grad():
            y = net(x)
            single = torch.cat([net(x[i:i + 1]) for i in range(len(x))])
        assert y.shape == (5, 128) and torch.isfinite(y).all()
        torch.testing.assert_close(y.norm(dim=1), torch.ones(5))
        torch.testing.assert_close(y, single, atol=1e-5, rtol=0)


def test_supcon_loss_prefers_embeddings_that_group_mates():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    good = torch.nn.functional.normalize(torch.eye(3)[labels] + 0.05 * torch.randn(6, 3), dim=1)
    bad = torch.nn.functional.normalize(torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.05 * torch.randn(6, 3),
                                        dim=1)
    assert float(supcon_loss(good, labels, 0.1)) < 0.1 < float(supcon_loss(bad, labels, 0.1))


def test_augment_keeps_shape_and_input_and_none_is_identity_in_the_view(face):
    z = crop_to_mask(face).heights
    before = z.copy()
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = augment(z, rng, AugmentConfig())
        assert a.ndim == 2 and np.isfinite(a).sum() > 0.2 * np.isfinite(z).sum()
    np.testing.assert_array_equal(z, before)
    g = PolarGrid()
    from ballistic.preprocess.filters import resample
    z25 = resample(face, spacing_um=25.0).heights
    np.testing.assert_allclose(make_view(z25, None, AugmentConfig(), g), polar_input(face, g), atol=1e-5)


def test_smoke_training_is_seeded_and_learns_something():
    pool = synthetic_pool(4, 2, workers=1, progress=False)
    cfg = TrainConfig(steps=3, real=False, synth_firearms=4, synth_views=2, workers=0, threads=1, warmup=1)
    m1, log1 = train(cfg, [], pool, progress=False)
    m2, _ = train(cfg, [], pool, progress=False)
    assert all(np.isfinite(v) for _, v in log1["loss"])
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    torch.manual_seed(cfg.seed)
    fresh = PolarEmbeddingNet()                                   # the initial weights of m1
    assert any(not torch.equal(a, b) for a, b in zip(m1.state_dict().values(), fresh.state_dict().values())
               if a.dtype.is_floating_point)
    assert math.isfinite(log1["wall_s"])


def test_aperture_centre_finds_the_firing_pin_hole_and_turns_with_the_surface():
    from models.breech_face.polar import aperture_centre

    fa = synthetic_firearm(8)
    s = fire(fa, 3, spacing_um=25.0, rotation_deg=0.0, translation_um=(0.0, 0.0), contact_loss=0.05)
    cy, cx, r = aperture_centre(s)
    half = math.ceil((fa.outer_radius_um + 70.0) / 50.0) * 50.0 / 25.0 - 0.5     # face centre, pixels
    ay, ax = fa.aperture_offset_um
    assert abs(cy - (half + ay / 25.0)) < 2.5 and abs(cx - (half + ax / 25.0)) < 2.5   # +- per-firing jitter
    assert abs(r * 25.0 - fa.aperture_radius_um) < 40.0
    t = rotate(s, 90.0)                                                            # counter-clockwise
    cy2, cx2, _ = aperture_centre(t)
    ny, nx = s.shape
    assert abs(cy2 - ((nx - 1) - cx)) < 1.0 and abs(cx2 - cy) < 1.0
    disc = s.with_heights(np.where(np.hypot(*(np.mgrid[0:ny, 0:nx] - half)) < 60, 1.0, np.nan))
    assert aperture_centre(disc) is None                                          # a full disc: no hole


def test_folds_hold_out_whole_firearms_and_whole_studies():
    from models.breech_face.data import RealScan
    from models.breech_face.evaluate import firearm_folds, study_folds

    blank = None
    real = ([RealScan(f"f{s}-{i}", "fadul", f"fadul:{s}", f"F{s}-{i}", blank) for s in range(1, 4) for i in range(2)]
            + [RealScan(f"d{g}{i}", "dfsc", f"dfsc:{g}", f"{g}{i}", blank) for g in "AB" for i in range(2)]
            + [RealScan(f"b{g}", "baldwin", f"dfsc:{g}", f"b{g}", blank) for g in "AC"])
    ff = firearm_folds(real)
    assert ff == [("fadul:1", "dfsc:A"), ("fadul:2", "dfsc:B"), ("fadul:3", "dfsc:C")]
    sf = study_folds(real)
    assert sf == [("fadul:1", "fadul:2", "fadul:3"), ("dfsc:A", "dfsc:B", "dfsc:C")]
    # every firearm is held out exactly once, and a Baldwin scan goes with its DFSC gun
    assert sorted(f for fold in sf for f in fold) == sorted({s.firearm for s in real})
