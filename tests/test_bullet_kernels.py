"""The numba kernels of :mod:`ballistic._bullet_kernels` against slow pure-numpy twins.

Each twin is written from the kernel's docstring, not from its code: plain loops
over small arrays, so that it is obviously right.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from ballistic import _bullet_kernels as K

# --------------------------------------------------------------------------- twins


def twin_ccf_at_lags(a, b, lags, min_count):
    """Pearson of a[i] and b[i - lag] over the i where both exist and are finite;
    NaN for fewer than max(min_count, 2) pairs or a constant side (exact test)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.full(len(lags), np.nan)
    cnt = np.zeros(len(lags), dtype=np.int64)
    for k, lag in enumerate(lags):
        xs, ys = [], []
        for i in range(len(a)):
            j = i - lag
            if 0 <= j < len(b) and np.isfinite(a[i]) and np.isfinite(b[j]):
                xs.append(a[i])
                ys.append(b[j])
        cnt[k] = len(xs)
        if len(xs) < max(min_count, 2):
            continue
        x, y = np.array(xs), np.array(ys)
        if np.all(x == x[0]) or np.all(y == y[0]):
            continue
        x = x - x.mean()
        y = y - y.mean()
        out[k] = float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y)))
    return out, cnt


def twin_band_profiles(heights, starts, width, min_valid):
    """Mean over the finite values of each row of columns starts[k]..starts[k]+width-1
    (clipped); NaN when fewer than max(min_valid, 1) finite values."""
    h = np.asarray(heights, dtype=np.float64)
    ny, nx = h.shape
    out = np.full((len(starts), ny), np.nan)
    for k, s in enumerate(starts):
        cols = [c for c in range(s, s + width) if 0 <= c < nx]
        for r in range(ny):
            vals = [h[r, c] for c in cols if np.isfinite(h[r, c])]
            if len(vals) >= max(min_valid, 1):
                out[k, r] = sum(vals) / len(vals)
    return out


# --------------------------------------------------------------------------- inputs
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
    got, gn = K.ccf_at_lags(a, b, lags, min_count)
    want, wn = twin_ccf_at_lags(a, b, lags, min_count)
    np.testing.assert_array_equal(gn, wn)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-10, atol=1e-12)


def test_ccf_at_lags_edge_cases():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # identical signals: 1 at lag 0
    c, n = K.ccf_at_lags(a, a.copy(), np.array([0], np.int64), 2)
    assert c[0] == pytest.approx(1.0) and n[0] == 5
    # the lag convention: b[j] sits on a[j + lag]
    b = a[2:]                                              # b[0] = a[2]
    c, n = K.ccf_at_lags(a, b, np.array([2, 0], np.int64), 2)
    assert c[0] == pytest.approx(1.0) and n[0] == 3
    # constant side -> NaN, count still reported
    c, n = K.ccf_at_lags(a, np.full(5, 0.1), np.array([0], np.int64), 2)
    assert np.isnan(c[0]) and n[0] == 5
    # all NaN, empty, single sample
    c, n = K.ccf_at_lags(np.full(4, np.nan), a, np.array([0], np.int64), 0)
    assert np.isnan(c[0]) and n[0] == 0
    c, n = K.ccf_at_lags(np.empty(0), a, np.array([0, 1], np.int64), 0)
    assert np.isnan(c).all() and (n == 0).all()
    c, n = K.ccf_at_lags(a[:1], a[:1], np.array([0], np.int64), 0)
    assert np.isnan(c[0]) and n[0] == 1
    # min_count above the overlap
    c, n = K.ccf_at_lags(a, a, np.array([0], np.int64), 6)
    assert np.isnan(c[0]) and n[0] == 5
    # anti-correlated
    c, _ = K.ccf_at_lags(a, -a, np.array([0], np.int64), 2)
    assert c[0] == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(5))
def test_band_profiles_matches_twin(seed):
    rng = np.random.default_rng(seed)
    ny, nx = int(rng.integers(1, 12)), int(rng.integers(1, 15))
    h = rng.normal(size=(ny, nx)) * 10
    h[rng.random((ny, nx)) < 0.3] = np.nan
    width = int(rng.integers(1, 6))
    starts = np.array(sorted(rng.integers(-3, nx + 2, size=4)), dtype=np.int64)   # partly outside the map
    min_valid = int(rng.integers(0, 4))
    got = K.band_profiles(h, starts, width, min_valid)
    want = twin_band_profiles(h, starts, width, min_valid)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12)


def test_band_profiles_edge_cases():
    h = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, np.nan]])
    got = K.band_profiles(h, np.array([0, 5], np.int64), 3, 1)
    np.testing.assert_allclose(got[0], [2.0, np.nan])
    assert np.isnan(got[1]).all()                    # band entirely outside the map
    got = K.band_profiles(h, np.array([0], np.int64), 3, 3)   # needs 3 finite values: none has
    assert np.isnan(got).all()
