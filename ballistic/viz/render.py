"""Render a 3D topography as a 2D view: hillshade (Lambertian) images and PNG export.

Examiners look at light and shadow, not at height maps; and 2D reflectance images
(comparison-microscope or ring-light photos) can only be compared with a 3D scan
once the scan has been *rendered* under some lighting. This module does both:

* :func:`shade` - Lambertian shading of the surface normals under a directional
  light (one azimuth) or a ring of lights (several azimuths averaged);
* :func:`render_surface_as_image` - the shaded view as an intensity
  :class:`~ballistic.surface.Surface` (same grid and spacing, ``meta["kind"] ==
  "rendered"``), ready for :func:`ballistic.cartridge.image2d.preprocess_image` /
  :func:`ballistic.cartridge.image2d.compare_images`;
* :func:`to_png` / :func:`to_png_bytes` - 8-bit grayscale PNG, missing pixels
  white or transparent;
* :func:`save_figure` - a matplotlib figure written atomically (every figure of the project: explanation,
  benchmark plots, the service's bullet and firing-pin figures).

Conventions: row 0 is the top (north) edge, columns grow east. The azimuth is the
compass direction the light comes *from*, degrees clockwise from north (up), as
in GIS hillshades: 315 = from the upper left. The altitude is the angle of the
light above the surface plane (90 = straight down the optical axis).
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from ballistic.io.atomic import atomic_write, atomic_write_bytes
from ballistic.surface import Surface

__all__ = ["RING_LIGHT_AZIMUTHS_DEG", "surface_normals", "shade", "render_surface_as_image", "to_png",
           "to_png_bytes", "save_figure"]

#: Twelve lights every 30 degrees: :func:`shade` averages them into a ring light.
RING_LIGHT_AZIMUTHS_DEG: tuple[float, ...] = tuple(float(a) for a in range(0, 360, 30))

ArrayOrSurface = Union[Surface, np.ndarray]


def _masked_gradient(z: np.ndarray, spacing_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Height gradient (dz/drow, dz/dcol), unitless (um per um), NaN-aware.

    Central differences where both neighbours are measured, a one-sided
    difference where only one is, zero where neither is (an isolated point is
    rendered as flat). The gradient of a missing point is NaN.
    """
    m = np.isfinite(z)
    zf = np.where(m, z, 0.0)

    def along(axis: int) -> np.ndarray:
        n = z.shape[axis]
        g = np.zeros_like(zf)
        if n < 2:
            return g
        sl = [slice(None)] * 2

        def s(a, b):
            sl2 = list(sl)
            sl2[axis] = slice(a, b)
            return tuple(sl2)

        # forward (i+1 - i) and backward (i - i-1) differences, valid where both ends are measured
        fwd = np.zeros_like(zf)
        bwd = np.zeros_like(zf)
        fok = np.zeros(z.shape, dtype=bool)
        bok = np.zeros(z.shape, dtype=bool)
        fwd[s(0, n - 1)] = zf[s(1, n)] - zf[s(0, n - 1)]
        fok[s(0, n - 1)] = m[s(1, n)] & m[s(0, n - 1)]
        bwd[s(1, n)] = zf[s(1, n)] - zf[s(0, n - 1)]
        bok[s(1, n)] = m[s(1, n)] & m[s(0, n - 1)]
        both = fok & bok
        g = np.where(both, 0.5 * (fwd + bwd), np.where(fok, fwd, np.where(bok, bwd, 0.0)))
        return g / spacing_um

    gy, gx = along(0), along(1)
    gy[~m] = np.nan
    gx[~m] = np.nan
    return gy, gx


def surface_normals(surface: Surface, *, z_factor: float = 1.0) -> np.ndarray:
    """Unit surface normals of a topography.

    Parameters
    ----------
    surface : Surface
        Heights in um on a grid of ``spacing_um`` um; NaN = missing.
    z_factor : float, keyword-only
        Vertical exaggeration applied to the heights before differentiating
        (1 = true slopes).

    Returns
    -------
    ndarray of float64, shape (ny, nx, 3)
        ``(east, north, up)`` components; NaN where the height is missing.
    """
    if not (np.isfinite(z_factor) and z_factor > 0):
        raise ValueError(f"z_factor must be a positive number, got {z_factor!r}")
    gy, gx = _masked_gradient(surface.heights * float(z_factor), surface.spacing_um)
    # x grows east; rows grow south, so dz/dnorth = -dz/drow
    nx_, ny_ = -gx, gy
    norm = np.sqrt(nx_ * nx_ + ny_ * ny_ + 1.0)
    return np.stack([nx_ / norm, ny_ / norm, 1.0 / norm], axis=-1)


