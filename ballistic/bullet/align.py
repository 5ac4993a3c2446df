"""Bullets, step 5: alignment of two signatures by NaN-aware cross-correlation.

The cross-correlation function is :func:`ballistic.stats.correlation.ccf_at_lags` (numba, the
library's one pairwise-complete correlation accumulator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ballistic.bullet.profile import _profile_and_spacing
from ballistic.errors import BulletError
from ballistic.stats.correlation import _ccf_at_lags

__all__ = ["Alignment", "align_signatures"]


@dataclass(frozen=True, eq=False)
class Alignment:
    """Best alignment of signature ``b`` on signature ``a``.

    ``b[j]`` sits on ``a[j + lag]`` with ``lag = lag_um / spacing_um`` samples.
    ``ccf`` is the pairwise-complete Pearson correlation there, ``overlap_um``
    the length both signatures measured (jointly finite samples * spacing).
    ``lags_um`` and ``ccfs`` hold the whole cross-correlation function.
    """

    lag_um: float
    ccf: float
    overlap_um: float
    spacing_um: float
    lags_um: np.ndarray
    ccfs: np.ndarray

    @property
    def lag(self) -> int:
        """The lag in samples."""
        return int(round(self.lag_um / self.spacing_um))


def align_signatures(a, b, *, spacing_um: float | None = None, min_overlap_um: float = 500.0,
                     max_lag_um: float | None = None) -> Alignment:
    """Align two signatures by NaN-aware cross-correlation.

    For every lag with at least ``min_overlap_um`` of jointly measured samples
    the Pearson correlation of the overlapping samples is computed (pairwise
    complete: a sample missing in either signature is left out); the lag with
    the highest correlation wins.

    Parameters
    ----------
    a, b : Signature or ndarray, shape (n,), (m,)
        Signatures in um, NaN = missing, with the same spacing.
    spacing_um : float, keyword-only
        Sample spacing for plain arrays, um.
    min_overlap_um : float, keyword-only
        Least jointly measured length for a lag to count, um (capped at the
        measured length of the shorter signature).
    max_lag_um : float or None, keyword-only
        Search only ``|lag| <= max_lag_um``; None searches every lag.

    Returns
    -------
    Alignment
        ``lag_um`` (``b[j]`` lies on ``a[j + lag]``), ``ccf``, ``overlap_um`` and
        the whole function (``lags_um``, ``ccfs``; NaN where the overlap is short).

    Raises
    ------
    BulletError
        Different spacings (resample one signature first), or no lag with enough
        overlap.
    """
    za, spa = _profile_and_spacing(a, spacing_um, "align_signatures")
    zb, spb = _profile_and_spacing(b, spacing_um, "align_signatures")
    if abs(spa - spb) > 1e-6 * max(spa, spb):
        raise BulletError(f"align_signatures: spacings differ ({spa} um vs {spb} um); resample one signature "
                          "to the other's spacing first")
    sp = spa
    if not (np.isfinite(min_overlap_um) and min_overlap_um > 0):
        raise BulletError(f"align_signatures: min_overlap_um must be a positive length, got {min_overlap_um!r}")
    va, vb = int(np.isfinite(za).sum()), int(np.isfinite(zb).sum())
    if min(va, vb) < 2:
        raise BulletError("align_signatures: a signature has fewer than 2 measured samples")
    min_count = max(2, min(int(math.ceil(min_overlap_um / sp - 1e-9)), va, vb))
    na, nb = za.shape[0], zb.shape[0]
    lo, hi = -(nb - 1), na - 1
    if max_lag_um is not None:
        ml = int(math.floor(max_lag_um / sp + 1e-9))
        lo, hi = max(lo, -ml), min(hi, ml)
    if lo > hi:
        raise BulletError("align_signatures: no lag in range; raise max_lag_um")
    lags = np.arange(lo, hi + 1, dtype=np.int64)
    ccfs, counts = _ccf_at_lags(np.ascontiguousarray(za), np.ascontiguousarray(zb), lags, min_count)
    if not np.isfinite(ccfs).any():
        raise BulletError(f"align_signatures: no lag has {min_count * sp:.0f} um of jointly measured samples "
                          "with variation on both sides; lower min_overlap_um or check the signatures")
    k = int(np.nanargmax(ccfs))
    return Alignment(lag_um=float(lags[k] * sp), ccf=float(ccfs[k]), overlap_um=float(counts[k] * sp),
                     spacing_um=sp, lags_um=lags * sp, ccfs=ccfs)
