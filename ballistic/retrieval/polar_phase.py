"""Rotation-searched polar descriptor of breech faces ("bf-polar-phase/1"): the phases kept, the rotation searched.

The polar-FFT descriptor (:func:`~ballistic.retrieval.descriptor.breech_face_descriptor`) keeps the power of
each ring's angular harmonics. Power is rotation-invariant, but it discards the phases: where along a ring
each mark lies, and how the rings line up with one another. Two scans of one breech face share those; two
breech faces of one make share much of the power. This descriptor keeps the phases and searches the rotation
instead of discarding it:

1. the same polar sampling (:func:`~ballistic.retrieval.descriptor.ring_spectra`), but about the firing-pin
   aperture (:func:`~ballistic.retrieval.descriptor.polar_centre`; the outer edge where no aperture is found):
   phases need a centre that sits at the same place of the breech face at every firing, and the primer's outer
   edge moves with the cartridge (about the outer edge, recall@10 of the mates within Fadul was 0.948 / 0.929 in
   two rotation draws, within DFSC 0.897 / 0.824; about the aperture 1.000 / 0.988 and 1.000 / 0.985);
2. per radial band the *sum* of its rings' complex harmonics ``1..n_harmonics`` (the band's mean profile
   along the circle, phases kept; a small centre error blurs it less than it blurs single rings), bands with
   too few measured samples zero, each band scaled to unit norm, the whole to unit norm
   (:func:`polar_phase_coefficients`);
3. a rotation of a surface by ``a`` multiplies harmonic ``m`` by ``exp(-i m a)``, its mirror image
   (rows reversed) conjugates every harmonic, so two scans are compared by the largest real inner product
   of their coefficients over the rotations and the mirror image (:func:`rotation_similarity`, every
   ``360 / n_angles`` degrees by one FFT over the harmonics).

In an inner-product index (FAISS) a scan is stored as its coefficients' real and imaginary parts
(:class:`PolarPhaseDescriptor`, ``dim = 2 n_bands n_harmonics``); a query is expanded into its rotated and
mirrored copies (:meth:`PolarPhaseDescriptor.query_vectors`) and a candidate's score is the best inner product
of any copy with it - the same value :func:`rotation_similarity` gives at that angle step.
:class:`~ballistic.retrieval.search.Retriever` does the expansion for every descriptor that has
``query_vectors``. The row a candidate scored best with names its pose onto the query
(:meth:`PolarPhaseDescriptor.row_pose`: rotation and parity as a registration states them), which the later
stages may search near instead of the full circle (``RetrievalParams.pose_window_deg``).

Nothing is fitted: the bands, harmonics and sampling are the polar-FFT descriptor's own; 128 rotations (2.8
degrees) found the same mates as 512 on the real sets. It is the default descriptor
(:data:`~ballistic.retrieval.registry.DEFAULT_DESCRIPTOR`). Measured with ``ballistic bench retrieval DIR
--labels CSV --descriptor phase,polar --faiss-only --distractors 0,1000,10000 --factory Flat``
(``benchmarks/results/retrieval_phase_*.json``), FAISS-stage recall of the mates, rotation draw 0: 40 Fadul
queries among the 39 other Fadul scans @10 1.000 (polar-FFT 0.850 PCA-whitened, 0.706 raw), among 10 000
synthetic distractors @10 0.988, @100 0.994 (0.606, 0.848); 17 DFSC queries 1.000 (0.956) and 0.706, 0.868
(0.382, 0.471). A query is 256 copies; where the index holds the vectors as stored (``Flat``, ``SQfp16``) the
copies are not searched one by one: :func:`rotation_scan` scores every stored vector by its best copy from one
cross-spectrum and one FFT over the angles (:meth:`PolarPhaseDescriptor.scan`, called by the index), the same
answer in 0.077 s instead of 0.43 s among 10^5 vectors on 2 cores, 0.70 s instead of 4.4 s among 10^6, and from an
``SQfp16`` index (half precision, half the memory) 0.88 s (``python benchmarks/bench_rotation_scan.py``). HNSW and
IVF search the copies row by row and lose hard mates (a mate is no near-duplicate of any copy), fewer rotations or
harmonics lose mates, and 256 or 512 rotations found no more of them among 10^5 (README, "The descriptor's pose
narrows the later stages").

The grid's centre is the aperture's as found on each scan, and two scans of one breech face find it up to 25-50 um
apart, which turns harmonic ``m`` of a ring of radius ``r`` by about ``m d / r``. A query is therefore also
described about the other points of a 5 x 5 grid 25 um apart (:meth:`PolarPhaseDescriptor.query_variants`;
``jitter_um``, ``jitter_steps``), and the scan re-scores the stored vectors the plain query scores best
(``jitter_share``, 5 %, at least 1000) with every variant (:func:`rotation_scan` ``variants``): among 10^5
distractors FAISS-stage recall@100 of the mates 0.988 -> 1.000 (Fadul), 0.721 -> 0.868 (DFSC), rotation draw 0,
for 0.19 s instead of 0.09 s (README, "The query is described about nearby centres too").
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np
import scipy.fft

from ballistic.errors import DescriptorError
from ballistic.retrieval.descriptor import (_N_BANDS, _N_HARMONICS, _N_THETA, _R_MAX_UM, _check_polar_settings,
                                            radial_bands, ring_spectra, unit_bands)
from ballistic.surface import Surface

__all__ = ["PHASE_DESCRIPTOR_VERSION", "polar_phase_coefficients", "rotation_similarity", "rotation_scan",
           "PolarPhaseDescriptor"]

PHASE_DESCRIPTOR_VERSION = "bf-polar-phase/1"


def polar_phase_coefficients(surface: Surface, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS,
                             n_harmonics: int = _N_HARMONICS, n_theta: int = _N_THETA, r_max_um: float = _R_MAX_UM,
                             min_valid: float = 0.1, centre: str = "aperture",
                             offsets_um: np.ndarray | None = None) -> np.ndarray:
    """Complex angular harmonics of each radial band of a breech face, phases kept.

    Parameters
    ----------
    surface : Surface
        Output of :func:`ballistic.cartridge.breech_face.preprocess_cartridge` (heights um, NaN outside the
        breech face), any orientation.
    spacing_um, n_bands, n_harmonics, n_theta, r_max_um, min_valid : keyword-only
        As :func:`~ballistic.retrieval.descriptor.breech_face_descriptor` (the same defaults).
    centre : {"aperture", "annulus"}, keyword-only
        Centre of the polar grid (:func:`~ballistic.retrieval.descriptor.ring_spectra`).
    offsets_um : array_like of float, shape (n_offsets, 2), optional, keyword-only
        Describe the surface about each of these centres instead: ``(down, right)`` um from the one found
        (:func:`~ballistic.retrieval.descriptor.ring_spectra`); offset ``(0, 0)`` gives the plain coefficients.

    Returns
    -------
    ndarray of complex128, shape (n_bands, n_harmonics), or (n_offsets, n_bands, n_harmonics)
        Harmonic ``m = 1..n_harmonics`` of band ``b`` (the sum over its rings); each band with enough measured
        samples has unit norm, the others are zero; the whole has unit norm.

    Raises
    ------
    DescriptorError
        Bad settings, too few measured points, or no band measured well enough.
    """
    _check_polar_settings(spacing_um=spacing_um, r_max_um=r_max_um, n_harmonics=n_harmonics, n_theta=n_theta,
                          n_bands=n_bands)
    spec, cnt = ring_spectra(surface, spacing_um=spacing_um, n_theta=n_theta, r_max_um=r_max_um, centre=centre,
                             offsets_um=offsets_um)
    if offsets_um is None:
        return _band_coefficients(spec, cnt, n_bands=n_bands, n_harmonics=n_harmonics, n_theta=n_theta,
                                  min_valid=min_valid, r_max_um=r_max_um)
    return np.stack([_band_coefficients(sp, c, n_bands=n_bands, n_harmonics=n_harmonics, n_theta=n_theta,
                                        min_valid=min_valid, r_max_um=r_max_um) for sp, c in zip(spec, cnt)])


def _band_coefficients(spec, cnt, *, n_bands, n_harmonics, n_theta, min_valid, r_max_um) -> np.ndarray:
    band_of, measured = radial_bands(cnt, n_bands=n_bands, n_theta=n_theta)
    C = np.zeros((n_bands, n_harmonics), dtype=np.complex128)
    np.add.at(C, band_of, spec[:, 1:n_harmonics + 1])
    unit_bands(C, measured, min_valid=min_valid, r_max_um=r_max_um, what="polar_phase_coefficients")
    return C / np.linalg.norm(C)


def _as_coefficients(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim < 2 or not np.iscomplexobj(a):
        raise DescriptorError(f"rotation_similarity: {what} must be complex coefficients of shape (..., n_bands, "
                              f"n_harmonics) (polar_phase_coefficients), got {a.dtype} {a.shape}")
    return a


def rotation_similarity(query: np.ndarray, candidates: np.ndarray, *, mirror: bool = True,
                        n_angles: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest inner product of two breech faces' coefficients over rotations (and the mirror image).

    ``S(a) = Re sum_b sum_m Q[b, m] conj(C[b, m] exp(-i m a))`` is the inner product of the query with the
    candidate rotated by ``a`` (counter-clockwise as displayed); it is evaluated at ``a = 360 k / n_angles``
    degrees by one inverse FFT over the harmonics, and with ``mirror`` for the candidate's mirror image too.

    Parameters
    ----------
    query : ndarray of complex, shape (n_bands, n_harmonics)
        :func:`polar_phase_coefficients` of the query.
    candidates : ndarray of complex, shape (n, n_bands, n_harmonics) or (n_bands, n_harmonics)
        The same of each candidate.
    mirror : bool, keyword-only
        Also try each candidate's mirror image (x3p exporters disagree on the direction of the y axis).
    n_angles : int, keyword-only
        Rotations searched over the circle; must exceed ``n_harmonics``.

    Returns
    -------
    score : ndarray of float, shape (n,)
        The largest ``S`` (in [-1, 1] for unit-norm coefficients).
    angle_deg : ndarray of float, shape (n,)
        The rotation of the candidate (degrees, counter-clockwise as displayed, in [0, 360)) that gives it.
    mirrored : ndarray of bool, shape (n,)
        True where the candidate's mirror image (rows reversed) scored best.
    """
    Q = _as_coefficients(query, "query")
    C = _as_coefficients(candidates, "candidates")
    single = C.ndim == 2
    C = C[None] if single else C
    if Q.shape != C.shape[1:]:
        raise DescriptorError(f"rotation_similarity: query {Q.shape} and candidates {C.shape[1:]} differ in "
                              "(n_bands, n_harmonics); describe both with the same settings")
    n_h = Q.shape[1]
    if int(n_angles) <= n_h:
        raise DescriptorError(f"rotation_similarity: n_angles ({n_angles}) must exceed the harmonics ({n_h})")
    best, angle, flip = _rotation_max(Q, C, int(n_angles), bool(mirror))
    if single:
        return best[:1], angle[:1], flip[:1]
    return best, angle, flip


