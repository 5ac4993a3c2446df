"""Every numba kernel of the library against its slow pure-numpy twin in ``tests/naive.py``.

The kernels are private and live beside the public function that wraps them (stumpy style):

* ``_warp_rotate`` - :mod:`ballistic.preprocess.filters` (``rotate``; also ``warp_to_reference``);
* ``_pairwise_complete_corr`` - :mod:`ballistic.stats.correlation` (``pairwise_complete_corr``);
* ``_cell_corr_at_offsets`` - :mod:`ballistic.stats.correlation` (``corr_at_offsets``; the
  registration's ``local_search``);
* ``_ccf_at_lags`` - :mod:`ballistic.stats.correlation` (``ccf_at_lags``; the bullets'
  ``align_signatures`` and ``choose_crosscut``);
* ``_band_profiles`` - :mod:`ballistic.bullet.crosscut` (``choose_crosscut``).

NaN and edge inputs are included: all-NaN and constant arrays, windows that leave the
region (empty overlap), and ``min_count`` on both sides of the shared count.
"""
from __future__ import annotations

import math

import naive
import numpy as np
import pytest

from ballistic.bullet.crosscut import _band_profiles
from ballistic.preprocess.filters import _warp_rotate
from ballistic.stats.correlation import (_ccf_at_lags, _cell_corr_at_offsets, _centred_and_mask,
                                         _pairwise_complete_corr, ccf_at_lags, corr_at_offsets,
                                         pairwise_complete_corr)

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
    got = _warp_rotate(img, a, cy, cx, oshape[0], oshape[1], ocy, ocx, ty, tx)
    want = naive.warp_rotate(img, a, cy, cx, oshape[0], oshape[1], ocy, ocx, ty, tx)
    assert got.shape == oshape
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)
    if kind == "allnan":
        assert np.isnan(got).all()


def test_warp_rotate_moved_out_of_view_is_all_nan():
    img = _image("random", (8, 8), 3)
    out = _warp_rotate(img, 0.3, 3.5, 3.5, 8, 8, 3.5, 3.5, 30.0, 30.0)
    assert np.isnan(out).all()


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 5), (10, 13)])
def test_warp_rotate_identity_is_exact(shape):
    img = _image("nans", shape, 11)
    ny, nx = shape
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    out = _warp_rotate(img, 0.0, cy, cx, ny, nx, cy, cx, 0.0, 0.0)
    np.testing.assert_array_equal(out, img)  # NaN where NaN, bit-identical elsewhere


def test_warp_rotate_integer_translation_is_exact_shift():
    img = _image("random", (6, 7), 5)
    out = _warp_rotate(img, 0.0, 3.0, 3.0, 6, 7, 3.0, 3.0, 2.0, -1.0)
    # output (r, c) samples input (r - 2, c + 1)
    np.testing.assert_array_equal(out[2:, :-1], img[:-2, 1:])
    assert np.isnan(out[:2]).all() and np.isnan(out[:, -1]).all()


def _rot90_direction(img: np.ndarray) -> np.ndarray:
    n = img.shape[0]
    c = (n - 1) / 2.0
    return _warp_rotate(img, math.pi / 2, c, c, n, n, c, c, 0.0, 0.0)


def test_warp_rotate_90_is_a_quarter_turn():
    """A 90 degree rotation of a square image is an exact quarter turn (either way)."""
    img = _image("random", (5, 5), 7)
    out = _rot90_direction(img)
    assert any(np.allclose(out, np.rot90(img, k), atol=1e-12) for k in (1, -1))
    out180 = _warp_rotate(img, math.pi, 2.0, 2.0, 5, 5, 2.0, 2.0, 0.0, 0.0)
    np.testing.assert_allclose(out180, np.rot90(img, 2), atol=1e-12)


def test_warp_rotate_plus90_is_np_rot90_k1():
    img = _image("random", (5, 5), 7)
    np.testing.assert_allclose(_rot90_direction(img), np.rot90(img, k=1), atol=1e-12)


def test_warp_rotate_bilinear_exact_on_a_linear_ramp():
    """Bilinear interpolation reproduces a linear function exactly, whatever the angle."""
    yy, xx = np.mgrid[0:9, 0:11].astype(np.float64)
    img = 0.7 * yy - 1.3 * xx + 4.0
    a = math.radians(37.5)
    out = _warp_rotate(img, a, 4.0, 5.0, 9, 11, 4.0, 5.0, 0.5, -0.25)
    r, c = np.mgrid[0:9, 0:11].astype(np.float64)
    M = naive.rot(-a)
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
    c, n = _pairwise_complete_corr(a, b, min_count)
    wc, wn = naive.pairwise_complete_corr(a, b, min_count)
    assert n == wn
    np.testing.assert_allclose(c, wc, rtol=1e-10, atol=1e-13, equal_nan=True)


