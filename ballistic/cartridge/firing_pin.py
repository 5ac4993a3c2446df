"""Firing-pin impressions in raw cartridge-case scans: find, extract, compare, fuse.

The firing pin leaves a deep, roughly circular crater near the centre of the
primer (0.3-1 mm in radius, tens to hundreds of um deep). It is a second,
independent toolmark next to the breech face; this module gives it its own
score and a documented way to combine the two.

* :func:`find_firing_pin` - the crater on a raw scan (primer, aperture, roll-off
  still present; e.g. the raw Fadul scans at 3.125 um or Baldwin/Cadre scans):
  the compact region near the scan centre that lies ``depth_um`` below the rim
  around it, where unmeasured points enclosed by measured ones (optical
  scanners lose the steep, dark bottom of the crater) count as deep;
* :func:`extract_firing_pin` - the crater with a collar reaching up to its rim
  (``margin_um``), cropped to a square centred on the crater. The centre is
  refined on the walls (Gauss-Newton on the residual of a rotationally
  symmetric model: a centre error leaves a dipole there), the form is removed
  (the rotationally symmetric part - the median height of every quarter-pixel
  ring about the centre, which fits a bowl, a sphere, a cone or a stepped rim
  equally - plus a robust plane for the tilt, fitted alternately), the rest is
  band-passed and resampled, and what filtering left of the symmetric part is
  removed again (it would correlate at every angle);
* :func:`compare_firing_pins` - full-circle rotation search about the crater
  centre with translation by masked NCC (:func:`ballistic.cartridge.cmc.register.search_rotation`,
  every ``angle_step_deg``), refined by a direct pairwise-complete correlation
  search at the fine spacing (:func:`ballistic.cartridge.cmc.register.local_search`); the score is
  that registered correlation;
* :func:`fuse_scores` - combine a breech-face similarity and a firing-pin score.

All lengths are micrometres (um); angles are degrees, counter-clockwise as
displayed, with the conventions of :mod:`ballistic.cartridge.cmc`.

What the real data say (defaults; ``compare_firing_pins(extract_firing_pin(a),
extract_firing_pin(b))``, best angle in brackets):

========================================  ============  ==========
pair                                      score         truth
========================================  ============  ==========
Fadul 1-1 raw vs 1-2 raw                  0.367 (16)    same
Baldwin K013sA1 vs K013sA2                0.381 (350)   same
Fadul 1-1 raw vs 2-1 raw                  0.334 (170)   different
Fadul 1-2 raw vs 2-1 raw                  0.345 (0)     different
========================================  ============  ==========

The mates score higher, but by 0.02-0.03 only: on these scans the firing pin
is weak evidence. The optical Fadul scans lose 80-97% of the crater floor, so
what is compared is a thin band of wall plus the collar, and the outlines of
the unmeasured floor (the drag notch) weigh a lot: 1-1 against 2-1 peaks where
the two notches align. The Baldwin gel scans (7.4 um) measure the floor but
show it smooth; A1 vs A2 registers at 350 deg, close to their breech-face
registration (354 deg), while A1 against a mirrored A2 (a harsh null that keeps
the mirror-symmetric drag geometry) gives 0.33 and Fadul 1-1 against a
mirrored 1-2 0.30. Variants tried and dropped: a quadric bowl, or the
symmetric model on one-pixel rings without the final symmetric clean-up (form
residuals - wall and rim steps left as thin rings - correlate at every angle: a
synthetic pair with identical craters and different marks scored 0.89), no
collar or a 100 um collar (0.1-0.3 mm^2 overlaps: scores of 0.2-0.75 at
random), finer bands (8-100 um at 3.125 um: all scores 0.11-0.28), centre
refinement on craters whose floor is unmeasured (it drifts with the dropout
pattern). :data:`FIRING_PIN_THRESHOLD` is therefore a normalisation scale for
:func:`fuse_scores`, set above every score seen here, not a validated decision
threshold: it must be fitted on a labelled set of raw scans with measured
crater floors.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from ballistic.cartridge.cmc.params import centre_heights
from ballistic.cartridge.cmc.register import local_search, search_rotation, warp_to_reference
from ballistic.errors import FiringPinError
from ballistic.preprocess.filters import bandpass_filter, resample
from ballistic.surface import Surface

__all__ = [
    "FiringPinGeometry",
    "FiringPinResult",
    "find_firing_pin",
    "extract_firing_pin",
    "compare_firing_pins",
    "fuse_scores",
    "FIRING_PIN_THRESHOLD",
]

#: Normalisation scale / provisional threshold of :attr:`FiringPinResult.score` (registered
#: correlation): above every score measured on the real pairs (0.33-0.38, same and different
#: sources alike), so the firing pin alone never identifies until it is calibrated (module notes).
FIRING_PIN_THRESHOLD = 0.5

_EXTRACT_TAG = "firing_pin:"


@dataclass(frozen=True, eq=False)
class FiringPinGeometry:
    """Where the firing-pin impression lies in a scan.

    Attributes
    ----------
    center_yx : (float, float)
        Crater centre in pixels of the input scan (row, column).
    radius_um : float
        Crater radius, um: median distance of the crater outline from the centre
        (a drag mark does not inflate it).
    mask : ndarray of bool, shape (ny, nx)
        True inside the crater outline (measured or not).
    spacing_um : float
        Pixel spacing of the input scan, um.
    depth_um : float
        Rim level minus the 5th percentile of the measured crater heights, um (a
        lower bound when the bottom was not measured).
    measured_fraction : float
        Fraction of the crater's pixels that carry a measured height.
    """

    center_yx: tuple[float, float]
    radius_um: float
    mask: np.ndarray
    spacing_um: float
    depth_um: float
    measured_fraction: float

    @property
    def radius_px(self) -> float:
        return self.radius_um / self.spacing_um


@dataclass(frozen=True)
class FiringPinResult:
    """Outcome of :func:`compare_firing_pins` (target registered onto reference).

    Attributes
    ----------
    score : float
        Pairwise-complete correlation of the two extracted impressions at the best
        pose, fine spacing; in [-1, 1] (NaN when they share too few points).
    angle_deg, dy_um, dx_um : float
        Best pose: the target rotated by ``angle_deg`` about its crater centre,
        that centre put at the reference centre plus (dy, dx) um.
    coarse_ncc : float
        Best masked NCC of the full-circle search (coarse spacing).
    angular_z : float
        How far that best NCC stands out from the NCC at all other angles:
        ``(best - median) / (1.4826 MAD)``. A true match is a sharp peak.
    overlap_mm2 : float
        Measured area the two impressions share at the best pose, mm^2.
    """

    score: float
    angle_deg: float
    dy_um: float
    dx_um: float
    coarse_ncc: float
    angular_z: float
    overlap_mm2: float

    def identification(self, threshold: float = FIRING_PIN_THRESHOLD) -> bool:
        return bool(np.isfinite(self.score) and self.score >= threshold)


# --------------------------------------------------------------------------- helpers

def _disc(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def _robust_fit(z: np.ndarray, sel: np.ndarray, *, order: int, iterations: int = 15, k: float = 3.0,
                tol_min: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Iteratively trimmed least-squares plane (order 1) or quadric (order 2) over ``sel``.

    Returns (fit over the whole grid, final inliers). Points further than
    ``max(k * 1.4826 MAD, tol_min)`` from the current fit are dropped each pass.
    """
    ny, nx = z.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    yy = (yy - ny / 2.0) / max(ny, 1)
    xx = (xx - nx / 2.0) / max(nx, 1)
    cols = [np.ones_like(xx), xx, yy] + ([xx * xx, xx * yy, yy * yy] if order >= 2 else [])
    D = np.stack(cols, axis=-1)
    inl = sel & np.isfinite(z)
    # a smooth trend needs no more than ~40k points: fit on a regular sub-grid of large windows
    step = max(1, int(math.sqrt(inl.sum() / 40_000.0)))
    sub = np.zeros_like(inl)
    sub[::step, ::step] = True
    fit = np.zeros_like(z)
    zf = np.where(np.isfinite(z), z, 0.0)
    for _ in range(iterations):
        use = inl & sub
        if use.sum() < 2 * len(cols):
            break
        coef, *_ = np.linalg.lstsq(D[use], zf[use], rcond=None)
        fit = D @ coef
        r = zf - fit
        s = 1.4826 * float(np.median(np.abs(r[use])))
        new = sel & np.isfinite(z) & (np.abs(r) <= max(k * s, tol_min))
        if np.array_equal(new, inl):
            break
        inl = new
    return fit, inl


