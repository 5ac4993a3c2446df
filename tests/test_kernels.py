"""The numba kernels of :mod:`ballistic._kernels` against slow pure-numpy twins.

Each twin below is written from the kernel's docstring, not from its code:
plain Python loops over small arrays, so that it is obviously right.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ballistic import _kernels as K

# --------------------------------------------------------------------------- twins

#: The kernel's docstring says the output samples the input at
#: ``R(-angle) @ (p - (oc + t)) + c`` (a counter-clockwise rotation as displayed,
#: row 0 on top). The kernel as written rotates the other way (clockwise as
#: displayed, see ``test_warp_rotate_plus90_is_np_rot90_k1``), so the twin is
#: compared at ``KERNEL_ANGLE_SIGN * angle``. Flip this to +1 when the kernel's
#: direction is fixed to match its docstring.
KERNEL_ANGLE_SIGN = 1.0

_W_EPS = 1e-9  # a bilinear weight below this carries no weight (float noise at 90 degrees)


def _rot(theta: float) -> np.ndarray:
    """Rotation matrix acting on (row, col) vectors; counter-clockwise as displayed
    (row 0 on top) for theta > 0: (0, 1) (right) goes to (-1, 0) (up) at 90 degrees."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def twin_warp_rotate(img, angle, cy, cx, out_ny, out_nx, ocy, ocx, ty, tx):
    img = np.asarray(img, dtype=np.float64)
    ny, nx = img.shape
    M = _rot(-angle)
    out = np.full((out_ny, out_nx), np.nan)
    for r in range(out_ny):
        for c in range(out_nx):
            sy, sx = M @ np.array([r - (ocy + ty), c - (ocx + tx)]) + np.array([cy, cx])
            y0, x0 = math.floor(sy), math.floor(sx)
            fy, fx = sy - y0, sx - x0
            total = 0.0
            ok = True
            for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
                for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
                    w = wy * wx
                    if w <= _W_EPS:
                        continue
                    if not (0 <= yy < ny and 0 <= xx < nx) or np.isnan(img[yy, xx]):
                        ok = False
                        continue
                    total += w * img[yy, xx]
            if ok:
                out[r, c] = total
    return out


