"""Private numba kernels for bullet land signatures. Call them only through the
validating wrappers in :mod:`ballistic.bullet`.

Each kernel has a slow pure-numpy twin in ``tests/test_bullet_kernels.py`` and is
compared against it, NaN and edge inputs included. Conventions:

* arrays are C-contiguous 1-D float64; NaN marks a missing height;
* a lag ``L`` (integer samples) pairs ``a[i]`` with ``b[i - L]``, i.e. sample
  ``j`` of ``b`` sits on sample ``j + L`` of ``a``.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_NB = dict(nogil=True, cache=True, fastmath=False)


@nb.njit(**_NB)
def ccf_at_lags(a, b, lags, min_count):
    """Pearson correlation of ``a[i]`` and ``b[i - lags[k]]`` over the ``i`` where both
    exist and are finite, for each k (pairwise-complete cross-correlation).

    Returns (corr[k], n[k]). corr is NaN when fewer than ``max(min_count, 2)``
    pairs are shared or either side is constant over them (to the rounding of
    its mean: sum of squared deviations <= 1e-12 * sum of squares).
    """
    na = a.shape[0]
    nb_ = b.shape[0]
    K = lags.shape[0]
    out = np.full(K, np.nan)
    cnt = np.zeros(K, dtype=np.int64)
    for k in range(K):
        lag = lags[k]
        i0 = max(0, lag)
        i1 = min(na, nb_ + lag)
        n = 0
        sa = 0.0
        sb = 0.0
        for i in range(i0, i1):
            x = a[i]
            y = b[i - lag]
            if x == x and y == y:
                n += 1
                sa += x
                sb += y
        cnt[k] = n
        if n < min_count or n < 2:
            continue
        ma = sa / n
        mb = sb / n
        sab = 0.0
        saa = 0.0
        sbb = 0.0
        qa = 0.0
        qb = 0.0
        for i in range(i0, i1):
            x = a[i]
            y = b[i - lag]
            if x == x and y == y:
                dx = x - ma
                dy = y - mb
                sab += dx * dy
                saa += dx * dx
                sbb += dy * dy
                qa += x * x
                qb += y * y
        if saa <= 1e-12 * qa or sbb <= 1e-12 * qb or saa <= 0.0 or sbb <= 0.0:
            continue
        out[k] = sab / math.sqrt(saa * sbb)
    return out, cnt


@nb.njit(**_NB)
def band_profiles(heights, starts, width, min_valid):
    """Column-band means of a (ny, nx) height map: for each k the mean over the
    columns ``starts[k] .. starts[k] + width - 1`` (clipped to the map) of every
    row, over the finite values only.

    Returns an array (K, ny); an entry is NaN when fewer than
    ``max(min_valid, 1)`` finite values fall in its row of the band.
    """
    ny, nx = heights.shape
    K = starts.shape[0]
    out = np.full((K, ny), np.nan)
    for k in range(K):
        c0 = max(0, starts[k])
        c1 = min(nx, starts[k] + width)
        for r in range(ny):
            s = 0.0
            n = 0
            for c in range(c0, c1):
                v = heights[r, c]
                if v == v:
                    s += v
                    n += 1
            if n >= min_valid and n >= 1:
                out[k, r] = s / n
    return out
