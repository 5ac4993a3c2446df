"""Bullets, step 2: the crosscut - where along the striae consecutive crosscuts stay most alike.

The profile is the mean of a band of columns there (numba kernel :func:`_band_profiles`,
private; its slow pure-numpy twin is in ``tests/naive.py``).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from ballistic.bullet.orient import estimate_striation_direction
from ballistic.bullet.profile import Crosscut, _as_surface, _gauss1d, _robust_poly1d
from ballistic.errors import BulletError, UnusableLandError, _NoStableCrosscut
from ballistic.stats.correlation import _ccf_at_lags
from ballistic.surface import Surface

_NB = dict(nogil=True, cache=True, fastmath=False)

__all__ = ["choose_crosscut"]


def _quick_signature(z: np.ndarray, spacing_um: float, *, trim: float, long_cutoff_um: float,
                     short_cutoff_um: float) -> np.ndarray:
    """Middle of a profile (``trim`` cut at each end of its measured extent) with a
    robust quadratic removed and band-passed; NaN elsewhere."""
    out = np.full_like(z, np.nan)
    idx = np.flatnonzero(np.isfinite(z))
    if idx.size < 16:
        return out
    lo, hi = idx[0], idx[-1] + 1
    a = lo + int(trim * (hi - lo))
    b = hi - int(trim * (hi - lo))
    if b - a < 16:
        return out
    seg = z[a:b]
    if np.isfinite(seg).sum() < 16:
        return out
    fit, _, _ = _robust_poly1d(seg, np.isfinite(seg), order=2)
    r = seg - fit
    r = r - _gauss1d(r, long_cutoff_um, spacing_um, min_weight=1e-3)
    out[a:b] = _gauss1d(r, short_cutoff_um, spacing_um, min_weight=0.5)
    return out


def choose_crosscut(surface: Surface, *, band_um: float = 25.0, step_um: float = 25.0,
                    edge_um: float = 50.0, max_lag_um: float = 25.0, max_missing: float = 0.5,
                    min_ccf: float = 0.9, heel: str | None = None,
                    check_direction: bool = True) -> Crosscut:
    """Choose a stable crosscut of a land scan (striae along x) and average a band there.

    Crosscuts (bands of ``band_um`` columns) are taken every ``step_um`` along x.
    Each one's middle (the outer 15 % of its measured extent, where the grooves
    are, dropped) is reduced to a quick signature (robust quadratic removed,
    250 um / 6.25 um Gaussian band-pass). The stability of a crosscut is the
    smaller of its cross-correlations (lags within ``max_lag_um``) with its two
    neighbours: where the land is damaged, at the break-off at the heel, or
    where the scan is mostly missing, consecutive crosscuts disagree.

    Parameters
    ----------
    surface : Surface
        Land scan with striae along x (see :func:`orient_striae`), heights in um.
    band_um : float, keyword-only
        Width along x of the band of columns averaged into the profile, um.
    step_um : float, keyword-only
        Distance between candidate crosscuts, um.
    edge_um : float, keyword-only
        Candidates stay this far from both ends of the scan along x, um.
    max_lag_um : float, keyword-only
        Largest shift between neighbouring crosscuts searched, um.
    max_missing : float, keyword-only
        Candidates whose middle is missing more than this fraction are skipped.
    min_ccf : float, keyword-only
        With ``heel`` given: the first candidate from the heel whose stability
        reaches ``min_ccf`` is taken (as bulletxtrctr's ``x3p_crosscut_optimize``:
        striae are best expressed near the heel).
    heel : {"start", "end"} or None, keyword-only
        The end of the x axis (column 0 or the last column) at the heel of the
        bullet, if known. ``None`` (default) takes the most stable candidate.
    check_direction : bool, keyword-only
        Verify with :func:`estimate_striation_direction` that the striae run along
        x (only a confident estimate of y is refused).

    Returns
    -------
    Crosscut
        ``profile`` (shape (ny,), um) averaged over the band (a row needs half
        of the band measured, otherwise NaN) and where it was taken.

    Raises
    ------
    BulletError
        Striae along y, scan too short for the band, or no usable candidate.
    """
    s = _as_surface(surface, "choose_crosscut")
    if heel not in (None, "start", "end"):
        raise BulletError(f"choose_crosscut: heel must be 'start', 'end' or None, got {heel!r}")
    if check_direction:
        est = estimate_striation_direction(s)
        if est.direction != "x" and not est.low_confidence:
            raise BulletError("choose_crosscut: the striae of this scan run along y; call orient_striae(surface) "
                              "first (or pass check_direction=False if you are sure)")
    starts, width, profiles, stab, _ = _crosscut_candidates(s, band_um=band_um, step_um=step_um, edge_um=edge_um,
                                                            max_lag_um=max_lag_um, max_missing=max_missing)
    K = len(starts)
    if not np.isfinite(stab).any():
        raise _NoStableCrosscut("choose_crosscut: no two neighbouring crosscuts could be compared (too much "
                                "missing data or a scan too short along x); lower step_um / edge_um / max_missing, "
                                "or check the scan")
    best = int(np.nanargmax(stab))
    if heel is not None:
        order = range(K) if heel == "start" else range(K - 1, -1, -1)
        for k in order:
            if np.isfinite(stab[k]) and stab[k] >= min_ccf:
                best = k
                break
    sp = s.spacing_um
    centres = (starts + width / 2.0) * sp
    return Crosscut(profile=profiles[best].copy(), spacing_um=sp, position_um=float(centres[best]),
                    band_um=width * sp, stability=float(stab[best]), candidates_um=centres,
                    candidate_stability=stab)


def _crosscut_candidates(s: Surface, *, band_um: float, step_um: float, edge_um: float, max_lag_um: float,
                         max_missing: float) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, float]:
    """Band profiles every ``step_um`` along x and their stability (see :func:`choose_crosscut`).

    Returns (first column of each band, band width in px, profiles (K, ny), stability (K,)
    with NaN for unusable candidates, tilt). ``tilt`` is the median drift of the
    striae across the land per um along them (um/um, from the lag at which
    neighbouring crosscuts agree best; NaN when no neighbours could be compared):
    a stria at row ``r`` of one crosscut lies at about ``r + tilt * d / spacing``
    ``d`` um further along x."""
    for name, v in (("band_um", band_um), ("step_um", step_um), ("max_lag_um", max_lag_um)):
        if not (np.isfinite(v) and v > 0):
            raise BulletError(f"{name} must be a positive length in um, got {v!r}")
    if not (np.isfinite(edge_um) and edge_um >= 0):
        raise BulletError(f"edge_um must be a length >= 0 um, got {edge_um!r}")
    if not 0.0 <= max_missing < 1.0:
        raise BulletError(f"max_missing must be a fraction in [0, 1), got {max_missing!r}")
    sp = s.spacing_um
    ny, nx = s.shape
    width = max(1, int(round(band_um / sp)))
    if width > nx:
        raise BulletError(f"the crosscut band ({band_um} um = {width} px) is wider than the scan ({nx} px along "
                          "x); lower band_um")
    step = max(1, int(round(step_um / sp)))
    edge = max(0, int(round(edge_um / sp)))
    first = min(edge, max(0, (nx - width) // 2))
    last = max(first, nx - width - first)
    starts = np.arange(first, last + 1, step, dtype=np.int64)
    h = np.ascontiguousarray(s.heights, dtype=np.float64)
    profiles = _band_profiles(h, starts, width, max(1, (width + 1) // 2))
    quick = [_quick_signature(p, sp, trim=0.15, long_cutoff_um=250.0, short_cutoff_um=6.25) for p in profiles]
    need = max(32.0, (1.0 - max_missing) * 0.7 * ny)
    usable = np.array([np.isfinite(q).sum() >= need for q in quick], dtype=bool)
    K = len(starts)
    maxlag = max(1, int(round(max_lag_um / sp)))
    lags = np.arange(-maxlag, maxlag + 1, dtype=np.int64)
    pair = np.full(max(K - 1, 0), np.nan)
    drift = np.full(max(K - 1, 0), np.nan)
    for k in range(K - 1):
        if usable[k] and usable[k + 1]:
            c, _ = _ccf_at_lags(quick[k], quick[k + 1], lags, 32)
            if np.isfinite(c).any():
                j = int(np.nanargmax(c))
                pair[k] = float(c[j])
                # quick[k+1][i] sits on quick[k][i + lag]: the striae move by -lag rows per step
                drift[k] = -float(lags[j]) / float(starts[k + 1] - starts[k])
    stab = np.full(K, np.nan)
    for k in range(K):
        if usable[k]:
            nb = [pair[j] for j in (k - 1, k) if 0 <= j < K - 1 and np.isfinite(pair[j])]
            if nb:
                stab[k] = min(nb)
    tilt = float(np.median(drift[np.isfinite(drift)])) if np.isfinite(drift).any() else float("nan")
    return starts, width, profiles, stab, tilt


def _whole_scan_crosscut(s: Surface, reason: str) -> Crosscut:
    """Fallback crosscut: the mean over every column of the oriented scan."""
    h = np.ascontiguousarray(s.heights, dtype=np.float64)
    ny, nx = h.shape
    prof = _band_profiles(h, np.zeros(1, dtype=np.int64), nx, 1)[0]
    if np.isfinite(prof).sum() < 32:
        raise UnusableLandError(f"the scan has {int(np.isfinite(prof).sum())} measured rows across the land, need at "
                                f"least 32 ({reason}); it holds no usable land engraved area")
    return Crosscut(profile=prof, spacing_um=s.spacing_um, position_um=nx * s.spacing_um / 2.0,
                    band_um=nx * s.spacing_um)


# --------------------------------------------------------------------------- kernel
@nb.njit(**_NB)
def _band_profiles(heights, starts, width, min_valid):
    """Column-band means of a (ny, nx) height map: for each k the mean over the
    columns ``starts[k] .. starts[k] + width - 1`` (clipped to the map) of every
    row, over the finite values only.

    Returns an array (K, ny); an entry is NaN when fewer than
    ``max(min_valid, 1)`` finite values fall in its row of the band.
    """
    ny, nx = heights.shape
    K = starts.shape[0]
    out = np.full((K, ny), np.nan)
    for k in range(K):
        c0 = max(0, starts[k])
        c1 = min(nx, starts[k] + width)
        for r in range(ny):
            s = 0.0
            n = 0
            for c in range(c0, c1):
                v = heights[r, c]
                if v == v:
                    s += v
                    n += 1
            if n >= min_valid and n >= 1:
                out[k, r] = s / n
    return out
