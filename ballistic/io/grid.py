"""Heights moved from one grid to another, mask-aware: the one masked resize of the library.

The x3p reader squares non-square pixels with :func:`resample_grid` (the reader owns spacing), and
:func:`ballistic.preprocess.filters.resample` changes a surface's spacing with it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["resample_grid"]


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
    fy, fx = sy / spacing_um, sx / spacing_um
    new = (max(1, int(round(h.shape[1] * fx))), max(1, int(round(h.shape[0] * fy))))     # cv2: (width, height)
    interp = cv2.INTER_AREA if max(fy, fx) < 1 else cv2.INTER_LINEAR
    mask = ~np.isnan(h)
    m = mask.astype(np.float32)
    z = np.where(mask, h, 0.0)
    zm = cv2.resize(z * m, new, interpolation=interp)
    mm = cv2.resize(m, new, interpolation=interp)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(mm >= min_valid, zm / mm, np.nan)
    return out.astype(np.float64)