def _light_vectors(azimuth_deg: float | Sequence[float], altitude_deg: float) -> np.ndarray:
    if not (np.isfinite(altitude_deg) and 0.0 < altitude_deg <= 90.0):
        raise ValueError(f"altitude_deg must be in (0, 90] degrees above the surface, got {altitude_deg!r}")
    az = np.atleast_1d(np.asarray(azimuth_deg, dtype=np.float64))
    if az.ndim != 1 or az.size == 0 or not np.all(np.isfinite(az)):
        raise ValueError(f"azimuth_deg must be a finite angle or a non-empty sequence of them, got {azimuth_deg!r}")
    a = np.radians(az)
    el = math.radians(altitude_deg)
    return np.stack([math.cos(el) * np.sin(a), math.cos(el) * np.cos(a), np.full_like(a, math.sin(el))], axis=-1)


def shade(surface: Surface, *, azimuth_deg: float | Sequence[float] = 315.0, altitude_deg: float = 45.0,
          z_factor: float = 1.0, ambient: float = 0.0) -> np.ndarray:
    """Lambertian hillshade of a topography.

    Parameters
    ----------
    surface : Surface
        Heights in um, spacing in um, shape (ny, nx); NaN = missing.
    azimuth_deg : float or sequence of float, keyword-only
        Direction the light comes from, degrees clockwise from north (up in the
        array, row 0). A sequence averages one shade per azimuth: a ring light,
        e.g. :data:`RING_LIGHT_AZIMUTHS_DEG`.
    altitude_deg : float, keyword-only
        Elevation of the light above the surface plane, degrees, in (0, 90].
    z_factor : float, keyword-only
        Vertical exaggeration (band-passed breech faces have slopes of a few
        per cent; a factor of 5-20 makes their marks visible).
    ambient : float, keyword-only
        Ambient term in [0, 1): ``out = ambient + (1 - ambient) * max(0, n.l)``.

    Returns
    -------
    ndarray of float64, shape (ny, nx)
        Intensities in [0, 1]; NaN exactly where ``surface`` is missing. A flat
        surface gives ``sin(altitude)`` (before the ambient term).

    Notes
    -----
    Normals come from central differences (one-sided next to missing points), so
    a measured pixel is never lost to its missing neighbours.
    """
    if not isinstance(surface, Surface):
        raise TypeError(f"shade expects a Surface (heights um + spacing um), got {type(surface).__name__}; "
                        "wrap an array with Surface(heights, spacing_um=...)")
    if not (np.isfinite(ambient) and 0.0 <= ambient < 1.0):
        raise ValueError(f"ambient must be in [0, 1), got {ambient!r}")
    lights = _light_vectors(azimuth_deg, altitude_deg)
    n = surface_normals(surface, z_factor=z_factor)
    acc = np.zeros(surface.shape, dtype=np.float64)
    for lv in lights:
        acc += np.clip(n @ lv, 0.0, None)
    out = acc / len(lights)
    if ambient:
        out = ambient + (1.0 - ambient) * out
    out = np.clip(out, 0.0, 1.0)
    out[~surface.mask] = np.nan
    return out


def render_surface_as_image(surface: Surface, *, azimuth_deg: float | Sequence[float] = RING_LIGHT_AZIMUTHS_DEG,
                            altitude_deg: float = 30.0, z_factor: float = 1.0, ambient: float = 0.0) -> Surface:
    """The shaded view of a topography as an intensity image Surface (same grid and spacing).

    Parameters
    ----------
    surface : Surface
        Heights in um (typically the output of
        :func:`ballistic.cartridge.breech_face.preprocess_cartridge`).
    azimuth_deg, altitude_deg, z_factor, ambient
        As in :func:`shade`. The default is a ring light (12 azimuths) at 30
        degrees, the illumination of ring-light breech-face photographs such as
        NBIDE's, so the view can be compared with them.

    Returns
    -------
    Surface
        ``heights`` : intensities in [0, 1], shape of ``surface``, NaN where it is
        missing; ``spacing_um`` : that of ``surface`` (calibrated);
        ``meta`` : the input's, plus ``kind="rendered"``, ``spacing_calibrated=True``
        and the lighting used.
    """
    img = shade(surface, azimuth_deg=azimuth_deg, altitude_deg=altitude_deg, z_factor=z_factor, ambient=ambient)
    az = [float(a) for a in np.atleast_1d(np.asarray(azimuth_deg, dtype=float))]
    return surface.with_heights(img, kind="rendered", spacing_calibrated=True,
                                rendered_from=surface.meta.get("source"),
                                lighting={"azimuth_deg": az, "altitude_deg": float(altitude_deg),
                                          "z_factor": float(z_factor), "ambient": float(ambient)})


