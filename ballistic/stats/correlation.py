"""Pairwise-complete (NaN-aware) Pearson correlation: the one accumulator behind every correlation score.

A point missing (NaN) in either array is left out; the correlation is taken over the
points measured in both. This is the cell score of the CMC comparison
(:func:`ballistic.cartridge.cmc.cells.compare_cells`), the direct search of the fine
registration (:func:`ballistic.cartridge.cmc.register.local_search`) and the bullet
cross-correlation function (:func:`ballistic.bullet.align.align_signatures`): their
numba kernels all call :func:`_pairwise_complete_corr`.

The kernel is private: call it through :func:`pairwise_complete_corr` (or the functions
above). Its slow pure-numpy twin is in ``tests/naive.py``.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from ballistic.errors import InputError

__all__ = ["pairwise_complete_corr"]

_NB = dict(nogil=True, cache=True, fastmath=False)


def pairwise_complete_corr(a, b, *, min_count: int = 2) -> tuple[float, int]:
    """Pearson correlation of two same-shape arrays over the points finite in both.

    Parameters
    ----------
    a, b : array_like, same shape (1-D or 2-D)
        Values (e.g. heights in um); NaN = missing.
    min_count : int, keyword-only
        Fewest shared points for a correlation (at least 2 are always needed).

    Returns
    -------
    corr : float
        In [-1, 1]; NaN when fewer than ``max(min_count, 2)`` points are shared or
        either side is constant over them (to the rounding of its mean: sum of
        squared deviations <= 1e-12 * sum of squares).
    n : int
        Number of shared points.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim not in (1, 2):
        raise InputError(f"pairwise_complete_corr: need two 1-D or 2-D arrays of one shape, got {x.shape} and "
                         f"{y.shape}")
    if x.ndim == 1:
        x, y = x[None, :], y[None, :]
    c, n = _pairwise_complete_corr(np.ascontiguousarray(x), np.ascontiguousarray(y), int(min_count))
    return float(c), int(n)


@nb.njit(**_NB)
def _pairwise_complete_corr(a, b, min_count):
    """Pearson correlation of two same-shape 2-D float64 arrays (views allowed) over the points
    finite in both.

    Returns (corr, n). corr is NaN when fewer than ``min_count`` pixels are
    shared or either side has zero variance there.
    """
    n = 0
    sa = 0.0
    sb = 0.0
    qa = 0.0
    qb = 0.0
    ny, nx = a.shape
    for i in range(ny):
        for j in range(nx):
            x = a[i, j]
            y = b[i, j]
            if x == x and y == y:
                n += 1
                sa += x
                sb += y
                qa += x * x
                qb += y * y
    if n < min_count or n < 2:
        return np.nan, n
    ma = sa / n
    mb = sb / n
    sab = 0.0
    saa = 0.0
    sbb = 0.0
    for i in range(ny):
        for j in range(nx):
            x = a[i, j]
            y = b[i, j]
            if x == x and y == y:
                dx = x - ma
                dy = y - mb
                sab += dx * dy
                saa += dx * dx
                sbb += dy * dy
    # zero variance, up to the rounding of the mean (a constant 0.1 leaves ~1e-17)
    if saa <= 1e-12 * qa or sbb <= 1e-12 * qb or saa <= 0.0 or sbb <= 0.0:
        return np.nan, n
    return sab / math.sqrt(saa * sbb), n
