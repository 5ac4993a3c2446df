"""Bullets, step 6: land-to-land features of two aligned signatures and a transparent land score.

After bulletxtrctr's ``extract_features_all``: ccf, consecutive matching striae (CMS),
matches and mismatches per mm, distance D, sum of peaks ...; :func:`land_score` combines
them (by default the ccf alone, :data:`LAND_SCORE_MODEL`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ballistic.bullet.align import align_signatures
from ballistic.bullet.profile import Signature, _gauss1d, _profile_and_spacing
from ballistic.errors import BulletError

__all__ = ["LandFeatures", "land_features", "land_score", "LAND_SCORE_MODEL"]


@dataclass(frozen=True)
class LandFeatures:
    """Land-to-land features of two aligned signatures (see :func:`land_features`).

    Lengths in um, rates per mm of overlap.
    """

    ccf: float
    lag_um: float
    overlap_um: float
    overlap_fraction: float
    distance_um: float
    distance_sd_um: float
    matches: int
    mismatches: int
    cms: int
    non_cms: int
    matches_per_mm: float
    mismatches_per_mm: float
    cms_per_mm: float
    non_cms_per_mm: float
    sum_peaks_per_mm: float
    crosscut_a_um: float
    crosscut_b_um: float
    score: float

    def as_dict(self) -> dict:
        return asdict(self)


def _striae(z: np.ndarray, sp: float, cutoff_um: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Peaks (+1) and valleys (-1) of the smoothed signature and their windows.

    Returns (positions, types, heights (of ``z``), windows (k, 2)) in samples.
    A window reaches a third of the way to the neighbouring extrema.
    """
    s = _gauss1d(z, cutoff_um, sp, min_weight=0.5)
    n = s.shape[0]
    if n < 3:
        e = np.empty(0)
        return e.astype(np.int64), e.astype(np.int64), e, np.empty((0, 2))
    c, l, r = s[1:-1], s[:-2], s[2:]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(c) & np.isfinite(l) & np.isfinite(r)
        peak = ok & (c >= l) & (c > r)
        valley = ok & (c <= l) & (c < r)
    pos = np.flatnonzero(peak | valley) + 1
    typ = np.where(peak[pos - 1], 1, -1).astype(np.int64)
    if pos.size == 0:
        return pos, typ, np.empty(0), np.empty((0, 2))
    d = np.diff(pos).astype(np.float64)
    before = np.r_[d[:1], d] if d.size else np.array([1.0])
    after = np.r_[d, d[-1:]] if d.size else np.array([1.0])
    win = np.stack([pos - before / 3.0, pos + after / 3.0], axis=1)
    return pos, typ, z[pos], win


def _match_striae(pa, ta, ha, wa, pb, tb, hb, wb) -> tuple[np.ndarray, np.ndarray]:
    """Group overlapping striation windows of two aligned signatures.

    A group (a connected run of overlapping windows) is a match when it holds
    striae of both signatures, all of one type (all peaks or all valleys).
    Returns (match flags per group in order along the signature, mean |height|
    per group).
    """
    if pa.size + pb.size == 0:
        return np.zeros(0, bool), np.zeros(0)
    starts = np.r_[wa[:, 0], wb[:, 0]]
    ends = np.r_[wa[:, 1], wb[:, 1]]
    src = np.r_[np.zeros(pa.size, np.int64), np.ones(pb.size, np.int64)]
    typ = np.r_[ta, tb]
    hts = np.r_[ha, hb]
    order = np.argsort(starts, kind="stable")
    match, height = [], []
    cur_end = -np.inf
    g_src: list = []
    g_typ: list = []
    g_h: list = []
    for o in order:
        if g_src and starts[o] > cur_end:
            match.append(len(set(g_src)) == 2 and len(set(g_typ)) == 1)
            height.append(float(np.mean(np.abs(g_h))))
            g_src, g_typ, g_h = [], [], []
            cur_end = -np.inf
        g_src.append(src[o])
        g_typ.append(typ[o])
        g_h.append(hts[o])
        cur_end = max(cur_end, ends[o])
    if g_src:
        match.append(len(set(g_src)) == 2 and len(set(g_typ)) == 1)
        height.append(float(np.mean(np.abs(g_h))))
    return np.array(match, bool), np.array(height)


