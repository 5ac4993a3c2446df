"""Bullets, step 4: the land signature between the grooves; steps 1-4 on one scan.

:func:`extract_signature` removes the form and filters the profile between the grooves;
:func:`land_signature` runs steps 1-4 (orient, crosscut, grooves, signature) on one scan at
one crosscut, :func:`land_signatures` at many heights along the land.
"""
from __future__ import annotations

import math

import numpy as np

from ballistic.bullet.crosscut import _crosscut_candidates, choose_crosscut
from ballistic.bullet.grooves import locate_grooves
from ballistic.bullet.orient import orient_striae
from ballistic.bullet.profile import Crosscut, Grooves, Signature, _gauss1d, _profile_and_spacing, _robust_poly1d
from ballistic.errors import BulletError
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


def land_signature(surface: Surface, *, direction: str | None = None, crosscut: dict | None = None,
                   grooves: dict | Grooves | None = None, signature: dict | None = None) -> Signature:
    """Steps 1-4 on one land scan: orient, choose a crosscut, locate grooves, extract the signature.

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
        ``crosscut_stability``, ``grooves_um`` and ``striae_rotated_deg``.
    """
    s = orient_striae(surface, direction=direction)
    cc = choose_crosscut(s, check_direction=False, **(crosscut or {}))
    g = grooves if isinstance(grooves, Grooves) else locate_grooves(cc, **(grooves or {}))
    sig = extract_signature(cc, g, **(signature or {}))
    sig.meta.update(source=s.meta.get("source"), striae_rotated_deg=s.meta.get("striae_rotated_deg"),
                    profile_length_um=cc.profile.shape[0] * cc.spacing_um)
    return sig


def land_signatures(surface: Surface, *, direction: str | None = None, step_um: float = 50.0,
                    band_um: float = 25.0, edge_um: float = 50.0, max_missing: float = 0.5,
                    grooves: dict | None = None, signature: dict | None = None) -> list[Signature]:
    """Signatures of one land at many heights along the striae (every ``step_um``).

    The striae of a land change along its length (break-off at the heel, damage,
    wear), and two bullets may show the same marks best at different heights: on
    Hamby 44 Barrel 1, Bullet 1 Land 6 matches its mate (Bullet 2 Land 4) only
    in a band about 300 um from one end, while its most stable crosscut lies
    elsewhere. Comparing every height of one land with every height of the other
    (:func:`land_features` given two lists) finds that band without knowing where
    the heel is.

    Parameters
    ----------
    surface : Surface
        Land engraved area scan, heights in um.
    direction : {"x", "y"} or None, keyword-only
        Striae direction if known (see :func:`orient_striae`).
    step_um, band_um, edge_um, max_missing : float, keyword-only
        Crosscut spacing, band width, distance kept from the scan's ends, and the
        largest missing fraction of a crosscut's middle (as :func:`choose_crosscut`).
    grooves, signature : dict, keyword-only
        Keyword arguments for :func:`locate_grooves` and :func:`extract_signature`.

    Returns
    -------
    list of Signature
        In order along x; crosscuts with too much missing data or whose grooves
        or signature cannot be found are left out. ``meta`` as :func:`land_signature`.

    Raises
    ------
    BulletError
        When no crosscut yields a signature.
    """
    s = orient_striae(surface, direction=direction)
    starts, width, profiles, stab = _crosscut_candidates(s, band_um=band_um, step_um=step_um, edge_um=edge_um,
                                                         max_lag_um=25.0, max_missing=max_missing)
    sp = s.spacing_um
    out: list[Signature] = []
    errors = []
    for st, prof, sb in zip(starts, profiles, stab):
        cc = Crosscut(profile=prof, spacing_um=sp, position_um=float((st + width / 2.0) * sp),
                      band_um=width * sp, stability=float(sb))
        if np.isfinite(prof).sum() < 32:
            continue
        try:
            g = locate_grooves(cc, **(grooves or {}))
            sig = extract_signature(cc, g, **(signature or {}))
        except BulletError as exc:
            errors.append(f"{cc.position_um:.0f} um: {exc}")
            continue
        sig.meta.update(source=s.meta.get("source"), striae_rotated_deg=s.meta.get("striae_rotated_deg"),
                        profile_length_um=prof.shape[0] * sp)
        out.append(sig)
    if not out:
        detail = "; ".join(errors[:3]) or "every crosscut is mostly missing"
        raise BulletError(f"land_signatures: no crosscut of this scan yields a signature ({detail})")
    return out