def test_pairwise_complete_corr_known_values():
    a = np.array([[1.0, 2.0, 3.0, np.nan]])
    assert _pairwise_complete_corr(a, 2 * a + 1, 2) == pytest.approx((1.0, 3))
    assert _pairwise_complete_corr(a, -a, 2) == pytest.approx((-1.0, 3))
    b = np.array([[np.nan, 2.0, 3.0, 4.0]])
    c, n = _pairwise_complete_corr(a, b, 2)
    assert n == 2 and c == pytest.approx(1.0)
    c, n = _pairwise_complete_corr(a, b, 3)       # min_count above the overlap
    assert n == 2 and np.isnan(c)


def test_pairwise_complete_corr_linear_invariance():
    rng = np.random.default_rng(4)
    a = _rand(rng, (8, 9), 0.2)
    b = _rand(rng, (8, 9), 0.2)
    c0, n0 = _pairwise_complete_corr(a, b, 2)
    c1, n1 = _pairwise_complete_corr(np.ascontiguousarray(3 * a - 7), np.ascontiguousarray(0.5 * b + 100), 2)
    assert n0 == n1 and c1 == pytest.approx(c0, abs=1e-12)


def test_pairwise_complete_corr_constant_non_dyadic_is_nan():
    a = np.full((7, 7), 0.1)
    b = _rand(np.random.default_rng(0), (7, 7))
    assert np.isnan(_pairwise_complete_corr(a, b, 2)[0])
    assert np.isnan(_pairwise_complete_corr(a, np.full((7, 7), 0.7), 2)[0])


@pytest.mark.parametrize("seed", range(4))
def test_pairwise_complete_corr_min_count_boundary(seed):
    """Exactly ``n`` shared points: a correlation at min_count = n, NaN at n + 1 (kernel and twin)."""
    rng = np.random.default_rng(seed)
    a = _rand(rng, (6, 7), 0.3)
    b = _rand(rng, (6, 7), 0.3)
    n = int((np.isfinite(a) & np.isfinite(b)).sum())
    for mc, finite in ((n, True), (n + 1, False)):
        c, got_n = _pairwise_complete_corr(a, b, mc)
        wc, wn = naive.pairwise_complete_corr(a, b, mc)
        assert got_n == wn == n and np.isfinite(c) == finite == np.isfinite(wc)
        np.testing.assert_allclose(c, wc, rtol=1e-10, equal_nan=True)


def test_pairwise_complete_corr_on_strided_views_matches_twin():
    """The kernel runs on windows of larger arrays (the cells, the bullet lags): views, not copies."""
    rng = np.random.default_rng(9)
    big_a = _rand(rng, (12, 15), 0.2)
    big_b = _rand(rng, (12, 15), 0.2)
    a, b = big_a[2:9, 3:11], big_b[1:8, 5:13]
    assert not a.flags.c_contiguous
    for mc in (0, 5, 40):
        c, n = _pairwise_complete_corr(a, b, mc)
        wc, wn = naive.pairwise_complete_corr(a, b, mc)
        assert n == wn
        np.testing.assert_allclose(c, wc, rtol=1e-10, atol=1e-13, equal_nan=True)