def _longest_run(flags: np.ndarray) -> int:
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def _as_signature_list(x, spacing_um, what: str) -> list[tuple[np.ndarray, float, float]]:
    """(values, spacing, crosscut position or NaN) for a Signature, an array or a sequence of them."""
    if isinstance(x, (Signature, np.ndarray)):
        items = [x]
    elif isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]):
        items = list(x)
    else:
        items = [x]
    out = []
    for it in items:
        z, sp = _profile_and_spacing(it, spacing_um, what)
        pos = float(it.meta.get("crosscut_um", np.nan)) if isinstance(it, Signature) else float("nan")
        out.append((z, sp, pos))
    return out


def _block_mean(z: np.ndarray, f: int) -> np.ndarray:
    """NaN-aware means of consecutive blocks of ``f`` samples (a last partial block kept)."""
    if f <= 1:
        return z
    n = z.shape[0]
    pad = (-n) % f
    zz = np.r_[z, np.full(pad, np.nan)].reshape(-1, f)
    m = np.isfinite(zz)
    cnt = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(m, zz, 0.0).sum(axis=1) / cnt
    return np.where(cnt * 2 >= f, out, np.nan)


def land_features(a, b, *, spacing_um: float | None = None, min_overlap_um: float = 500.0,
                  max_lag_um: float | None = 250.0, striae_cutoff_um: float = 50.0,
                  coarse_um: float | None = 6.25, refine: int = 4) -> LandFeatures:
    """Features of a land-to-land comparison (after bulletxtrctr's ``extract_features_all``).

    The signatures are aligned (:func:`align_signatures`); given lists of
    signatures (one land at several heights, :func:`land_signatures`), every
    pair is aligned and the pair with the highest correlation is kept. Then, on
    the samples both signatures measured:

    * ``ccf``, ``lag_um``, ``overlap_um``, ``overlap_fraction`` (of the shorter
      signature's measured length), ``crosscut_a_um``/``crosscut_b_um`` (heights
      of the kept pair, NaN when unknown);
    * ``distance_um`` D = root mean squared difference, um; ``distance_sd_um`` the
      sum of the two standard deviations (the scale D is judged against);
    * striae: peaks and valleys of each signature smoothed with
      ``striae_cutoff_um``, each with a window reaching a third of the way to its
      neighbours; overlapping windows form groups; a group is a *match* when it
      holds striae of both signatures, all peaks or all valleys.
      ``matches``/``mismatches`` (counts and per mm of overlap), ``cms`` (longest
      run of consecutive matching striae) and ``non_cms`` (longest run of
      non-matches), per mm too, and ``sum_peaks_per_mm`` (sum of the mean
      |height| of matched groups, um per mm);
    * ``score`` = :func:`land_score` of the above.

    Parameters
    ----------
    a, b : Signature, ndarray, or a list of them
        Land signatures (um), all with the same spacing.
    spacing_um : float, keyword-only
        Sample spacing for plain arrays, um.
    min_overlap_um : float, keyword-only
        Passed to :func:`align_signatures`.
    max_lag_um : float or None, keyword-only
        Largest shift searched, um (default 250). Signatures run from groove to
        groove, so the same land on two bullets lines up within the uncertainty
        of the groove positions; larger shifts only find chance agreement over
        part of the land. None searches every shift.
    striae_cutoff_um : float, keyword-only
        Gaussian cut-off of the smoothing before peaks and valleys are found, um.
    coarse_um, refine : keyword-only
        With more than ``refine`` signature pairs, every pair is first aligned on
        copies block-averaged to about ``coarse_um`` (the signatures hold little
        below their short cut-off) and only the ``refine`` best are aligned at full
        resolution. ``coarse_um=None`` aligns every pair at full resolution.

    Returns
    -------
    LandFeatures
    """
    la = _as_signature_list(a, spacing_um, "land_features")
    lb = _as_signature_list(b, spacing_um, "land_features")
    for _, sp, _ in la + lb:
        if abs(sp - la[0][1]) > 1e-6 * max(sp, la[0][1]):
            raise BulletError(f"land_features: spacings differ ({la[0][1]} um vs {sp} um); resample the "
                              "signatures to one spacing first")
    sp0 = la[0][1]
    candidates = [(i, j) for i in range(len(la)) for j in range(len(lb))]
    f = max(1, int(round(coarse_um / sp0))) if coarse_um else 1
    if f > 1 and len(candidates) > refine:
        ca = [_block_mean(z, f) for z, _, _ in la]
        cb = [_block_mean(z, f) for z, _, _ in lb]
        coarse = []
        for i, j in candidates:
            try:
                c = align_signatures(ca[i], cb[j], spacing_um=sp0 * f, min_overlap_um=min_overlap_um,
                                     max_lag_um=max_lag_um).ccf
            except BulletError:
                continue
            coarse.append((c, i, j))
        coarse.sort(key=lambda t: -t[0])
        candidates = [(i, j) for _, i, j in coarse[:max(1, refine)]] or candidates
    best = None
    last_error: BulletError | None = None
    for i, j in candidates:
        (za, sp, pa), (zb, _, pb) = la[i], lb[j]
        try:
            al = align_signatures(za, zb, spacing_um=sp, min_overlap_um=min_overlap_um, max_lag_um=max_lag_um)
        except BulletError as exc:
            last_error = exc
            continue
        if best is None or al.ccf > best[0].ccf:
            best = (al, za, zb, pa, pb)
    if best is None:
        raise BulletError(f"land_features: no pair of signatures could be aligned ({last_error})")
    al, za, zb, pa, pb = best
    sp = al.spacing_um
    lag = al.lag
    # put both on a's index: b[j] -> a[j + lag]; overlap range of a
    i0, i1 = max(0, lag), min(za.shape[0], zb.shape[0] + lag)
    xa = za[i0:i1]
    xb = zb[i0 - lag:i1 - lag]
    both = np.isfinite(xa) & np.isfinite(xb)
    n_both = int(both.sum())
    d = float(np.sqrt(np.mean((xa[both] - xb[both]) ** 2)))
    sd = float(np.std(xa[both]) + np.std(xb[both]))
    ya = np.where(both, xa, np.nan)
    yb = np.where(both, xb, np.nan)
    sa_ = _striae(ya, sp, striae_cutoff_um)
    sb_ = _striae(yb, sp, striae_cutoff_um)
    match, height = _match_striae(*sa_, *sb_)
    mm = max(n_both * sp / 1000.0, 1e-9)
    n_match = int(match.sum())
    n_mis = int((~match).sum())
    cms = _longest_run(match)
    non = _longest_run(~match)
    shorter = min(np.isfinite(za).sum(), np.isfinite(zb).sum())
    partial = dict(ccf=al.ccf, lag_um=al.lag_um, overlap_um=n_both * sp, overlap_fraction=n_both / max(shorter, 1),
                   distance_um=d, distance_sd_um=sd, matches=n_match, mismatches=n_mis, cms=cms, non_cms=non,
                   matches_per_mm=n_match / mm, mismatches_per_mm=n_mis / mm, cms_per_mm=cms / mm,
                   non_cms_per_mm=non / mm, sum_peaks_per_mm=float(height[match].sum()) / mm if n_match else 0.0,
                   crosscut_a_um=pa, crosscut_b_um=pb)
    return LandFeatures(**partial, score=land_score(partial))


