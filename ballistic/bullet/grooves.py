"""Bullets, step 3: the groove engraved areas (shoulders) at both ends of a crosscut profile."""
from __future__ import annotations

import numpy as np

from ballistic.bullet.profile import Grooves, _gauss1d, _profile_and_spacing, _robust_poly1d
from ballistic.errors import BulletError

__all__ = ["locate_grooves"]


def locate_grooves(profile, *, spacing_um: float | None = None, smooth_um: float = 25.0, k: float = 5.0,
                   min_threshold_um: float = 5.0, min_run_um: float = 20.0, margin_um: float = 10.0,
                   min_land_fraction: float = 0.3) -> Grooves:
    """Locate the groove engraved areas (shoulders) at both ends of a crosscut profile.

    The land engraved area is close to an arc; at the grooves the profile leaves
    it (the shoulders rise, the land's edge rolls off, or the scan stops). So a
    quadratic is fitted robustly to the land (seeded on the middle half of the
    measured extent, then iteratively trimmed at 3 robust sigma), and from the
    middle outwards each side stops at the first run of at least ``min_run_um``
    where the (lightly smoothed) profile departs from it by more than
    ``max(k * sigma, min_threshold_um)`` or is missing.

    Parameters
    ----------
    profile : Crosscut or ndarray, shape (n,)
        Heights across the land in um, NaN = missing.
    spacing_um : float, keyword-only
        Sample spacing in um; required for a plain array.
    smooth_um : float, keyword-only
        Gaussian cut-off applied before thresholding, um.
    k, min_threshold_um : float, keyword-only
        Departure threshold: ``max(k * sigma, min_threshold_um)`` um, sigma being
        the robust standard deviation of the residuals on the land.
    min_run_um : float, keyword-only
        A departure must last this long (um) to count; shorter ones are striae.
    margin_um : float, keyword-only
        Each groove edge is moved this far towards the middle, um.
    min_land_fraction : float, keyword-only
        The land between the grooves must cover at least this fraction of the
        measured extent; otherwise the grooves are not trusted.

    Returns
    -------
    Grooves
        ``(left_um, right_um)``, positions from profile sample 0 in um, with
        ``left_um < right_um``.

    Raises
    ------
    BulletError
        Too few measured points, or grooves that would leave less than
        ``min_land_fraction`` of the profile (pass grooves yourself then).
    """
    z, sp = _profile_and_spacing(profile, spacing_um, "locate_grooves")
    m = np.isfinite(z)
    idx = np.flatnonzero(m)
    if idx.size < 32:
        raise BulletError(f"locate_grooves: the profile has {idx.size} measured points, need at least 32; "
                          "choose another crosscut")
    lo, hi = int(idx[0]), int(idx[-1])
    extent = hi - lo + 1
    zs = _gauss1d(z, smooth_um, sp, min_weight=0.5) if smooth_um and smooth_um > 0 else z
    seed = np.zeros_like(m)
    seed[lo + extent // 4: hi + 1 - extent // 4] = True
    fit, inl, _ = _robust_poly1d(zs, seed & np.isfinite(zs), order=2, k=3.0)
    r = zs - fit
    mid_r = r[seed & np.isfinite(r)]
    if mid_r.size < 16:
        raise BulletError("locate_grooves: the middle of the profile is mostly missing; choose another crosscut")
    sigma = 1.4826 * float(np.median(np.abs(mid_r - np.median(mid_r))))
    thr = max(k * sigma, min_threshold_um)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(r) | (np.abs(r) > thr)
    run = max(1, int(round(min_run_um / sp)))
    centre = (lo + hi) // 2
    if bad[centre]:
        good_mid = np.flatnonzero(~bad & seed)
        if good_mid.size == 0:
            raise BulletError("locate_grooves: no part of the middle of the profile follows the land's arc; "
                              "choose another crosscut or pass grooves yourself")
        centre = int(good_mid[np.argmin(np.abs(good_mid - centre))])

    def walk(direction: int) -> int:
        i = centre
        last_good = centre
        count = 0
        while 0 <= i < z.shape[0]:
            if bad[i]:
                count += 1
                if count >= run:
                    break
            else:
                count = 0
                last_good = i
            i += direction
        return last_good

    left = walk(-1)
    right = walk(+1)
    margin = margin_um / sp
    left_px = left + margin
    right_px = right - margin
    if right_px - left_px < min_land_fraction * extent:
        raise BulletError(
            f"locate_grooves: the grooves found ({left_px * sp:.0f} um, {right_px * sp:.0f} um) leave less than "
            f"{min_land_fraction:.0%} of the measured {extent * sp:.0f} um; the crosscut is probably damaged - "
            "choose another crosscut or pass Grooves(left_um, right_um) yourself")
    return Grooves(float(left_px * sp), float(right_px * sp))
