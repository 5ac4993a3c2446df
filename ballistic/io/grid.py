"""Heights moved from one grid to another, mask-aware: the one masked resize of the library.

The x3p reader squares non-square pixels with :func:`resample_grid` (the reader owns spacing), and
:func:`ballistic.preprocess.filters.resample` changes a surface's spacing with it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["resample_grid", "resampled_shape"]


def resampled_shape(shape: tuple[int, int], spacing_yx_um: tuple[float, float], *,
                    spacing_um: float) -> tuple[int, int]:
    """(rows, columns) of :func:`resample_grid`'s output for a grid of ``shape``: each side times its spacing
    over ``spacing_um``, rounded, at least 1 (what a reader checks against its size limit before reading)."""
    sy, sx = (float(v) for v in spacing_yx_um)
    fy, fx = sy / spacing_um, sx / spacing_um                 # factor first: resample's rounding, as before
    return max(1, int(round(shape[0] * fy))), max(1, int(round(shape[1] * fx)))


def resample_grid(heights: np.ndarray, spacing_yx_um: tuple[float, float], *, spacing_um: float,
                  min_valid: float = 0.5) -> np.ndarray:
    """Heights on a grid of (row, column) spacing ``spacing_yx_um`` resampled to square pixels of ``spacing_um``.

    When neither axis grows, each new pixel averages the measured points under it (area interpolation of
    ``z m`` divided by that of the mask ``m``); when either grows, both are bilinear (the reader's square
    pixels keep the finer axis as it is and interpolate the coarser). A new pixel is NaN when less than
    ``min_valid`` of its footprint was measured.

    Parameters
    ----------
    heights : ndarray, shape (ny, nx)
        Heights (um), NaN = missing; not changed.
    spacing_yx_um : (float, float)
        Spacing of the rows (y) and of the columns (x), um; equal for a surface's square pixels.
    spacing_um : float, keyword-only
        Spacing of the output's square pixels, um.
    min_valid : float, keyword-only
        Fraction of a new pixel's footprint that must be measured.

    Returns
    -------
    ndarray of float64, shape (round(ny sy / spacing_um), round(nx sx / spacing_um)), at least 1 x 1

    Raises
    ------
    ValueError
        A spacing that is not > 0.
    """
    import cv2

    sy, sx = (float(v) for v in spacing_yx_um)
    if not (sy > 0 and sx > 0 and spacing_um > 0):
        raise ValueError(f"spacings must be > 0 um, got {spacing_yx_um!r} -> {spacing_um!r}")
    h = np.asarray(heights, dtype=np.float64)
    ny, nx = resampled_shape(h.shape, (sy, sx), spacing_um=spacing_um)
    new = (nx, ny)                                                   # cv2 takes (width, height)
    interp = cv2.INTER_AREA if max(sy / spacing_um, sx / spacing_um) < 1 else cv2.INTER_LINEAR
    mask = ~np.isnan(h)
    m = mask.astype(np.float32)
    z = np.where(mask, h, 0.0)
    zm = cv2.resize(z * m, new, interpolation=interp)
    mm = cv2.resize(m, new, interpolation=interp)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mm >= min_valid, zm / mm, np.nan)
    return out.astype(np.float64)
