"""Congruent Matching Cells (CMC) comparison of two breech-face surfaces.

Coarse to fine, so that the full 360 degrees of rotation is searched:

1. rotation prior - :func:`search_rotation` over the full circle (4 degree steps)
   at a coarse 50 um spacing: whole-surface masked normalized cross-correlation,
   translation by FFT, all angles in one batched transform (real exhibits
   arrive in any orientation);
2. :func:`register_global` - the best prior peaks are refined at 25 um, the
   best of those at the comparison spacing;
3. :func:`compare_cells` - the reference is split into a grid of cells
   (:func:`cell_division`); each cell is searched, for a few angles around the
   global estimate, in a region of the target twice its size around its
   globally registered position. Translation comes from masked NCC by FFT;
   the cell score is the pairwise-complete correlation at that translation.

The counts themselves (original and High-CMC rules) live in :mod:`ballistic.score`.
Angles are degrees, counter-clockwise as displayed (row 0 on top); a result's
``(angle_deg, dy_um, dx_um)`` maps target onto reference: a target point p goes
to ``R(angle) (p - c_target) + c_reference + (dy, dx)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.fft as sfft

from ballistic import _kernels
from ballistic.preprocess import resample
from ballistic.surface import Surface

__all__ = [
    "CMCParams",
    "PreparedSurface",
    "Registration",
    "CellResult",
    "DirectionResult",
    "prepare",
    "masked_ncc",
    "search_rotation",
    "local_search",
    "register_global",
    "invert_registration",
    "cell_division",
    "compare_cells",
    "warp_to_reference",
]


@dataclass(frozen=True)
class CMCParams:
    """Tuning of the comparison. Lengths in um, angles in degrees."""

    spacing_um: float = 12.5            # comparison spacing (cells, fine registration)
    coarse_spacing_um: float = 25.0     # coarse registration
    prior_spacing_um: float = 50.0      # full-circle rotation prior
    prior_step_deg: float = 4.0
    grid: int = 8                       # cells per side
    min_cell_valid: float = 0.15        # a cell needs this fraction of measured points
    prior_candidates: int = 3           # rotation-prior peaks refined
    coarse_halfwidth_deg: float = 3.0   # refine each prior peak over +- this ...
    coarse_step_deg: float = 1.5        # ... in these steps (coarse spacing)
    fine_step_deg: float = 0.75         # then over +- half a coarse step at comparison spacing
    cell_angles_deg: tuple[float, ...] = (-6.0, -3.0, 0.0, 3.0, 6.0)  # around the global angle
    region_scale: float = 2.0           # target region side / cell side
    min_overlap: float = 0.4            # global registration
    max_shift_fraction: float = 0.3     # centre offsets searched, fraction of the reference size: overlap / smaller valid area
    cell_min_overlap: float = 0.5       # cell: shared points / cell valid points
    corr_threshold: float = 0.5         # CMC: cell correlation at least this
    translation_threshold_um: float = 25.0   # two pixels at 12.5 um
    angle_threshold_deg: float = 6.0
    high_cmc_tau: int = 1
    decision_threshold: int = 6         # C >= 6 -> identification (Song 2013)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class PreparedSurface:
    """A surface resampled, centred and cached for repeated comparison."""

    fine: np.ndarray          # heights at params.spacing_um, zero-mean, NaN outside
    coarse: np.ndarray        # heights at params.coarse_spacing_um
    prior: np.ndarray         # heights at params.prior_spacing_um (full-circle rotation search)
    spacing_um: float
    coarse_spacing_um: float
    name: str = ""


@dataclass(frozen=True)
class Registration:
    angle_deg: float
    dy_um: float
    dx_um: float
    ncc: float
    prior_deg: tuple[float, ...] = ()


@dataclass(frozen=True)
class CellResult:
    row: int
    col: int
    y0_px: int                 # top-left of the cell in the reference (comparison spacing)
    x0_px: int
    size_px: int
    valid_fraction: float
    angle_deg: float           # best absolute angle for this cell
    dy_um: float               # cell translation relative to the global registration
    dx_um: float
    corr: float                # pairwise-complete correlation at that pose
    per_angle: tuple[tuple[float, float, float, float], ...] = ()  # (angle, dy, dx, corr)


@dataclass
class DirectionResult:
    """One direction (reference cells searched in the target)."""

    registration: Registration
    cells: list[CellResult] = field(default_factory=list)


# --------------------------------------------------------------------------- preparation

def _centre_heights(h: np.ndarray) -> np.ndarray:
    out = np.array(h, dtype=np.float64, copy=True)
    m = np.isfinite(out)
    if m.any():
        out[m] -= out[m].mean()
    return np.ascontiguousarray(out)


def prepare(surface: Surface, params: CMCParams | None = None, *, name: str = "") -> PreparedSurface:
    """Resample a preprocessed breech-face surface for comparison and cache its views.

    Parameters
    ----------
    surface : Surface
        Output of :func:`ballistic.preprocess.preprocess_cartridge` (heights um).
    params : CMCParams, optional

    Returns
    -------
    PreparedSurface
    """
    p = params or CMCParams()
    if surface.valid_fraction == 0:
        raise ValueError("prepare: the surface has no valid points; preprocess it first")
    fine = _centre_heights(resample(surface, spacing_um=p.spacing_um).heights)
    coarse = _centre_heights(resample(surface, spacing_um=p.coarse_spacing_um).heights)
    if np.isfinite(fine).sum() < 4 * p.grid * p.grid:
        raise ValueError(f"prepare: only {np.isfinite(fine).sum()} valid points at {p.spacing_um} um; "
                         "the scan is too small or too sparse to compare")
    prior = _centre_heights(resample(surface, spacing_um=p.prior_spacing_um).heights)
    return PreparedSurface(fine, coarse, prior, p.spacing_um, p.coarse_spacing_um,
                           name or str(surface.meta.get("source", "")))


# --------------------------------------------------------------------------- masked NCC

def masked_ncc(fixed: np.ndarray, moving: np.ndarray, *, min_overlap: int = 16,
               shifts: tuple[int, int, int, int] | None = None,
               dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
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

    Returns
    -------
    ncc : ndarray, shape (..., Hf + Hm - 1, Wf + Wm - 1)
        ``ncc[..., i, j]`` is the Pearson correlation, over the points valid in
        both, of ``fixed[q + d]`` with ``moving[q]`` for the shift
        ``d = (i - (Hm - 1), j - (Wm - 1))``: moving pixel q lies on fixed pixel q + d.
        With ``shifts``, ``d = (i + dy_min, j + dx_min)`` instead.
    overlap : ndarray of int, same shape
        Number of shared valid points.
    """
    fm = np.isfinite(fixed)
    mm = np.isfinite(moving)
    f = np.where(fm, fixed, 0.0).astype(dtype)
    g = np.where(mm, moving, 0.0).astype(dtype)
    Hm, Wm = moving.shape[-2:]
    Hf, Wf = fixed.shape[-2:]
    if shifts is None:
        shifts = (-(Hm - 1), Hf - 1, -(Wm - 1), Wf - 1)
    y0, y1, x0, x1 = (int(v) for v in shifts)
    if not (-(Hm - 1) <= y0 <= y1 <= Hf - 1 and -(Wm - 1) <= x0 <= x1 <= Wf - 1):
        raise ValueError(f"masked_ncc: shifts {shifts} outside the possible range "
                         f"({-(Hm - 1)}..{Hf - 1}, {-(Wm - 1)}..{Wf - 1})")
    # Circular correlation of period N is exact for a requested shift d when d +- N leaves the
    # range of overlapping shifts [-(Hm - 1), Hf - 1]; a narrow window needs far smaller transforms.
    shape = (sfft.next_fast_len(max(Hf, Hm, Hf - y0, y1 + Hm), real=True),
             sfft.next_fast_len(max(Wf, Wm, Wf - x0, x1 + Wm), real=True))
    ax = (-2, -1)

    def F(x):
        return sfft.rfft2(x, s=shape, axes=ax)

    Ff, Ff2, Fm = F(f), F(f * f), F(fm.astype(dtype))
    Gg, Gg2, Gm = np.conj(F(g)), np.conj(F(g * g)), np.conj(F(mm.astype(dtype)))

    def I(x):
        return sfft.irfft2(x, s=shape, axes=ax)

    n = I(Fm * Gm)
    sf = I(Ff * Gm)
    sg = I(Fm * Gg)
    sff = I(Ff2 * Gm)
    sgg = I(Fm * Gg2)
    sfg = I(Ff * Gg)
    # circular index k holds shift d = k (k < Hf) or k - N (negative shifts)
    ry = np.arange(y0, y1 + 1) % shape[0]
    rx = np.arange(x0, x1 + 1) % shape[1]
    sel = (..., ry[:, None], rx[None, :])
    n, sf, sg, sff, sgg, sfg = (a[sel].astype(np.float64) for a in (n, sf, sg, sff, sgg, sfg))
    n = np.rint(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1.0)
        cov = sfg - sf * sg / nn
        vf = sff - sf * sf / nn
        vg = sgg - sg * sg / nn
        den = np.sqrt(np.maximum(vf, 0) * np.maximum(vg, 0))
        tol = 1e-9 * np.maximum(np.sqrt(np.maximum(sff, 0) * np.maximum(sgg, 0)), 1e-300)
        ncc = np.where((n >= max(min_overlap, 2)) & (den > tol), cov / den, np.nan)
    return np.clip(ncc, -1.0, 1.0), n.astype(np.int64)


