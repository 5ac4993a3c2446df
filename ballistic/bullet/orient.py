"""Bullets, step 1: which way the striae run, and the scan turned so that they run along x."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ballistic.bullet.profile import _as_surface
from ballistic.errors import BulletError, UnusableLandError
from ballistic.surface import Surface

__all__ = ["StriationDirection", "estimate_striation_direction", "striation_direction", "orient_striae"]


class StriationDirection(NamedTuple):
    """Where the striae of a land scan run, and how sure that is (see
    :func:`estimate_striation_direction`).

    Attributes
    ----------
    direction : {"x", "y"}
        The direction used: ``"x"`` when the striae run along x (heights vary down
        the rows), ``"y"`` when they run along y.
    confidence : float
        ``1 - weaker / stronger`` of the two directional height-change energies, in
        [0, 1]: 0 for an isotropic surface, near 1 for clear striae.
    anisotropy : float
        ``stronger / weaker`` energy (>= 1; NaN when both are 0).
    data_direction : {"x", "y"}
        The direction the energies point to, however weakly.
    aspect_direction : {"x", "y"} or None
        The direction the scan's shape points to: a land engraved area is scanned
        wider across the land than along it, so the striae run along the shorter
        side; None when the sides differ by less than ``min_aspect``.
    source : {"data", "aspect", "data-weak"}
        What decided: the energies (``anisotropy >= min_ratio``), the scan's aspect
        ratio (energies ambiguous), or the energies' weak vote (both ambiguous).
    low_confidence : bool
        True unless ``source == "data"``.
    """

    direction: str
    confidence: float
    anisotropy: float
    data_direction: str
    aspect_direction: str | None
    source: str
    low_confidence: bool


def estimate_striation_direction(surface: Surface, *, lag_um: float = 6.25, min_ratio: float = 2.0,
                                 min_aspect: float = 1.5) -> StriationDirection:
    """Estimate whether the striae of a land scan run along x or along y, with a confidence.

    Across the striae the heights change fast (striae and the curvature of the
    land); along them slowly. The height differences over ``lag_um`` are taken
    along x and along y, each direction's median difference (the tilt of the
    mounted bullet, a plane, which says nothing about the striae: a land tilted
    along its striae would otherwise look striated the wrong way) is removed, and
    the median squared remainder along y is compared with that along x (medians:
    spikes and dropouts do not count).

    This never refuses a measured land for being ambiguous. When the two energies
    differ by less than ``min_ratio`` times, the scan's aspect ratio decides (a land
    engraved area is scanned wider across the land than along it, as the CSAFE
    tools assume when they turn a scan whose x side is the shorter one); when the
    scan is about square too, the energies' weak vote decides. Either way
    ``low_confidence`` is set and ``confidence`` says how weak the striae are.

    Parameters
    ----------
    surface : Surface
        A land engraved area scan, heights in um (NaN = missing).
    lag_um : float, keyword-only
        Distance over which differences are taken, um (at least one pixel). A few
        um avoids the pixel-scale noise, which is the same in both directions.
    min_ratio : float, keyword-only
        The stronger energy must exceed the weaker this many times for the data
        alone to decide.
    min_aspect : float, keyword-only
        The longer side of the scan must exceed the shorter this many times for the
        aspect ratio to count.

    Returns
    -------
    StriationDirection

    Raises
    ------
    UnusableLandError
        The scan has no measured points, is too small for the lag, or has fewer than
        16 pairs of measured neighbours in either direction.
    """
    s = _as_surface(surface, "estimate_striation_direction")
    if not min_ratio > 1.0:
        raise BulletError(f"estimate_striation_direction: min_ratio must be > 1, got {min_ratio!r}")
    if not min_aspect >= 1.0:
        raise BulletError(f"estimate_striation_direction: min_aspect must be >= 1, got {min_aspect!r}")
    step = max(1, int(round(lag_um / s.spacing_um)))
    h = s.heights
    if h.shape[0] <= step or h.shape[1] <= step:
        raise UnusableLandError(f"estimate_striation_direction: a scan of shape {h.shape} is too small for a lag "
                                f"of {step} pixels; lower lag_um or check the scan")
    with np.errstate(invalid="ignore"):
        gx = h[:, step:] - h[:, :-step]
        gy = h[step:, :] - h[:-step, :]
    gx = gx[np.isfinite(gx)]
    gy = gy[np.isfinite(gy)]
    if gx.size < 16 or gy.size < 16:
        raise UnusableLandError("estimate_striation_direction: fewer than 16 pairs of measured neighbours; the "
                                "scan is (nearly) empty")
    # the tilt (a location) from every 4th difference is plenty; the energies use them all
    ex = float(np.median((gx - np.median(gx[::4])) ** 2))
    ey = float(np.median((gy - np.median(gy[::4])) ** 2))
    hi, lo = max(ex, ey), min(ex, ey)
    anis = hi / lo if lo > 0 else (float("inf") if hi > 0 else float("nan"))
    conf = 1.0 - lo / hi if hi > 0 else 0.0
    data_dir = "x" if ey > ex else "y"
    ny, nx = h.shape
    aspect_dir = None
    if max(ny, nx) >= min_aspect * min(ny, nx):
        aspect_dir = "x" if nx < ny else "y"     # striae along the shorter side
    if np.isfinite(anis) and anis >= min_ratio:
        return StriationDirection(data_dir, conf, anis, data_dir, aspect_dir, "data", False)
    if aspect_dir is not None:
        return StriationDirection(aspect_dir, conf, anis, data_dir, aspect_dir, "aspect", True)
    return StriationDirection(data_dir, conf, anis, data_dir, aspect_dir, "data-weak", True)


def striation_direction(surface: Surface, *, lag_um: float = 6.25, min_ratio: float = 2.0) -> str:
    """Whether the striae of a land scan run along ``"x"`` or ``"y"``.

    The direction of :func:`estimate_striation_direction` (which also says how
    sure it is). An ambiguous scan gets a principled default, never an exception:
    see there.

    Raises
    ------
    UnusableLandError
        Only for scans without enough measured points.
    """
    return estimate_striation_direction(surface, lag_um=lag_um, min_ratio=min_ratio).direction


def orient_striae(surface: Surface, *, direction: str | None = None) -> Surface:
    """Return the scan turned so that its striae run along x.

    Parameters
    ----------
    surface : Surface
        Land scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Where the striae run in ``surface``; estimated with
        :func:`estimate_striation_direction` when None.

    Returns
    -------
    Surface
        The same surface when the striae already run along x; otherwise rotated
        by 90 degrees clockwise as displayed (``np.rot90(h, -1)``: a rotation,
        not a mirror, so two scans of one land stay comparable): column ``j`` of
        the input becomes row ``j`` of the output, i.e. the profile across the
        land keeps its order. ``meta`` records ``striae_rotated_deg`` (0 or -90),
        ``striae_direction`` (in the input), ``direction_source`` (``"given"`` or
        the estimate's source), ``direction_confidence`` (NaN when given) and
        ``direction_low_confidence``.
    """
    s = _as_surface(surface, "orient_striae")
    if direction is None:
        est = estimate_striation_direction(s)
        d, info = est.direction, dict(direction_source=est.source, direction_confidence=est.confidence,
                                      direction_low_confidence=est.low_confidence)
    elif direction in ("x", "y"):
        d, info = direction, dict(direction_source="given", direction_confidence=float("nan"),
                                  direction_low_confidence=False)
    else:
        raise BulletError(f"orient_striae: direction must be 'x', 'y' or None, got {direction!r}")
    if d == "x":
        return s.with_heights(s.heights, striae_rotated_deg=0, striae_direction=d, **info)
    return s.with_heights(np.ascontiguousarray(np.rot90(s.heights, -1)), striae_rotated_deg=-90,
                          striae_direction=d, **info)