def _largest_centred_component(region: np.ndarray, cy: float, cx: float, max_dist: float) -> np.ndarray | None:
    """The component of ``region`` that contains its own centroid (a disc, not a ring),
    is within ``max_dist`` of (cy, cx) and is largest; None when there is none."""
    lab, n = ndi.label(region)
    if n == 0:
        return None
    idx = np.arange(1, n + 1)
    sizes = np.asarray(ndi.sum(np.ones_like(lab), lab, idx), dtype=float)
    com = np.asarray(ndi.center_of_mass(np.ones_like(lab), lab, idx)).reshape(-1, 2)
    best, best_size = None, 0.0
    for k in range(n):
        y, x = com[k]
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < region.shape[0] and 0 <= ix < region.shape[1]) or lab[iy, ix] != k + 1:
            continue  # an annulus (e.g. the primer-pocket gap) does not contain its centroid
        if math.hypot(y - cy, x - cx) > max_dist:
            continue
        if sizes[k] > best_size:
            best, best_size = k + 1, sizes[k]
    return None if best is None else lab == best


#: Ring width (pixels) of the rotationally symmetric form model: sub-pixel, so that the sharp
#: steps of a crater wall or rim are modelled, not left behind as thin rings.
_RING_PX = 0.25


def _radial_model(h: np.ndarray, *, ring_px: float = _RING_PX) -> np.ndarray:
    """Rotationally symmetric part of ``h`` about the array centre: the median of every
    ring ``ring_px`` wide, linearly interpolated in radius (NaN-aware; empty rings are
    bridged). Returns the model on the whole grid."""
    ny, nx = h.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    rr = np.hypot(yy - (ny - 1) / 2.0, xx - (nx - 1) / 2.0)
    rbin = np.floor(rr / ring_px).astype(np.int64)
    nbins = int(rbin.max()) + 1
    m = np.isfinite(h)
    prof = np.full(nbins, np.nan)
    present = np.unique(rbin[m])
    if present.size:
        prof[present] = np.asarray(ndi.median(h[m], labels=rbin[m], index=present), dtype=float)
    ok = np.isfinite(prof)
    centres = (np.arange(nbins) + 0.5) * ring_px
    if ok.sum() >= 2:
        return np.interp(rr, centres[ok], prof[ok])
    return np.full(h.shape, prof[ok][0] if ok.any() else 0.0)


