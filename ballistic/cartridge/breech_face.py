"""Breech faces: find the breech-face impression in a cartridge-case scan and make it comparison-ready.

All functions are stateless, take a :class:`~ballistic.surface.Surface` first and
return a new one (inputs are never mutated). Lengths are micrometres (um).
NaN means "not measured / masked" and is carried through every step by
normalized (mask-aware) convolution rather than zero-filled (the filters are those
of :mod:`ballistic.preprocess.filters`).

:func:`preprocess_cartridge` applies one normalisation to every scan, raw or
processed by another pipeline (:mod:`ballistic.cartridge.normalise`): raw scans are
segmented first (:func:`find_breech_face`: primer disc and firing-pin aperture on a
coarse copy), then every scan is cleaned of islands, resampled to the common spacing
(default 6.25 um), freed of its form by a least-squares B-spline projection
(:func:`ballistic.preprocess.form.remove_form`, cut-off 2000 um) and of outlying
heights, and cropped to its mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage as ndi

from ballistic.cartridge.normalise import NORMALISATION_VERSION, NormalisationParams, drop_islands, rms, roll_off_bands
from ballistic.errors import PreprocessError
from ballistic.preprocess.filters import (_plane_design, _require_valid, _robust_poly, crop_to_mask, gaussian_lowpass,
                                          remove_trend, resample)
from ballistic.preprocess.form import remove_form
from ballistic.surface import Surface

__all__ = [
    "BreechFaceGeometry",
    "find_breech_face",
    "looks_processed",
    "preprocess_cartridge",
    "submitted_as_processed",
]


@dataclass(frozen=True)
class BreechFaceGeometry:
    """Where the breech-face impression lies in a raw scan (pixels of the input scan).

    ``center_yx`` and radii are in input pixels; ``mask`` (input shape) is True on
    the breech-face annulus.
    """

    center_yx: tuple[float, float]
    primer_radius_px: float
    aperture_radius_px: float
    mask: np.ndarray
    spacing_um: float

    @property
    def primer_radius_um(self) -> float:
        return self.primer_radius_px * self.spacing_um

    @property
    def aperture_radius_um(self) -> float:
        return self.aperture_radius_px * self.spacing_um


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndi.binary_fill_holes(mask)


def find_breech_face(surface: Surface, *, work_spacing_um: float = 20.0, central_fraction: float = 0.45,
                     edge_margin_um: float = 60.0, aperture_margin_um: float = 40.0,
                     max_slope: float = 0.25) -> BreechFaceGeometry:
    """Locate the breech-face annulus in a raw cartridge-case scan.

    The primer surface carrying the breech-face marks is the dominant plane in the
    middle of the scan. On a coarse copy (``work_spacing_um``) a robust plane is
    fitted over the central disc (radius ``central_fraction`` of the short side);
    its inliers form the breech face. The largest inlier component, holes filled,
    gives the primer disc (centre, radius by area); the largest hole inside it is
    the firing-pin aperture (together with the raised or sunk ring around it).

    Parameters
    ----------
    surface : Surface
        Raw heights, um.
    edge_margin_um, aperture_margin_um : float, keyword-only
        Bands (um) removed inside the primer edge (roll-off) and around the aperture.

    Returns
    -------
    BreechFaceGeometry
        In the pixel frame of ``surface``.

    Raises
    ------
    PreprocessError
        When no plausible annulus is found (e.g. the scan is not a breech face).
    """
    _require_valid(surface, "find_breech_face", 100)
    coarse = resample(surface, spacing_um=max(work_spacing_um, surface.spacing_um))
    scale = coarse.spacing_um / surface.spacing_um
    z = coarse.heights
    valid = coarse.mask
    ny, nx = z.shape
    yy, xx = _plane_design(z.shape)
    cy0, cx0 = (ny - 1) / 2.0, (nx - 1) / 2.0
    central = ((yy - cy0) ** 2 + (xx - cx0) ** 2) <= (central_fraction * min(ny, nx)) ** 2
    sel = valid & central
    if sel.sum() < 50:
        raise PreprocessError("find_breech_face: too few valid points in the centre of the scan; "
                              "is the primer centred in the field of view?",
                              reason="breech_face_centre_sparse")
    # Seed at the height mode so the fit locks onto the dominant surface, not the mean; then
    # let a plane and a quadric (primers are tilted and domed) grow the inlier set.
    zc = z[sel]
    hist, edges = np.histogram(zc, bins=100)
    mode = 0.5 * (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1])
    seed = sel & (np.abs(z - mode) < max(3 * (edges[1] - edges[0]), 5.0))
    z0 = np.where(valid, z, 0.0)
    _, inl, _ = _robust_poly(z0, sel, seed, order=1, iterations=10, k=3.0, tol_min=5.0)
    trend, inl, sigma = _robust_poly(z0, sel, inl, order=2, iterations=10, k=3.0, tol_min=5.0)
    r = np.where(valid, z - trend, np.inf)
    inl = valid & (np.abs(r) < max(3.0 * sigma, 5.0))
    # walls (primer edge, aperture rim, steps around the aperture ring) are steep
    gy, gx = np.gradient(np.where(valid, z, np.nan), coarse.spacing_um)
    steep = ~(np.hypot(gy, gx) <= max_slope)
    inl &= ~ndi.binary_dilation(steep, iterations=1)
    # a wide opening cuts the thin bridges between the breech face and the raised or sunk
    # ring that often surrounds the firing-pin aperture; the ring then falls into the hole.
    inl_open = ndi.binary_opening(inl, iterations=3)
    lab, n = ndi.label(inl_open)
    if n == 0:
        raise PreprocessError("find_breech_face: no planar breech-face region found", reason="breech_face_not_planar")
    # component with most pixels inside the central disc
    counts = np.bincount(lab[central].ravel(), minlength=n + 1)
    counts[0] = 0
    comp = lab == int(np.argmax(counts))
    filled = _fill_holes(comp)
    # the steep-wall band (1 px dilation) and the opening shaved the disc edge: give 2 px back
    disc = ndi.binary_dilation(filled, iterations=2) & valid
    area = float(disc.sum())
    if area < 0.05 * ny * nx:
        raise PreprocessError(f"find_breech_face: breech-face region too small ({area / (ny * nx):.1%} of scan)",
                              reason="breech_face_too_small")
    cy, cx = ndi.center_of_mass(disc)
    # primer radius: robust from the disc boundary distances
    edge = disc & ~ndi.binary_erosion(disc)
    ey, ex = np.nonzero(edge)
    rad = np.hypot(ey - cy, ex - cx)
    R = float(np.median(rad))
    # The aperture is the big non-planar region in the middle of the primer: a hole of the
    # primer component, or - when a drag mark or a gap in the wall band connects it to the
    # outside, so that filling holes misses it - the non-planar pixels within 0.6 R.
    yy_c, xx_c = _plane_design(disc.shape)
    central = (yy_c - cy) ** 2 + (xx_c - cx) ** 2 <= (0.6 * R) ** 2
    holes = (filled | central) & ~comp
    hl, hn = ndi.label(holes)
    aperture = np.zeros_like(disc)
    if hn:
        idx = np.arange(1, hn + 1)
        sizes = np.asarray(ndi.sum(np.ones_like(hl), hl, index=idx))
        com = ndi.center_of_mass(np.ones_like(hl), hl, index=idx)
        d = np.array([math.hypot(a - cy, b - cx) for a, b in com])
        score = sizes * (d < 0.5 * R)  # the aperture is the big hole near the middle
        k = int(np.argmax(score))
        if score[k] > 0:
            # the wall band (steep pixels + 1 px) was cut from the hole's side too: give it back
            aperture = ndi.binary_erosion(hl == (k + 1), iterations=2)
            if not aperture.any():
                aperture = hl == (k + 1)
    r_ap = math.sqrt(aperture.sum() / math.pi)
    # Work in the coarse frame with the real shapes (the aperture and its ring are rarely
    # concentric with the primer), then bring the mask to the input frame.
    edge_px = edge_margin_um / coarse.spacing_um
    ap_px = aperture_margin_um / coarse.spacing_um
    keep = ndi.distance_transform_edt(disc) > edge_px
    if aperture.any():
        keep &= ndi.distance_transform_edt(~aperture) > ap_px
    keep &= ndi.binary_closing(ndi.binary_dilation(comp, iterations=3) & inl, iterations=2)
    if keep.sum() < 0.02 * ny * nx:
        raise PreprocessError("find_breech_face: aperture and margins leave no breech-face annulus; "
                              "lower edge_margin_um / aperture_margin_um or check the scan",
                              reason="breech_face_no_annulus")
    keep_full = cv2.resize(keep.astype(np.uint8), (surface.shape[1], surface.shape[0]),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    mask = surface.mask & keep_full
    cy_in = (cy + 0.5) * scale - 0.5
    cx_in = (cx + 0.5) * scale - 0.5
    return BreechFaceGeometry((float(cy_in), float(cx_in)), float(R * scale), float(r_ap * scale), mask,
                              surface.spacing_um)


def looks_processed(surface: Surface, *, max_range_um: float = 30.0, max_points: int = 65_536) -> bool:
    """True when a scan already looks levelled and band-passed (robust height range
    after plane removal below ``max_range_um``); raw scans with primer walls,
    firing-pin impression and roll-off span far more.

    Decided on every k-th row and column, k the smallest stride that leaves at most
    ``max_points`` grid points (all of them when that sample holds fewer than 1000 measured
    points): a plane and two percentiles need no more, and the whole grid cost a quarter of the
    preprocessing of a 430 x 430 TopMatch scan and grew with the scan (a 0.78 um,
    24-million-point scan: 47 s and 3 GB). On 63 real scans (NanoFocus, TopMatch; raw and
    processed) the sampled range differs from the whole grid's by < 0.4 um, where raw scans span
    70-395 um and processed ones 5-15 um.
    """
    if max_points < 16:
        raise ValueError(f"looks_processed: max_points must be >= 16, got {max_points}")
    h = surface.heights
    k = max(1, math.ceil(math.sqrt(h.size / max_points)))
    sample = surface
    if k > 1:
        sub = np.ascontiguousarray(h[::k, ::k])
        if np.isfinite(sub).sum() >= min(1000, surface.mask.sum()):
            sample = Surface(sub, surface.spacing_um * k)
    lev = remove_trend(sample)
    lo, hi = np.nanpercentile(lev.heights, [1, 99])
    return bool(hi - lo < max_range_um)


def preprocess_cartridge(surface: Surface, *, kind: str = "auto", spacing_um: float = 6.25,
                         short_cutoff_um: float | None = None, long_cutoff_um: float = 2000.0,
                         params: NormalisationParams | None = None) -> Surface:
    """Turn a breech-face scan - raw, or processed by any pipeline - into a comparison-ready surface.

    Every scan goes through the same normalisation (:mod:`ballistic.cartridge.normalise`):
    raw scans are segmented first (:func:`find_breech_face`), then all are cleaned of
    islands, resampled to ``spacing_um``, freed of their form by a least-squares B-spline
    projection (cut-off ``long_cutoff_um``, :func:`ballistic.preprocess.form.remove_form`) and
    of heights 6 robust standard deviations off it, repeated to a fixed point, and cropped.
    Processing the output again changes heights by < 1 % RMS (0.05-0.5 % on real scans of
    five pipelines).

    Parameters
    ----------
    surface : Surface
        Heights in um (as read by :func:`ballistic.io.x3p.read_x3p`: units, spacing and NaN
        conventions are the reader's business).
    kind : {"auto", "raw", "processed"}, keyword-only
        ``"raw"`` segments the primer and firing-pin aperture first; ``"processed"``
        keeps the scan's own mask (it holds only the breech face). ``"auto"`` decides with
        :func:`looks_processed`.
    spacing_um : float, keyword-only
        Output pixel spacing, um (default 6.25); area-weighted resampling onto this grid
        is the short-wavelength limit.
    short_cutoff_um : float or None, keyword-only
        Optional extra Gaussian low-pass (um). Off by default: a Gaussian filter is not
        idempotent, and the comparison averages to 12.5 um anyway.
    long_cutoff_um : float, keyword-only
        Form cut-off, um (default 2000).
    params : NormalisationParams, optional, keyword-only
        Every parameter of the normalisation; when given it replaces ``spacing_um``,
        ``short_cutoff_um`` and ``long_cutoff_um``.

    Returns
    -------
    Surface
        Cropped to the breech face, NaN outside it; ``meta['provenance']`` records every
        step applied (JSON-able dict), ``meta['preprocess']`` sums it up in one line.

    Raises
    ------
    ballistic.errors.PreprocessError
        Too little valid data, no breech face found in a raw scan, or a size no cartridge case can
        have at the declared spacing (wrong units: :data:`PLAUSIBLE_EXTENT_UM`).
    ValueError
        ``kind`` or a cut-off is not valid.
    """
    from threadpoolctl import threadpool_limits

    if params is None:
        if long_cutoff_um is None or not long_cutoff_um > 0:
            raise ValueError(f"long_cutoff_um must be a positive number of um, got {long_cutoff_um!r}")
        params = NormalisationParams(spacing_um=spacing_um, form_cutoff_um=long_cutoff_um,
                                     short_cutoff_um=short_cutoff_um)
    with threadpool_limits(1, user_api="blas"):   # small dense solves: threads only contend
        return _normalise(surface, kind, params)


def submitted_as_processed(surface: Surface) -> Surface:
    """:func:`preprocess_cartridge` at the surface's own spacing, as a processed scan: how a synthetic
    firing (it holds only the breech face) is normalised as every submitted scan is, for benchmark
    distractors and training data alike."""
    return preprocess_cartridge(surface, kind="processed", spacing_um=surface.spacing_um)


#: Side length of a cartridge-case scan that is physically possible, um: below it a breech face has no
#: room (one comparison cell spans ~100 um); above it the scan would be wider than any cartridge head.
PLAUSIBLE_EXTENT_UM = (100.0, 100_000.0)


def _require_plausible_extent(surface: Surface, what: str) -> None:
    """Refuse a scan whose size, at its declared spacing, no cartridge case can have: the file's units
    were read wrongly (an x3p written in millimetres is read as micrometres: 1000 times too small)."""
    ny, nx = surface.shape
    extent = max(ny, nx) * surface.spacing_um
    lo, hi = PLAUSIBLE_EXTENT_UM
    if lo <= extent <= hi:
        return
    units = surface.meta.get("units_in_file")
    hint = (f"if the file stores millimetres (a spacing of {surface.spacing_um:g} mm = "
            f"{surface.spacing_um * 1000:g} um), read it with read_x3p(path, units='mm') or re-export it in "
            "metres as ISO 25178-72 asks" if extent < lo else
            "if the file stores nanometres, read it with read_x3p(path, units='nm'); if its header's "
            "increment is wrong, re-export it in metres as ISO 25178-72 asks")
    raise PreprocessError(
        f"{what}: the scan spans {extent:.4g} um ({ny} x {nx} px at {surface.spacing_um:g} um"
        f"{f', units in file read as {units!r}' if units else ''}), but a cartridge-case scan spans "
        f"{lo:g} um to {hi / 1000:g} mm; its units were probably read wrongly - {hint}")


def _normalise(surface: Surface, kind: str, params: NormalisationParams) -> Surface:
    p = params
    if kind not in ("auto", "raw", "processed"):
        raise ValueError(f"kind must be 'auto', 'raw' or 'processed', got {kind!r}")
    _require_valid(surface, "preprocess_cartridge", 100)
    _require_plausible_extent(surface, "preprocess_cartridge")
    meta = surface.meta
    prov: dict = {
        "normalisation": NORMALISATION_VERSION,
        "params": p.as_dict(),
        "input": {"spacing_um": surface.spacing_um, "shape": list(surface.shape),
                  "valid_fraction": round(surface.valid_fraction, 4),
                  **{k: meta[k] for k in ("source", "units_in_file", "instrument", "dtype_in_file", "origin",
                                          "point_storage", "invalid_points", "sentinel_points") if k in meta}},
        "steps": [],
    }
    steps = prov["steps"]
    requested = kind
    if kind == "auto":
        kind = "processed" if looks_processed(surface) else "raw"
    prov["kind"] = kind
    prov["kind_decided_by"] = "caller" if requested != "auto" else "looks_processed (height range after plane removal)"
    s = surface
    summary = []
    if kind == "raw":
        geom = find_breech_face(s)
        s = s.with_heights(np.where(geom.mask, s.heights, np.nan))
        steps.append({"step": "find_breech_face", "primer_radius_um": round(geom.primer_radius_um, 1),
                      "aperture_radius_um": round(geom.aperture_radius_um, 1), "edge_margin_um": 60.0,
                      "aperture_margin_um": 40.0})
        summary.append(f"find_breech_face(R={geom.primer_radius_um:.0f}um,aperture={geom.aperture_radius_um:.0f}um)")
    if p.short_cutoff_um is not None:
        s = gaussian_lowpass(s, cutoff_um=p.short_cutoff_um)
        steps.append({"step": "gaussian_lowpass", "cutoff_um": p.short_cutoff_um})
        summary.append(f"lowpass({p.short_cutoff_um:g})")
    if abs(s.spacing_um - p.spacing_um) > 1e-9 * p.spacing_um:
        steps.append({"step": "resample", "from_um": s.spacing_um, "to_um": p.spacing_um,
                      "method": "area average (mask-aware)" if s.spacing_um < p.spacing_um
                      else "bilinear (mask-aware)"})
        s = resample(s, spacing_um=p.spacing_um)
    summary.append(f"resample({p.spacing_um:g})")
    _require_valid(s, "preprocess_cartridge (after resampling)", 100)
    n0 = int(s.mask.sum())
    rms_in = rms(s.heights)
    converged = False
    trimmed = 0
    islands = 0
    passes = 0
    out = s
    for passes in range(1, max(1, p.max_passes) + 1):
        s, dropped = drop_islands(s, min_fraction=p.min_island_fraction)
        islands += int(round(dropped * s.mask.sum() / max(1.0 - dropped, 1e-9)))
        s = crop_to_mask(s)              # the form's knots are laid on this box: crop first
        _require_valid(s, "preprocess_cartridge (after trimming)", 100)
        out = remove_form(s, cutoff_um=p.form_cutoff_um, robust=False)
        r = out.heights[out.mask]
        sig_all = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        reject = out.mask & (np.abs(np.where(out.mask, out.heights, 0.0)) > p.reject_sigma * sig_all)
        if p.trim_roll_off:
            trim, info = roll_off_bands(out.with_heights(np.where(reject, np.nan, out.heights)),
                                        max_depth_um=p.roll_off_max_um, start_sigma=p.roll_off_start_sigma,
                                        continue_sigma=p.roll_off_continue_sigma, band_um=p.roll_off_band_um,
                                        sectors=p.roll_off_sectors, interior_um=p.interior_um,
                                        aperture_min_um=p.aperture_min_um)
        else:
            trim = np.zeros_like(reject)
            info = {"sigma_um": None, "outer": "off", "aperture": "off"}
        n_rej = int(reject.sum())
        trim |= reject
        n = int(trim.sum())
        steps.append({"step": "remove_form+reject+trim_roll_off", "pass": passes, "cutoff_um": p.form_cutoff_um,
                      "rms_after_form_um": round(rms(out.heights), 4), "robust_sigma_um": round(sig_all, 4),
                      "rejected_fraction_of_input": round(n_rej / max(n0, 1), 5),
                      "texture_sigma_um": None if info["sigma_um"] is None else round(info["sigma_um"], 4),
                      "outer_depth_um": info["outer"], "aperture_depth_um": info["aperture"],
                      "trimmed_fraction_of_input": round(n / max(n0, 1), 5)})
        if n <= p.settle_points:
            # (almost) nothing left: mask those few points and stop without refitting - a
            # refit on the remaining points would move the heights by ~1e-4 of their RMS
            converged = True
            if n:
                trimmed += n
                out = out.with_heights(np.where(trim, np.nan, out.heights))
            break
        if (trimmed + n) > p.max_trim_fraction * n0:
            break                        # keep the last untrimmed result; say it did not converge
        trimmed += n
        s = s.with_heights(np.where(trim, np.nan, s.heights))
    prov["converged"] = converged
    prov["passes"] = passes
    steps.append({"step": "summary", "form": f"robust least-squares cubic B-spline, knots every "
                  f"{p.form_cutoff_um / 2:g} um (cut-off {p.form_cutoff_um:g} um)",
                  "rms_before_um": round(rms_in, 4), "trimmed_fraction": round(trimmed / max(n0, 1), 5),
                  "islands_fraction": round(islands / max(n0, 1), 5)})
    summary.append(f"remove_form({p.form_cutoff_um:g})")
    summary.append(f"reject({p.reject_sigma:g}sigma)")
    summary.append(f"trim_roll_off({trimmed / max(n0, 1):.1%}{'' if converged else ',not converged'})"
                   if p.trim_roll_off else "trim_roll_off(off)")
    prov["output"] = {"spacing_um": out.spacing_um, "shape": list(out.shape),
                      "valid_fraction": round(out.valid_fraction, 4), "rms_um": round(rms(out.heights), 4)}
    return out.with_heights(out.heights, preprocess=f"{kind}:" + ",".join(summary), provenance=prov)