# --------------------------------------------------------------------------- PNG

def _to_uint8(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"a PNG view needs a 2-D array (ny, nx), got shape {v.shape}")
    if v.size == 0:
        raise ValueError("cannot write an empty image")
    m = np.isfinite(v)
    if vmin is None and vmax is None and m.any():
        lo, hi = float(v[m].min()), float(v[m].max())
        if lo >= 0.0 and hi <= 1.0:
            vmin, vmax = 0.0, 1.0
        else:
            vmin, vmax = (float(x) for x in np.percentile(v[m], [0.5, 99.5]))
    vmin = 0.0 if vmin is None else float(vmin)
    vmax = 1.0 if vmax is None else float(vmax)
    if not vmax > vmin:
        vmax = vmin + 1.0  # constant image: mid-grey would lie; map it to vmin -> 0
    with np.errstate(invalid="ignore"):
        u = np.clip((v - vmin) / (vmax - vmin), 0.0, 1.0)
    u8 = np.where(m, np.rint(u * 255.0), 0).astype(np.uint8)
    return u8, m


def to_png_bytes(surface_or_array: ArrayOrSurface, *, missing: str = "white", vmin: float | None = None,
                 vmax: float | None = None) -> bytes:
    """Encode intensities as an 8-bit grayscale PNG.

    Parameters
    ----------
    surface_or_array : Surface or ndarray, shape (ny, nx)
        Values to show (a Surface's ``heights``). NaN = missing. To view a
        topography, shade it first: ``to_png_bytes(shade(surface))``.
    missing : {"white", "transparent", "black"}, keyword-only
        How missing pixels look: white (mode L), fully transparent (mode LA:
        gray + alpha), or black.
    vmin, vmax : float, optional, keyword-only
        Values mapped to 0 and 255. By default [0, 1] when every finite value
        lies there (intensities, shades), else the 0.5 and 99.5 percentiles.

    Returns
    -------
    bytes
        A PNG file.
    """
    from PIL import Image

    if missing not in ("white", "transparent", "black"):
        raise ValueError(f"missing must be 'white', 'transparent' or 'black', got {missing!r}")
    arr = surface_or_array.heights if isinstance(surface_or_array, Surface) else surface_or_array
    u8, m = _to_uint8(arr, vmin, vmax)
    if missing == "transparent":
        alpha = np.where(m, 255, 0).astype(np.uint8)
        im = Image.fromarray(np.ascontiguousarray(np.dstack([u8, alpha])))  # (ny, nx, 2) uint8 -> mode LA
    else:
        im = Image.fromarray(np.where(m, u8, 255 if missing == "white" else 0).astype(np.uint8))  # mode L
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def to_png(surface_or_array: ArrayOrSurface, path: Union[str, "os.PathLike[str]"], *, missing: str = "white",
           vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write :func:`to_png_bytes` to ``path`` atomically (temporary file + rename).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    data = to_png_bytes(surface_or_array, missing=missing, vmin=vmin, vmax=vmax)
    return atomic_write_bytes(path, data)


def save_figure(fig, path: Union[str, "os.PathLike[str]"], *, dpi: float = 100) -> Path:
    """Write a matplotlib figure atomically, then close it; returns the path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (laid out by the caller).
    path : str or os.PathLike
        Destination; the format follows its suffix (PNG without one). The folder is created; the file is
        replaced through :func:`ballistic.io.atomic.atomic_write`, so a reader (the service serving a cached
        figure) sees the old figure or the new one, never half of one.
    dpi : float, keyword-only
        Resolution.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)
    return path
