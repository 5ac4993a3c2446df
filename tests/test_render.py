"""Hillshade rendering and PNG export (ballistic.viz.render)."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from ballistic.surface import Surface
from ballistic.viz.render import (RING_LIGHT_AZIMUTHS_DEG, render_surface_as_image, shade, surface_normals, to_png,
                                  to_png_bytes)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plane(gx: float, gy_row: float, *, shape=(40, 50), spacing_um=5.0) -> Surface:
    """z = gx * x_um + gy_row * y_um (y grows down the rows), heights in um."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float) * spacing_um
    return Surface(gx * xx + gy_row * yy, spacing_um)


def test_flat_surface_gives_sin_altitude():
    s = _plane(0.0, 0.0)
    for alt in (10.0, 45.0, 90.0):
        out = shade(s, altitude_deg=alt)
        assert out.shape == s.shape
        np.testing.assert_allclose(out, math.sin(math.radians(alt)), atol=1e-12)


def test_plane_tilted_toward_the_light_is_brighter_than_away():
    # light from the north-west (315 deg); a surface rising to the south-east faces north-west
    toward = shade(_plane(0.3, 0.3), azimuth_deg=315.0, altitude_deg=45.0)
    away = shade(_plane(-0.3, -0.3), azimuth_deg=315.0, altitude_deg=45.0)
    flat = shade(_plane(0.0, 0.0), azimuth_deg=315.0, altitude_deg=45.0)
    assert np.all(toward > flat) and np.all(flat > away)
    # and the azimuth convention: light from the east lights a surface rising to the west
    east = shade(_plane(-0.3, 0.0), azimuth_deg=90.0)
    west = shade(_plane(0.3, 0.0), azimuth_deg=90.0)
    assert np.all(east > west)
    # light from the north (0 deg, row 0 on top) lights a surface rising to the south
    assert np.all(shade(_plane(0.0, 0.3), azimuth_deg=0.0) > shade(_plane(0.0, -0.3), azimuth_deg=0.0))


def test_lambert_value_matches_the_formula():
    g = 0.2
    s = _plane(g, 0.0)  # normal (-g, 0, 1) / sqrt(1 + g^2)
    alt, az = 30.0, 270.0  # light from the west: l = (-cos alt, 0, sin alt)
    want = (g * math.cos(math.radians(alt)) + math.sin(math.radians(alt))) / math.sqrt(1 + g * g)
    np.testing.assert_allclose(shade(s, azimuth_deg=az, altitude_deg=alt), want, atol=1e-12)


def test_ring_light_does_not_prefer_a_direction():
    a = shade(_plane(0.2, 0.0), azimuth_deg=RING_LIGHT_AZIMUTHS_DEG, altitude_deg=30.0)
    b = shade(_plane(0.0, -0.2), azimuth_deg=RING_LIGHT_AZIMUTHS_DEG, altitude_deg=30.0)
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_nan_is_preserved_and_neighbours_survive():
    s = _plane(0.1, -0.05, shape=(30, 30))
    h = s.heights.copy()
    h[10:13, 10:13] = np.nan
    h[0, :] = np.nan
    h[20, 25] = np.nan
    before = h.copy()
    s2 = Surface(h, 5.0)
    out = shade(s2, azimuth_deg=[0.0, 120.0], z_factor=3.0)
    assert np.array_equal(np.isnan(out), np.isnan(h))
    assert np.all((out[~np.isnan(h)] >= 0) & (out[~np.isnan(h)] <= 1))
    # a plane stays one value up to the holes (one-sided differences are exact on a plane)
    np.testing.assert_allclose(out[~np.isnan(h)], out[5, 5], atol=1e-12)
    np.testing.assert_array_equal(s2.heights, before)  # input untouched


def test_isolated_point_is_rendered_flat():
    h = np.full((5, 5), np.nan)
    h[2, 2] = 7.0
    out = shade(Surface(h, 1.0), altitude_deg=60.0)
    assert out[2, 2] == pytest.approx(math.sin(math.radians(60.0)))
    assert np.isnan(out).sum() == 24


def test_surface_normals_are_unit_vectors():
    rng = np.random.default_rng(0)
    s = Surface(rng.normal(size=(20, 20)), 2.0)
    n = surface_normals(s)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(altitude_deg=0.0), dict(altitude_deg=91.0), dict(z_factor=0.0),
                                dict(azimuth_deg=[]), dict(azimuth_deg=float("nan")), dict(ambient=1.0)])
def test_bad_lighting_arguments_raise(kw):
    with pytest.raises(ValueError):
        shade(_plane(0.1, 0.1), **kw)


def test_shade_wants_a_surface():
    with pytest.raises(TypeError, match="Surface"):
        shade(np.zeros((4, 4)))


