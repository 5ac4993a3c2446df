"""Slow pure-numpy twins of the library's fast code (the stumpy convention: one ``naive`` module).

Every numba kernel of :mod:`ballistic` (private, beside the public function that wraps it) has
a twin here, written from the kernel's docstring, not from its code: plain Python loops over
small arrays, so that it is obviously right. ``tests/test_kernels.py`` compares each kernel
with its twin, NaN and edge inputs included (empty overlap, all-NaN, constant, the
``min_count`` boundary). Twins of vectorised numpy code (masked NCC by FFT) live here too.

==========================  ======================================================
twin                        fast code
==========================  ======================================================
:func:`warp_rotate`         ``ballistic.preprocess.filters._warp_rotate``
:func:`pairwise_complete_corr`  ``ballistic.stats.correlation._pairwise_complete_corr``
:func:`cell_corr_at_offsets`  ``ballistic.stats.correlation._cell_corr_at_offsets``
:func:`ccf_at_lags`         ``ballistic.bullet.align._ccf_at_lags``
:func:`band_profiles`       ``ballistic.bullet.crosscut._band_profiles``
:func:`masked_ncc`          ``ballistic.cartridge.cmc.register.masked_ncc`` (FFT)
==========================  ======================================================
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["rot", "warp_rotate", "pairwise_complete_corr", "cell_corr_at_offsets", "ccf_at_lags", "band_profiles",
           "pearson", "masked_ncc"]

_W_EPS = 1e-9  # a bilinear weight below this carries no weight (float noise at 90 degrees)


def rot(theta: float) -> np.ndarray:
    """Rotation matrix acting on (row, col) vectors; counter-clockwise as displayed
    (row 0 on top) for theta > 0: (0, 1) (right) goes to (-1, 0) (up) at 90 degrees."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def warp_rotate(img, angle, cy, cx, out_ny, out_nx, ocy, ocx, ty, tx):
    """Output pixel p samples the input bilinearly at ``R(-angle) @ (p - (oc + t)) + c``; NaN when
    it falls outside or a neighbour that carries weight is NaN."""
    img = np.asarray(img, dtype=np.float64)
    ny, nx = img.shape
    M = rot(-angle)
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


def pairwise_complete_corr(a, b, min_count):
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


def cell_corr_at_offsets(cell, region, oy, ox, min_count):
    """:func:`pairwise_complete_corr` of ``cell`` with each window of ``region`` at (oy[k], ox[k]);
    NaN and count 0 for a window that leaves ``region``."""
    ch, cw = cell.shape
    rh, rw = region.shape
    corr = np.full(len(oy), np.nan)
    cnt = np.zeros(len(oy), dtype=np.int64)
    for k, (y0, x0) in enumerate(zip(oy, ox)):
        if y0 < 0 or x0 < 0 or y0 + ch > rh or x0 + cw > rw:
            continue
        corr[k], cnt[k] = pairwise_complete_corr(cell, region[y0:y0 + ch, x0:x0 + cw], min_count)
    return corr, cnt


def ccf_at_lags(a, b, lags, min_count):
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