#: The land score model (see :func:`land_score`): the cross-correlation alone.
LAND_SCORE_MODEL: dict[str, Any] = {
    "intercept": 0.0,
    "coef": {"ccf": 1.0},
    "link": "identity",
    "fitted_on": "not fitted: ccf alone separates Hamby 252 and Hamby 44 (see land_score)",
}


def land_score(features: LandFeatures | dict, *, model: dict | None = None) -> float:
    """A transparent land-to-land score from :class:`LandFeatures`.

    ``model`` (default :data:`LAND_SCORE_MODEL`) holds ``intercept``, ``coef``
    (feature name -> coefficient) and ``link`` (``"identity"`` or
    ``"logistic"``); the score is ``link(intercept + sum(coef[f] * features[f]))``.

    The default is the cross-correlation ``ccf`` itself, in [-1, 1]. With the
    many-heights comparison it alone puts every same-source land pair above every
    different-source pair on both sets (Hamby 252: 0.910 vs 0.671; Hamby 44:
    0.871 vs 0.627), while CMS per mm (AUC 0.97 on Hamby 44) and the sum of
    peaks per mm (0.985 / 0.981) do not. A logistic model fitted on one set and tested on the
    other would need a penalty to exist at all (both sets are separable, so the
    unpenalised fit diverges) and could not beat AUC 1; the simpler score is
    kept. Pass a fitted ``model`` to use a combination.
    """
    m = LAND_SCORE_MODEL if model is None else model
    f = features.as_dict() if isinstance(features, LandFeatures) else features
    try:
        eta = float(m["intercept"]) + sum(float(c) * float(f[name]) for name, c in m["coef"].items())
    except KeyError as exc:
        raise BulletError(f"land_score: the model needs feature {exc.args[0]!r}, which the features lack; "
                          f"available: {sorted(f)}") from exc
    if m.get("link", "identity") == "logistic":
        return float(1.0 / (1.0 + math.exp(-eta)))
    if m.get("link", "identity") != "identity":
        raise BulletError(f"land_score: link must be 'identity' or 'logistic', got {m.get('link')!r}")
    return float(eta)