# --------------------------------------------------------------------------- registration

def warp_to_reference(target: np.ndarray, angle_deg: float, dy_px: float, dx_px: float,
                      out_shape: tuple[int, int]) -> np.ndarray:
    """Resample ``target`` into a reference frame of ``out_shape``: rotate by ``angle_deg``
    about the target centre, put that centre on the reference centre plus (dy, dx) px."""
    ny, nx = target.shape
    oy, ox = out_shape
    return _kernels.warp_rotate(np.ascontiguousarray(target, dtype=np.float64), math.radians(angle_deg),
                                (ny - 1) / 2.0, (nx - 1) / 2.0, int(oy), int(ox),
                                (oy - 1) / 2.0, (ox - 1) / 2.0, float(dy_px), float(dx_px))


def _rotated_stack(h: np.ndarray, angles) -> tuple[np.ndarray, tuple[int, int]]:
    """``h`` rotated by each angle about its centre, on one common canvas (its diagonal)."""
    ny, nx = h.shape
    d = int(math.ceil(math.hypot(ny, nx))) | 1
    return np.stack([warp_to_reference(h, a, 0.0, 0.0, (d, d)) for a in angles]), (d, d)


def search_rotation(fixed: np.ndarray, moving: np.ndarray, angles, *, min_overlap: int,
                    max_shift_px: int | None = None) -> list[tuple[float, float, float, float]]:
    """Best translation for each rotation of ``moving`` onto ``fixed`` (masked NCC by FFT).

    Returns, per angle, ``(ncc, angle_deg, dy_px, dx_px)``: the moving centre sits at
    the fixed centre plus (dy, dx) px; ncc is -inf where no shift overlaps enough.
    """
    angles = [float(a) % 360.0 for a in angles]
    stack, (d, _) = _rotated_stack(moving, angles)
    H, W = fixed.shape
    # a shift d puts the moving centre at the fixed centre + d + (d_canvas - 1)/2 - (H - 1)/2
    oy, ox = (H - 1) // 2 - (d - 1) // 2, (W - 1) // 2 - (d - 1) // 2
    m = max(H, W, d) if max_shift_px is None else int(max_shift_px)
    win = (max(-(d - 1), oy - m), min(H - 1, oy + m), max(-(d - 1), ox - m), min(W - 1, ox + m))
    ncc, _ = masked_ncc(fixed, stack, min_overlap=min_overlap, shifts=win, dtype=np.float32)
    flat = np.where(np.isfinite(ncc), ncc, -np.inf).reshape(len(angles), -1)
    k = flat.argmax(axis=1)
    out = []
    for a, kk, row in zip(angles, k, flat):
        i, j = np.unravel_index(int(kk), ncc.shape[-2:])
        cy = i + win[0] + (d - 1) / 2.0 - (H - 1) / 2.0
        cx = j + win[2] + (d - 1) / 2.0 - (W - 1) / 2.0
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
    corr, _ = _kernels.cell_corr_at_offsets(np.ascontiguousarray(fixed), canvas, oy.ravel().astype(np.int64),
                                            ox.ravel().astype(np.int64), int(min_count))
    if not np.isfinite(corr).any():
        return -np.inf, float(angle_deg) % 360.0, dy_px, dx_px
    k = int(np.nanargmax(corr))
    i, j = divmod(k, 2 * r + 1)
    # fixed pixel q meets canvas pixel q + (i, j): the content moves by (r - i, r - j)
    return float(corr[k]), float(angle_deg) % 360.0, dy_px + (r - i), dx_px + (r - j)


