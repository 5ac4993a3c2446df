"""Bullets, step 1: which way the striae run, and the scan turned so that they run along x."""
from __future__ import annotations

import numpy as np

from ballistic.bullet.profile import _as_surface
from ballistic.errors import BulletError
from ballistic.surface import Surface

__all__ = ["striation_direction", "orient_striae"]


def striation_direction(surface: Surface, *, lag_um: float = 6.25, min_ratio: float = 2.0) -> str:
    """Detect whether the striae of a land scan run along x or along y.

    Across the striae the heights change fast (striae and the curvature of the
    land); along them slowly. The function compares the median squared height
    difference over ``lag_um`` along y with that along x.

    Parameters
    ----------
    surface : Surface
        A land engraved area scan, heights in um (NaN = missing).
    lag_um : float, keyword-only
        Distance over which differences are taken, um (at least one pixel). A few
        um avoids the pixel-scale noise, which is the same in both directions.
    min_ratio : float, keyword-only
        The larger of the two energies must exceed the smaller this many times.

    Returns
    -------
    str
        ``"x"`` when the striae run along x (heights vary down the rows), ``"y"``
        when they run along y.

    Raises
    ------
    BulletError
        Too few points, or the ratio is below ``min_ratio`` (no clear direction):
        then pass ``direction=`` to :func:`orient_striae` yourself.
    """
    s = _as_surface(surface, "striation_direction")
    if not min_ratio > 1.0:
        raise BulletError(f"striation_direction: min_ratio must be > 1, got {min_ratio!r}")
    step = max(1, int(round(lag_um / s.spacing_um)))
    h = s.heights
    if h.shape[0] <= step or h.shape[1] <= step:
        raise BulletError(f"striation_direction: a scan of shape {h.shape} is too small for a lag of {step} "
                          "pixels; lower lag_um")
    with np.errstate(invalid="ignore"):
        gx = (h[:, step:] - h[:, :-step]) ** 2
        gy = (h[step:, :] - h[:-step, :]) ** 2
    gx = gx[np.isfinite(gx)]
    gy = gy[np.isfinite(gy)]
    if gx.size < 16 or gy.size < 16:
        raise BulletError("striation_direction: fewer than 16 pairs of measured neighbours; the scan is "
                          "(nearly) empty")
    ex = float(np.median(gx))
    ey = float(np.median(gy))
    if ey >= min_ratio * ex:
        return "x"
    if ex >= min_ratio * ey:
        return "y"
    raise BulletError(
        f"striation_direction: no clear striation direction (median squared differences along y/x = "
        f"{ey:.3g}/{ex:.3g}, ratio below min_ratio={min_ratio}); check this is a land engraved area, or "
        "pass direction='x' or 'y' to orient_striae")


def orient_striae(surface: Surface, *, direction: str | None = None) -> Surface:
    """Return the scan turned so that its striae run along x.

    Parameters
    ----------
    surface : Surface
        Land scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Where the striae run in ``surface``; detected with
        :func:`striation_direction` when None.

    Returns
    -------
    Surface
        The same surface when the striae already run along x; otherwise rotated
        by 90 degrees clockwise as displayed (``np.rot90(h, -1)``: a rotation,
        not a mirror, so two scans of one land stay comparable): column ``j`` of
        the input becomes row ``j`` of the output, i.e. the profile across the
        land keeps its order. ``meta["striae_rotated_deg"]`` records the turn
        (0 or -90).
    """
    s = _as_surface(surface, "orient_striae")
    d = striation_direction(s) if direction is None else direction
    if d not in ("x", "y"):
        raise BulletError(f"orient_striae: direction must be 'x', 'y' or None, got {direction!r}")
    if d == "x":
        return s.with_heights(s.heights, striae_rotated_deg=0)
    return s.with_heights(np.ascontiguousarray(np.rot90(s.heights, -1)), striae_rotated_deg=-90)