def _remove_crater_form(h: np.ndarray, *, iterations: int = 3) -> np.ndarray:
    """Remove the crater's form from a window centred on the crater: its rotationally
    symmetric part (:func:`_radial_model`: bowl, walls, rim of any profile) and a robust
    plane (tilt), fitted alternately."""
    plane = np.zeros_like(h)
    radial = np.zeros_like(h)
    valid = np.isfinite(h)
    for _ in range(max(1, iterations)):
        radial = _radial_model(h - plane)
        plane, _ = _robust_fit(h - radial, valid, order=1, tol_min=0.05)
    return np.where(valid, h - radial - plane, np.nan)


def _centre_correction(h: np.ndarray) -> tuple[float, float]:
    """Gauss-Newton step for the crater centre (pixels, window frame): if the window centre
    is off by d, the residual of the radial model is about ``-grad(model) . d`` - largest on
    the steep walls, so the walls pin the centre down."""
    valid = np.isfinite(h)
    radial = _radial_model(h)
    plane, _ = _robust_fit(h - radial, valid, order=1, tol_min=0.05)
    res = h - radial - plane
    gy, gx = np.gradient(radial)
    sel = valid & np.isfinite(res)
    if sel.sum() < 20:
        return 0.0, 0.0
    A = np.stack([gy[sel], gx[sel]], axis=1)
    b = -res[sel]
    # robust: drop the largest residuals (marks, dropouts) once
    d, *_ = np.linalg.lstsq(A, b, rcond=None)
    e = np.abs(A @ d - b)
    keep = e <= np.percentile(e, 90)
    if keep.sum() >= 20:
        d, *_ = np.linalg.lstsq(A[keep], b[keep], rcond=None)
    if not np.all(np.isfinite(d)):
        return 0.0, 0.0
    return float(d[0]), float(d[1])