def test_render_surface_as_image_keeps_grid_and_marks_kind():
    s = _plane(0.1, 0.2, spacing_um=6.25)
    h = s.heights.copy()
    h[:3] = np.nan
    s = Surface(h, 6.25, meta={"source": "x.x3p"})
    img = render_surface_as_image(s)
    assert img.shape == s.shape and img.spacing_um == 6.25
    assert img.meta["kind"] == "rendered" and img.meta["spacing_calibrated"] is True
    assert img.meta["rendered_from"] == "x.x3p"
    assert np.array_equal(img.mask, s.mask)
    assert np.nanmin(img.heights) >= 0 and np.nanmax(img.heights) <= 1


def _decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_png_bytes_are_a_valid_8bit_png_with_white_missing():
    a = np.array([[0.0, 0.5, 1.0], [np.nan, 0.25, 1.0]])
    data = to_png_bytes(a)
    assert data.startswith(PNG_SIGNATURE)
    im = _decode(data)
    assert im.format == "PNG" and im.mode == "L" and im.size == (3, 2)
    px = np.asarray(im)
    assert px[0, 0] == 0 and px[0, 2] == 255 and px[0, 1] in (127, 128) and px[1, 0] == 255


def test_png_transparent_missing_and_black_missing():
    a = np.array([[0.2, np.nan]])
    im = _decode(to_png_bytes(a, missing="transparent"))
    assert im.mode == "LA"
    px = np.asarray(im)
    assert px[0, 0, 1] == 255 and px[0, 1, 1] == 0
    assert np.asarray(_decode(to_png_bytes(a, missing="black")))[0, 1] == 0
    with pytest.raises(ValueError, match="missing"):
        to_png_bytes(a, missing="red")


def test_png_stretches_heights_and_accepts_surfaces():
    rng = np.random.default_rng(1)
    h = rng.normal(0.0, 5.0, size=(16, 16))  # um, outside [0, 1]
    px = np.asarray(_decode(to_png_bytes(Surface(h, 1.0))))
    assert px.min() == 0 and px.max() == 255
    # explicit window
    px2 = np.asarray(_decode(to_png_bytes(np.array([[0.0, 10.0]]), vmin=0.0, vmax=20.0)))
    assert px2[0, 0] == 0 and px2[0, 1] in (127, 128)
    # constant and all-missing images do not crash
    assert _decode(to_png_bytes(np.full((3, 3), 0.7))).size == (3, 3)
    assert np.all(np.asarray(_decode(to_png_bytes(np.full((2, 2), np.nan)))) == 255)


def test_png_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        to_png_bytes(np.zeros((2, 2, 3)))


def test_to_png_writes_atomically(tmp_path):
    p = to_png(shade(_plane(0.1, 0.0)), tmp_path / "view.png")
    assert p.read_bytes().startswith(PNG_SIGNATURE)
    assert [q.name for q in tmp_path.iterdir()] == ["view.png"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="create it first"):
        to_png(np.zeros((2, 2)), tmp_path / "nope" / "x.png")


def test_save_figure_writes_atomically_and_closes_the_figure(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ballistic.viz.render import save_figure

    fig = plt.figure()
    p = save_figure(fig, tmp_path / "sub" / "f.png", dpi=50)
    assert p.read_bytes().startswith(PNG_SIGNATURE) and [q.name for q in p.parent.iterdir()] == ["f.png"]
    assert not plt.fignum_exists(fig.number)
    # a failing draw leaves the old figure in place and no temporary behind
    old = p.read_bytes()
    fig2 = plt.figure()
    monkeypatch.setattr(fig2, "savefig", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("draw failed")))
    with pytest.raises(RuntimeError, match="draw failed"):
        save_figure(fig2, p)
    assert p.read_bytes() == old and [q.name for q in p.parent.iterdir()] == ["f.png"]


def test_atomic_write_mode_is_set_before_the_content(tmp_path):
    import os
    import stat

    from ballistic.io.atomic import atomic_write, atomic_write_bytes

    seen = {}

    def write(fh):
        seen["mode"] = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        fh.write(b"secret")

    p = atomic_write(tmp_path / "k.txt", write, mode=0o640)
    assert seen["mode"] == 0o640 and stat.S_IMODE(p.stat().st_mode) == 0o640
    assert stat.S_IMODE(atomic_write_bytes(tmp_path / "s.txt", b"x", mode=0o600).stat().st_mode) == 0o600
    # without a mode: what open() would create (0666 less the umask), not mkstemp's 0600
    um = os.umask(0o022)
    os.umask(um)
    assert stat.S_IMODE(atomic_write_bytes(tmp_path / "d.txt", b"x").stat().st_mode) == 0o666 & ~um