def band_profiles(heights, starts, width, min_valid):
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


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson of two 1-D samples; NaN for fewer than 2 or a constant side."""
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return np.nan
    x = x - x.mean()
    y = y - y.mean()
    return float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y)))


def masked_ncc(fixed, moving, min_overlap, shifts=None, centred=True):
    """For every shift d: Pearson of fixed[q + d] with moving[q] over the q valid in both
    (``centred=False``: sum(f g) / sqrt(sum(f^2) sum(g^2)) over them, NaN where a side is all zero)."""
    Hf, Wf = fixed.shape
    Hm, Wm = moving.shape
    if shifts is None:
        shifts = (-(Hm - 1), Hf - 1, -(Wm - 1), Wf - 1)
    y0, y1, x0, x1 = shifts
    ncc = np.full((y1 - y0 + 1, x1 - x0 + 1), np.nan)
    cnt = np.zeros(ncc.shape, dtype=np.int64)
    for i, dy in enumerate(range(y0, y1 + 1)):
        for j, dx in enumerate(range(x0, x1 + 1)):
            xs, ys = [], []
            for qy in range(Hm):
                for qx in range(Wm):
                    fy, fx = qy + dy, qx + dx
                    if not (0 <= fy < Hf and 0 <= fx < Wf):
                        continue
                    f, m = fixed[fy, fx], moving[qy, qx]
                    if np.isfinite(f) and np.isfinite(m):
                        xs.append(f)
                        ys.append(m)
            cnt[i, j] = len(xs)
            if len(xs) >= max(min_overlap, 2):
                x, y = np.array(xs), np.array(ys)
                if centred:
                    ncc[i, j] = pearson(x, y)
                elif np.any(x != 0) and np.any(y != 0):
                    ncc[i, j] = float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y)))
    return ncc, cnt


def rotation_similarity(query, candidates, mirror, n_angles):
    """Twin of :func:`ballistic.retrieval.polar_phase.rotation_similarity`: every candidate turned by each
    angle (harmonic m times exp(-i m a)), and mirrored (conjugated), scored by the real inner product in a loop."""
    Q = np.asarray(query)
    m = np.arange(1, Q.shape[1] + 1)
    out = []
    for C in np.asarray(candidates):
        best = (-np.inf, 0.0, False)
        for flip in ((False, True) if mirror else (False,)):
            D = np.conj(C) if flip else C
            for k in range(n_angles):
                a = 2 * np.pi * k / n_angles
                v = float(np.real(np.sum(Q * np.conj(D * np.exp(-1j * m * a)[None, :]))))
                if v > best[0] + 1e-12:
                    best = (v, 360.0 * k / n_angles, flip)
        out.append(best)
    return out


def rotation_scan(query, stored, k, n_harmonics, n_rotations, mirror, variants=(), variant_k=None):
    """Twin of :func:`ballistic.retrieval.polar_phase.rotation_scan`: every rotated (and mirrored) copy of the
    query built one by one, every stored vector scored by each copy's inner product (float64), its best copy
    kept (the first on ties, NaN never best); then the ``variant_k`` best (all without it) scored
    by every copy of every variant in turn, a copy replacing the best only when strictly better; the k best
    returned by score then position."""
    def copies_of(query):
        q = np.asarray(query, dtype=np.float64)
        Q = (q[0::2] + 1j * q[1::2]).reshape(-1, n_harmonics)
        m = np.arange(1, n_harmonics + 1)
        copies = []
        for flip in ((False, True) if mirror else (False,)):
            for j in range(n_rotations):
                c = Q * np.exp(1j * m * 2 * np.pi * j / n_rotations)[None, :]
                c = np.conj(c) if flip else c
                copies.append(np.stack([c.real, c.imag], axis=-1).ravel())
        return copies

    X = np.asarray(stored, dtype=np.float64)
    best = np.full(len(X), -np.inf)
    row = np.zeros(len(X), dtype=np.int64)
    plain = copies_of(query)
    for i, x in enumerate(X):
        if not np.isfinite(x).all():
            continue
        for j, c in enumerate(plain):
            v = float(np.dot(c, x))
            if v > best[i]:
                best[i], row[i] = v, j
    if len(variants):
        m1 = len(X) if variant_k is None else min(len(X), variant_k)
        chosen = [i for i in sorted(range(len(X)), key=lambda i: (-best[i], i))[:m1] if np.isfinite(best[i])]
        for v in variants:
            for j, c in enumerate(copies_of(v)):
                for i in chosen:
                    s = float(np.dot(c, X[i]))
                    if s > best[i]:
                        best[i], row[i] = s, j
    order = sorted(range(len(X)), key=lambda i: (-best[i], i))
    order = [i for i in order if np.isfinite(best[i])][:k]
    return best[order], np.asarray(order, dtype=np.int64), row[order]