def _window(surface: Surface, cy: float, cx: float, radius_px: float) -> np.ndarray:
    """Square window of ``surface`` whose centre pixel is the point (cy, cx) (bilinear,
    NaN-aware sub-pixel shift), NaN outside the disc of ``radius_px``."""
    half = int(math.ceil(radius_px)) + 1
    ny, nx = surface.shape
    iy, ix = int(round(cy)), int(round(cx))
    out = np.full((2 * half + 1, 2 * half + 1), np.nan)
    y0, x0 = iy - half, ix - half
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(ny, y0 + 2 * half + 1), min(nx, x0 + 2 * half + 1)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = surface.heights[ys:ye, xs:xe]
    if abs(cy - iy) > 1e-6 or abs(cx - ix) > 1e-6:
        m = np.isfinite(out)
        sh = ndi.shift(np.where(m, out, 0.0), (iy - cy, ix - cx), order=1, mode="constant")
        ms = ndi.shift(m.astype(float), (iy - cy, ix - cx), order=1, mode="constant")
        out = np.where(ms > 0.999, sh / np.maximum(ms, 1e-12), np.nan)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return np.where((yy * yy + xx * xx) <= radius_px * radius_px, out, np.nan)


# --------------------------------------------------------------------------- find

def find_firing_pin(surface: Surface, *, work_spacing_um: float = 12.5, depth_um: float = 20.0,
                    search_fraction: float = 0.35, hole_core_um: float = 40.0,
                    min_radius_um: float = 150.0, max_radius_um: float = 1500.0) -> FiringPinGeometry:
    """Find the firing-pin impression (crater) in a raw cartridge-case scan.

    Parameters
    ----------
    surface : Surface
        RAW heights, um (the firing-pin crater must still be there: scans that were
        already cropped to the breech face have none), shape (ny, nx).
    work_spacing_um : float, keyword-only
        Spacing of the working copy, um.
    depth_um : float, keyword-only
        Smallest crater depth considered (um): the outline is drawn at half the
        crater depth below the rim, but at least ``depth_um`` below it, and some
        measured wall must reach ``depth_um`` below the rim.
    search_fraction : float, keyword-only
        The crater centre must lie within this fraction of the scan's shorter
        side from the scan centre.
    hole_core_um : float, keyword-only
        Unmeasured areas enclosed by measured points count as deep when they are
        wider than about twice this (thinner gaps are dropouts along walls).
    min_radius_um, max_radius_um : float, keyword-only
        Plausible crater radii; outside them :class:`FiringPinError` is raised.

    Returns
    -------
    FiringPinGeometry
        In the pixel frame of ``surface``.

    Raises
    ------
    FiringPinError
        No compact deep region near the centre, or an implausible radius.

    Notes
    -----
    1. Working copy at ``work_spacing_um``, levelled by a robust plane (the
       primer and breech face dominate the scan).
    2. Deep points: measured points more than ``2 * depth_um`` below that plane,
       plus enclosed unmeasured areas (the crater floor of optical scans).
    3. First estimate: after an opening, the largest component near the scan
       centre that contains its own centroid (so the annular primer-pocket gap,
       which is deep too, is never taken).
    4. Rim level: 90th percentile of the measured heights within two estimated
       radii (outside the estimate); bottom: 5th percentile of its measured
       points (at most ``rim - 2 depth_um``). Crater: points below the
       half-depth level (or enclosed unmeasured) connected to the first
       estimate, holes filled, opened by a disc of a third of its radius (this
       cuts off drag marks); centre = centroid, radius = median outline distance
       (the half-depth radius, like a full width at half maximum).
    """
    if not isinstance(surface, Surface):
        raise TypeError(f"find_firing_pin expects a Surface, got {type(surface).__name__}")
    if surface.valid_fraction < 0.05:
        raise FiringPinError("find_firing_pin: fewer than 5% of the points are measured; is this a scan?")
    work = resample(surface, spacing_um=max(work_spacing_um, surface.spacing_um), min_valid=0.3)
    s = work.spacing_um
    z = work.heights
    valid = work.mask
    ny, nx = z.shape
    _, inl = _robust_fit(z, valid, order=1, tol_min=2.0)
    plane, _ = _robust_fit(z, inl, order=1, tol_min=2.0)
    lev = z - plane

    # enclosed unmeasured areas wider than ~2 hole_core_um
    miss = ~valid
    core = ndi.distance_transform_edt(miss) > hole_core_um / s
    border = np.zeros_like(miss)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    outside = ndi.binary_propagation(border & miss, mask=miss)  # unmeasured and reaching the border
    holes = ndi.binary_dilation(core & ~outside, structure=_disc(hole_core_um / s)) & miss & ~outside

    cy0, cx0 = (ny - 1) / 2.0, (nx - 1) / 2.0
    max_dist = search_fraction * min(ny, nx)
    deep0 = (valid & (lev < -2.0 * depth_um)) | holes
    deep0 = ndi.binary_opening(deep0, structure=_disc(2))
    first = _largest_centred_component(deep0, cy0, cx0, max_dist)
    if first is None:
        raise FiringPinError("find_firing_pin: no compact deep region near the scan centre; the scan must be RAW "
                             "(primer with the firing-pin crater), not a breech face already cropped and levelled")
    first = ndi.binary_fill_holes(first)
    fy, fx = ndi.center_of_mass(first)
    r0 = math.sqrt(first.sum() / math.pi)
    yy, xx = np.mgrid[0:ny, 0:nx]
    rr = np.hypot(yy - fy, xx - fx)
    around = valid & (rr <= 2.0 * r0 + 2) & ~first
    if around.sum() < 10:
        raise FiringPinError("find_firing_pin: no measured rim around the crater; the impression is cut by the "
                             "edge of the scan")
    rim = float(np.percentile(lev[around], 90))
    bottom_pts = lev[first & valid]
    bottom = rim - 2.0 * depth_um
    if bottom_pts.size >= 10:
        bottom = min(bottom, float(np.percentile(bottom_pts, 5)))
    level = min(0.5 * (rim + bottom), rim - depth_um)
    deep = ((valid & (lev < level)) | holes) & (rr <= 2.0 * r0 + 2)
    lab, _ = ndi.label(deep)
    ids = np.unique(lab[first & deep])
    ids = ids[ids > 0]
    crater = np.isin(lab, ids) if ids.size else first
    crater = ndi.binary_fill_holes(crater | first)
    r_eq = math.sqrt(crater.sum() / math.pi)
    opened = ndi.binary_opening(crater, structure=_disc(max(1.0, r_eq / 3.0)))
    if opened.sum() > 0.3 * crater.sum():
        comp = _largest_centred_component(opened, fy, fx, r_eq + 1)
        crater = opened if comp is None else comp
    cy, cx = ndi.center_of_mass(crater)
    edge = crater & ~ndi.binary_erosion(crater)
    ey, ex = np.nonzero(edge)
    radius_px = float(np.median(np.hypot(ey - cy, ex - cx))) + 0.5 if ey.size else r_eq
    radius_um = radius_px * s
    if not (min_radius_um <= radius_um <= max_radius_um):
        raise FiringPinError(f"find_firing_pin: crater radius {radius_um:.0f} um is outside the plausible "
                             f"{min_radius_um:.0f}-{max_radius_um:.0f} um; is this a raw cartridge-case scan?")
    inside = crater & valid
    measured = float(inside.sum()) / float(max(1, crater.sum()))
    depth = float(rim - np.percentile(lev[inside], 5)) if inside.any() else float("nan")
    if not (np.isfinite(depth) and depth >= depth_um):
        raise FiringPinError(f"find_firing_pin: no measured crater wall lies {depth_um:g} um below the rim (the "
                             "candidate is an unmeasured hole only); a processed scan whose aperture was masked "
                             "out has no firing-pin impression - use the RAW scan")

    # back to the input frame: the crater as a disc (its outline is what the radius describes)
    fy_, fx_ = work.shape[0] / surface.shape[0], work.shape[1] / surface.shape[1]
    cy_in = (cy + 0.5) / fy_ - 0.5
    cx_in = (cx + 0.5) / fx_ - 0.5
    r_in = radius_um / surface.spacing_um
    Y, X = np.ogrid[0:surface.shape[0], 0:surface.shape[1]]
    mask = ((Y - cy_in) ** 2 + (X - cx_in) ** 2) <= r_in ** 2
    return FiringPinGeometry((float(cy_in), float(cx_in)), float(radius_um), mask, float(surface.spacing_um),
                             depth, measured)


