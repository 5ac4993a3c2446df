"""Bullets, step 3: the groove engraved areas (shoulders) at both ends of a crosscut profile."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ballistic.bullet.profile import Grooves, _gauss1d, _profile_and_spacing, _robust_poly1d
from ballistic.errors import BulletError, UnusableLandError

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


def _middle_grooves(z: np.ndarray, spacing_um: float, *, keep: float = 0.75) -> Grooves:
    """Fallback grooves: the middle ``keep`` of the measured extent of a profile (the
    "middle" method of the CSAFE grooveFinder, default 75 %); for crosscuts whose
    grooves cannot be located."""
    idx = np.flatnonzero(np.isfinite(z))
    if idx.size < 32:
        raise UnusableLandError(f"a profile across the land has {idx.size} measured points, need at least 32; the "
                                "scan holds no usable land engraved area")
    lo, hi = int(idx[0]), int(idx[-1])
    cut = (1.0 - keep) / 2.0 * (hi - lo)
    return Grooves(float((lo + cut) * spacing_um), float((hi - cut) * spacing_um))


def _robust_offset(x: np.ndarray, v: np.ndarray, slope: float, tol: float) -> tuple[float, np.ndarray]:
    """Intercept ``a`` of the line ``v ~ a + slope * x`` (slope known) that the most
    points lie within ``tol`` of (then the smallest summed distance), refined as
    the median of those points. Returns (a, inlier mask)."""
    c = v - slope * x
    best_key, best = None, None
    for ci in c:
        d = np.abs(c - ci)
        inl = d <= tol
        key = (int(inl.sum()), -float(d[inl].sum()))
        if best_key is None or key > best_key:
            best_key, best = key, inl
    a = float(np.median(c[best]))
    return a, np.abs(c - a) <= tol


def _consensus_grooves(own: Sequence[Grooves | None], positions_um: np.ndarray, *, tolerance_um: float,
                       tilt: float = 0.0) -> tuple[list[Grooves | None], list[str], dict | None]:
    """Grooves of one land at many heights, made consistent.

    The groove edges are straight lines parallel to the striae: with the striae
    at ``tilt`` (um across per um along, :func:`_crosscut_candidates`), each
    side's grooves over the crosscuts are fitted by a line of that slope through
    the largest group of grooves within ``tolerance_um`` of it
    (:func:`_robust_offset`). A crosscut whose groove lies *outside* the land's
    line by more than ``tolerance_um`` (it would take in part of the groove
    engraved area), or that found no grooves, takes the line's value; a groove
    inside the line is kept (that crosscut's land edge is damaged or rolled off).

    Returns (grooves per crosscut or None, source per crosscut ("crosscut",
    "land-line" or "none"), the land's groove lines or None: ``{"left_um",
    "right_um"}`` at the middle crosscut, ``"tilt"``, ``"inlier_fraction"``
    (left and right)).
    """
    pos = np.asarray(positions_um, dtype=np.float64)
    ok = np.array([g is not None for g in own], dtype=bool)
    if not ok.any():
        return [None] * len(own), ["none"] * len(own), None
    L = np.array([g.left_um for g in own if g is not None])
    R = np.array([g.right_um for g in own if g is not None])
    bl = br = float(tilt) if np.isfinite(tilt) else 0.0
    al, il = _robust_offset(pos[ok], L, bl, tolerance_um)
    ar, ir = _robust_offset(pos[ok], R, br, tolerance_um)
    mid = float(np.median(pos))
    land = {"left_um": al + bl * mid, "right_um": ar + br * mid, "tilt": bl,
            "inlier_fraction": (float(il.mean()), float(ir.mean()))}
    out: list[Grooves | None] = []
    src: list[str] = []
    for p, g in zip(pos, own):
        ll, lr = al + bl * p, ar + br * p
        if g is None:
            out.append(Grooves(float(ll), float(lr)) if ll < lr else None)
            src.append("land-line" if ll < lr else "none")
            continue
        left = ll if g.left_um < ll - tolerance_um else g.left_um
        right = lr if g.right_um > lr + tolerance_um else g.right_um
        if left >= right:
            left, right = g
        out.append(Grooves(float(left), float(right)))
        src.append("crosscut" if (left, right) == tuple(g) else "land-line")
    return out, src, land
