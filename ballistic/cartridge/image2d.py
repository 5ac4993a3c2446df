"""2D reflectance images of breech faces (ring-light photographs, rendered 3D scans).

The 3D pipeline applies where it can: segment the breech face, flatten what is
not toolmark (here the illumination instead of the form), band-pass in um,
normalise the contrast, resample to a working spacing, then register and count
Congruent Matching Cells with the very same :func:`ballistic.cartridge.cmc.pair.compare_pair`
and :class:`ballistic.cartridge.cmc.params.CMCParams` (whose lengths are um).

Segmentation of a ring-light photograph (:func:`find_breech_face_image`)
------------------------------------------------------------------------
Designed on the NBIDE photographs (2592 x 1944, Ruger P95, PMC 9 mm Luger):

* the **breech-face impression** is a bright, rough (light-scattering) disc;
* around it the rounded, unmarked primer edge reflects the ring light away
  from the objective: a **dark annulus**, whose outer edge is the primer
  pocket (the case head outside it is mid-grey with the headstamp);
* inside the bright disc, the **firing-pin impression** and the primer metal
  that flowed back into the firing-pin aperture: dark crater walls and a thin
  dark outline around them.

On a copy about 640 px across, smoothed, Otsu's threshold splits dark from
bright. The bright region enclosed by the dark annulus, holes filled, is the
breech-face disc (centre = centroid, radius = median boundary distance). The
primer radius is the first radius beyond it where the *median* intensity of
the ring rises back above the threshold (the median ignores the headstamp and
stray dark areas of the case head). Dark pixels inside the disc, closed,
filled and opened, give the firing-pin aperture (the component nearest the
centre). The breech-face mask is the disc minus ``edge_margin_um`` at its
rim, minus the aperture plus ``aperture_margin_um``.

Scale
-----
A photograph has no calibrated scale (:func:`ballistic.io.image.read_image` gives
1 um per pixel and ``meta["spacing_calibrated"] = False``). Unless a spacing is
given, it is estimated from the primer: a 9 mm Luger small pistol primer is
4.45 mm (0.175 in) across, so ``spacing = 4450 um / (2 * primer radius px)``.
On the two NBIDE photographs this gives 2.19 um per pixel; the breech-face
disc then measures 3.2 mm across, like the breech-face area of the 3D Fadul
scans of the same pistol model (3.4 mm at 6.25 um after cmcR processing).

Photometric steps (:func:`preprocess_image`)
--------------------------------------------
1. illumination flattening: divide by (or subtract) a mask-aware Gaussian
   background with cut-off ``background_cutoff_um``;
2. robust contrast normalisation (median / 1.4826 MAD) and clipping at
   ``clip_sigma`` so specular highlights (saturated pixels) cannot dominate;
3. mask-aware Gaussian band-pass, cut-offs in um;
4. resample to ``output_spacing_um`` (6.25 um, as 3D scans), normalise again,
   crop to the mask.

Comparison (:func:`compare_images`) is :func:`ballistic.cartridge.cmc.pair.compare_pair`
on the preprocessed views, with the default CMC parameters: the same
12.5 um comparison spacing, 8 x 8 cells, C >= 6 identification rule.

Why an 80-1000 um band (not the 16-500 um of 3D scans)
------------------------------------------------------
Below ~50 um a ring-light photograph shows speckle: glints of micro-facets
that change with the exact lighting and do not repeat between two photographs
of the same pistol. With 16-250 um the two NBIDE photographs (same Ruger) do not
even register (masked NCC 0.06, C = 0); with 60 / 80 / 120-1000 um they register
at the same pose (15.25 deg, NCC 0.41 / 0.45 / 0.49) with C = 9 / 13 / 14, while
NBIDE 118 against NBIDE 129 mirrored (a non-match with identical statistics)
gives C = 0 / 2 / 3 and against ring-light renderings of Fadul scans (other
Ruger slides) C = 0-1. 80 um keeps the margin on both sides; the usual C >= 6
rule then needs no image-specific threshold. With the defaults, NBIDE 118 and
129 against renderings of Fadul 1-1, 2-1, 3-1, 5-1, 7-2, 9-2 give C = 0-2 (12
pairs), while renderings of Fadul 1-1 and 1-2 (same slide) match each other
through this same 2D path with C = 15.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from ballistic.cartridge.cmc.pair import PairResult, compare_pair
from ballistic.cartridge.cmc.params import CMCParams
from ballistic.errors import PreprocessError
from ballistic.preprocess.filters import bandpass_filter, crop_to_mask, gaussian_lowpass, resample
from ballistic.surface import Surface

__all__ = [
    "SMALL_PISTOL_PRIMER_DIAMETER_UM",
    "ImageBreechFaceGeometry",
    "find_breech_face_image",
    "flatten_illumination",
    "normalize_contrast",
    "preprocess_image",
    "compare_images",
]

#: Small pistol primer (9 mm Luger, .380, .40 S&W ...): 0.175 in.
SMALL_PISTOL_PRIMER_DIAMETER_UM = 4445.0

_PREPROCESS_TAG = "image2d:"


@dataclass(frozen=True)
class ImageBreechFaceGeometry:
    """Where the breech face lies in a 2D photograph (pixels of the input image).

    Attributes
    ----------
    center_yx : (float, float)
        Centre of the breech-face disc, input pixels (row, column).
    breech_face_radius_px : float
        Radius of the bright breech-face disc, input pixels.
    primer_radius_px : float
        Radius of the primer (outer edge of the dark annulus); NaN when not found.
    aperture_center_yx : (float, float)
        Centre of the firing-pin aperture region, input pixels.
    aperture_radius_px : float
        Radius of the firing-pin aperture region (0 when none was found).
    mask : ndarray of bool, shape (ny, nx)
        True on the breech-face annulus used for comparison.
    threshold : float
        The dark/bright intensity threshold used (Otsu, on the smoothed copy).
    """

    center_yx: tuple[float, float]
    breech_face_radius_px: float
    primer_radius_px: float
    aperture_center_yx: tuple[float, float]
    aperture_radius_px: float
    mask: np.ndarray
    threshold: float

    def spacing_um(self, primer_diameter_um: float = SMALL_PISTOL_PRIMER_DIAMETER_UM) -> float:
        """Nominal pixel spacing (um) implied by a primer of ``primer_diameter_um``."""
        if not (np.isfinite(self.primer_radius_px) and self.primer_radius_px > 0):
            raise PreprocessError("the primer edge was not found in this image, so its scale cannot be estimated; "
                                  "pass spacing_um=... (um per pixel) explicitly",
                                  reason="primer_edge_not_found")
        return float(primer_diameter_um) / (2.0 * self.primer_radius_px)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def _disc_boundary_radius(region: np.ndarray, cy: float, cx: float) -> float:
    edge = region & ~ndi.binary_erosion(region)
    ey, ex = np.nonzero(edge)
    if ey.size == 0:
        return 0.0
    return float(np.median(np.hypot(ey - cy, ex - cx)))


def _disc_structure(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r


def find_breech_face_image(surface: Surface, *, work_size_px: int = 640, smoothing_px: float = 2.0,
                           edge_margin_um: float = 60.0, aperture_margin_um: float = 60.0,
                           spacing_um: float | None = None,
                           primer_diameter_um: float = SMALL_PISTOL_PRIMER_DIAMETER_UM) -> ImageBreechFaceGeometry:
    """Segment a ring-light breech-face photograph: breech-face disc, primer, firing-pin aperture.

    Parameters
    ----------
    surface : Surface
        Intensities (any scale; typically [0, 1] from :func:`ballistic.io.image.read_image`),
        shape (ny, nx); NaN = missing.
    work_size_px : int, keyword-only
        Longer side of the working copy, pixels.
    smoothing_px : float, keyword-only
        Gaussian sigma on the working copy, pixels.
    edge_margin_um, aperture_margin_um : float, keyword-only
        Bands removed inside the breech-face rim and around the aperture, um
        (converted with ``spacing_um`` or, if None, the primer-based estimate).
    spacing_um : float, optional, keyword-only
        Known pixel spacing (um); otherwise estimated from the primer.
    primer_diameter_um : float, keyword-only
        Primer diameter used for the estimate (default small pistol primer).

    Returns
    -------
    ImageBreechFaceGeometry
        In the pixel frame of ``surface``.

    Raises
    ------
    PreprocessError
        When no bright disc enclosed by a dark annulus is found (not a ring-light
        breech-face photograph, or the primer is cut by the image border).
    """
    h = surface.heights
    if surface.valid_fraction < 0.5:
        raise PreprocessError("find_breech_face_image: fewer than half of the pixels are valid; this looks like a "
                              "masked or rendered view - pass segment='none' to preprocess_image",
                              reason="image_masked_view")
    ny, nx = h.shape
    f = max(ny, nx) / float(work_size_px)
    work = resample(surface, spacing_um=surface.spacing_um * f) if f > 1 else surface
    wf = surface.shape[0] / work.shape[0], surface.shape[1] / work.shape[1]
    fill = float(np.nanmedian(work.heights))
    sm = ndi.gaussian_filter(np.where(work.mask, work.heights, fill), smoothing_px)
    t = _otsu(sm[work.mask])
    dark = (sm < t) & work.mask
    dark = ndi.binary_closing(dark, iterations=1)
    wy, wx = sm.shape
    enclosed = ndi.binary_fill_holes(dark) & ~dark
    lab, n = ndi.label(enclosed)
    if n == 0:
        raise PreprocessError("find_breech_face_image: no bright region enclosed by a dark ring; is this a "
                              "ring-light photograph with the whole primer in view?",
                              reason="primer_ring_not_found")
    idx = np.arange(1, n + 1)
    sizes = np.asarray(ndi.sum(np.ones_like(lab), lab, idx), dtype=float)
    com = np.asarray(ndi.center_of_mass(np.ones_like(lab), lab, idx)).reshape(-1, 2)
    dc = np.hypot(com[:, 0] - (wy - 1) / 2.0, com[:, 1] - (wx - 1) / 2.0)
    score = sizes * (dc < 0.35 * min(wy, wx))
    k = int(np.argmax(score))
    if score[k] < 0.02 * wy * wx:
        raise PreprocessError("find_breech_face_image: the bright disc enclosed by the dark primer ring is missing "
                              "or too small (< 2% of the image); check the image shows the primer centred",
                              reason="primer_disc_not_found")
    disc = ndi.binary_fill_holes(lab == (k + 1))
    disc = ndi.binary_opening(disc, structure=_disc_structure(3))
    cy, cx = ndi.center_of_mass(disc)
    Rc = _disc_boundary_radius(disc, cy, cx)

    # primer edge: first ring beyond the disc whose median intensity is bright again
    yy, xx = np.mgrid[0:wy, 0:wx]
    rr = np.hypot(yy - cy, xx - cx)
    ri = np.rint(rr).astype(np.int64)
    rmax = int(ri.max())
    valid = work.mask
    order = np.argsort(ri[valid], kind="stable")
    rv = ri[valid][order]
    sv = sm[valid][order]
    starts = np.searchsorted(rv, np.arange(rmax + 2))
    R_primer = float("nan")
    seen_dark = False
    prev = float("nan")
    for r in range(int(Rc) + 2, rmax + 1):
        a, b = starts[r], starts[r + 1]
        if b - a < max(8, int(0.25 * 2 * math.pi * r)):  # less than a quarter of the ring in view
            break
        med = float(np.median(sv[a:b]))
        if med < t:
            seen_dark = True
        elif seen_dark:
            # sub-pixel: where the ring medians cross the threshold between r - 1 and r
            R_primer = float(r - 1) + (t - prev) / (med - prev) if med > prev else float(r)
            break
        prev = med

    # firing-pin aperture: dark structures inside the disc, nearest its centre
    inner = ndi.binary_erosion(disc, structure=_disc_structure(max(2, int(0.04 * Rc))))
    ap = ndi.binary_closing(dark & inner, iterations=2)
    ap = ndi.binary_fill_holes(ap)
    ap = ndi.binary_opening(ap, structure=_disc_structure(max(2, int(0.05 * Rc))))
    alab, an = ndi.label(ap)
    a_cy, a_cx, Ra = cy, cx, 0.0
    if an:
        aidx = np.arange(1, an + 1)
        asz = np.asarray(ndi.sum(np.ones_like(alab), alab, aidx), dtype=float)
        acom = np.asarray(ndi.center_of_mass(np.ones_like(alab), alab, aidx)).reshape(-1, 2)
        ad = np.hypot(acom[:, 0] - cy, acom[:, 1] - cx)
        ascore = asz * (ad < 0.5 * Rc)
        j = int(np.argmax(ascore))
        if ascore[j] > 0:
            a_cy, a_cx = float(acom[j, 0]), float(acom[j, 1])
            Ra = math.sqrt(asz[j] / math.pi)

    # back to input pixels (pixel centres: (i + 0.5) * f - 0.5)
    def up(y, x):
        return (y + 0.5) * wf[0] - 0.5, (x + 0.5) * wf[1] - 0.5

    fs = 0.5 * (wf[0] + wf[1])
    cy_in, cx_in = up(cy, cx)
    acy_in, acx_in = up(a_cy, a_cx)
    Rc_in, Rp_in, Ra_in = Rc * fs, R_primer * fs, Ra * fs
    if spacing_um is None:
        s = (primer_diameter_um / (2.0 * Rp_in)) if np.isfinite(Rp_in) and Rp_in > 0 else None
    else:
        s = float(spacing_um)
    if s is None:
        edge_px, ap_px = 0.03 * Rc_in, 0.03 * Rc_in  # no scale: margins relative to the disc
    else:
        edge_px, ap_px = edge_margin_um / s, aperture_margin_um / s
    Y, X = np.ogrid[0:ny, 0:nx]
    mask = ((Y - cy_in) ** 2 + (X - cx_in) ** 2) <= max(0.0, Rc_in - edge_px) ** 2
    if Ra_in > 0:
        mask &= ((Y - acy_in) ** 2 + (X - acx_in) ** 2) > (Ra_in + ap_px) ** 2
    mask &= surface.mask
    if mask.sum() < 0.01 * ny * nx:
        raise PreprocessError("find_breech_face_image: the margins leave no breech-face annulus; lower "
                              "edge_margin_um / aperture_margin_um or check the image",
                              reason="breech_face_no_annulus")
    return ImageBreechFaceGeometry((float(cy_in), float(cx_in)), float(Rc_in), float(Rp_in),
                                   (float(acy_in), float(acx_in)), float(Ra_in), mask, float(t))


def flatten_illumination(surface: Surface, *, background_cutoff_um: float = 1000.0, method: str = "divide") -> Surface:
    """Remove the large-scale illumination (vignetting, ring-light fall-off), mask-aware.

    Parameters
    ----------
    surface : Surface
        Intensities (> 0 for ``"divide"``), NaN = missing.
    background_cutoff_um : float, keyword-only
        Cut-off (um, ISO Gaussian) of the background estimate.
    method : {"divide", "subtract"}, keyword-only
        ``"divide"``: ``I / B - 1`` (relative contrast; right for a multiplicative
        illumination); ``"subtract"``: ``I - B``.

    Returns
    -------
    Surface
        Same shape and spacing; NaN where the input is NaN.
    """
    if method not in ("divide", "subtract"):
        raise ValueError(f"method must be 'divide' or 'subtract', got {method!r}")
    bg = gaussian_lowpass(surface, cutoff_um=background_cutoff_um, min_weight=1e-3).heights
    z = surface.heights
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "divide":
            floor = 1e-3 * max(float(np.nanmax(np.abs(bg))) if np.isfinite(bg).any() else 0.0, 1e-12)
            out = z / np.maximum(bg, floor) - 1.0
        else:
            out = z - bg
    return surface.with_heights(np.where(surface.mask, out, np.nan))


def normalize_contrast(surface: Surface, *, clip_sigma: float | None = 3.0) -> Surface:
    """Robust standardisation: ``(I - median) / (1.4826 MAD)``, clipped to +-``clip_sigma``.

    Parameters
    ----------
    surface : Surface
        NaN = missing.
    clip_sigma : float or None, keyword-only
        Clip limit in robust standard deviations (None: no clipping).

    Returns
    -------
    Surface
        Unitless; NaN where the input is NaN. A constant image becomes zeros.
    """
    z = surface.heights
    m = surface.mask
    if not m.any():
        raise PreprocessError("normalize_contrast: no valid pixels")
    med = float(np.median(z[m]))
    mad = 1.4826 * float(np.median(np.abs(z[m] - med)))
    if not mad > 0:
        sd = float(np.std(z[m]))
        mad = sd if sd > 0 else 1.0
    out = (z - med) / mad
    if clip_sigma is not None:
        out = np.clip(out, -clip_sigma, clip_sigma)
    return surface.with_heights(np.where(m, out, np.nan))


def _is_preprocessed(surface: Surface) -> bool:
    return str(surface.meta.get("preprocess", "")).startswith(_PREPROCESS_TAG)


def preprocess_image(surface: Surface, *, spacing_um: float | None = None, segment: str = "auto",
                     primer_diameter_um: float = SMALL_PISTOL_PRIMER_DIAMETER_UM,
                     flatten: str | None = "divide", background_cutoff_um: float = 1000.0,
                     clip_sigma: float | None = 3.0, short_cutoff_um: float | None = 80.0,
                     long_cutoff_um: float | None = 1000.0, output_spacing_um: float = 6.25,
                     edge_margin_um: float = 60.0, aperture_margin_um: float = 60.0) -> Surface:
    """Turn a 2D breech-face image into a comparison-ready view.

    Parameters
    ----------
    surface : Surface
        A photograph (:func:`ballistic.io.image.read_image`, intensities in [0, 1]) or a
        rendered 3D scan (:func:`ballistic.viz.render.render_surface_as_image`),
        shape (ny, nx); NaN = missing.
    spacing_um : float, optional, keyword-only
        Pixel spacing, um. Default: the surface's own when
        ``meta["spacing_calibrated"]`` is true (rendered scans, calibrated
        images), else estimated from the primer diameter.
    segment : {"auto", "primer", "none"}, keyword-only
        ``"primer"`` runs :func:`find_breech_face_image`; ``"none"`` keeps the
        surface's own mask. ``"auto"`` segments photographs and does not segment
        rendered scans (``meta["kind"] == "rendered"``) or surfaces that are
        mostly masked out already (valid fraction below 0.5).
    primer_diameter_um : float, keyword-only
        For the scale estimate (default: small pistol primer, 4445 um).
    flatten : {"divide", "subtract"} or None, keyword-only
        Illumination flattening (:func:`flatten_illumination`); None skips it.
    background_cutoff_um : float, keyword-only
        Cut-off of the illumination background, um.
    clip_sigma : float or None, keyword-only
        Contrast clipping (:func:`normalize_contrast`) before the band-pass.
    short_cutoff_um, long_cutoff_um : float or None, keyword-only
        Gaussian band-pass cut-offs, um.
    output_spacing_um : float, keyword-only
        Spacing of the result, um (6.25 um, as preprocessed 3D scans).
    edge_margin_um, aperture_margin_um : float, keyword-only
        Passed to :func:`find_breech_face_image`.

    Returns
    -------
    Surface
        Unitless contrast (robust z-scores), shape of the cropped breech face at
        ``output_spacing_um``, NaN outside the breech face;
        ``meta["preprocess"]`` starts with ``"image2d:"`` and records the steps;
        ``meta["spacing_estimated_um"]`` holds the input spacing used.

    Raises
    ------
    PreprocessError
        Segmentation failed, or no spacing is known and none can be estimated.
    """
    if segment not in ("auto", "primer", "none"):
        raise ValueError(f"segment must be 'auto', 'primer' or 'none', got {segment!r}")
    if spacing_um is not None and not (np.isfinite(spacing_um) and spacing_um > 0):
        raise ValueError(f"spacing_um must be a positive number of micrometres per pixel, got {spacing_um!r}")
    if surface.valid_fraction == 0:
        raise PreprocessError("preprocess_image: the image has no valid pixels")
    if segment == "auto":
        rendered = surface.meta.get("kind") == "rendered"
        segment = "none" if rendered or surface.valid_fraction < 0.5 else "primer"
    calibrated = bool(surface.meta.get("spacing_calibrated", False))
    steps = []
    geom = None
    if spacing_um is None and calibrated:
        spacing_um = surface.spacing_um
    if segment == "primer":
        geom = find_breech_face_image(surface, spacing_um=spacing_um, primer_diameter_um=primer_diameter_um,
                                      edge_margin_um=edge_margin_um, aperture_margin_um=aperture_margin_um)
        if spacing_um is None:
            spacing_um = geom.spacing_um(primer_diameter_um)
            steps.append(f"spacing_from_primer({spacing_um:.3f}um/px)")
        work = surface.with_heights(np.where(geom.mask, surface.heights, np.nan), spacing_um=spacing_um)
        steps.append("segment:primer")
    else:
        if spacing_um is None:
            raise PreprocessError("preprocess_image: the image is not calibrated and segment='none' gives no primer "
                                  "to estimate the scale from; pass spacing_um=... (um per pixel)",
                                  reason="image_uncalibrated")
        work = surface.with_heights(surface.heights, spacing_um=spacing_um)
        steps.append("segment:none")
    work = crop_to_mask(work, pad_px=2)
    # a photograph is far finer than the band-pass needs: work at half the output spacing
    inter = output_spacing_um / 2.0
    if work.spacing_um < inter:
        work = resample(work, spacing_um=inter)
    if flatten is not None:
        work = flatten_illumination(work, background_cutoff_um=background_cutoff_um, method=flatten)
        steps.append(f"flatten:{flatten}({background_cutoff_um}um)")
    work = normalize_contrast(work, clip_sigma=clip_sigma)
    steps.append(f"normalize(clip={clip_sigma})")
    if short_cutoff_um is not None or long_cutoff_um is not None:
        work = bandpass_filter(work, short_cutoff_um=short_cutoff_um, long_cutoff_um=long_cutoff_um)
        steps.append(f"bandpass({short_cutoff_um},{long_cutoff_um})")
    work = resample(work, spacing_um=output_spacing_um)
    work = normalize_contrast(work, clip_sigma=None)
    out = crop_to_mask(work)
    steps.append(f"resample({output_spacing_um})")
    meta = {"preprocess": _PREPROCESS_TAG + ",".join(steps), "spacing_estimated_um": float(spacing_um),
            "spacing_calibrated": True}
    if geom is not None:
        meta["image_geometry"] = {
            "center_yx": geom.center_yx, "breech_face_radius_px": geom.breech_face_radius_px,
            "primer_radius_px": geom.primer_radius_px, "aperture_center_yx": geom.aperture_center_yx,
            "aperture_radius_px": geom.aperture_radius_px}
    return out.with_heights(out.heights, **meta)


def compare_images(a: Surface, b: Surface, *, params: CMCParams | None = None, **preprocess_kwargs) -> PairResult:
    """Compare two 2D breech-face images (or a photograph and a rendered 3D scan) with CMC.

    Parameters
    ----------
    a, b : Surface
        Raw images (:func:`ballistic.io.image.read_image`), rendered scans
        (:func:`ballistic.viz.render.render_surface_as_image`) or outputs of
        :func:`preprocess_image` (those are used as they are); any rotation.
    params : CMCParams, optional, keyword-only
        CMC tuning; the default is the one used for 3D scans (lengths in um).
    **preprocess_kwargs
        Passed to :func:`preprocess_image` for inputs not yet preprocessed.

    Returns
    -------
    PairResult
        As :func:`ballistic.cartridge.cmc.pair.compare_pair`: ``cmc_count``,
        ``identification`` (C >= ``params.decision_threshold``), registration...
    """
    pa = a if _is_preprocessed(a) else preprocess_image(a, **preprocess_kwargs)
    pb = b if _is_preprocessed(b) else preprocess_image(b, **preprocess_kwargs)
    return compare_pair(pa, pb, params)