# --------------------------------------------------------------------------- extract

def extract_firing_pin(surface: Surface, *, geometry: FiringPinGeometry | None = None, margin_um: float = 300.0,
                       short_cutoff_um: float | None = 16.0, long_cutoff_um: float | None = 250.0,
                       spacing_um: float = 6.25, centre_iterations: int = 5,
                       work_spacing_um: float | None = None) -> Surface:
    """The firing-pin impression alone: cropped about its centre, form removed, band-passed, resampled.

    Parameters
    ----------
    surface : Surface
        RAW heights, um.
    geometry : FiringPinGeometry, optional, keyword-only
        From :func:`find_firing_pin` (found when omitted).
    margin_um : float, keyword-only
        Keep points up to ``radius_um + margin_um`` from the crater centre. The
        radius is where the wall crosses half the crater depth; the default
        collar of 300 um reaches the rim (on the Fadul and Baldwin scans), so
        the upper walls, where optical scanners still measure, are kept.
    short_cutoff_um, long_cutoff_um : float or None, keyword-only
        Gaussian band-pass cut-offs, um (the long one removes what the form
        removal leaves, e.g. a slightly off-centre wall).
    spacing_um : float, keyword-only
        Output spacing, um.
    centre_iterations : int, keyword-only
        Gauss-Newton refinements of the crater centre on the walls (0: keep the
        centre of ``geometry``). Skipped when less than half of the crater is
        measured.
    work_spacing_um : float or None, keyword-only
        A scan finer than this is first resampled to it (area average), um; default
        ``spacing_um / 2`` (3.125 um), which keeps every wavelength the band-pass passes.
        The form removal and the filters then cost what they cost on a 3.125 um scan
        (a 0.78 um scan, 24 M points: 21.7 s at its own spacing); coarser scans are used as
        they are.

    Returns
    -------
    Surface
        Heights in um, square, centred on the crater centre (so rotating about the array centre
        rotates about the crater), side ``2 (radius + margin)``; NaN outside the
        disc and where unmeasured. ``meta["preprocess"]`` starts with
        ``"firing_pin:"``; ``meta["firing_pin"]`` holds centre, radius, depth.

    Raises
    ------
    FiringPinError
        Too few measured points in the impression.
    """
    g = geometry if geometry is not None else find_firing_pin(surface)
    work = float(spacing_um) / 2.0 if work_spacing_um is None else float(work_spacing_um)
    if not work > 0:
        raise ValueError(f"extract_firing_pin: work_spacing_um must be > 0 um, got {work_spacing_um!r}")
    src = surface
    cy, cx = g.center_yx
    if surface.spacing_um < work * (1.0 - 1e-9):
        src = resample(surface, spacing_um=work)
        sy_, sx_ = src.shape[0] / surface.shape[0], src.shape[1] / surface.shape[1]
        cy, cx = (cy + 0.5) * sy_ - 0.5, (cx + 0.5) * sx_ - 0.5     # pixel centres, as resample maps them
    R = (g.radius_um + max(0.0, float(margin_um))) / src.spacing_um
    # refine the centre on the walls: a centre error leaves a dipole on them that would
    # correlate with nothing but itself
    # with most of the floor unmeasured the wall residual follows the dropout pattern, not the
    # centre error (the raw Fadul scans drift by tens of um): refine only on measured craters
    n_iter = max(0, int(centre_iterations)) if g.measured_fraction >= 0.5 else 0
    for _ in range(n_iter):
        win = _window(src, cy, cx, R)
        if np.isfinite(win).sum() < 50:
            break
        dy, dx = _centre_correction(win)
        step = math.hypot(dy, dx)
        lim = max(1.0, 0.05 * R)
        if step > lim:
            dy, dx = dy * lim / step, dx * lim / step
        cy, cx = cy + dy, cx + dx
        if math.hypot(dy, dx) < 0.05:
            break
    out = _window(src, cy, cx, R)
    if np.isfinite(out).sum() < 50:
        raise FiringPinError(f"extract_firing_pin: only {int(np.isfinite(out).sum())} measured points in the "
                             "firing-pin impression; the scan lost the crater")
    lev = _remove_crater_form(out, iterations=3)
    crop = src.with_heights(lev)
    if short_cutoff_um is not None or long_cutoff_um is not None:
        crop = bandpass_filter(crop, short_cutoff_um=short_cutoff_um, long_cutoff_um=long_cutoff_um)
    crop = resample(crop, spacing_um=spacing_um)
    # what filtering left of the rotationally symmetric part matches at every angle: remove it
    crop = crop.with_heights(crop.heights - _radial_model(crop.heights, ring_px=0.5))
    if src is not surface:                  # the centre in the input's pixels, as ``geometry`` gives it
        cy, cx = (cy + 0.5) / sy_ - 0.5, (cx + 0.5) / sx_ - 0.5
    info = {"center_yx": (float(cy), float(cx)), "found_center_yx": g.center_yx, "radius_um": g.radius_um,
            "depth_um": g.depth_um, "measured_fraction": g.measured_fraction}
    return crop.with_heights(crop.heights, firing_pin=info, preprocess=(
        f"{_EXTRACT_TAG}find(R={g.radius_um:.0f}um),radial+plane,bandpass({short_cutoff_um},{long_cutoff_um}),"
        f"resample({spacing_um})"))