def _rotation_max(Q: np.ndarray, C: np.ndarray, n_angles: int, mirror: bool):
    """Per candidate: max over the sampled rotations (and the mirror) of S, its angle and parity."""
    n_h = Q.shape[1]
    full = np.zeros((C.shape[0], n_angles), dtype=np.complex128)
    best = np.full(C.shape[0], -np.inf)
    angle = np.zeros(C.shape[0])
    flip = np.zeros(C.shape[0], dtype=bool)
    for parity in ((False, True) if mirror else (False,)):
        # the mirror image's coefficients are conj(C): Q conj(conj(C)) = Q C
        full[:, 1:n_h + 1] = np.einsum("bm,nbm->nm", Q, C if parity else np.conj(C))
        S = np.fft.ifft(full, axis=1).real * n_angles
        k = S.argmax(axis=1)
        v = S[np.arange(len(k)), k]
        better = v > best
        best = np.where(better, v, best)
        angle = np.where(better, k * (360.0 / n_angles), angle)
        flip = np.where(better, parity, flip)
    return best, angle, flip


def rotation_scan(query: np.ndarray, stored: np.ndarray, k: int, *, n_harmonics: int = _N_HARMONICS,
                  n_rotations: int = 128, mirror: bool = True, chunk: int = 4096, threads: int | None = None,
                  variants: np.ndarray | None = None, variant_k: int | None = None):
    """The ``k`` stored vectors with the largest rotation-searched inner product with ``query``: the exact
    answer of an inner-product search with every rotated (and mirrored) copy of the query, each stored vector
    scored by its best copy, for a small part of the arithmetic.

    Searching the ``R = n_rotations`` copies (``2 R`` with ``mirror``) of :meth:`PolarPhaseDescriptor.query_vectors`
    costs ``2 R dim`` multiply-adds per stored vector. Every copy is the query with harmonic ``m`` turned by
    ``exp(i m a)``, so per stored vector the cross-spectra ``c_m = sum_b Q[b, m] conj(D[b, m])`` (the plain
    copies) and ``c'_m = sum_b Q D`` (the mirror images) are formed once (``2 dim`` multiply-adds), and all
    ``2 R`` scores ``Re sum_m c_m exp(i m a_k)``, ``Re sum_m c'_m exp(i m a_k)`` come out of one complex FFT of
    length ``R`` (``c`` in its real part, ``c'`` in its imaginary part, each as a Hermitian spectrum).

    Parameters
    ----------
    query : ndarray of float, shape (dim,)
        The query in the stored format of :class:`PolarPhaseDescriptor` (real and imaginary parts of
        ``(n_bands, n_harmonics)`` coefficients interleaved, ``dim = 2 n_bands n_harmonics``); finite.
    stored : ndarray of float32 or float16, shape (n, dim)
        Stored vectors in the same format, finite as an index holds them (a row with NaN or infinity is never
        returned; float16 as a FAISS ``SQfp16`` index keeps them, half the memory, decoded row by row). Read
        in blocks, never copied whole, never changed.
    k : int
        Results wanted (fewer when ``n < k``).
    n_harmonics, n_rotations, mirror : keyword-only
        The descriptor's settings (:class:`PolarPhaseDescriptor`).
    chunk : int, keyword-only
        Stored vectors scored per block (memory ``~ 4 chunk n_rotations`` floats per thread).
    threads : int, optional, keyword-only
        Blocks scored at once (default: the CPUs this process may use).
    variants : ndarray of float, shape (n_variants, dim), optional, keyword-only
        Other vectors of the same query (the scan described about nearby centres:
        :meth:`PolarPhaseDescriptor.query_variants`): the ``variant_k`` stored vectors that ``query`` scores best
        are scored by every variant's copies too, and keep their best score over all.
    variant_k : int, optional, keyword-only
        How many stored vectors the variants score (default: all). Fewer than ``k`` leaves the rest of the ``k``
        returned with the plain query's scores.

    Returns
    -------
    scores : ndarray of float32, shape (m,)
        Best inner product of any query copy (of any variant, for the vectors the variants scored) with each
        returned vector, highest first (ties by position).
    positions : ndarray of int64, shape (m,)
        Row numbers in ``stored``; ``m = min(k, n)`` less any row that is not finite.
    rows : ndarray of int64, shape (m,)
        The query copy that scored best (the row of :meth:`PolarPhaseDescriptor.query_vectors`:
        ``j`` = rotation ``360 j / R`` degrees, ``R + j`` its mirror image), for
        :meth:`PolarPhaseDescriptor.row_pose`.

    Raises
    ------
    DescriptorError
        Shapes that do not fit the settings, a non-finite query, or ``k < 1``.
    """
    q = np.asarray(query, dtype=np.float64)
    X = np.asarray(stored)
    nh, R = int(n_harmonics), int(n_rotations)
    if nh < 1 or R <= nh:
        raise DescriptorError(f"rotation_scan: n_rotations ({R}) must exceed n_harmonics ({nh}) >= 1")
    if q.ndim != 1 or q.size == 0 or q.size % (2 * nh):
        raise DescriptorError(f"rotation_scan: query must be one vector of 2 n_bands n_harmonics values "
                              f"(n_harmonics={nh}), got shape {q.shape}")
    if X.ndim != 2 or X.shape[1] != q.size:
        raise DescriptorError(f"rotation_scan: stored must have shape (n, {q.size}) like the query, got {X.shape}")
    if not np.isfinite(q).all():
        raise DescriptorError("rotation_scan: the query has NaN or infinite values; describe the scan again")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise DescriptorError(f"rotation_scan: k must be a positive integer, got {k!r}")
    V = None
    if variants is not None:
        V = np.asarray(variants, dtype=np.float64)
        if V.ndim != 2 or V.shape[1] != q.size:
            raise DescriptorError(f"rotation_scan: variants must have shape (n_variants, {q.size}), got {V.shape}")
        if not np.isfinite(V).all():
            raise DescriptorError("rotation_scan: a query variant has NaN or infinite values; describe the scan again")
    if variant_k is not None and (not isinstance(variant_k, (int, np.integer)) or variant_k < 1):
        raise DescriptorError(f"rotation_scan: variant_k must be a positive integer, got {variant_k!r}")
    if X.dtype not in (np.float32, np.float16) or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = int(threads) if threads is not None else len(getattr(os, "sched_getaffinity", lambda _: [1, 1])(0))
    best = np.empty(n, np.float32)
    row = np.empty(n, np.int64)
    _scan_rows(X, q[None], nh, R, bool(mirror), max(1, int(chunk)), t, best, row)
    if V is not None and len(V):
        # the variants re-score the vectors the query itself scores best; each keeps its best over all
        m1 = n if variant_k is None else min(n, int(variant_k))
        sel = np.argpartition(-best, m1 - 1)[:m1] if m1 < n else np.arange(n)
        sel = np.sort(sel[np.isfinite(best[sel])])
        if sel.size:
            bs, rs = np.empty(sel.size, np.float32), np.empty(sel.size, np.int64)
            # blocks small enough that both threads get work from a few thousand vectors, and that stay in cache
            # while every variant reads them (_VARIANT_BLOCK)
            step = max(64, min(int(chunk), _VARIANT_BLOCK, -(-sel.size // (4 * t))))
            _scan_rows(X, V, nh, R, bool(mirror), step, t, bs, rs, rows_of=sel)
            up = bs > best[sel]
            best[sel[up]], row[sel[up]] = bs[up], rs[up]
    m = min(int(k), n)
    top = np.argpartition(-best, m - 1)[:m] if m < n else np.arange(n)
    top = top[np.lexsort((top, -best[top]))]
    top = top[np.isfinite(best[top])]
    return best[top], top.astype(np.int64), row[top]


#: Stored vectors per block of the variants' pass: each block is read once per variant, and 512 rows (2.6 MB as
#: float32) stay in cache between them; 50 000 rows x 24 variants took 0.78 s in blocks of 512 and 0.92 s in blocks
#: of 4096 on 2 cores (the plain pass, one read per block, is the same at 512-4096).
_VARIANT_BLOCK = 512


def _scan_rows(X: np.ndarray, qs: np.ndarray, nh: int, R: int, mirror: bool, step: int, threads: int,
               best: np.ndarray, row: np.ndarray, *, rows_of: np.ndarray | None = None) -> None:
    """Into ``best``/``row`` (one per row of ``X``, float32 or float16 C-contiguous) the best score of any copy of
    any query of ``qs`` (float64, shape (n_queries, dim), the stored format) and the copy's row (of the first
    query that reaches it), block by block on ``threads`` threads. With ``rows_of`` (row numbers of ``X``) only
    those rows, ``best``/``row`` one per entry of it; each block gathers its own rows (``X`` is never copied whole:
    the variants' 5 % of 10^7 vectors would be 2.5 GB)."""
    pairs = []
    for q in qs:
        Q = q.reshape(-1, nh, 2)
        pairs.append((np.ascontiguousarray(Q.reshape(-1, 2 * nh), np.float32),
                      np.ascontiguousarray(Q[..., ::-1].reshape(-1, 2 * nh), np.float32)))
    n = X.shape[0] if rows_of is None else len(rows_of)

    def score(lo: int) -> None:
        hi = min(n, lo + step)
        Z = np.empty((hi - lo, R), np.complex64)
        b, r = best[lo:hi], row[lo:hi]
        bj, rj = np.empty(hi - lo, np.float32), np.empty(hi - lo, np.int64)
        Xb, a, e = (X, lo, hi) if rows_of is None else (X[rows_of[lo:hi]], 0, hi - lo)
        for j, (qa, qb) in enumerate(pairs):
            if Xb.dtype == np.float16:                           # half-precision store, decoded row by row
                _cross_spectra_half(Xb.view(np.uint16), a, e, qa, qb, Z.view(np.float32))
            else:
                _cross_spectra(Xb, a, e, qa, qb, Z.view(np.float32))
            y = scipy.fft.ifft(Z, axis=1, norm="forward", overwrite_x=True, workers=1)   # S + i S' at every angle
            if j == 0:
                _best_angle(y.view(np.float32), mirror, b, r)
            else:
                _best_angle(y.view(np.float32), mirror, bj, rj)
                up = bj > b
                b[up], r[up] = bj[up], rj[up]

    starts = range(0, n, step)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(min(threads, len(starts))) as ex:
            list(ex.map(score, starts))
    else:
        for lo in starts:
            score(lo)


@nb.njit(nogil=True, cache=True, fastmath={"contract"})
def _cross_spectra(X, lo, hi, qa, qb, Zf):
    """Rows ``lo..hi`` of ``X`` (float32 (n, 2 nb nh), re/im interleaved) against the query: into row ``t`` of
    ``Zf`` (float32 view of a complex (hi - lo, R) array) the Hermitian spectra of both parities,
    ``Z[m] = (c_m + i c'_m) / 2`` and ``Z[-m] = (conj(c_m) + i conj(c'_m)) / 2`` for ``m = 1..nh`` (modulo R:
    bins that meet add up, as the harmonics alias at R angles), zero elsewhere, so that ``ifft(Z) * R = S + i S'``.

    ``qa`` (nb, 2 nh) is the query interleaved as stored ``[qr, qi, ...]``, ``qb`` the same with each pair
    swapped ``[qi, qr, ...]``: summed over the bands, ``x * qa`` gives ``qr dr, qi di`` and ``x * qb`` gives
    ``qi dr, qr di`` of every harmonic, two multiply-adds per stored value over contiguous memory."""
    nh2 = qa.shape[1]
    U = np.empty(nh2, np.float32)
    V = np.empty(nh2, np.float32)
    ip, im = _bins(nh2 // 2, Zf.shape[1] // 2)
    for t in range(hi - lo):
        _spectrum_of_row(X[lo + t], qa, qb, U, V, ip, im, Zf[t])


@nb.njit(nogil=True, cache=True, fastmath={"contract"})
def _cross_spectra_half(H, lo, hi, qa, qb, Zf):
    """:func:`_cross_spectra` of rows stored in half precision, ``H`` their bits (uint16 (n, 2 nb nh), as a
    FAISS ``SQfp16`` index keeps them), each row decoded to float32 on the way (exactly: every half is a
    float32)."""
    nh2 = qa.shape[1]
    U = np.empty(nh2, np.float32)
    V = np.empty(nh2, np.float32)
    ip, im = _bins(nh2 // 2, Zf.shape[1] // 2)
    bits = np.empty(H.shape[1], np.uint32)
    row = bits.view(np.float32)
    for t in range(hi - lo):
        h = H[lo + t]
        special = False
        for j in range(h.size):
            b = np.uint32(h[j])
            # the half's sign to bit 31, its exponent and mantissa 13 bits up: the float32 2^-112 times the value
            # (zero and subnormals included), so one multiply by 2^112 below gives the value itself
            bits[j] = ((b & np.uint32(0x8000)) << np.uint32(16)) | ((b & np.uint32(0x7FFF)) << np.uint32(13))
            special |= (b & np.uint32(0x7C00)) == np.uint32(0x7C00)
        for j in range(h.size):
            row[j] *= np.float32(5.192296858534828e33)
        if special:                                  # infinity or NaN: exponent all ones
            for j in range(h.size):
                b = np.uint32(h[j])
                if (b & np.uint32(0x7C00)) == np.uint32(0x7C00):
                    bits[j] = ((b & np.uint32(0x8000)) << np.uint32(16)) | np.uint32(0x7F800000) | \
                        ((b & np.uint32(0x3FF)) << np.uint32(13))
        _spectrum_of_row(row, qa, qb, U, V, ip, im, Zf[t])


@nb.njit(nogil=True, cache=True)
def _bins(nh, R):
    """FFT bins of harmonic ``m = 1..nh`` and of ``-m`` over ``R`` angles."""
    ip = np.empty(nh, np.int64)
    im = np.empty(nh, np.int64)
    for m in range(nh):
        ip[m] = (m + 1) % R
        im[m] = (R - (m + 1) % R) % R
    return ip, im


@nb.njit(nogil=True, cache=True, fastmath={"contract"})
def _spectrum_of_row(row, qa, qb, U, V, ip, im, z):
    """One stored row (float32, interleaved) into its Hermitian spectra ``z`` (float32 view, 2 R)."""
    nbands, nh2 = qa.shape
    U[:] = 0.0
    V[:] = 0.0
    for b in range(nbands):
        base = b * nh2
        for j in range(nh2):
            x = row[base + j]
            U[j] += x * qa[b, j]
            V[j] += x * qb[b, j]
    z[:] = 0.0
    for m in range(nh2 // 2):
        p1, p2 = U[2 * m], U[2 * m + 1]                      # sum qr dr, sum qi di
        p4, p3 = V[2 * m], V[2 * m + 1]                      # sum qi dr, sum qr di
        cr, ci = p1 + p2, p4 - p3                            # Q conj(D): the plain copies
        mr, mi = p1 - p2, p3 + p4                            # Q D: the mirror images
        # c -> real part of the transform, c' -> imaginary part: (c + i c') / 2 and (conj c + i conj c') / 2
        z[2 * ip[m]] += 0.5 * (cr - mi)
        z[2 * ip[m] + 1] += 0.5 * (ci + mr)
        z[2 * im[m]] += 0.5 * (cr + mi)
        z[2 * im[m] + 1] += 0.5 * (mr - ci)


@nb.njit(nogil=True, cache=True)
def _best_angle(y, mirror, best, row):
    """Per row of ``y`` (float32 (n, 2 R): ``S`` and ``S'`` of each angle interleaved) the largest score over
    the angles (and the mirror images) and its query-copy row (``j``, or ``R + j`` for a mirror image);
    -inf where a score is NaN."""
    R = y.shape[1] // 2
    for t in range(y.shape[0]):
        v = -np.inf
        r = 0
        bad = False
        for j in range(R):
            s = y[t, 2 * j]
            if s > v:
                v = s
                r = j
            elif not s == s:
                bad = True
        if mirror:
            for j in range(R):
                s = y[t, 2 * j + 1]
                if s > v:
                    v = s
                    r = R + j
                elif not s == s:
                    bad = True
        best[t] = -np.inf if bad else v
        row[t] = r


class PolarPhaseDescriptor:
    """:class:`~ballistic.retrieval.descriptor.DescriptorModel` of :func:`polar_phase_coefficients` for an
    inner-product index, searched over rotations by query expansion.

    ``__call__`` gives the stored vector: the coefficients' real and imaginary parts interleaved, float32,
    unit norm, ``dim = 2 n_bands n_harmonics`` (1280 with the defaults). Its plain inner product with another
    is the similarity at one orientation only; :meth:`query_vectors` gives the query's copies rotated every
    ``360 / n_rotations`` degrees (and mirrored), and the best inner product of any copy with a stored vector
    is :func:`rotation_similarity` at that step. :class:`~ballistic.retrieval.search.Retriever` searches with
    the copies and keeps each candidate's best; never index these vectors through a PCA whitener (it would mix
    the harmonics that the expansion rotates separately).
    """

    def __init__(self, *, spacing_um: float = 25.0, n_bands: int = _N_BANDS, n_harmonics: int = _N_HARMONICS,
                 n_theta: int = _N_THETA, r_max_um: float = _R_MAX_UM, min_valid: float = 0.1,
                 centre: str = "aperture", n_rotations: int = 128, mirror: bool = True,
                 jitter_um: float = 25.0, jitter_steps: int = 2, jitter_share: float = 0.05) -> None:
        if int(n_rotations) <= n_harmonics:
            raise DescriptorError(f"n_rotations ({n_rotations}) must exceed n_harmonics ({n_harmonics})")
        if not (jitter_um > 0 and int(jitter_steps) >= 0 and 0 < jitter_share <= 1):
            raise DescriptorError(f"jitter_um must be > 0 um, jitter_steps >= 0 and jitter_share in (0, 1]; got "
                                  f"{jitter_um}, {jitter_steps}, {jitter_share}")
        self.kwargs = dict(spacing_um=float(spacing_um), n_bands=int(n_bands), n_harmonics=int(n_harmonics),
                           n_theta=int(n_theta), r_max_um=float(r_max_um), min_valid=float(min_valid),
                           centre=str(centre))
        self.n_rotations = int(n_rotations)
        self.mirror = bool(mirror)
        self.jitter = dict(jitter_um=float(jitter_um), jitter_steps=int(jitter_steps),
                           jitter_share=float(jitter_share))
        self.dim = 2 * self.kwargs["n_bands"] * self.kwargs["n_harmonics"]
        opts = "&".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        # the expansion and the query's centre variants change the scores, not the stored vectors, but an index
        # names what answered it
        jit = "&".join(f"{k}={v:g}" for k, v in sorted(self.jitter.items()))
        self.name = f"{PHASE_DESCRIPTOR_VERSION}?{opts}&n_rotations={self.n_rotations}&mirror={int(self.mirror)}" \
            + (f"&{jit}" if self.jitter["jitter_steps"] else "")
        # what a database records (descriptor_version, at most 100 characters): the version and a digest of the
        # whole name, so any other setting is another version and triggers a re-index
        self.version = f"{PHASE_DESCRIPTOR_VERSION}?{hashlib.sha256(self.name.encode()).hexdigest()[:16]}"

    def coefficients(self, surface: Surface) -> np.ndarray:
        """:func:`polar_phase_coefficients` with this descriptor's settings."""
        return polar_phase_coefficients(surface, **self.kwargs)

    def __call__(self, surface: Surface) -> np.ndarray:
        C = self.coefficients(surface)
        return np.stack([C.real, C.imag], axis=-1).astype(np.float32).ravel()

    @property
    def jitter_offsets_um(self) -> np.ndarray:
        """The query's centre offsets ``(down, right)`` um: a square grid of ``2 jitter_steps + 1`` points a side,
        ``jitter_um`` apart, about the centre found; ``(0, 0)`` first."""
        st, d = self.jitter["jitter_steps"], self.jitter["jitter_um"]
        grid = [(a * d, b * d) for a in range(-st, st + 1) for b in range(-st, st + 1) if (a, b) != (0, 0)]
        return np.array([(0.0, 0.0)] + grid, dtype=np.float64)

    def query_variants(self, surface: Surface) -> np.ndarray | None:
        """The query described about centres near its own (:attr:`jitter_offsets_um`), stored format: float32,
        shape (n_offsets, dim), row 0 the plain vector (``self(surface)``); None without jitter.

        Why: the polar grid's centre is the firing-pin aperture's as found on each scan, and two scans of one
        breech face find it up to a pixel or two apart (different crops, drop-outs, other scanners). Harmonic
        ``m`` of a ring of radius ``r`` turns by about ``m d / r`` for a centre error ``d``, which blurs a mate's
        score below unrelated scans'. Searching the query about nearby centres (the best of them for each stored
        vector, :meth:`scan` with ``variants``) finds the centre the stored scan used.
        """
        if not self.jitter["jitter_steps"]:
            return None
        C = polar_phase_coefficients(surface, **self.kwargs, offsets_um=self.jitter_offsets_um)
        return np.stack([C.real, C.imag], axis=-1).astype(np.float32).reshape(len(C), self.dim)

    def variant_rows(self, n: int, k: int) -> int:
        """How many of ``n`` stored vectors the query's centre variants re-score in :meth:`scan`: the share
        ``jitter_share`` of them, at least 1000 and ``k`` (never more than ``n``)."""
        return int(min(n, max(int(k), 1000, math.ceil(self.jitter["jitter_share"] * n))))

    def query_vectors(self, vector: np.ndarray) -> np.ndarray:
        """The stored-format ``vector`` rotated every ``360 / n_rotations`` degrees, then (``mirror``) the same
        for its mirror image: float32, shape (n_rotations or 2 n_rotations, dim).

        Row ``k`` scores a stored candidate rotated by ``360 k / n_rotations`` degrees; row ``n_rotations + k``
        its mirror image rotated so.
        """
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (self.dim,):
            raise DescriptorError(f"query_vectors: expected a ({self.dim},) vector of this descriptor, got {v.shape}")
        nb, nh = self.kwargs["n_bands"], self.kwargs["n_harmonics"]
        Q = (v[0::2] + 1j * v[1::2]).reshape(nb, nh)
        a = np.arange(self.n_rotations) * (2.0 * np.pi / self.n_rotations)
        # Re sum Q e^{i m a} conj(C) = Re sum Q conj(C e^{-i m a}); the mirror: conj(Q e^{i m a})
        rot = Q[None] * np.exp(1j * np.outer(a, np.arange(1, nh + 1)))[:, None, :]
        rows = np.concatenate([rot, np.conj(rot)]) if self.mirror else rot
        return np.stack([rows.real, rows.imag], axis=-1).reshape(len(rows), self.dim).astype(np.float32)

    def scan(self, rows: np.ndarray, stored: np.ndarray, k: int, *, threads: int | None = None,
             variants: np.ndarray | None = None, variant_k: int | None = None):
        """The answer of searching ``stored`` with the query copies ``rows`` (:meth:`query_vectors`), each stored
        vector scored by its best copy, computed by :func:`rotation_scan` instead of ``len(rows)`` inner products.

        An index whose vectors lie in memory as they were stored (FAISS ``Flat``, ``SQfp16``) calls this for a query of
        this descriptor (:meth:`~ballistic.retrieval.index.VectorIndex.search` with ``scan=``); the copies
        must be this descriptor's own, of which row 0 is the query itself. With ``variants``
        (:meth:`query_variants` of the query: row 0 the query itself) the :meth:`variant_rows` vectors the query
        scores best are scored by every other variant's copies too and keep their best (the rows returned are
        still copies of one rotation and parity: :meth:`row_pose` holds for them); ``variant_k`` overrides
        :meth:`variant_rows`.

        Returns
        -------
        scores, positions, rows : ndarray, shape (m,)
            As :func:`rotation_scan`: the best ``min(k, len(stored))``, the rows being those of ``rows``.
        """
        r = np.asarray(rows)
        n_rows = self.n_rotations * (2 if self.mirror else 1)
        if r.ndim != 2 or r.shape != (n_rows, self.dim):
            raise DescriptorError(f"scan: expected the ({n_rows}, {self.dim}) query copies of this descriptor "
                                  f"(query_vectors), got shape {r.shape}")
        others = None
        if variants is not None:
            V = np.asarray(variants)
            if V.ndim != 2 or V.shape[1] != self.dim or not len(V):
                raise DescriptorError(f"scan: variants must be the (n, {self.dim}) query_variants of the query, "
                                      f"got shape {V.shape}")
            others = V[1:] if len(V) > 1 else None        # row 0 is the query itself: scored already
        return rotation_scan(r[0], stored, k, n_harmonics=self.kwargs["n_harmonics"], n_rotations=self.n_rotations,
                             mirror=self.mirror, threads=threads, variants=others,
                             variant_k=None if others is None else
                             (self.variant_rows(len(stored), k) if variant_k is None else variant_k))

    def row_pose(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The pose each row of :meth:`query_vectors` stands for, as a registration states it.

        Parameters
        ----------
        rows : array_like of int
            Row numbers of :meth:`query_vectors` (e.g. the row a candidate scored best with).

        Returns
        -------
        angle_deg : ndarray of float, shape like ``rows``
            Rotation of the candidate onto the query (degrees, counter-clockwise as displayed, in [0, 360)):
            :attr:`~ballistic.cartridge.cmc.register.Registration.angle_deg` of the comparison of the query
            (reference) with the candidate (target), to within the row step (``360 / n_rotations``) and the
            descriptor's own error.
        mirrored : ndarray of bool
            True for the mirror-image rows (the candidate mirrored, as ``Registration.mirrored``).
        """
        r = np.asarray(rows, dtype=np.int64)
        n = self.n_rotations * (2 if self.mirror else 1)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise DescriptorError(f"row_pose: rows must be in [0, {n}) (the rows of query_vectors), got "
                                  f"{int(r.min())}..{int(r.max())}")
        return (r % self.n_rotations) * (360.0 / self.n_rotations), r >= self.n_rotations

    def __repr__(self) -> str:
        return f"PolarPhaseDescriptor({self.name})"
