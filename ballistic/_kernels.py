"""Private numba kernels. Call them only through the validating wrappers in
:mod:`ballistic.preprocess` and :mod:`ballistic.compare`.

Each kernel has a slow pure-numpy twin in ``tests/test_kernels.py`` and is
compared against it, NaN and edge inputs included. Conventions:

* arrays are C-contiguous float64; NaN marks a missing height;
* coordinates are (row, col) = (y, x) in pixels, angles in radians,
  counter-clockwise as seen on the image with row 0 at the top.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_NB = dict(nogil=True, cache=True, fastmath=False)


@nb.njit(**_NB)
def warp_rotate(img, angle, cy, cx, out_ny, out_nx, ocy, ocx, ty, tx):
    """Rotate ``img`` by ``angle`` about (cy, cx) and place it so that point lands at
    (ocy + ty, ocx + tx) of an (out_ny, out_nx) output. Bilinear; an output pixel is
    NaN when it falls outside ``img`` or any neighbour that carries weight is NaN.

    The output pixel (r, c) samples the input at
    ``R(-angle) @ ((r, c) - (ocy + ty, ocx + tx)) + (cy, cx)``.
    """
    ny, nx = img.shape
    out = np.empty((out_ny, out_nx), dtype=np.float64)
    ca = math.cos(angle)
    sa = math.sin(angle)
    for r in range(out_ny):
        dy = r - (ocy + ty)
        for c in range(out_nx):
            dx = c - (ocx + tx)
            # inverse rotation R(-angle); R(angle) turns counter-clockwise as displayed:
            # R(a) (dy, dx) = (cos a dy - sin a dx, sin a dy + cos a dx) with rows pointing down
            sy = cy + ca * dy + sa * dx
            sx = cx - sa * dy + ca * dx
            y0 = math.floor(sy)
            x0 = math.floor(sx)
            fy = sy - y0
            fx = sx - x0
            if y0 < -1 or x0 < -1 or y0 >= ny or x0 >= nx:
                out[r, c] = np.nan
                continue
            acc = 0.0
            ok = True
            for k in range(4):
                yy = y0 + (k >> 1)
                xx = x0 + (k & 1)
                w = (fy if (k >> 1) else 1.0 - fy) * (fx if (k & 1) else 1.0 - fx)
                if w <= 1e-12:
                    continue
                if yy < 0 or xx < 0 or yy >= ny or xx >= nx:
                    ok = False
                    break
                v = img[yy, xx]
                if v != v:
                    ok = False
                    break
                acc += w * v
            out[r, c] = acc if ok else np.nan
    return out


@nb.njit(**_NB)
def pairwise_complete_corr(a, b, min_count):
    """Pearson correlation of two same-shape arrays over the pixels finite in both.

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


@nb.njit(**_NB)
def cell_corr_at_offsets(cell, region, oy, ox, min_count):
    """Pairwise-complete correlation of ``cell`` with the window of ``region`` whose
    top-left corner is (oy[k], ox[k]), for each k. Windows that leave ``region`` are
    NaN. Returns (corr[k], n[k]).
    """
    ch, cw = cell.shape
    rh, rw = region.shape
    K = oy.shape[0]
    out = np.full(K, np.nan)
    cnt = np.zeros(K, dtype=np.int64)
    for k in range(K):
        y0 = oy[k]
        x0 = ox[k]
        if y0 < 0 or x0 < 0 or y0 + ch > rh or x0 + cw > rw:
            continue
        c, n = pairwise_complete_corr(cell, region[y0:y0 + ch, x0:x0 + cw], min_count)
        out[k] = c
        cnt[k] = n
    return out, cnt