# --------------------------------------------------------------------------- compare

def compare_firing_pins(a: Surface, b: Surface, *, angle_step_deg: float = 2.0, coarse_spacing_um: float = 12.5,
                        fine_spacing_um: float = 6.25, max_shift_um: float = 100.0,
                        min_overlap: float = 0.5, min_overlap_mm2: float = 0.1) -> FiringPinResult:
    """Rotation-aware comparison of two firing-pin impressions.

    Parameters
    ----------
    a, b : Surface
        Outputs of :func:`extract_firing_pin` (used as they are) or raw scans
        (extracted with the defaults). ``b`` is registered onto ``a``.
    angle_step_deg : float, keyword-only
        Step of the full-circle search at ``coarse_spacing_um``.
    coarse_spacing_um, fine_spacing_um : float, keyword-only
        Spacings (um) of the full-circle search and of the refinement.
    max_shift_um : float, keyword-only
        Largest offset between the two crater centres searched (um): the
        centres are known to about this much.
    min_overlap : float, keyword-only
        A pose counts only if the two share this fraction of the smaller
        measured area.
    min_overlap_mm2 : float, keyword-only
        Below this shared measured area (mm^2) at the best pose the score is NaN:
        too little surface for a correlation to mean anything.

    Returns
    -------
    FiringPinResult

    Notes
    -----
    Both impressions are centred on their crater, so the rotation about the
    array centre is a rotation about the crater and only small translations are
    searched. The full circle is searched with masked NCC by FFT for every
    angle (:func:`ballistic.cartridge.cmc.register.search_rotation`); the best angle is refined
    over +-``angle_step_deg`` in half steps with a direct pairwise-complete
    correlation (:func:`ballistic.cartridge.cmc.register.local_search`) at the fine spacing.
    """
    pa = a if str(a.meta.get("preprocess", "")).startswith(_EXTRACT_TAG) else extract_firing_pin(a)
    pb = b if str(b.meta.get("preprocess", "")).startswith(_EXTRACT_TAG) else extract_firing_pin(b)
    ca = centre_heights(resample(pa, spacing_um=coarse_spacing_um).heights)
    cb = centre_heights(resample(pb, spacing_um=coarse_spacing_um).heights)
    na, nb = int(np.isfinite(ca).sum()), int(np.isfinite(cb).sum())
    if min(na, nb) < 50:
        raise FiringPinError(f"compare_firing_pins: too few measured points ({na}, {nb}) at {coarse_spacing_um} um")
    mo = max(16, int(min_overlap * min(na, nb)))
    angles = np.arange(0.0, 360.0, angle_step_deg)
    res = search_rotation(ca, cb, angles, min_overlap=mo, max_shift_px=int(math.ceil(max_shift_um / coarse_spacing_um)))
    vals = np.array([r[0] for r in res])
    fin = np.isfinite(vals)
    if not fin.any():
        # e.g. a crater whose measured walls lie outside the other's measured disc: nothing to compare
        return FiringPinResult(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0.0)
    k = int(np.argmax(np.where(fin, vals, -np.inf)))
    best_ncc, ang, dy, dx = res[k]
    others = vals[fin]
    med = float(np.median(others))
    mad = 1.4826 * float(np.median(np.abs(others - med)))
    z = (best_ncc - med) / mad if mad > 0 else float("nan")
    fa = centre_heights(resample(pa, spacing_um=fine_spacing_um).heights)
    fb = centre_heights(resample(pb, spacing_um=fine_spacing_um).heights)
    ratio = coarse_spacing_um / fine_spacing_um
    mo_f = max(16, int(min_overlap * min(np.isfinite(fa).sum(), np.isfinite(fb).sum())))
    q = angle_step_deg / 2.0
    cands = [local_search(fa, fb, ang + o, dy * ratio, dx * ratio, radius_px=int(math.ceil(ratio)) + 1,
                          min_count=mo_f) for o in np.arange(-angle_step_deg, angle_step_deg + 1e-9, q)]
    corr, fang, fdy, fdx = max(cands, key=lambda t: t[0])
    warped = warp_to_reference(fb, fang, fdy, fdx, fa.shape)
    shared_mm2 = float((np.isfinite(fa) & np.isfinite(warped)).sum()) * fine_spacing_um ** 2 / 1e6
    if not np.isfinite(corr) or shared_mm2 < min_overlap_mm2:
        corr = float("nan")
    return FiringPinResult(float(corr), float(fang) % 360.0, float(fdy * fine_spacing_um),
                           float(fdx * fine_spacing_um), float(best_ncc), float(z), shared_mm2)