def register_global(reference: PreparedSurface, target: PreparedSurface,
                    params: CMCParams | None = None) -> Registration:
    """Whole-surface registration of target onto reference over the full circle.

    Coarse to fine: every ``prior_step_deg`` of the circle at ``prior_spacing_um``
    (the rotation prior), the best ``prior_candidates`` refined at
    ``coarse_spacing_um``, the best one at the comparison spacing. Only
    translations where the two surfaces share at least ``min_overlap`` of the
    smaller measured area count, so thin edge overlaps cannot win.

    Returns the rotation (degrees) and the translation (um) of the target centre
    relative to the reference centre, with the masked NCC at the comparison spacing.
    """
    p = params or CMCParams()

    def min_ov(a, b):
        return max(16, int(p.min_overlap * min(np.isfinite(a).sum(), np.isfinite(b).sum())))

    grid = np.arange(0.0, 360.0, p.prior_step_deg)
    prior = search_rotation(reference.prior, target.prior, grid, min_overlap=min_ov(reference.prior, target.prior),
                            max_shift_px=int(p.max_shift_fraction * max(reference.prior.shape)))
    prior.sort(key=lambda t: -t[0])
    peaks: list[float] = []
    for v, a, _, _ in prior:
        if v == -np.inf:
            break
        if all(abs((a - q + 180.0) % 360.0 - 180.0) > p.prior_step_deg * 1.5 for q in peaks):
            peaks.append(a)
        if len(peaks) >= p.prior_candidates:
            break
    if not peaks:
        peaks = [0.0]
    # refine: angles around each peak, translation by a local direct search (numba kernel)
    ratio = p.prior_spacing_um / p.coarse_spacing_um
    hw, st = p.coarse_halfwidth_deg, p.coarse_step_deg
    offs = np.arange(-hw, hw + 1e-9, st)
    peak_pose = {a: (cy, cx) for v, a, cy, cx in prior}
    mo_c = min_ov(reference.coarse, target.coarse)
    coarse = []
    for a0 in peaks:
        cy, cx = peak_pose[a0]
        for o in offs:
            coarse.append(local_search(reference.coarse, target.coarse, a0 + o, cy * ratio, cx * ratio,
                                       radius_px=int(math.ceil(2 * ratio)), min_count=mo_c))
    v, ang, cy, cx = max(coarse, key=lambda t: t[0])
    ratio = p.coarse_spacing_um / p.spacing_um
    mo_f = min_ov(reference.fine, target.fine)
    fs = p.fine_step_deg
    fine = [local_search(reference.fine, target.fine, ang + o, cy * ratio, cx * ratio,
                         radius_px=int(math.ceil(ratio)) + 1, min_count=mo_f)
            for o in np.arange(-st / 2, st / 2 + 1e-9, fs)]
    v, ang, cy, cx = max(fine, key=lambda t: t[0])
    s = reference.spacing_um
    return Registration(angle_deg=float(ang), dy_um=cy * s, dx_um=cx * s, ncc=float(v), prior_deg=tuple(peaks))


