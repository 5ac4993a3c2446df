"""Bullets in the service: land signatures on disk, bullet-to-bullet comparison, explanation, figure.

A bullet exhibit is a set of land engraved area scans (``land_scans``, one x3p per land, with its
position ``land_index`` 1..n around the bullet). Its correlation job reduces every land to
signatures at many heights (:func:`ballistic.bullet.signature.land_signatures`, every ``bullet_step_um``),
stores them beside the originals (``derived/.../<exhibit>-<sha16>-lea<step>.npz``), indexes the
bullet descriptor (:func:`ballistic.bullet.descriptor.bullet_descriptor`, partition region ``bullet_lea`` +
calibre) and scores the nearest bullets with :func:`ballistic.bullet.sam.bullet_score` (sequence average
maximum of the land-to-land scores over the phase of the two land sequences, and the phase test: does the
best phase stand out from the bullets' other phases). The candidate keeps the best phase, the phase test,
every land pairing with its features (ccf, lag, CMS...) and the full land-score matrix as explanation data.

Versions: a land's stored signatures record the :data:`BULLET_ALGORITHM_VERSION` that extracted them
(``signature_info["algorithm"]``); signatures of another version are extracted again by the next job of
their bullet, and at start-up every bullet with such signatures gets a job
(:meth:`api.runtime.Runtime.queue_stale_descriptors`). A pair's ``lands_key`` includes the version, so an
unreviewed pair is scored again under the new algorithm; a reviewed one is kept as it was scored.

Land positions: both bullets are laid out on ``n`` positions, ``n`` = the exhibits' ``land_count``
when given (two different counts are two different rifling classes: not compared), else the highest
land index uploaded on either side; lands not uploaded (or whose signature could not be extracted)
are missing positions, as :func:`bullet_score` expects.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from api.jsonable import jsonable
from ballistic.io.atomic import atomic_write_bytes

__all__ = ["BULLET_ALGORITHM_VERSION", "save_signatures", "load_signatures", "land_positions_count",
           "compare_bullets", "lands_key", "bullet_figure", "land_rows", "signatures_current", "current_lands"]

#: Version of the bullet comparison the service stores with each candidate and with each land's signatures
#: (land_signatures and land_features with their defaults, land score = ccf, SAM over the phase and the phase
#: test; see ballistic.bullet). /2: signatures from the direction test without the mounting tilt, grooves
#: consistent along each land, flagged fallbacks instead of refused lands; the phase test in the explanation.
BULLET_ALGORITHM_VERSION = "bullet-sam-ccf/2"
SIGNATURE_FORMAT = "land-signatures/1"


def save_signatures(path: Path, sigs) -> None:
    """Write a land's signatures (values, spacing, start, meta) atomically as one npz."""
    arrays = {f"values_{i}": np.asarray(s.values, dtype=np.float64) for i, s in enumerate(sigs)}
    head = {"format": SIGNATURE_FORMAT,
            "items": [{"spacing_um": float(s.spacing_um), "start_um": float(s.start_um), "meta": jsonable(s.meta)}
                      for s in sigs]}
    arrays["header"] = np.frombuffer(json.dumps(head).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def load_signatures(path: Path):
    from ballistic.bullet.profile import Signature

    with np.load(path, allow_pickle=False) as z:
        head = json.loads(bytes(z["header"]).decode())
        if head.get("format") != SIGNATURE_FORMAT:
            raise ValueError(f"{path.name}: not a {SIGNATURE_FORMAT} file")
        return [Signature(values=np.array(z[f"values_{i}"]), spacing_um=it["spacing_um"], start_um=it["start_um"],
                          meta=dict(it["meta"])) for i, it in enumerate(head["items"])]


def land_rows(session, exhibit_id: int) -> list[tuple[int, int, str, str | None, dict | None]]:
    """A bullet's lands in position order: ``(land id, land_index, sha256, signature_path, signature_info)``."""
    from sqlalchemy import select

    from api.db.models import LandScan

    return [(x.id, x.land_index, x.original_sha256, x.signature_path, x.signature_info)
            for x in session.execute(select(LandScan).where(LandScan.exhibit_id == exhibit_id)
                                     .order_by(LandScan.land_index)).scalars()]


def signatures_current(store, path: str | None, info: dict | None, step_um: float) -> bool:
    """A land's stored signatures are current: extracted at ``step_um`` by this bullet algorithm, still on disk."""
    return bool(path and info and info.get("step_um") == float(step_um)
                and info.get("algorithm") == BULLET_ALGORITHM_VERSION and store.resolve(path).is_file())


def current_lands(session, store, exhibit_id: int, step_um: float, *, load=None) -> tuple[dict[int, list], dict[int, str]]:
    """The lands of a bullet that have current signatures: ``{land_index: [Signature]}`` and
    ``{land_index: sha256}`` (``load(path)`` reads a signatures file; default :func:`load_signatures`)."""
    load = load or (lambda rel: load_signatures(store.resolve(rel)))
    sigs: dict[int, list] = {}
    shas: dict[int, str] = {}
    for _, idx, sha, path, info in land_rows(session, exhibit_id):
        if signatures_current(store, path, info, step_um) and not info.get("error"):
            sigs[idx] = load(path)
            shas[idx] = sha
    return sigs, shas


def land_positions_count(land_count_a: int | None, lands_a, land_count_b: int | None, lands_b) -> int:
    """Number of land positions both bullets are laid out on (module notes); ValueError if incompatible."""
    if land_count_a and land_count_b and land_count_a != land_count_b:
        raise ValueError(f"land counts differ ({land_count_a} vs {land_count_b}): different rifling, not compared")
    n = max([land_count_a or 0, land_count_b or 0] + list(lands_a) + list(lands_b))
    if n < 1:
        raise ValueError("no land positions")
    return int(n)


def lands_key(lo_lands: dict[int, str], hi_lands: dict[int, str]) -> str:
    """Identity of the land sets a pair was scored on (``{land_index: sha256}`` of the lower and the higher
    exhibit id) and of the algorithm that scored it: a pair is scored again when either bullet gains a land
    or the bullet algorithm changes."""
    body = json.dumps([sorted(lo_lands.items()), sorted(hi_lands.items()), BULLET_ALGORITHM_VERSION])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def compare_bullets(lands_a: dict[int, list], lands_b: dict[int, list], n: int) -> dict:
    """Score bullet A (reference) against bullet B with :func:`ballistic.bullet.sam.bullet_score`.

    ``lands_*``: ``{land_index (1..n): [Signature, ...]}`` (missing lands absent). Returns the SAM,
    best phase and the explanation (land pairings of the best phase with their features, every
    phase's mean, the full land-score matrix, the phase test); positions in the explanation are land
    indexes (1..n). The decision (``identification``) stays SAM >= the threshold; the phase test is
    reported beside it (``phase_test``: contrast, sigma, p-value, and whether p <= its alpha).
    """
    from ballistic.bullet.features import LAND_SCORE_MODEL, land_features
    from ballistic.bullet.sam import BULLET_PHASE_ALPHA, BULLET_SAM_THRESHOLD, bullet_score

    pos_a = [lands_a.get(i + 1) for i in range(n)]
    pos_b = [lands_b.get(i + 1) for i in range(n)]
    seen: dict[tuple[int, int], object] = {}

    def features(a, b, **kw):
        f = land_features(a, b, **kw)
        seen[(id(a), id(b))] = f
        return f

    r = bullet_score(pos_a, pos_b, features=features)
    pairs = []
    for i, j, score in r.pairs:
        f = seen.get((id(pos_a[i]), id(pos_b[j])))
        d = f.as_dict() if f is not None else {}
        pairs.append({"land_a": i + 1, "land_b": j + 1, "score": score,
                      **{k: d.get(k) for k in ("ccf", "lag_um", "overlap_um", "overlap_fraction", "cms",
                                               "matches_per_mm", "mismatches_per_mm", "distance_um",
                                               "sum_peaks_per_mm", "crosscut_a_um", "crosscut_b_um")}})
    pt = r.phase_test
    phase_test = None if pt is None else {
        "contrast": pt.contrast, "best_mean": pt.best_mean, "reference_mean": pt.reference_mean,
        "sigma": pt.sigma, "p_value": pt.p_value, "phases": pt.n, "alpha": BULLET_PHASE_ALPHA,
        "same_barrel_at_alpha": bool(np.isfinite(pt.p_value) and pt.p_value <= BULLET_PHASE_ALPHA),
        "note": ("does the best phase stand out from these bullets' other phases: contrast = best phase mean - "
                 "the floor(n/2)-th smallest phase mean, p-value of that contrast when no phase is special "
                 "(order statistics of n normal phase means, sigma from the land scores outside the best "
                 "phase); NaN when a typical phase has fewer than two land pairs. A screening statistic, "
                 "not a likelihood ratio")}
    expl = {"algorithm": BULLET_ALGORITHM_VERSION, "sam": r.sam, "phase": r.phase, "land_positions": n,
            "phase_scores": r.phase_scores, "scores": r.scores, "pairs": pairs, "phase_test": phase_test,
            "lands_a": sorted(lands_a), "lands_b": sorted(lands_b),
            "threshold": BULLET_SAM_THRESHOLD, "land_score_model": LAND_SCORE_MODEL,
            "phase_note": "phase k pairs land i of the reference with land (i + k) mod n of the target",
            "threshold_note": ("not calibrated: on Hamby 252 and Hamby 44 no different-source land pair reached "
                               "a ccf of 0.68 and no same-source pair fell below 0.87; 0.8 sits between them")}
    return {"sam": float(r.sam), "phase": int(r.phase), "lands_compared": len(pairs),
            "phase_p_value": None if pt is None or not np.isfinite(pt.p_value) else float(pt.p_value),
            "identification": bool(r.sam >= BULLET_SAM_THRESHOLD), "explanation": jsonable(expl)}


def _pick(sigs, crosscut_um):
    if crosscut_um is None or not sigs:
        return sigs[0] if sigs else None
    return min(sigs, key=lambda s: abs(float(s.meta.get("crosscut_um", np.inf)) - float(crosscut_um)))


def bullet_figure(lands_a: dict[int, list], lands_b: dict[int, list], explanation: dict, path: Path, *,
                  labels: tuple[str, str] = ("reference", "target"), dpi: int = 100) -> Path:
    """One panel per land pairing of the best phase: the two signatures at the heights that matched,
    the target shifted by the registered lag (so matching striae line up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ballistic.viz.render import save_figure

    pairs = explanation.get("pairs") or []
    n = max(1, len(pairs))
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 0.8), squeeze=False)
    for ax, p in zip(axes[:, 0], pairs):
        sa = _pick(lands_a.get(p["land_a"], []), p.get("crosscut_a_um"))
        sb = _pick(lands_b.get(p["land_b"], []), p.get("crosscut_b_um"))
        if sa is None or sb is None:
            ax.set_axis_off()
            continue
        lag = float(p.get("lag_um") or 0.0)
        xa = np.arange(sa.values.size) * sa.spacing_um
        xb = np.arange(sb.values.size) * sb.spacing_um + lag
        ax.plot(xa, sa.values, lw=0.8, color="tab:red", label=f"{labels[0]} land {p['land_a']}")
        ax.plot(xb, sb.values, lw=0.8, color="tab:blue", alpha=0.8, label=f"{labels[1]} land {p['land_b']}")
        ccf = p.get("ccf")
        ax.set_title(f"land {p['land_a']} ~ land {p['land_b']}: score {p['score']:.3f}"
                     + (f", ccf {ccf:.3f}" if ccf is not None else "") + f", lag {lag:.0f} um", fontsize=9)
        ax.set_ylabel("um")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("position across the land (um, reference frame)")
    fig.suptitle(f"SAM {explanation.get('sam', float('nan')):.3f} at phase {explanation.get('phase')} "
                 f"({len(pairs)} land pairs)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