# --------------------------------------------------------------------------- fuse

def fuse_scores(breech_face_similarity: float | None, firing_pin_score: float | None, *,
                breech_face_threshold: float = 6.0, firing_pin_threshold: float = FIRING_PIN_THRESHOLD,
                weights: tuple[float, float] = (0.5, 0.5),
                breech_face_log10_lr: Callable[[float], float] | None = None,
                firing_pin_log10_lr: Callable[[float], float] | None = None) -> float:
    """Combine a breech-face similarity and a firing-pin score into one number.

    Parameters
    ----------
    breech_face_similarity : float or None
        :attr:`ballistic.cartridge.cmc.pair.PairResult.similarity` (CMC count plus the mean
        correlation of its cells). None or NaN when there is no breech face.
    firing_pin_score : float or None
        :attr:`FiringPinResult.score` (registered correlation). None or NaN when
        there is no firing-pin impression (e.g. processed scans).
    breech_face_threshold, firing_pin_threshold : float, keyword-only
        Each score's own identification threshold (C >= 6; see
        :data:`FIRING_PIN_THRESHOLD`).
    weights : (float, float), keyword-only
        Weights of the breech face and the firing pin in the normalised mode.
    breech_face_log10_lr, firing_pin_log10_lr : callable, optional, keyword-only
        Calibrations: score -> log10 likelihood ratio (same source vs different
        source), e.g. fitted by logistic regression on a reference population.

    Returns
    -------
    float
        *Normalised mode* (no calibrations): each score divided by its own
        threshold (so 1.0 means "exactly at that toolmark's identification
        threshold"), clipped to [0, 3] so one overwhelming score cannot hide a
        clear exclusion by the other, then the weighted mean over the scores
        present. Fused >= 1 reads "at least at the identification threshold on
        the weighted evidence". NaN when neither score is present.

        *Calibrated mode* (both calibrations given): the sum of the log10
        likelihood ratios of the scores present, valid when the two marks are
        conditionally independent given the source (breech face and firing pin
        are different tool surfaces).

    Raises
    ------
    ValueError
        Only one calibration given, or non-positive thresholds or weights.
    """
    def present(x):
        return x is not None and np.isfinite(x)

    if (breech_face_log10_lr is None) != (firing_pin_log10_lr is None):
        raise ValueError("give both calibrations (breech_face_log10_lr and firing_pin_log10_lr) or neither: "
                         "a log-LR cannot be added to an uncalibrated score")
    if breech_face_log10_lr is not None:
        parts = []
        if present(breech_face_similarity):
            parts.append(float(breech_face_log10_lr(float(breech_face_similarity))))
        if present(firing_pin_score):
            parts.append(float(firing_pin_log10_lr(float(firing_pin_score))))
        return float(sum(parts)) if parts else float("nan")
    if not (breech_face_threshold > 0 and firing_pin_threshold > 0):
        raise ValueError("thresholds must be positive")
    wb, wf = (float(w) for w in weights)
    if wb < 0 or wf < 0 or wb + wf <= 0:
        raise ValueError(f"weights must be non-negative and not both zero, got {weights!r}")
    num = den = 0.0
    if present(breech_face_similarity):
        num += wb * float(np.clip(float(breech_face_similarity) / breech_face_threshold, 0.0, 3.0))
        den += wb
    if present(firing_pin_score):
        num += wf * float(np.clip(float(firing_pin_score) / firing_pin_threshold, 0.0, 3.0))
        den += wf
    return num / den if den > 0 else float("nan")