def test_pairwise_complete_corr_public_wrapper():
    rng = np.random.default_rng(2)
    a = _rand(rng, (5, 6), 0.2)
    b = _rand(rng, (5, 6), 0.2)
    assert pairwise_complete_corr(a, b, min_count=3) == _pairwise_complete_corr(a, b, 3)
    # 1-D input, lists, the default min_count of 2
    c, n = pairwise_complete_corr([1.0, 2.0, np.nan, 4.0], [2.0, 4.1, 5.0, 8.0])
    wc, wn = naive.pairwise_complete_corr(np.array([1.0, 2.0, np.nan, 4.0]), np.array([2.0, 4.1, 5.0, 8.0]), 2)
    assert n == wn == 3 and c == pytest.approx(wc, rel=1e-12)
    assert pairwise_complete_corr([], [])[1] == 0 and np.isnan(pairwise_complete_corr([], [])[0])
    from ballistic.errors import InputError
    with pytest.raises(InputError, match="one shape"):
        pairwise_complete_corr(a, b[:, :3])
    with pytest.raises(InputError, match="1-D or 2-D"):
        pairwise_complete_corr(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


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
    corr, cnt = _cell_corr_at_offsets(cell, region, oy, ox, min_count)
    wcorr, wcnt = naive.cell_corr_at_offsets(cell, region, oy, ox, min_count)
    np.testing.assert_array_equal(cnt, wcnt)
    np.testing.assert_allclose(corr, wcorr, rtol=1e-10, atol=1e-13, equal_nan=True)
    outside = (oy < 0) | (ox < 0) | (oy + ch > rh) | (ox + cw > rw)
    assert np.isnan(corr[outside]).all() and (cnt[outside] == 0).all()


def test_cell_corr_at_offsets_finds_the_planted_cell():
    rng = np.random.default_rng(8)
    region = _rand(rng, (12, 10), 0.1)
    cell = np.ascontiguousarray(region[5:9, 2:6] * 2.0 + 1.0)
    oy, ox = np.mgrid[0:9, 0:7]
    corr, cnt = _cell_corr_at_offsets(cell, region, oy.ravel().astype(np.int64),
                                       ox.ravel().astype(np.int64), 4)
    k = int(np.nanargmax(corr))
    assert (oy.ravel()[k], ox.ravel()[k]) == (5, 2)
    assert corr[k] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["random", "nans", "allnan", "constant"])
def test_centred_and_mask_matches_numpy(kind):
    a = _image(kind, (7, 9), 33) + 40.0
    before = a.copy()
    z, m, mean = _centred_and_mask(a)
    finite = np.isfinite(a)
    want_mean = float(a[finite].mean()) if finite.any() else 0.0
    assert mean == pytest.approx(want_mean, rel=1e-12, abs=0.0)
    np.testing.assert_array_equal(m, finite.astype(float))
    np.testing.assert_allclose(z, np.where(finite, a - want_mean, 0.0), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(a, before)                    # the input is left as it was


@pytest.mark.parametrize("offset", [1e5, -3e4])
def test_cell_corr_at_offsets_keeps_its_accuracy_far_from_zero(offset):
    """Heights in a scanner's absolute frame (micrometres from the stage): the kernel centres each side on
    its mean before its branch-free sums, so an offset of 1e5 um costs no more than rounding."""
    cell = _image("nans", (12, 12), 31)
    region = _image("nans", (18, 17), 32)
    oy, ox = (a.ravel().astype(np.int64) for a in np.mgrid[0:7, 0:6])
    want, wcnt = naive.cell_corr_at_offsets(cell, region, oy, ox, 8)
    corr, cnt = _cell_corr_at_offsets(cell + offset, region - offset, oy, ox, 8)
    np.testing.assert_array_equal(cnt, wcnt)
    np.testing.assert_allclose(corr, want, rtol=1e-7, atol=1e-9, equal_nan=True)
    assert np.isfinite(corr).sum() > 20


def test_cell_corr_at_offsets_empty_offsets():
    cell = _image("random", (2, 2), 1)
    region = _image("random", (4, 4), 2)
    corr, cnt = _cell_corr_at_offsets(cell, region, np.zeros(0, np.int64), np.zeros(0, np.int64), 2)
    assert corr.shape == (0,) and cnt.shape == (0,)


# --------------------------------------------------------------------------- bullet kernels: inputs
def _signal(rng, n, nan_frac=0.0, offset=0.0):
    z = rng.normal(size=n).cumsum() * 0.1 + rng.normal(size=n) + offset
    if nan_frac:
        z[rng.random(n) < nan_frac] = np.nan
    return z


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nan_frac", [0.0, 0.2, 0.6])
def test_ccf_at_lags_matches_twin_on_random_and_nan_inputs(seed, nan_frac):
    rng = np.random.default_rng(seed)
    na, nb = int(rng.integers(5, 60)), int(rng.integers(5, 60))
    a = _signal(rng, na, nan_frac, offset=rng.normal() * 100)
    b = _signal(rng, nb, nan_frac)
    lags = np.arange(-(nb + 2), na + 3, dtype=np.int64)       # includes lags with no overlap at all
    min_count = int(rng.integers(0, 8))
    got, gn = _ccf_at_lags(a, b, lags, min_count)
    want, wn = naive.ccf_at_lags(a, b, lags, min_count)
    np.testing.assert_array_equal(gn, wn)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-10, atol=1e-12)


