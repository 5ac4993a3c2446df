"""Registration of two breech faces over the full circle of rotation (step 1 of the CMC comparison).

Coarse to fine, so that the full 360 degrees of rotation is searched:

1. rotation prior - :func:`search_rotation` over the full circle (steps of
   :func:`rotation_step_deg`: half a step moves the rim at most 3/4 pixel) at a coarse 50 um
   spacing on the 100-1000 um band: whole-surface masked normalized cross-correlation
   (:func:`masked_ncc`, uncentred), translation by FFT, all angles in batched transforms
   (real exhibits arrive in any orientation);
2. :func:`register_global` - the best prior peaks of each parity are screened at 25 um
   (their own angle, translation within one prior pixel), the best of the screen refined
   at 25 um over a few angles, the best of those at the comparison spacing, each by a
   direct pairwise-complete correlation search (:func:`local_search`, numba kernel
   :func:`ballistic.stats.correlation._cell_corr_at_offsets`).

The cells (step 2) are in :mod:`ballistic.cartridge.cmc.cells`, the counts and the
decision (step 3) in :mod:`ballistic.cartridge.cmc.decision`, both directions of a pair
in :mod:`ballistic.cartridge.cmc.pair`.
Angles are degrees, counter-clockwise as displayed (row 0 on top); a result's
``(angle_deg, dy_um, dx_um)`` maps target onto reference: a target point p goes
to ``R(angle) (p - c_target) + c_reference + (dy, dx)``.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ballistic.cartridge.cmc import fft
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, mirrored
from ballistic.preprocess.filters import _warp_rotate
from ballistic.stats.correlation import _cell_corr_at_offsets

__all__ = [
    "Registration",
    "PoseHint",
    "masked_ncc",
    "search_rotation",
    "rotation_step_deg",
    "local_search",
    "register_global",
    "register_thorough",
    "invert_registration",
    "warp_to_reference",
]


#: memory the rotation search's transforms may take at once (bytes); more angles are done in chunks
_SEARCH_CHUNK_BYTES = 48 * 2**20

#: memory the moving sides' rotated-stack spectra kept between calls may take (bytes, each process): a scan
#: compared with many others (every pair of a set, ordered by target) is rotated and transformed once
_STACK_CACHE_BYTES = 160 * 2**20
_stack_cache: OrderedDict = OrderedDict()
_stack_cache_lock = threading.Lock()


def _new_stack_cache_lock() -> None:
    """A forked child gets a fresh lock: a thread of the parent may have held it at the fork."""
    global _stack_cache_lock
    _stack_cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_stack_cache_lock)

#: a rotation-prior value counts as another pose (``Registration.runner_up_ncc``) this far from the best
_RUNNER_UP_SEPARATION_DEG = 8.0

#: prior peaks (or grid neighbours) whose translations differ by at most this many prior pixels in y and x
#: are one pose: the refinement reaches one from the other (a coarse search of +- one prior pixel a step);
#: the thorough search applies the same rule to its coarse pixels
_SAME_POSE_PX = 2.0


def _same_place(y0: float, x0: float, y1: float, x1: float) -> bool:
    """Two translations (pixels of the search's grid) that one pose's refinement reaches from either."""
    return abs(y0 - y1) <= _SAME_POSE_PX and abs(x0 - x1) <= _SAME_POSE_PX


def _distinct(a: float, fa: bool, b: float, fb: bool, sep: float) -> bool:
    """Angles ``a``, ``b`` (degrees) of parities ``fa``, ``fb``: another parity, or more than ``sep`` apart."""
    return fa != fb or abs((a - b + 180.0) % 360.0 - 180.0) > sep


@dataclass(frozen=True)
class Registration:
    """Pose of the target on the reference. With ``mirrored`` the target is first flipped
    top-bottom (its rows reversed), then rotated and shifted as described in the module
    docstring. ``prior_ncc`` / ``runner_up_ncc``: best rotation-prior correlation and the best
    one of a clearly different pose (another angle or the other parity) at the prior spacing."""

    angle_deg: float
    dy_um: float
    dx_um: float
    ncc: float
    prior_deg: tuple[float, ...] = ()
    mirrored: bool = False
    prior_ncc: float = float("nan")
    runner_up_ncc: float = float("nan")


@dataclass(frozen=True)
class PoseHint:
    """Where a registration should look: a rotation (degrees, counter-clockwise as displayed, of the target onto
    the reference, as :attr:`Registration.angle_deg`) and mirror parity, known from elsewhere, and how far from
    it (``halfwidth_deg``) the rotation prior still searches.

    A rotation-searched descriptor gives one for every candidate it ranks
    (:class:`~ballistic.retrieval.polar_phase.PolarPhaseDescriptor`: its best rotation of the candidate, within
    1 degree of the full registration's angle on 18 of the 19 same-gun DFSC pairs and within 2 degrees on all 60
    same-source Fadul pairs). A pair whose true pose lies outside the window is registered at the best pose
    inside it, which is a worse one: a hint narrows the search, it never widens it.
    """

    angle_deg: float
    mirrored: bool = False
    halfwidth_deg: float = 8.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.angle_deg) and 0.0 < self.halfwidth_deg < 180.0):
            raise ValueError(f"PoseHint needs a finite angle and a half-width in (0, 180) degrees, got "
                             f"angle {self.angle_deg!r}, half-width {self.halfwidth_deg!r}")

    def window(self, grid_deg: np.ndarray, *, centre_deg: float | None = None) -> np.ndarray:
        """Indices of the angles of ``grid_deg`` within ``halfwidth_deg`` of ``centre_deg`` (default the hint's
        angle) around the circle; the nearest one when the window is narrower than the grid's step."""
        c = float(self.angle_deg if centre_deg is None else centre_deg)
        off = np.abs((np.asarray(grid_deg, dtype=np.float64) - c + 180.0) % 360.0 - 180.0)
        near = np.flatnonzero(off <= float(self.halfwidth_deg) + 1e-9)
        return near if near.size else np.array([int(np.argmin(off))])


def masked_ncc(fixed: np.ndarray, moving: np.ndarray, *, min_overlap: int = 16,
               shifts: tuple[int, int, int, int] | None = None,
               dtype: type = np.float64, centred: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Masked normalized cross-correlation over all integer translations (Padfield 2012).

    Parameters
    ----------
    fixed : ndarray, shape (..., Hf, Wf)
        NaN = missing. Leading dimensions broadcast against ``moving``.
    moving : ndarray, shape (..., Hm, Wm)
    min_overlap : int, keyword-only
        Shifts sharing fewer valid points are NaN.
    shifts : (dy_min, dy_max, dx_min, dx_max), optional, keyword-only
        Only return shifts d in this inclusive range (default: all); a narrow
        window also shrinks the transforms (no wrap-around can reach it).
    dtype : numpy float type, keyword-only
        Precision of the transforms (float32 is about twice as fast).
    centred : bool, keyword-only
        True: the Pearson correlation (each side's mean over the shared points removed).
        False: the same without removing those means, ``sum(f g) / sqrt(sum(f^2) sum(g^2))``
        over the shared points: four inverse transforms instead of six. For surfaces that are
        band-passed and zero-mean, whose means over a large overlap are near zero, it ranks
        poses as the Pearson correlation does; it is not a Pearson value.

    Returns
    -------
    ncc : ndarray, shape (..., Hf + Hm - 1, Wf + Wm - 1)
        ``ncc[..., i, j]`` is the Pearson correlation (``centred``), over the points valid in
        both, of ``fixed[q + d]`` with ``moving[q]`` for the shift
        ``d = (i - (Hm - 1), j - (Wm - 1))``: moving pixel q lies on fixed pixel q + d.
        With ``shifts``, ``d = (i + dy_min, j + dx_min)`` instead.
    overlap : ndarray of int, same shape
        Number of shared valid points.
    """
    shifts, shape = _ncc_window(fixed.shape[-2:], moving.shape[-2:], shifts)
    fs = _ncc_spectra(fixed, shape, dtype)
    ms = _ncc_spectra(moving, shape, dtype, conj=True)
    return _ncc_from_spectra(fs, ms, shape, shifts, min_overlap, centred=centred)


def _ncc_window(fixed_shape, moving_shape, shifts) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Checked shift window and the transform size that computes it without wrap-around."""
    Hf, Wf = (int(v) for v in fixed_shape)
    Hm, Wm = (int(v) for v in moving_shape)
    if shifts is None:
        shifts = (-(Hm - 1), Hf - 1, -(Wm - 1), Wf - 1)
    y0, y1, x0, x1 = (int(v) for v in shifts)
    if not (-(Hm - 1) <= y0 <= y1 <= Hf - 1 and -(Wm - 1) <= x0 <= x1 <= Wf - 1):
        raise ValueError(f"masked_ncc: shifts {shifts} outside the possible range "
                         f"({-(Hm - 1)}..{Hf - 1}, {-(Wm - 1)}..{Wf - 1})")
    # Circular correlation of period N is exact for a requested shift d when d +- N leaves the
    # range of overlapping shifts [-(Hm - 1), Hf - 1]; a narrow window needs far smaller transforms.
    shape = (fft.next_fast_len(max(Hf, Hm, Hf - y0, y1 + Hm)), fft.next_fast_len(max(Wf, Wm, Wf - x0, x1 + Wm)))
    return (y0, y1, x0, x1), shape


def _ncc_spectra(x: np.ndarray, shape, dtype, *, conj: bool = False) -> tuple[np.ndarray, ...]:
    """Transforms of (values, squared values, mask) of ``x`` (NaN = missing) at ``shape``; conjugated for
    the moving side. One side's spectra serve every partner of the same transform size."""
    m = np.isfinite(x)
    v = np.where(m, x, 0.0).astype(dtype)
    out = tuple(fft.rfft2(a, shape) for a in (v, v * v, m.astype(dtype)))
    return tuple(np.conj(a) for a in out) if conj else out


def _ncc_from_spectra(fs, ms, shape, shifts, min_overlap, *, centred: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`masked_ncc` from the fixed side's spectra ``fs`` and the moving side's conjugated ``ms``."""
    Ff, Ff2, Fm = fs
    Gg, Gg2, Gm = ms
    y0, y1, x0, x1 = shifts
    # circular index k holds shift d = k (k < Hf) or k - N (negative shifts)
    if y0 >= 0 and x0 >= 0:
        sel = (..., slice(y0, y1 + 1), slice(x0, x1 + 1))
    else:
        ry = np.arange(y0, y1 + 1) % shape[0]
        rx = np.arange(x0, x1 + 1) % shape[1]
        sel = (..., ry[:, None], rx[None, :])

    def I(x):
        # the centred statistic subtracts products of sums: float64 for it; the uncentred one (the rotation prior
        # and the cells' translations, float32 transforms) stays in the transforms' precision
        out = fft.irfft2(x, shape)[sel]
        return out.astype(np.float64) if centred else out

    n = np.rint(I(Fm * Gm))
    sff = I(Ff2 * Gm)
    sgg = I(Fm * Gg2)
    sfg = I(Ff * Gg)
    with np.errstate(invalid="ignore", divide="ignore"):
        if centred:
            sf = I(Ff * Gm)
            sg = I(Fm * Gg)
            nn = np.maximum(n, 1.0)
            cov = sfg - sf * sg / nn
            vf = sff - sf * sf / nn
            vg = sgg - sg * sg / nn
        else:
            cov, vf, vg = sfg, sff, sgg
        den = np.sqrt(np.maximum(vf, 0) * np.maximum(vg, 0))
        tol = 1e-9 * np.maximum(np.sqrt(np.maximum(sff, 0) * np.maximum(sgg, 0)), 1e-300)
        ncc = np.where((n >= max(min_overlap, 2)) & (den > tol), cov / den, np.nan)
    return np.clip(ncc, -1.0, 1.0), n.astype(np.int64)


def warp_to_reference(target: np.ndarray, angle_deg: float, dy_px: float, dx_px: float,
                      out_shape: tuple[int, int]) -> np.ndarray:
    """Resample ``target`` into a reference frame of ``out_shape``: rotate by ``angle_deg``
    about the target centre, put that centre on the reference centre plus (dy, dx) px."""
    ny, nx = target.shape
    oy, ox = out_shape
    return _warp_rotate(np.ascontiguousarray(target, dtype=np.float64), math.radians(angle_deg),
                        (ny - 1) / 2.0, (nx - 1) / 2.0, int(oy), int(ox),
                        (oy - 1) / 2.0, (ox - 1) / 2.0, float(dy_px), float(dx_px))


def _rim_radius_px(h: np.ndarray) -> float:
    """Distance (px) from the centre of ``h`` to its farthest measured point; NaN when none is."""
    ny, nx = h.shape
    iy, ix = np.nonzero(np.isfinite(h))
    if not iy.size:
        return float("nan")
    return float(np.sqrt(((iy - (ny - 1) / 2.0) ** 2 + (ix - (nx - 1) / 2.0) ** 2).max()))


def rotation_step_deg(moving: np.ndarray, *, rim_shift_px: float = 1.0, max_step_deg: float = 90.0) -> float:
    """Angle step (degrees) for a full-circle search of ``moving`` rotated about its centre.

    The largest step that divides the circle evenly and moves the farthest measured point of
    ``moving`` by at most ``rim_shift_px`` pixels over half a step (``2 rim_shift_px / rim radius``
    radians): a pose between two grid angles then keeps most of its correlation peak, however the
    scans are oriented (coarser steps lose the peak at the rim to noise).

    Parameters
    ----------
    moving : ndarray, shape (ny, nx)
        Heights, NaN = not measured; the spacing is the pixel the rule counts in.
    rim_shift_px : float, keyword-only
        Largest movement of the rim over half a step, in pixels (``CMCParams.prior_rim_shift_px``).
    max_step_deg : float, keyword-only
        Upper bound (a tiny surface would otherwise get a huge step).
    """
    if not rim_shift_px > 0:
        raise ValueError(f"rotation_step_deg: rim_shift_px must be > 0 pixels, got {rim_shift_px}")
    r = _rim_radius_px(moving)
    step = max_step_deg if not (r > rim_shift_px) else min(max_step_deg, math.degrees(2.0 * rim_shift_px / r))
    return 360.0 / math.ceil(360.0 / step - 1e-9)


def _stack_side(h: np.ndarray) -> int:
    """Side (px, odd) of the square canvas that holds ``h`` rotated by any angle about its centre: just
    large enough for its measured points (an annulus needs its diameter, not the box's diagonal)."""
    ny, nx = h.shape
    r = _rim_radius_px(h)
    if np.isfinite(r):
        return min(int(math.ceil(math.hypot(ny, nx))), 2 * int(math.ceil(r)) + 3) | 1
    return int(math.ceil(math.hypot(ny, nx))) | 1


def _rotated_stack(h: np.ndarray, angles) -> tuple[np.ndarray, tuple[int, int]]:
    """``h`` rotated by each angle about its centre, on the canvas of :func:`_stack_side`."""
    d = _stack_side(h)
    return np.stack([warp_to_reference(h, a, 0.0, 0.0, (d, d)) for a in angles]), (d, d)


def _stack_spectra(moving: np.ndarray, angles: list[float], shape: tuple[int, int], step: int):
    """Conjugated :func:`_ncc_spectra` of ``moving`` rotated by each angle (:func:`_rotated_stack`) at the
    transform ``shape``, in chunks of ``step`` angles.

    About a fifth of a standard comparison's time (Fadul, one core): kept (least recently used first out,
    at most ``_STACK_CACHE_BYTES`` in all) under the digest of the heights, the angles, the shape and the
    FFT backend, so a scan compared with many others is rotated and transformed once; equal inputs give the
    same arrays either way. Spectra larger than half that budget (the thorough search of a large scan) are
    made one chunk at a time and not kept.
    """
    h = np.ascontiguousarray(moving)
    made = (_ncc_spectra(_rotated_stack(h, angles[k:k + step])[0], shape, np.float32, conj=True)
            for k in range(0, len(angles), step))
    size = 3 * len(angles) * shape[0] * (shape[1] // 2 + 1) * np.dtype(np.complex64).itemsize
    if size > _STACK_CACHE_BYTES // 2:       # too large to keep: one chunk at a time, as the memory cap needs
        yield from made
        return
    digest = hashlib.blake2b(h.tobytes(), digest_size=16)
    digest.update(repr((h.shape, h.dtype.str, tuple(shape), fft.fft_backend())).encode())
    digest.update(np.asarray(angles, dtype=np.float64).tobytes())
    key = digest.digest()
    with _stack_cache_lock:
        spectra = _stack_cache.get(key)
        if spectra is not None:
            _stack_cache.move_to_end(key)
    if spectra is None:
        parts = list(made)
        spectra = tuple(np.concatenate(p) if len(parts) > 1 else p[0] for p in zip(*parts))
        del parts
        for a in spectra:
            a.flags.writeable = False        # shared by every later call with the same key
        with _stack_cache_lock:
            _stack_cache[key] = spectra
            total = sum(a.nbytes for v in _stack_cache.values() for a in v)
            while total > _STACK_CACHE_BYTES and len(_stack_cache) > 1:
                total -= sum(a.nbytes for a in _stack_cache.popitem(last=False)[1])
    for k in range(0, len(angles), step):
        yield tuple(a[k:k + step] for a in spectra)


def search_rotation(fixed: np.ndarray, moving: np.ndarray, angles, *, min_overlap: int,
                    max_shift_px: int | None = None, mirror: bool = False, centred: bool = True) -> list[tuple]:
    """Best translation for each rotation of ``moving`` onto ``fixed`` (masked NCC by FFT).

    Returns, per angle, ``(ncc, angle_deg, dy_px, dx_px)``: the moving centre sits at
    the fixed centre plus (dy, dx) px; ncc is -inf where no shift overlaps enough.

    With ``mirror`` the result has a fifth element, ``mirrored``, and covers the mirror image
    of ``moving`` (rows reversed) too, at every angle. Rotating a mirror image by ``a`` is
    mirroring the image rotated by ``-a``, and correlating a mirrored moving image with
    ``fixed`` is correlating the moving image with ``fixed`` mirrored: the rotated stack and
    its Fourier transforms are shared, only the inverse transforms double.

    ``centred`` as in :func:`masked_ncc` (False: two thirds of the inverse transforms; the
    comparison's rotation prior ranks poses of band-passed surfaces with it).

    The angles are correlated in chunks whose transforms stay within about
    ``_SEARCH_CHUNK_BYTES`` (each angle's result is the same in any chunk): the service caps a
    job's memory, and a whole circle of angles at once grows with the number of angles. The
    moving side's spectra of all angles are kept for the next call with the same ``moving``
    (:func:`_stack_spectra`, at most ``_STACK_CACHE_BYTES`` a process) unless they are larger than
    half of that.
    """
    angles = [float(a) % 360.0 for a in angles]
    d = _stack_side(moving)
    H, W = fixed.shape
    # a shift d puts the moving centre at the fixed centre + d + (d_canvas - 1)/2 - (H - 1)/2
    oy, ox = (H - 1) // 2 - (d - 1) // 2, (W - 1) // 2 - (d - 1) // 2
    m = max(H, W, d) if max_shift_px is None else int(max_shift_px)
    lo_y, hi_y = oy - m, oy + m
    if mirror:
        # the mirrored fixed's shift dy' = H - d - dy: take the union so one window serves both
        lo_y, hi_y = min(lo_y, H - d - hi_y), max(hi_y, H - d - lo_y)
    win = (max(-(d - 1), lo_y), min(H - 1, hi_y), max(-(d - 1), ox - m), min(W - 1, ox + m))
    fx = np.stack([fixed, fixed[::-1]])[:, None] if mirror else fixed
    parities = 2 if mirror else 1
    # ~14 arrays of the transform size per angle and parity (6 spectra, 6 inverse transforms, masks)
    per_angle = 14 * 4 * parities * (H + 2 * d) * (W + 2 * d)
    step = max(1, int(_SEARCH_CHUNK_BYTES // per_angle))
    win, shape = _ncc_window(fx.shape[-2:], (d, d), win)
    fixed_spectra = _ncc_spectra(fx, shape, np.float32)      # once for every chunk of angles
    ncc = np.concatenate([_ncc_from_spectra(fixed_spectra, chunk, shape, win, min_overlap, centred=centred)[0]
                          .reshape(parities, -1, win[1] - win[0] + 1, win[3] - win[2] + 1)
                          for chunk in _stack_spectra(moving, angles, shape, step)], axis=1)
    out = []
    for parity in range(ncc.shape[0]):
        flat = np.where(np.isfinite(ncc[parity]), ncc[parity], -np.inf).reshape(len(angles), -1)
        k = flat.argmax(axis=1)
        for a, kk, row in zip(angles, k, flat):
            i, j = np.unravel_index(int(kk), ncc.shape[-2:])
            dy = i + win[0]
            if parity:
                dy = H - d - dy                  # back from the mirrored fixed to the mirrored moving
            cy = dy + (d - 1) / 2.0 - (H - 1) / 2.0
            cx = j + win[2] + (d - 1) / 2.0 - (W - 1) / 2.0
            if mirror:
                out.append((float(row[kk]), (-a) % 360.0 if parity else a, float(cy), float(cx), bool(parity)))
            else:
                out.append((float(row[kk]), a, float(cy), float(cx)))
    return out


def local_search(fixed: np.ndarray, moving: np.ndarray, angle_deg: float, dy_px: float, dx_px: float, *,
                 radius_px: int, min_count: int) -> tuple[float, float, float, float]:
    """Refine the translation of ``moving`` (rotated by ``angle_deg``, centre at the fixed
    centre plus (dy, dx) px) by a direct pairwise-complete correlation over integer
    offsets within +-``radius_px``. Returns ``(corr, angle_deg, dy_px, dx_px)``."""
    r = int(radius_px)
    H, W = fixed.shape
    canvas = warp_to_reference(moving, angle_deg, dy_px, dx_px, (H + 2 * r, W + 2 * r))
    oy, ox = np.mgrid[0:2 * r + 1, 0:2 * r + 1]
    corr, _ = _cell_corr_at_offsets(np.ascontiguousarray(fixed), canvas, oy.ravel().astype(np.int64),
                                     ox.ravel().astype(np.int64), int(min_count))
    if not np.isfinite(corr).any():
        return -np.inf, float(angle_deg) % 360.0, dy_px, dx_px
    k = int(np.nanargmax(corr))
    i, j = divmod(k, 2 * r + 1)
    # fixed pixel q meets canvas pixel q + (i, j): the content moves by (r - i, r - j)
    return float(corr[k]), float(angle_deg) % 360.0, dy_px + (r - i), dx_px + (r - j)


def _min_overlap_points(a: np.ndarray, b: np.ndarray, *, fraction: float) -> int:
    """Shared points a whole-surface pose needs: ``fraction`` of the smaller measured area, at least 16."""
    return max(16, int(fraction * min(np.isfinite(a).sum(), np.isfinite(b).sum())))


def register_global(reference: PreparedSurface, target: PreparedSurface,
                    params: CMCParams | None = None, *, hint: PoseHint | None = None) -> Registration:
    """Whole-surface registration of target onto reference over the full circle (or near a hinted pose).

    Coarse to fine: every ``prior_step_deg`` of the circle at ``prior_spacing_um``
    (the rotation prior; a step that does not divide 360 is lowered to the next that does; None: the
    step of :func:`rotation_step_deg` for the target's measured radius and ``prior_rim_shift_px``; the uncentred masked NCC, see :func:`masked_ncc`); its best
    ``prior_screen_per_parity`` distinct peaks of each parity, each at the angle a parabola
    through its neighbours puts it, re-scored at ``coarse_spacing_um`` (the prior alone ranks a weak true pose below
    noise on some pairs from other kits and pipelines); the best ``prior_candidates`` of
    that screen refined at ``coarse_spacing_um``, the best one at the comparison spacing. Only
    translations where the two surfaces share at least ``min_overlap`` of the
    smaller measured area count, so thin edge overlaps cannot win.

    With ``params.mirror`` the target's mirror image (rows reversed) is searched too and
    the better pose wins (``Registration.mirrored``): x3p exporters disagree on whether
    the first row is the top or the bottom of the scan (ISO 5436-2 vs. 25178-72), and
    nothing in the header says which; a rotation cannot undo a mirror.

    With ``hint`` (:class:`PoseHint`) the rotation prior searches only the angles of its grid within
    ``hint.halfwidth_deg`` of ``hint.angle_deg``, in the hint's parity; everything after the prior is unchanged.
    The prior's runner-up (``Registration.runner_up_ncc``) is then the best other pose inside that window only.

    Returns the rotation (degrees) and the translation (um) of the target centre
    relative to the reference centre, with the masked NCC at the comparison spacing.
    """
    p = params or CMCParams()
    if hint is not None and hint.mirrored and not p.mirror:
        raise ValueError("register_global: the hint is a mirrored pose but params.mirror is False; "
                         "allow the mirror search or drop the hint")
    if p.prior_step_deg:
        # a step that divides the circle (the largest not above the one asked for), so the grid's neighbours
        # are index +- 1 all round, across 0/360 too (the peaks' parabolas rely on that)
        step = 360.0 / math.ceil(360.0 / float(p.prior_step_deg) - 1e-9)
    else:
        step = rotation_step_deg(target.prior, rim_shift_px=p.prior_rim_shift_px)
    grid = np.arange(0.0, 360.0 - 1e-9, step)         # never 360 itself, whatever the rounding of step
    shift = int(p.max_shift_fraction * max(reference.prior.shape))
    mo_p = _min_overlap_points(reference.prior, target.prior, fraction=p.min_overlap)
    views = {False: target, True: mirrored(target)} if p.mirror else {False: target}
    # uncentred: both priors are zero-mean band-passed surfaces; it ranks their poses as the Pearson
    # correlation does (true pose first on every identified pair of the labelled sets) in 2/3 of the time
    if hint is None:
        prior = search_rotation(reference.prior, target.prior, grid, min_overlap=mo_p, max_shift_px=shift,
                                mirror=p.mirror, centred=False)
        if not p.mirror:
            prior = [(*t, False) for t in prior]
    else:
        f = bool(hint.mirrored)
        prior = [(*t, f) for t in search_rotation(reference.prior, views[f].prior, grid[hint.window(grid)],
                                                  min_overlap=mo_p, max_shift_px=shift, mirror=False,
                                                  centred=False)]
    at = {(f, int(round(a / step)) % len(grid)): (v, cy, cx) for v, a, cy, cx, f in prior}

    def peak_angle(a, f, cy, cx):
        """Angle of the parabola's vertex through the prior values at a and its two grid neighbours
        (a neighbour whose best translation is elsewhere is another pose: no interpolation)."""
        k = int(round(a / step))
        nb = [at.get((f, (k + o) % len(grid)), (-np.inf, np.nan, np.nan)) for o in (-1, 0, 1)]
        if not all(_same_place(cy, cx, y, x) for _, y, x in nb):
            return a
        vm, v0, vp = (t[0] for t in nb)
        den = vm - 2.0 * v0 + vp
        if not (np.isfinite(den) and den < 0):
            return a
        return (a + step * float(np.clip(0.5 * (vm - vp) / den, -0.5, 0.5))) % 360.0

    prior.sort(key=lambda t: -t[0])

    # one peak's refinement covers +- coarse_halfwidth_deg around its translation: closer peaks of the same
    # parity at the same place are the same pose; a peak at a nearby angle but elsewhere is another (on a
    # cross-kit DFSC pair a noise peak 3 degrees and 16 coarse px from the true pose out-ranked it, and an
    # angle-only rule dropped the true one unscreened)
    sep = 2.0 * p.coarse_halfwidth_deg
    screened: list[tuple[float, float, float, float, bool]] = []
    for parity in ((False, True) if p.mirror else (False,)):
        kept: list[tuple[float, float, float]] = []
        for v, a, cy, cx, f in prior:
            if len(kept) >= p.prior_screen_per_parity or v == -np.inf:
                break
            if f == parity and all(_distinct(a, f, q, f, sep) or not _same_place(cy, cx, qy, qx)
                                   for q, qy, qx in kept):
                kept.append((a, cy, cx))
                screened.append((v, peak_angle(a, f, cy, cx), cy, cx, f))
    best_prior = prior[0][0] if prior else -np.inf
    runner = -np.inf
    if prior:
        runner = next((v for v, a, _, _, f in prior[1:]
                       if _distinct(a, f, prior[0][1], prior[0][4], _RUNNER_UP_SEPARATION_DEG)), -np.inf)
    ratio = p.prior_spacing_um / p.coarse_spacing_um
    mo_c = _min_overlap_points(reference.coarse, target.coarse, fraction=p.min_overlap)
    if not screened:
        screened = [(-np.inf, 0.0, 0.0, 0.0, False)]
    # screen: each peak at its own angle, translation within +- one prior pixel, at the coarse spacing
    scored = []
    for _, a0, cy, cx, f in screened:
        c, _, sy, sx = local_search(reference.coarse, views[f].coarse, a0, cy * ratio, cx * ratio,
                                    radius_px=int(math.ceil(ratio)), min_count=mo_c)
        scored.append((c, a0, sy, sx, f))
    scored.sort(key=lambda t: -t[0])
    peaks = scored[:max(1, p.prior_candidates)]
    # refine: angles around each screened peak, translation by a local direct search (numba kernel), tracked
    # along the sweep: turning about the target centre moves the best translation of an off-centre overlap
    # (~1 mm x 1.5 degrees = 1 coarse px a step), so each angle starts from its neighbour's translation; the
    # screen's own result is the peak's angle
    hw, st = p.coarse_halfwidth_deg, p.coarse_step_deg
    n_side = int(math.floor(hw / st + 1e-9))
    coarse = []
    for c0, a0, cy, cx, f in peaks:
        coarse.append((c0, a0 % 360.0, cy, cx, f))
        for sign in (1.0, -1.0):
            y, x = cy, cx
            for k in range(1, n_side + 1):
                c, a, y, x = local_search(reference.coarse, views[f].coarse, a0 + sign * k * st, y, x,
                                          radius_px=int(math.ceil(ratio)), min_count=mo_c)
                coarse.append((c, a, y, x, f))
    v, ang, cy, cx, flip = max(coarse, key=lambda t: t[0])
    ratio = p.coarse_spacing_um / p.spacing_um
    mo_f = _min_overlap_points(reference.fine, target.fine, fraction=p.min_overlap)
    fs = p.fine_step_deg
    fine = [local_search(reference.fine, views[flip].fine, ang + o, cy * ratio, cx * ratio,
                         radius_px=int(math.ceil(ratio)) + 1, min_count=mo_f)
            for o in np.arange(-st / 2, st / 2 + 1e-9, fs)]
    v, ang, cy, cx = max(fine, key=lambda t: t[0])
    s = reference.spacing_um
    return Registration(angle_deg=float(ang), dy_um=cy * s, dx_um=cx * s, ncc=float(v),
                        prior_deg=tuple(a for _, a, _, _, _ in peaks), mirrored=bool(flip), prior_ncc=float(best_prior),
                        runner_up_ncc=float(runner))


def register_thorough(reference: PreparedSurface, target: PreparedSurface, params: CMCParams | None = None, *,
                      peaks_per_parity: int | None = None) -> Registration:
    """Slow, wide registration of target onto reference: the whole circle searched at the coarse spacing.

    :func:`register_global` finds its candidate poses in a rotation prior at ``prior_spacing_um``; on some
    pairs from different kits or upstream pipelines that prior's best translation at the true angle lies
    elsewhere, and no screen of its peaks recovers the pose (DFSC K027gA3 against the raw Baldwin K013sA2:
    fine NCC 0.13-0.17 in five rotation draws, where this search finds 0.22-0.24). This search asks the question
    again at ``coarse_spacing_um``: every angle of the circle (the step of :func:`rotation_step_deg` for the
    target's coarse view, about 1.3 degrees for a 1.7 mm breech face), both mirror parities, every
    translation (Pearson masked NCC by FFT, :func:`search_rotation`); the best distinct poses of each parity are
    refined at the comparison spacing over +- one step (:func:`local_search`, the same final stage and
    objective as :func:`register_global`). About 10 times the time of :func:`register_global` (2-3 s a pair
    on one core; a whole comparison ~8 times): a second look at a pair an examiner doubts, not the default of every comparison.

    Parameters
    ----------
    reference, target : PreparedSurface
    params : CMCParams, optional
        Spacings, overlap, shift range, mirror search and fine step as for :func:`register_global`.
    peaks_per_parity : int, keyword-only
        Distinct coarse poses of each mirror parity refined (an angle more than ``2 coarse_halfwidth_deg``
        away, or a translation more than two coarse pixels away); default ``prior_screen_per_parity``, as many
        as the standard search screens. Refining costs little beside the coarse search, and a weak true pose
        can rank below a few chance poses between two grid angles (K027gA3 vs K013sA2 in one orientation:
        7th).

    Returns
    -------
    Registration
        As :func:`register_global`; ``prior_ncc`` and ``runner_up_ncc`` are the best and the best distinct
        other pose of the coarse search (Pearson NCC at ``coarse_spacing_um``, not the prior's statistic).
    """
    p = params or CMCParams()
    per = p.prior_screen_per_parity if peaks_per_parity is None else int(peaks_per_parity)
    if per < 1:
        raise ValueError(f"register_thorough: peaks_per_parity must be >= 1, got {per}")
    ref_c, tgt_c = reference.coarse, target.coarse
    mo_c = _min_overlap_points(ref_c, tgt_c, fraction=p.min_overlap)
    step = rotation_step_deg(tgt_c, rim_shift_px=p.prior_rim_shift_px)
    grid = np.arange(0.0, 360.0 - 1e-9, step)
    found = search_rotation(ref_c, tgt_c, grid, min_overlap=mo_c, max_shift_px=int(p.max_shift_fraction * max(ref_c.shape)),
                            mirror=p.mirror, centred=True)
    if not p.mirror:
        found = [(*t, False) for t in found]
    found.sort(key=lambda t: -t[0])
    sep = 2.0 * p.coarse_halfwidth_deg
    kept: list[tuple[float, float, float, float, bool]] = []
    for v, a, cy, cx, f in found:
        if v == -np.inf:
            break
        if sum(kf == f for *_, kf in kept) < per and \
                all(_distinct(a, f, ka, kf, sep) or not _same_place(cy, cx, ky, kx) for _, ka, ky, kx, kf in kept):
            kept.append((v, a, cy, cx, f))
    if not kept:
        kept = [(-np.inf, 0.0, 0.0, 0.0, False)]
    views = {False: target, True: mirrored(target)} if p.mirror else {False: target}
    ratio = p.coarse_spacing_um / p.spacing_um
    mo_f = _min_overlap_points(reference.fine, target.fine, fraction=p.min_overlap)
    n_side = int(math.ceil(step / p.fine_step_deg))
    best = (-np.inf, 0.0, 0.0, 0.0, False)
    for _, a0, cy, cx, f in kept:
        for o in np.linspace(-step, step, 2 * n_side + 1):
            c, ang, y, x = local_search(reference.fine, views[f].fine, a0 + o, cy * ratio, cx * ratio,
                                        radius_px=int(math.ceil(ratio)) + 1, min_count=mo_f)
            if c > best[0]:
                best = (c, ang, y, x, f)
    v, ang, cy, cx, flip = best
    s = reference.spacing_um
    return Registration(angle_deg=float(ang), dy_um=cy * s, dx_um=cx * s, ncc=float(v),
                        prior_deg=tuple(a for _, a, _, _, _ in kept), mirrored=bool(flip),
                        prior_ncc=float(kept[0][0]), runner_up_ncc=float(kept[1][0]) if len(kept) > 1 else float("nan"))


def invert_registration(reg: Registration) -> Registration:
    """The registration of reference onto target implied by ``reg`` (target onto reference).

    For a mirrored ``reg`` the result maps the reference onto the *mirrored* target, which
    is how :func:`ballistic.cartridge.cmc.pair.compare_pair` runs the backward direction.
    """
    a = math.radians(reg.angle_deg)
    # p_ref = R(a) (p_t - c_t) + c_r + t  =>  p_t = R(-a) (p_ref - c_r) + c_t - R(-a) t, with
    # R(a) (dy, dx) = (cos a dy - sin a dx, sin a dy + cos a dx) (counter-clockwise as displayed)
    c, s_ = math.cos(a), math.sin(a)
    ty, tx = reg.dy_um, reg.dx_um
    iy = -(c * ty + s_ * tx)
    ix = -(-s_ * ty + c * tx)
    return Registration((-reg.angle_deg) % 360.0, iy, ix, reg.ncc, (), reg.mirrored, reg.prior_ncc, reg.runner_up_ncc)
