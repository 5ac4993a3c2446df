"""Breech faces: find the breech-face impression in a cartridge-case scan and make it comparison-ready.

All functions are stateless, take a :class:`~ballistic.surface.Surface` first and
return a new one (inputs are never mutated). Lengths are micrometres (um).
NaN means "not measured / masked" and is carried through every step by
normalized (mask-aware) convolution rather than zero-filled (the filters are those
of :mod:`ballistic.preprocess.filters`).

Pipeline for a RAW cartridge-case scan (primer, firing-pin hole and roll-off
still present), see :func:`preprocess_cartridge`:

1. :func:`find_breech_face` - locate the primer disc and the firing-pin aperture
   on a coarse copy (robust plane inliers, largest component, circle fits);
2. mask everything outside the breech-face annulus;
3. :func:`remove_trend` - robust (iteratively trimmed) plane fit over the annulus;
4. :func:`bandpass_filter` - Gaussian band-pass, cut-offs in um;
5. :func:`resample` to the common spacing (default 6.25 um) and crop to the mask.

An already processed scan (levelled, masked, band-passed; e.g. the cmcR-style
Fadul set) is detected by its small height range and only resampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage as ndi

from ballistic.errors import PreprocessError
from ballistic.preprocess.filters import (_plane_design, _require_valid, _robust_poly, bandpass_filter, crop_to_mask,
                                          remove_trend, resample)
from ballistic.surface import Surface

__all__ = [
    "BreechFaceGeometry",
    "find_breech_face",
    "looks_processed",
    "preprocess_cartridge",
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
    holes = filled & ~comp
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


def looks_processed(surface: Surface, *, max_range_um: float = 30.0) -> bool:
    """True when a scan already looks levelled and band-passed (robust height range
    after plane removal below ``max_range_um``); raw scans with primer walls,
    firing-pin impression and roll-off span far more."""
    lev = remove_trend(surface)
    lo, hi = np.nanpercentile(lev.heights, [1, 99])
    return bool(hi - lo < max_range_um)


def preprocess_cartridge(surface: Surface, *, kind: str = "auto", spacing_um: float = 6.25,
                         short_cutoff_um: float | None = 16.0, long_cutoff_um: float | None = 500.0) -> Surface:
    """Turn a breech-face scan into a comparison-ready surface.

    Parameters
    ----------
    surface : Surface
        Heights in um (as read by :func:`ballistic.io.x3p.read_x3p`).
    kind : {"auto", "raw", "processed"}, keyword-only
        ``"raw"`` runs segmentation, levelling and band-pass; ``"processed"`` only
        resamples (and crops). ``"auto"`` decides with :func:`looks_processed`.
    spacing_um : float, keyword-only
        Output pixel spacing, um (default 6.25).
    short_cutoff_um, long_cutoff_um : float or None, keyword-only
        Band-pass cut-offs for raw scans, um.

    Returns
    -------
    Surface
        Cropped to the breech face, NaN outside it; ``meta['preprocess']`` records
        the steps applied.
    """
    if kind not in ("auto", "raw", "processed"):
        raise ValueError(f"kind must be 'auto', 'raw' or 'processed', got {kind!r}")
    _require_valid(surface, "preprocess_cartridge", 100)
    if kind == "auto":
        kind = "processed" if looks_processed(surface) else "raw"
    if kind == "processed":
        out = resample(surface, spacing_um=spacing_um)
        out = crop_to_mask(out)
        return out.with_heights(out.heights, preprocess=f"processed:resample({spacing_um})")
    geom = find_breech_face(surface)
    masked = surface.with_heights(np.where(geom.mask, surface.heights, np.nan))
    lev = remove_trend(masked)
    bp = bandpass_filter(lev, short_cutoff_um=short_cutoff_um, long_cutoff_um=long_cutoff_um)
    out = crop_to_mask(resample(bp, spacing_um=spacing_um))
    return out.with_heights(out.heights, preprocess=(
        f"raw:find_breech_face(R={geom.primer_radius_um:.0f}um,aperture={geom.aperture_radius_um:.0f}um),"
        f"remove_trend,bandpass({short_cutoff_um},{long_cutoff_um}),resample({spacing_um})"))