# --------------------------------------------------------------------------- cells

def cell_division(heights: np.ndarray, *, grid: int = 8, min_valid: float = 0.15) -> list[tuple[int, int, int, int, int, float]]:
    """Split the valid bounding box of ``heights`` into a ``grid`` x ``grid`` array of
    square cells. Returns (row, col, y0, x0, size, valid_fraction) for the cells
    with at least ``min_valid`` measured points."""
    m = np.isfinite(heights)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return []
    r0, c0 = rows[0], cols[0]
    side = max(rows[-1] - r0 + 1, cols[-1] - c0 + 1)
    size = max(4, int(math.ceil(side / grid)))
    out = []
    for i in range(grid):
        for j in range(grid):
            y0, x0 = r0 + i * size, c0 + j * size
            blk = m[y0:y0 + size, x0:x0 + size]
            if blk.shape != (size, size):
                frac = float(blk.sum()) / (size * size)
            else:
                frac = float(blk.mean())
            if frac >= min_valid:
                out.append((i, j, int(y0), int(x0), size, frac))
    return out


def _pad_to(a: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Window [y0:y0+h, x0:x0+w] of ``a``, NaN where it leaves the array."""
    out = np.full((h, w), np.nan)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(a.shape[0], y0 + h), min(a.shape[1], x0 + w)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = a[ys:ye, xs:xe]
    return out


def compare_cells(reference: PreparedSurface, target: PreparedSurface, registration: Registration,
                  params: CMCParams | None = None) -> DirectionResult:
    """Search every reference cell in the target around the global registration.

    For each angle in ``registration.angle_deg + params.cell_angles_deg`` the
    target is warped into the reference frame; each cell is matched by masked NCC
    inside a region ``region_scale`` times its side centred on the cell's place;
    its score is the pairwise-complete correlation at the best translation
    (computed by :func:`ballistic._kernels.pairwise_complete_corr`).
    """
    p = params or CMCParams()
    ref = reference.fine
    cells = cell_division(ref, grid=p.grid, min_valid=p.min_cell_valid)
    s = reference.spacing_um
    dy0, dx0 = registration.dy_um / s, registration.dx_um / s
    per_cell: list[list[tuple[float, float, float, float]]] = [[] for _ in cells]
    if not cells:
        return DirectionResult(registration, [])
    size = cells[0][4]
    half = int(round((p.region_scale - 1.0) * size / 2.0))
    R = size + 2 * half
    cell_stack = np.stack([_pad_to(ref, y0, x0, size, size) for (_, _, y0, x0, _, _) in cells])
    for da in p.cell_angles_deg:
        ang = registration.angle_deg + da
        warped = warp_to_reference(target.fine, ang, dy0, dx0, ref.shape)
        regions = np.stack([_pad_to(warped, y0 - half, x0 - half, R, R) for (_, _, y0, x0, _, _) in cells])
        # fixed = region, moving = cell: cell pixel q lies on region pixel q + d; d = half means no shift
        # only shifts that keep the cell inside the region (d = 0 .. 2 half)
        sub, nsub = masked_ncc(regions, cell_stack, min_overlap=1, shifts=(0, 2 * half, 0, 2 * half),
                               dtype=np.float32)
        for k, (_, _, y0, x0, _, frac) in enumerate(cells):
            need = max(16, int(p.cell_min_overlap * frac * size * size))
            v = np.where(nsub[k] >= need, sub[k], np.nan)
            if not np.isfinite(v).any():
                per_cell[k].append((ang, np.nan, np.nan, np.nan))
                continue
            i, j = np.unravel_index(int(np.nanargmax(v)), v.shape)
            win = regions[k, i:i + size, j:j + size]
            corr, _ = _kernels.pairwise_complete_corr(np.ascontiguousarray(cell_stack[k]),
                                                      np.ascontiguousarray(win), need)
            per_cell[k].append((ang, (i - half) * s, (j - half) * s, float(corr)))
    out = []
    for (row, col, y0, x0, sz, frac), pa in zip(cells, per_cell):
        finite = [t for t in pa if np.isfinite(t[3])]
        if finite:
            ang, dy, dx, corr = max(finite, key=lambda t: t[3])
        else:
            ang, dy, dx, corr = registration.angle_deg, np.nan, np.nan, np.nan
        out.append(CellResult(row, col, y0, x0, sz, frac, float(ang) % 360.0, float(dy), float(dx), float(corr),
                              tuple(pa)))
    return DirectionResult(registration, out)


def invert_registration(reg: Registration) -> Registration:
    """The registration of reference onto target implied by ``reg`` (target onto reference)."""
    a = math.radians(reg.angle_deg)
    # p_ref = R(a) (p_t - c_t) + c_r + t  =>  p_t = R(-a) (p_ref - c_r) + c_t - R(-a) t, with
    # R(a) (dy, dx) = (cos a dy - sin a dx, sin a dy + cos a dx) (counter-clockwise as displayed)
    c, s_ = math.cos(a), math.sin(a)
    ty, tx = reg.dy_um, reg.dx_um
    iy = -(c * ty + s_ * tx)
    ix = -(-s_ * ty + c * tx)
    return Registration((-reg.angle_deg) % 360.0, iy, ix, reg.ncc, ())
