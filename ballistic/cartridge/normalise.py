"""One normalisation for every breech-face scan, whatever pipeline it came through.

A Focal Point receives scans that are raw (primer, firing-pin hole, roll-off still
there), or already cropped, levelled and filtered by someone else's software, each
pipeline with its own mask, band and edge handling.
:func:`ballistic.cartridge.breech_face.preprocess_cartridge` brings them onto equal terms with
the parameters (:class:`NormalisationParams`) and steps (:func:`drop_islands`,
:func:`roll_off_bands`) held here, and its output is (to well under 1 % RMS) a fixed point of itself:

1. **segment** raw scans only (:func:`ballistic.cartridge.breech_face.find_breech_face`: primer disc
   and firing-pin aperture found by geometry, fixed margins in um); scans that already
   hold only the breech face keep their own mask;
2. **resample** to the output spacing (area-weighted when coarsening: the output grid is
   the short-wavelength limit; the comparison itself averages to 12.5 um);
3. repeat until nothing changes (at most ``max_passes``):
   a. **drop islands** (measured fragments under 1 % of the measured area) and **crop**
      (the form's knots are laid on the cropped box, so cropping again changes nothing);
   b. **remove the form** by least squares onto a fixed smooth space - cubic B-splines with
      knots every 1000 um plus cubic Legendre polynomials (:func:`ballistic.preprocess.form.remove_form`,
      cut-off 2000 um). A least-squares fit is a projection: fitting its residual again
      removes nothing, where a Gaussian high-pass attenuates the band edges again on every
      pass (10-20 % RMS on real scans);
   c. **reject** heights more than 6 robust standard deviations off the form (dust, dents,
      walls, plateaus or steep roll-off the segmentation let through) and fit again.
   Optionally (``trim_roll_off``) edge bands whose median departs from zero are trimmed
   too (:func:`roll_off_bands`); off by default, see below.

What was applied is recorded in ``meta["provenance"]`` (JSON-able) and, as one line, in
``meta["preprocess"]``.

Why these choices (measured on DFSC, 17 scans, 136 pairs, three upstream pipelines):

* the old code only resampled "processed" scans, so each pipeline's own band, waviness and
  edge roll-off (the K004 pipeline kept 50-100 um of primer-edge and aperture roll-off,
  -4 to -10 um against ~0.5 um of texture, and all its waviness) went into every
  cross-pipeline correlation;
* the form cut-off: the primer's own shape (tilt, dome, the bulge of a fired primer) spans
  the whole primer (4.4 mm for small pistol primers); breech-face marks, including the
  broad undulations of the breech face, are shorter than the ~3 mm breech-face region. A
  2000 um cut-off (half that region) removes the primer's form and keeps the marks. With a
  500 um cut-off (the literature's Gaussian value) same-gun pairs across pipelines lost
  their registration: DFSC AUC of the CMC count 0.97 (2000 um: 0.99), registration NCC
  AUC 0.99 (1.00). The sharp least-squares cut keeps everything below ~1600 um fully,
  where a 500 um Gaussian already attenuates 300-1000 um;
* roll-off trimming (edge bands 3 sigma off, continued while 1.5 sigma off) did not help
  on DFSC at 2000 um (CMC AUC 1.00 vs 0.99, registration AUC equal) but on K004 scans it
  kept peeling bands off as the texture sigma shrank (up to 28 % of the area, not always
  converging, so not idempotent); the 6 sigma rejection removes the deep roll-off anyway.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.ndimage as ndi

from ballistic.surface import Surface

__all__ = ["NORMALISATION_VERSION", "NormalisationParams", "normalisation_key", "roll_off_bands", "drop_islands",
           "rms"]

NORMALISATION_VERSION = "breech-face-norm/1"


@dataclass(frozen=True)
class NormalisationParams:
    """Physical parameters of the normalisation (lengths in um); see the module notes.

    Defaults are physical, not fitted: ``form_cutoff_um`` about half the breech-face
    region of a small pistol primer; ``reject_sigma`` 6 (beyond the 4.685 sigma at which a
    robust fit already gives a point no weight; Gaussian texture exceeds it once in 5e8);
    roll-off bands (optional) within 200 um of an edge, started at 3 sigma (a 45 degree ring
    sector of texture correlated over 50-100 um has ~10-20 independent samples, so its
    median scatters by ~0.35 sigma) and continued while 1.5 sigma off.
    """

    spacing_um: float = 6.25
    form_cutoff_um: float = 2000.0
    short_cutoff_um: float | None = None      # optional Gaussian S-filter (not idempotent)
    trim_roll_off: bool = False               # measured: no gain on DFSC, and it peels (see module notes)
    roll_off_max_um: float = 200.0
    roll_off_start_sigma: float = 3.0
    roll_off_continue_sigma: float = 1.5
    roll_off_band_um: float = 12.5
    roll_off_sectors: int = 8
    interior_um: float = 250.0                # texture sigma measured this far from every edge
    aperture_min_um: float = 200.0            # interior holes wider than this are apertures
    min_island_fraction: float = 0.01
    reject_sigma: float = 6.0                 # heights this many robust sigmas off the form are not texture
    max_passes: int = 8
    settle_points: int = 10                   # a pass flagging no more than this many points ends the loop
    max_trim_fraction: float = 0.4            # stop trimming (and say so) beyond this share of the area

    def as_dict(self) -> dict:
        return asdict(self)


def normalisation_key(params: "NormalisationParams | None" = None) -> str:
    """A key (hex) for caches of normalised scans: the version, the parameters and a digest of the
    source files the normalisation runs (reading, filters, form removal, this module, the breech face),
    so an edit of any of them invalidates what was cached with the old code.

    Parameters
    ----------
    params : NormalisationParams, optional
        The parameters used (default: the defaults).
    """
    import hashlib
    import json

    from ballistic.io.digest import source_digest

    p = params if params is not None else NormalisationParams()
    h = hashlib.sha256()
    for part in (NORMALISATION_VERSION, json.dumps(p.as_dict(), sort_keys=True),
                 source_digest("io/*.py", "preprocess/*.py", "cartridge/normalise.py", "cartridge/breech_face.py",
                               "surface.py")):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def drop_islands(surface: Surface, *, min_fraction: float = 0.01) -> tuple[Surface, float]:
    """Mask measured fragments (8-connected) holding less than ``min_fraction`` of the
    measured area. Returns the surface and the fraction of measured points removed."""
    m = surface.mask
    total = int(m.sum())
    if total == 0:
        return surface, 0.0
    lab, n = ndi.label(m, structure=np.ones((3, 3), bool))
    if n <= 1:
        return surface, 0.0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes < min_fraction * total
    small[0] = False
    drop = small[lab]
    if not drop.any():
        return surface, 0.0
    return surface.with_heights(np.where(drop, np.nan, surface.heights)), float(drop.sum()) / total


def _edge_distances(mask: np.ndarray, spacing_um: float, aperture_min_um: float):
    """Distance (um) of every pixel to the outer edge of the measured region and to the
    nearest large interior hole (the firing-pin aperture); small dropouts do not count."""
    filled = ndi.binary_fill_holes(mask)
    d_out = ndi.distance_transform_edt(filled) * spacing_um
    holes = filled & ~mask
    lab, n = ndi.label(holes)
    big = np.zeros_like(mask)
    if n:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        sizes[0] = 0
        big = (sizes * spacing_um ** 2 >= aperture_min_um ** 2)[lab]
    d_in = ndi.distance_transform_edt(~big) * spacing_um if big.any() else np.full(mask.shape, np.inf)
    return filled, d_out, d_in


def roll_off_bands(surface: Surface, *, max_depth_um: float = 200.0, start_sigma: float = 3.0,
                   continue_sigma: float = 1.5, band_um: float = 12.5, sectors: int = 8, min_points: int = 20,
                   interior_um: float = 250.0, aperture_min_um: float = 200.0) -> tuple[np.ndarray, dict]:
    """Find edge bands whose heights depart systematically from zero (roll-off).

    Parameters
    ----------
    surface : Surface
        Form-removed heights in um (NaN = missing), e.g. from :func:`ballistic.preprocess.form.remove_form`.
    max_depth_um : float, keyword-only
        Deepest band (um from the edge) that can be flagged.
    start_sigma, continue_sigma : float, keyword-only
        In each sector the bands are scanned from the edge inwards. The band at the edge
        starts a trim when the median of its heights is more than ``start_sigma`` robust
        standard deviations of the interior texture away from zero; the trim then extends
        over the following bands while their medians stay ``continue_sigma`` away (one
        quieter band may interrupt the run).
    band_um : float, keyword-only
        Width of the bands (um; at least one pixel).
    sectors : int, keyword-only
        Angular sectors around the centre of the measured region, each with its own depth
        for the outer edge and for the aperture edge.
    min_points : int, keyword-only
        A band with fewer measured points ends the scan of its sector.
    interior_um : float, keyword-only
        The texture's robust standard deviation (1.4826 MAD) is taken over points at least
        this far from every edge (over all points when fewer than 200 are).
    aperture_min_um : float, keyword-only
        Interior holes smaller than a square of this side are dropouts, not an aperture.

    Returns
    -------
    trim : ndarray of bool, shape ``surface.shape``
        True on measured points in a roll-off band.
    info : dict
        ``sigma_um`` and, per edge (``outer``, ``aperture``), the trimmed depth (um) of each sector.
    """
    if not continue_sigma <= start_sigma:
        raise ValueError(f"continue_sigma ({continue_sigma}) must not exceed start_sigma ({start_sigma})")
    z = surface.heights
    m = surface.mask
    sp = surface.spacing_um
    info: dict = {"sigma_um": None, "outer": [0.0] * sectors, "aperture": [0.0] * sectors}
    trim = np.zeros_like(m)
    if m.sum() < 100:
        return trim, info
    filled, d_out, d_in = _edge_distances(m, sp, aperture_min_um)
    interior = m & (np.minimum(d_out, d_in) >= interior_um)
    ref = z[interior] if interior.sum() >= 200 else z[m]
    sigma = 1.4826 * float(np.median(np.abs(ref - np.median(ref))))
    info["sigma_um"] = sigma
    if not np.isfinite(sigma) or sigma <= 0:
        return trim, info
    cy, cx = ndi.center_of_mass(filled)
    yy, xx = np.indices(z.shape)
    sector = (((np.arctan2(yy - cy, xx - cx) + math.pi) / (2 * math.pi)) * sectors).astype(int) % sectors
    bw = max(band_um, sp)
    nbins = int(math.ceil(max_depth_um / bw))
    for name, dist, other in (("outer", d_out, d_in), ("aperture", d_in, d_out)):
        near = m & (dist <= other) & (dist < nbins * bw + 0.5 * sp)
        if not near.any():
            continue
        band = np.clip(((dist - 0.5 * sp) / bw).astype(int), 0, nbins - 1)   # edt >= 1 px inside
        sec_near = sector[near]
        band_near = band[near]
        z_near = z[near]
        idx_near = np.flatnonzero(near)
        for k in range(sectors):
            in_k = sec_near == k
            b = band_near[in_k]
            v = z_near[in_k]
            depth = 0
            gap = 0
            for j in range(nbins):
                vj = v[b == j]
                if vj.size < min_points:
                    break
                dev = abs(float(np.median(vj))) / sigma
                if depth == 0 and j == 0:
                    if dev <= start_sigma:
                        break
                    depth = 1
                elif dev > continue_sigma:
                    depth = j + 1
                    gap = 0
                else:
                    gap += 1
                    if gap > 1:
                        break
            if depth:
                sel = idx_near[in_k][b < depth]
                trim.ravel()[sel] = True
                info[name][k] = round(depth * bw, 2)
    return trim, info


def rms(h: np.ndarray) -> float:
    """Root mean square of the finite values of ``h`` (NaN when there are none)."""
    v = h[np.isfinite(h)]
    return float(np.sqrt(np.mean(v * v))) if v.size else float("nan")