def twin_corr(a, b, min_count):
    """Pearson over the pixels finite in both; NaN for < max(min_count, 2) pixels or
    when either side is constant there (exact test, no rounding involved)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = np.isfinite(a) & np.isfinite(b)
    n = int(m.sum())
    if n < max(min_count, 2):
        return np.nan, n
    x, y = a[m], b[m]
    if np.all(x == x[0]) or np.all(y == y[0]):
        return np.nan, n
    x = x - x.mean()
    y = y - y.mean()
    return float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y))), n


def twin_cell_corr(cell, region, oy, ox, min_count):
    ch, cw = cell.shape
    rh, rw = region.shape
    corr = np.full(len(oy), np.nan)
    cnt = np.zeros(len(oy), dtype=np.int64)
    for k, (y0, x0) in enumerate(zip(oy, ox)):
        if y0 < 0 or x0 < 0 or y0 + ch > rh or x0 + cw > rw:
            continue
        corr[k], cnt[k] = twin_corr(cell, region[y0:y0 + ch, x0:x0 + cw], min_count)
    return corr, cnt


# --------------------------------------------------------------------------- inputs

def _rand(rng, shape, nan_frac=0.0):
    a = rng.normal(size=shape)
    if nan_frac:
        a[rng.random(shape) < nan_frac] = np.nan
    return np.ascontiguousarray(a)


def _image(kind: str, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return _rand(rng, shape)
    if kind == "nans":
        return _rand(rng, shape, 0.25)
    if kind == "allnan":
        return np.full(shape, np.nan)
    if kind == "constant":
        return np.full(shape, 2.5)
    raise AssertionError(kind)


# --------------------------------------------------------------------------- warp_rotate

WARP_CASES = [
    # (in shape, out shape, angle deg, (cy, cx), (ocy, ocx), (ty, tx))
    ((7, 7), (7, 7), 0.0, (3.0, 3.0), (3.0, 3.0), (0.0, 0.0)),
    ((7, 7), (7, 7), 0.0, (3.0, 3.0), (3.0, 3.0), (1.0, -2.0)),
    ((7, 7), (7, 7), 0.0, (3.0, 3.0), (3.0, 3.0), (0.3, -1.7)),
    ((6, 9), (9, 6), 90.0, (2.5, 4.0), (4.0, 2.5), (0.0, 0.0)),
    ((6, 9), (8, 11), 90.0, (2.5, 4.0), (3.5, 5.0), (1.0, 0.5)),
    ((5, 8), (5, 8), 180.0, (2.0, 3.5), (2.0, 3.5), (0.0, 0.0)),
    ((5, 8), (7, 6), 180.0, (2.0, 3.5), (3.0, 2.5), (-0.4, 0.25)),
    ((9, 12), (11, 10), 37.5, (4.0, 5.5), (5.0, 4.5), (0.0, 0.0)),
    ((9, 12), (13, 14), 37.5, (4.2, 5.1), (6.0, 6.5), (1.3, -2.2)),
    ((9, 12), (10, 10), -123.4, (4.0, 5.5), (4.5, 4.5), (-0.7, 0.9)),
    ((8, 8), (8, 8), 37.5, (3.5, 3.5), (3.5, 3.5), (20.0, -15.0)),   # moved out of view: all NaN
    ((1, 1), (1, 1), 0.0, (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)),
    ((1, 1), (3, 3), 37.5, (0.0, 0.0), (1.0, 1.0), (0.0, 0.0)),
    ((2, 3), (2, 3), 0.0, (0.5, 1.0), (0.5, 1.0), (0.0, 0.0)),
    ((2, 3), (3, 2), 90.0, (0.5, 1.0), (1.0, 0.5), (0.0, 0.0)),
    ((2, 3), (4, 4), 37.5, (0.5, 1.0), (1.5, 1.5), (0.2, 0.1)),
]


@pytest.mark.parametrize("kind", ["random", "nans", "allnan", "constant"])
@pytest.mark.parametrize("case", WARP_CASES, ids=lambda c: f"{c[0]}->{c[1]}@{c[2]}t{c[5]}")
def test_warp_rotate_matches_twin(case, kind):
    shape, oshape, ang, (cy, cx), (ocy, ocx), (ty, tx) = case
    img = _image(kind, shape, seed=hash((shape, oshape, ang)) % 2**32)
    a = math.radians(ang)
    got = K.warp_rotate(img, a, cy, cx, oshape[0], oshape[1], ocy, ocx, ty, tx)
    want = twin_warp_rotate(img, KERNEL_ANGLE_SIGN * a, cy, cx, oshape[0], oshape[1], ocy, ocx, ty, tx)
    assert got.shape == oshape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)
    if kind == "allnan":
        assert np.isnan(got).all()


def test_warp_rotate_moved_out_of_view_is_all_nan():
    img = _image("random", (8, 8), 3)
    out = K.warp_rotate(img, 0.3, 3.5, 3.5, 8, 8, 3.5, 3.5, 30.0, 30.0)
    assert np.isnan(out).all()


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 5), (10, 13)])
def test_warp_rotate_identity_is_exact(shape):
    img = _image("nans", shape, 11)
    ny, nx = shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    out = K.warp_rotate(img, 0.0, cy, cx, ny, nx, cy, cx, 0.0, 0.0)
    np.testing.assert_array_equal(out, img)  # NaN where NaN, bit-identical elsewhere


def test_warp_rotate_integer_translation_is_exact_shift():
    img = _image("random", (6, 7), 5)
    out = K.warp_rotate(img, 0.0, 3.0, 3.0, 6, 7, 3.0, 3.0, 2.0, -1.0)
    # output (r, c) samples input (r - 2, c + 1)
    np.testing.assert_array_equal(out[2:, :-1], img[:-2, 1:])
    assert np.isnan(out[:2]).all() and np.isnan(out[:, -1]).all()


def _rot90_direction(img: np.ndarray) -> np.ndarray:
    n = img.shape[0]
    c = (n - 1) / 2.0
    return K.warp_rotate(img, math.pi / 2, c, c, n, n, c, c, 0.0, 0.0)


def test_warp_rotate_90_is_a_quarter_turn():
    """A 90 degree rotation of a square image is an exact quarter turn (either way)."""
    img = _image("random", (5, 5), 7)
    out = _rot90_direction(img)
    assert any(np.allclose(out, np.rot90(img, k), atol=1e-12) for k in (1, -1))
    out180 = K.warp_rotate(img, math.pi, 2.0, 2.0, 5, 5, 2.0, 2.0, 0.0, 0.0)
    np.testing.assert_allclose(out180, np.rot90(img, 2), atol=1e-12)


def test_warp_rotate_plus90_is_np_rot90_k1():
    img = _image("random", (5, 5), 7)
    np.testing.assert_allclose(_rot90_direction(img), np.rot90(img, k=1), atol=1e-12)


def test_warp_rotate_bilinear_exact_on_a_linear_ramp():
    """Bilinear interpolation reproduces a linear function exactly, whatever the angle."""
    yy, xx = np.mgrid[0:9, 0:11].astype(np.float64)
    img = 0.7 * yy - 1.3 * xx + 4.0
    a = math.radians(37.5)
    out = K.warp_rotate(img, a, 4.0, 5.0, 9, 11, 4.0, 5.0, 0.5, -0.25)
    r, c = np.mgrid[0:9, 0:11].astype(np.float64)
    M = _rot(KERNEL_ANGLE_SIGN * -a)
    sy = M[0, 0] * (r - 4.5) + M[0, 1] * (c - 4.75) + 4.0
    sx = M[1, 0] * (r - 4.5) + M[1, 1] * (c - 4.75) + 5.0
    ok = np.isfinite(out)
    assert ok.sum() > 30
    np.testing.assert_allclose(out[ok], (0.7 * sy - 1.3 * sx + 4.0)[ok], atol=1e-10)


# --------------------------------------------------------------------------- pairwise_complete_corr

PAIR_SHAPES = [(1, 1), (2, 3), (3, 2), (5, 5), (6, 11)]


@pytest.mark.parametrize("shape", PAIR_SHAPES)
@pytest.mark.parametrize("kind_a,kind_b", [("random", "random"), ("nans", "nans"), ("nans", "random"),
                                           ("allnan", "random"), ("constant", "random"),
                                           ("random", "constant"), ("constant", "constant")])
@pytest.mark.parametrize("min_count", [0, 2, 5, 1000])
def test_pairwise_complete_corr_matches_twin(shape, kind_a, kind_b, min_count):
    a = _image(kind_a, shape, 1)
    b = _image(kind_b, shape, 2)
    c, n = K.pairwise_complete_corr(a, b, min_count)
    wc, wn = twin_corr(a, b, min_count)
    assert n == wn
    np.testing.assert_allclose(c, wc, rtol=1e-10, atol=1e-13, equal_nan=True)


def test_pairwise_complete_corr_known_values():
    a = np.array([[1.0, 2.0, 3.0, np.nan]])
    assert K.pairwise_complete_corr(a, 2 * a + 1, 2) == pytest.approx((1.0, 3))
    assert K.pairwise_complete_corr(a, -a, 2) == pytest.approx((-1.0, 3))
    b = np.array([[np.nan, 2.0, 3.0, 4.0]])
    c, n = K.pairwise_complete_corr(a, b, 2)
    assert n == 2 and c == pytest.approx(1.0)
    c, n = K.pairwise_complete_corr(a, b, 3)       # min_count above the overlap
    assert n == 2 and np.isnan(c)


def test_pairwise_complete_corr_linear_invariance():
    rng = np.random.default_rng(4)
    a = _rand(rng, (8, 9), 0.2)
    b = _rand(rng, (8, 9), 0.2)
    c0, n0 = K.pairwise_complete_corr(a, b, 2)
    c1, n1 = K.pairwise_complete_corr(np.ascontiguousarray(3 * a - 7), np.ascontiguousarray(0.5 * b + 100), 2)
    assert n0 == n1 and c1 == pytest.approx(c0, abs=1e-12)


def test_pairwise_complete_corr_constant_non_dyadic_is_nan():
    a = np.full((7, 7), 0.1)
    b = _rand(np.random.default_rng(0), (7, 7))
    assert np.isnan(K.pairwise_complete_corr(a, b, 2)[0])
    assert np.isnan(K.pairwise_complete_corr(a, np.full((7, 7), 0.7), 2)[0])


# --------------------------------------------------------------------------- cell_corr_at_offsets

CELL_CASES = [
    # (cell shape, region shape)
    ((1, 1), (3, 3)),
    ((2, 3), (4, 6)),
    ((4, 4), (9, 9)),
    ((3, 5), (8, 7)),
    ((5, 5), (4, 4)),   # cell larger than the region: every window leaves it
]


@pytest.mark.parametrize("cell_kind,region_kind", [("random", "random"), ("nans", "nans"), ("allnan", "random"),
                                                   ("random", "allnan"), ("constant", "random"),
                                                   ("random", "constant")])
@pytest.mark.parametrize("case", CELL_CASES, ids=str)
@pytest.mark.parametrize("min_count", [1, 4, 1000])
def test_cell_corr_at_offsets_matches_twin(case, cell_kind, region_kind, min_count):
    (ch, cw), (rh, rw) = case
    cell = _image(cell_kind, (ch, cw), 21)
    region = _image(region_kind, (rh, rw), 22)
    # every offset that fits plus some that leave the region on each side
    oy, ox = np.mgrid[-2:rh - ch + 3, -2:rw - cw + 3]
    oy = oy.ravel().astype(np.int64)
    ox = ox.ravel().astype(np.int64)
    corr, cnt = K.cell_corr_at_offsets(cell, region, oy, ox, min_count)
    wcorr, wcnt = twin_cell_corr(cell, region, oy, ox, min_count)
    np.testing.assert_array_equal(cnt, wcnt)
    np.testing.assert_allclose(corr, wcorr, rtol=1e-10, atol=1e-13, equal_nan=True)
    outside = (oy < 0) | (ox < 0) | (oy + ch > rh) | (ox + cw > rw)
    assert np.isnan(corr[outside]).all() and (cnt[outside] == 0).all()


def test_cell_corr_at_offsets_finds_the_planted_cell():
    rng = np.random.default_rng(8)
    region = _rand(rng, (12, 10), 0.1)
    cell = np.ascontiguousarray(region[5:9, 2:6] * 2.0 + 1.0)
    oy, ox = np.mgrid[0:9, 0:7]
    corr, cnt = K.cell_corr_at_offsets(cell, region, oy.ravel().astype(np.int64),
                                       ox.ravel().astype(np.int64), 4)
    k = int(np.nanargmax(corr))
    assert (oy.ravel()[k], ox.ravel()[k]) == (5, 2)
    assert corr[k] == pytest.approx(1.0)


def test_cell_corr_at_offsets_empty_offsets():
    cell = _image("random", (2, 2), 1)
    region = _image("random", (4, 4), 2)
    corr, cnt = K.cell_corr_at_offsets(cell, region, np.zeros(0, np.int64), np.zeros(0, np.int64), 2)
    assert corr.shape == (0,) and cnt.shape == (0,)