def test_ccf_at_lags_edge_cases():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # identical signals: 1 at lag 0
    c, n = _ccf_at_lags(a, a.copy(), np.array([0], np.int64), 2)
    assert c[0] == pytest.approx(1.0) and n[0] == 5
    # the lag convention: b[j] sits on a[j + lag]
    b = a[2:]                                              # b[0] = a[2]
    c, n = _ccf_at_lags(a, b, np.array([2, 0], np.int64), 2)
    assert c[0] == pytest.approx(1.0) and n[0] == 3
    # constant side -> NaN, count still reported
    c, n = _ccf_at_lags(a, np.full(5, 0.1), np.array([0], np.int64), 2)
    assert np.isnan(c[0]) and n[0] == 5
    # all NaN, empty, single sample
    c, n = _ccf_at_lags(np.full(4, np.nan), a, np.array([0], np.int64), 0)
    assert np.isnan(c[0]) and n[0] == 0
    c, n = _ccf_at_lags(np.empty(0), a, np.array([0, 1], np.int64), 0)
    assert np.isnan(c).all() and (n == 0).all()
    c, n = _ccf_at_lags(a[:1], a[:1], np.array([0], np.int64), 0)
    assert np.isnan(c[0]) and n[0] == 1
    # min_count above the overlap
    c, n = _ccf_at_lags(a, a, np.array([0], np.int64), 6)
    assert np.isnan(c[0]) and n[0] == 5
    # anti-correlated
    c, _ = _ccf_at_lags(a, -a, np.array([0], np.int64), 2)
    assert c[0] == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(4))
def test_ccf_at_lags_min_count_boundary(seed):
    """At every lag: a correlation with min_count = the shared count n, NaN with n + 1 (kernel and twin)."""
    rng = np.random.default_rng(seed)
    a = _signal(rng, 40, 0.3)
    b = _signal(rng, 30, 0.3)
    lags = np.arange(-10, 11, dtype=np.int64)
    _, n = _ccf_at_lags(a, b, lags, 0)
    for k in np.flatnonzero(n >= 2):
        one = lags[k:k + 1]
        for mc, finite in ((int(n[k]), True), (int(n[k]) + 1, False)):
            c, m = _ccf_at_lags(a, b, one, mc)
            wc, wm = naive.ccf_at_lags(a, b, one, mc)
            assert m[0] == wm[0] == n[k] and np.isfinite(c[0]) == finite == np.isfinite(wc[0])
            np.testing.assert_allclose(c, wc, rtol=1e-10, equal_nan=True)


def test_public_correlation_wrappers():
    from ballistic.errors import InputError
    rng = np.random.default_rng(5)
    cell, region = _rand(rng, (3, 4), 0.2), _rand(rng, (7, 8), 0.2)
    oy, ox = np.mgrid[-1:6, -1:6]
    got = corr_at_offsets(cell.tolist(), region, oy, ox, min_count=4)
    want = naive.cell_corr_at_offsets(cell, region, oy.ravel(), ox.ravel(), 4)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, equal_nan=True)
    a, b = _signal(rng, 50, 0.2)[::2], _signal(rng, 20, 0.2)   # a strided view
    got = ccf_at_lags(a, b.tolist(), range(-5, 6))
    want = naive.ccf_at_lags(a, b, np.arange(-5, 6), 2)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10, equal_nan=True)
    with pytest.raises(InputError, match="1-D"):
        ccf_at_lags(region, b, [0])
    with pytest.raises(InputError, match="2-D"):
        corr_at_offsets(cell.ravel(), region, [0], [0])


@pytest.mark.parametrize("seed", range(5))
def test_band_profiles_matches_twin(seed):
    rng = np.random.default_rng(seed)
    ny, nx = int(rng.integers(1, 12)), int(rng.integers(1, 15))
    h = rng.normal(size=(ny, nx)) * 10
    h[rng.random((ny, nx)) < 0.3] = np.nan
    width = int(rng.integers(1, 6))
    starts = np.array(sorted(rng.integers(-3, nx + 2, size=4)), dtype=np.int64)   # partly outside the map
    min_valid = int(rng.integers(0, 4))
    got = _band_profiles(h, starts, width, min_valid)
    want = naive.band_profiles(h, starts, width, min_valid)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)


def test_band_profiles_edge_cases():
    h = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    got = _band_profiles(h, np.array([0, 5], np.int64), 3, 1)
    np.testing.assert_allclose(got[0], [2.0, np.nan])
    assert np.isnan(got[1]).all()                    # band entirely outside the map
    got = _band_profiles(h, np.array([0], np.int64), 3, 3)   # needs 3 finite values: none has
    assert np.isnan(got).all()
