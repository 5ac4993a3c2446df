"""Bullets, step 4: the land signature between the grooves; steps 1-4 on one scan.

:func:`extract_signature` removes the form and filters the profile between the grooves;
:func:`land_signature` runs steps 1-4 (orient, crosscut, grooves, signature) on one scan at
one crosscut, :func:`land_signatures` at many heights along the land.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ballistic.bullet.crosscut import _crosscut_candidates, _whole_scan_crosscut, choose_crosscut
from ballistic.bullet.grooves import _consensus_grooves, _middle_grooves, locate_grooves
from ballistic.bullet.orient import orient_striae
from ballistic.bullet.profile import (Crosscut, Grooves, Signature, _as_surface, _gauss1d, _profile_and_spacing,
                                      _robust_poly1d)
from ballistic.errors import BulletError, UnusableLandError, _NoStableCrosscut
from ballistic.surface import Surface

__all__ = ["extract_signature", "land_signature", "land_signatures"]


def extract_signature(profile, grooves: Grooves | tuple[float, float], *, spacing_um: float | None = None,
                      long_cutoff_um: float = 250.0, short_cutoff_um: float = 6.25,
                      min_valid: float = 0.5) -> Signature:
    """Signature of a land: the crosscut between the grooves, form and noise removed.

    1. keep the samples between ``grooves`` (inclusive);
    2. subtract a robust quadratic (iteratively trimmed at 3 robust sigma): the
       curvature of the bullet;
    3. subtract a mask-aware Gaussian low-pass with cut-off ``long_cutoff_um``
       (waviness; normalized convolution, so ends and gaps are not pulled to 0);
    4. mask-aware Gaussian low-pass with cut-off ``short_cutoff_um`` (noise).

    Parameters
    ----------
    profile : Crosscut or ndarray, shape (n,)
        Heights across the land in um, NaN = missing.
    grooves : Grooves or (float, float)
        Left and right groove positions in um from profile sample 0.
    spacing_um : float, keyword-only
        Sample spacing in um; required for a plain array.
    long_cutoff_um, short_cutoff_um : float, keyword-only
        Gaussian (ISO 16610-21) cut-offs, um. ``short_cutoff_um=0`` skips smoothing.
    min_valid : float, keyword-only
        A smoothed sample is NaN when less than this fraction of its Gaussian
        weight was measured.

    Returns
    -------
    Signature
        ``values`` shape (m,), um, NaN = missing (leading/trailing missing samples
        trimmed); ``start_um`` = position of ``values[0]`` on the profile.
    """
    z, sp = _profile_and_spacing(profile, spacing_um, "extract_signature")
    try:
        left_um, right_um = (float(v) for v in grooves)
    except (TypeError, ValueError) as exc:
        raise BulletError(f"extract_signature: grooves must be (left_um, right_um), got {grooves!r}") from exc
    if not (np.isfinite(left_um) and np.isfinite(right_um) and left_um < right_um):
        raise BulletError(f"extract_signature: need left_um < right_um, got {grooves!r}; see locate_grooves")
    if not long_cutoff_um > 0 or short_cutoff_um < 0 or (short_cutoff_um and short_cutoff_um >= long_cutoff_um):
        raise BulletError(f"extract_signature: need 0 <= short_cutoff_um < long_cutoff_um, got "
                          f"{short_cutoff_um!r}, {long_cutoff_um!r}")
    n = z.shape[0]
    i0 = max(0, int(math.ceil(left_um / sp - 1e-9)))
    i1 = min(n - 1, int(math.floor(right_um / sp + 1e-9)))
    if i1 - i0 + 1 < 16 or np.isfinite(z[i0:i1 + 1]).sum() < 16:
        raise BulletError(f"extract_signature: fewer than 16 measured samples between the grooves "
                          f"({left_um:.1f} um, {right_um:.1f} um) of a {n * sp:.0f} um profile; check the grooves")
    seg = z[i0:i1 + 1].copy()
    fit, _, _ = _robust_poly1d(seg, np.isfinite(seg), order=2)
    r = seg - fit
    r = r - _gauss1d(r, long_cutoff_um, sp, min_weight=1e-3)
    if short_cutoff_um:
        r = _gauss1d(r, short_cutoff_um, sp, min_weight=min_valid)
    fin = np.flatnonzero(np.isfinite(r))
    if fin.size < 16:
        raise BulletError("extract_signature: fewer than 16 samples survive filtering; lower min_valid or check "
                          "the grooves")
    a, b = int(fin[0]), int(fin[-1]) + 1
    meta = {"grooves_um": (left_um, right_um), "long_cutoff_um": long_cutoff_um,
            "short_cutoff_um": short_cutoff_um}
    if isinstance(profile, Crosscut):
        meta.update(crosscut_um=profile.position_um, crosscut_stability=profile.stability)
    return Signature(values=r[a:b].copy(), spacing_um=sp, start_um=(i0 + a) * sp, meta=meta)


def _signature_quality(sig: Signature, direction_confidence: float, stability: float) -> float:
    parts = [sig.valid_fraction]
    if np.isfinite(direction_confidence):
        parts.append(direction_confidence)
    if np.isfinite(stability):
        parts.append(max(0.0, stability))
    return float(min(parts))


def _finish_meta(sig: Signature, s: Surface, *, profile_length_um: float, grooves_source: str,
                 land_flags: Sequence[str], stability: float, extra: dict | None = None) -> Signature:
    """Provenance and quality of a land signature (see :func:`land_signatures`)."""
    flags = list(land_flags)
    if grooves_source == "middle-fallback":
        flags.append("grooves not located: the middle 75 % of the measured profile is used")
    conf = s.meta.get("direction_confidence")
    conf = float(conf) if conf is not None else float("nan")
    sig.meta.update(source=s.meta.get("source"), striae_rotated_deg=s.meta.get("striae_rotated_deg"),
                    striae_direction=s.meta.get("striae_direction"), direction_source=s.meta.get("direction_source"),
                    direction_confidence=conf, profile_length_um=profile_length_um, grooves_source=grooves_source,
                    quality=_signature_quality(sig, conf, stability), low_confidence=bool(flags), flags=flags,
                    **{k: (dict(v) if isinstance(v, dict) else v) for k, v in (extra or {}).items()})
    return sig


def _check_resolution(s: Surface, signature: dict | None, what: str) -> None:
    """A scan sampled coarser than the signature's short cut-off holds nothing in the signature's band."""
    short = float((signature or {}).get("short_cutoff_um", 6.25)) or 6.25
    if s.spacing_um > short:
        raise UnusableLandError(f"{what}: the scan's spacing ({s.spacing_um:g} um) is coarser than the signature's "
                                f"short cut-off ({short:g} um), so it cannot resolve striation marks; a land engraved "
                                "area needs a scan at a few um or finer")


def _land_flags(s: Surface) -> list[str]:
    if s.meta.get("direction_low_confidence"):
        return [f"striation direction ambiguous (confidence {s.meta.get('direction_confidence', float('nan')):.2f}); "
                f"decided by {s.meta.get('direction_source')}"]
    return []


def land_signature(surface: Surface, *, direction: str | None = None, crosscut: dict | None = None,
                   grooves: dict | Grooves | None = None, signature: dict | None = None) -> Signature:
    """Steps 1-4 on one land scan: orient, choose a crosscut, locate grooves, extract the signature.

    A measured land always gets a signature: an ambiguous striation direction is
    decided by :func:`estimate_striation_direction`'s defaults, a scan without two
    comparable neighbouring crosscuts is averaged over its whole length, grooves
    that cannot be located are replaced by the middle 75 % of the profile; each
    fallback sets ``low_confidence`` and says why in ``meta["flags"]``.

    Parameters
    ----------
    surface : Surface
        Land engraved area scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Striae direction if known (see :func:`orient_striae`).
    crosscut, signature : dict, keyword-only
        Keyword arguments for :func:`choose_crosscut` / :func:`extract_signature`.
    grooves : dict or Grooves, keyword-only
        Keyword arguments for :func:`locate_grooves`, or the grooves themselves.

    Returns
    -------
    Signature
        With ``meta`` holding ``source`` (from the surface), ``crosscut_um``,
        ``crosscut_stability``, ``grooves_um``, ``grooves_source``,
        ``striae_rotated_deg``, ``striae_direction``, ``direction_source``,
        ``direction_confidence``, ``quality``, ``low_confidence`` and ``flags``.

    Raises
    ------
    UnusableLandError
        No usable land at all (no measured points, fewer than 32 measured rows
        across the land, or sampled coarser than the signature's short cut-off).
    """
    _check_resolution(_as_surface(surface, "land_signature"), signature, "land_signature")
    s = orient_striae(surface, direction=direction)
    flags = _land_flags(s)
    kw = dict(crosscut or {})
    band = float(kw.get("band_um", 25.0))
    if np.isfinite(band) and band > 0:
        kw["band_um"] = min(band, s.shape[1] * s.spacing_um)       # a scan shorter than the band: one band
    try:
        cc = choose_crosscut(s, check_direction=False, **kw)
    except _NoStableCrosscut as exc:
        cc = _whole_scan_crosscut(s, str(exc))
        flags.append(f"no stable crosscut ({exc}); the mean over the whole scan is used")
    if isinstance(grooves, Grooves):
        g, src = grooves, "given"
    else:
        try:
            g, src = locate_grooves(cc, **(grooves or {})), "crosscut"
        except BulletError:
            g, src = _middle_grooves(cc.profile, cc.spacing_um), "middle-fallback"
    try:
        sig = extract_signature(cc, g, **(signature or {}))
    except BulletError as exc:
        if src != "crosscut":
            raise (UnusableLandError(f"land_signature: no signature between the fallback grooves: {exc}")
                   if src == "middle-fallback" else exc)
        g, src = _middle_grooves(cc.profile, cc.spacing_um), "middle-fallback"
        sig = extract_signature(cc, g, **(signature or {}))
    return _finish_meta(sig, s, profile_length_um=cc.profile.shape[0] * cc.spacing_um, grooves_source=src,
                        land_flags=flags, stability=cc.stability)


def land_signatures(surface: Surface, *, direction: str | None = None, step_um: float = 50.0,
                    band_um: float = 25.0, edge_um: float = 50.0, max_missing: float = 0.5,
                    grooves: dict | None = None, signature: dict | None = None,
                    groove_tolerance_um: float = 50.0) -> list[Signature]:
    """Signatures of one land at many heights along the striae (every ``step_um``).

    The striae of a land change along its length (break-off at the heel, damage,
    wear), and two bullets may show the same marks best at different heights: on
    Hamby 44 Barrel 1, Bullet 1 Land 6 matches its mate (Bullet 2 Land 4) only
    in a band about 300 um from one end, while its most stable crosscut lies
    elsewhere. Comparing every height of one land with every height of the other
    (:func:`land_features` given two lists) finds that band without knowing where
    the heel is.

    Grooves are located on every crosscut (:func:`locate_grooves`) and made
    consistent over the land: the groove edges are straight lines parallel to
    the striae, so each side gets a line with the striae's tilt (measured from
    the lag at which neighbouring crosscuts agree) through the largest group of
    crosscut grooves that agree with it, and a crosscut whose groove lies outside that line by more than
    ``groove_tolerance_um`` (it would take in part of the groove engraved area),
    or that found none, takes the line's value. When no crosscut finds its
    grooves, the middle 75 % of each profile is used (flagged).

    A measured land never fails for weak striae: an ambiguous direction is decided
    by :func:`estimate_striation_direction`'s defaults, and when no crosscut yields
    a signature the mean over the whole scan is used; such signatures carry
    ``low_confidence`` and ``meta["flags"]`` saying why, and every signature a
    ``quality`` in [0, 1] (:attr:`Signature.quality`).

    Parameters
    ----------
    surface : Surface
        Land engraved area scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Striae direction if known (see :func:`orient_striae`).
    step_um, band_um, edge_um, max_missing : float, keyword-only
        Crosscut spacing, band width (clipped to the scan's length along the
        striae), distance kept from the scan's ends, and the largest missing
        fraction of a crosscut's middle (as :func:`choose_crosscut`).
    grooves, signature : dict, keyword-only
        Keyword arguments for :func:`locate_grooves` and :func:`extract_signature`.
    groove_tolerance_um : float, keyword-only
        How far (um) a crosscut's groove may lie outside the land's groove line
        before the line replaces it; also the inlier distance of the robust line
        fit. The default, 50 um, is twice the 25 um smoothing of
        :func:`locate_grooves`.

    Returns
    -------
    list of Signature
        In order along x; crosscuts with fewer than 32 measured rows or whose
        signature cannot be extracted are left out. ``meta`` as
        :func:`land_signature`, plus ``striae_tilt`` (um across per um along the
        striae) and ``land_grooves`` (the land's groove lines: ``left_um`` /
        ``right_um`` at the middle crosscut, ``tilt`` and ``inlier_fraction`` per
        side; None when no crosscut found its grooves).

    Raises
    ------
    UnusableLandError
        No usable land at all (no measured points, fewer than 32 measured rows
        across the land, or sampled coarser than the signature's short cut-off).
    """
    if not (np.isfinite(groove_tolerance_um) and groove_tolerance_um >= 0):
        raise BulletError(f"land_signatures: groove_tolerance_um must be a length >= 0 um, got "
                          f"{groove_tolerance_um!r}")
    _check_resolution(_as_surface(surface, "land_signatures"), signature, "land_signatures")
    s = orient_striae(surface, direction=direction)
    sp = s.spacing_um
    flags = _land_flags(s)
    band = min(float(band_um), s.shape[1] * sp) if np.isfinite(band_um) and band_um > 0 else band_um
    starts, width, profiles, stab, tilt = _crosscut_candidates(s, band_um=band, step_um=step_um, edge_um=edge_um,
                                                               max_lag_um=25.0, max_missing=max_missing)
    usable = [k for k in range(len(starts)) if np.isfinite(profiles[k]).sum() >= 32]
    own: list[Grooves | None] = []
    for k in usable:
        try:
            own.append(locate_grooves(profiles[k], spacing_um=sp, **(grooves or {})))
        except UnusableLandError:
            raise
        except BulletError:
            own.append(None)
    centres = (starts[usable] + width / 2.0) * sp
    chosen, sources, land_g = _consensus_grooves(own, centres, tolerance_um=groove_tolerance_um, tilt=tilt)
    extra = {"land_grooves": land_g, "striae_tilt": tilt}
    out: list[Signature] = []
    errors = []
    for k, g, src in zip(usable, chosen, sources):
        prof = profiles[k]
        cc = Crosscut(profile=prof, spacing_um=sp, position_um=float((starts[k] + width / 2.0) * sp),
                      band_um=width * sp, stability=float(stab[k]))
        if g is None:
            g, src = _middle_grooves(prof, sp), "middle-fallback"
        try:
            sig = extract_signature(cc, g, **(signature or {}))
        except BulletError as exc:
            errors.append(f"{cc.position_um:.0f} um: {exc}")
            continue
        out.append(_finish_meta(sig, s, profile_length_um=prof.shape[0] * sp, grooves_source=src, land_flags=flags,
                                stability=cc.stability, extra=extra))
    if not out:
        detail = "; ".join(errors[:3]) or "every crosscut is mostly missing"
        cc = _whole_scan_crosscut(s, detail)
        try:
            g, src = locate_grooves(cc, **(grooves or {})), "crosscut"
            sig = extract_signature(cc, g, **(signature or {}))
        except UnusableLandError:
            raise
        except BulletError:
            g, src = _middle_grooves(cc.profile, sp), "middle-fallback"
            try:
                sig = extract_signature(cc, g, **(signature or {}))
            except BulletError as exc:
                raise UnusableLandError(f"land_signatures: no crosscut of this scan yields a signature, not even its "
                                        f"mean over the whole scan ({exc}; crosscuts: {detail})") from exc
        flags.append(f"no crosscut yields a signature ({detail}); the mean over the whole scan is used")
        out.append(_finish_meta(sig, s, profile_length_um=cc.profile.shape[0] * sp, grooves_source=src,
                                land_flags=flags, stability=float("nan"), extra=extra))
    return out
