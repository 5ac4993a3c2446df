"""Pair-level comparison of two breech faces: registration, cells both ways, CMC counts.

:func:`compare_pair` is what the benchmark, the explanation figure and the
service call. The pair's CMC count is the smaller of the two directions'
High-CMC counts (a pair must be congruent whichever scan provides the cells),
and ``similarity`` is that count plus the mean correlation of its congruent
cells (in [0, 1)) so that ties are broken continuously.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ballistic.cartridge.cmc.cells import DirectionResult, compare_cells
from ballistic.cartridge.cmc.decision import CMCOutcome, cmc_count, decide, high_cmc_count
from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, mirrored, prepare
from ballistic.cartridge.cmc.register import PoseHint, invert_registration, register_global, register_thorough
from ballistic.cartridge.score.features import pair_features
from ballistic.cartridge.score.model import PairModel, default_model
from ballistic.errors import InputError
from ballistic.surface import Surface

__all__ = ["PairResult", "compare_pair", "ALGORITHM_VERSION", "SEARCHES"]

#: /2: normalised preprocessing, mirror search, pair features; /3: rotation prior every 2 degrees;
#: /4: prior peaks screened at the coarse spacing before refinement; /5: comparison band 500 um (cmcR's)
#: /6: rotation-prior step from the rim radius, uncentred NCC for the prior and the cell translations
ALGORITHM_VERSION = "cmc-coarse2fine/6"

#: how :func:`compare_pair` may find the pose (``search=``)
SEARCHES = ("standard", "thorough")


@dataclass
class PairResult:
    reference: str
    target: str
    forward: DirectionResult          # reference cells searched in the target
    backward: DirectionResult         # target cells searched in the reference
    original: tuple[CMCOutcome, CMCOutcome]
    high: tuple[CMCOutcome, CMCOutcome]
    cmc_count: int
    similarity: float
    identification: bool
    seconds: float
    params: CMCParams
    features: dict = field(default_factory=dict)     # ballistic.cartridge.score.features.pair_features
    model_score: float | None = None                 # log-odds of the shipped pair model (None: no model)
    model_log10_lr: float | None = None              # its calibrated, bounded log10 LR
    model_version: str = ""
    search: str = "standard"     # "standard" (register_global), "hinted" (the same near a PoseHint) or "thorough"

    @property
    def registration(self):
        return self.forward.registration

    def summary(self) -> dict:
        """Flat record (one CSV row / JSON object) without per-cell data."""
        r = self.registration
        return {
            "reference": self.reference, "target": self.target,
            "cmc_count": self.cmc_count, "similarity": round(self.similarity, 6),
            "identification": self.identification,
            "cmc_forward": self.high[0].count, "cmc_backward": self.high[1].count,
            "cmc_original_forward": self.original[0].count, "cmc_original_backward": self.original[1].count,
            "rule_forward": self.high[0].rule, "rule_backward": self.high[1].rule,
            "cells_forward": len(self.forward.cells), "cells_backward": len(self.backward.cells),
            "angle_deg": round(r.angle_deg, 3), "dy_um": round(r.dy_um, 2), "dx_um": round(r.dx_um, 2),
            "registration_ncc": round(r.ncc, 4), "mirrored": bool(r.mirrored),
            "model_score": None if self.model_score is None else round(self.model_score, 4),
            "model_log10_lr": None if self.model_log10_lr is None else round(self.model_log10_lr, 4),
            "model": self.model_version,
            "search": self.search,
            "seconds": round(self.seconds, 4),
            "algorithm": ALGORITHM_VERSION,
            **{f"f_{k}": round(v, 6) for k, v in self.features.items()},
        }

    def to_dict(self) -> dict:
        """Everything needed to explain the result: summary, both registrations, every cell."""
        out = self.summary()
        out["params"] = self.params.as_dict()
        for name, d, hc in (("forward", self.forward, self.high[0]), ("backward", self.backward, self.high[1])):
            out[name] = {
                "registration": asdict(d.registration),
                "consensus": {"angle_deg": hc.consensus_angle_deg, "dy_um": hc.consensus_dy_um,
                              "dx_um": hc.consensus_dx_um, "rule": hc.rule},
                "cells": [{"row": c.row, "col": c.col, "y0_px": c.y0_px, "x0_px": c.x0_px, "size_px": c.size_px,
                           "valid_fraction": round(c.valid_fraction, 4), "angle_deg": round(c.angle_deg, 3),
                           "dy_um": None if not np.isfinite(c.dy_um) else round(c.dy_um, 2),
                           "dx_um": None if not np.isfinite(c.dx_um) else round(c.dx_um, 2),
                           "corr": None if not np.isfinite(c.corr) else round(c.corr, 4),
                           "cmc": bool(m)} for c, m in zip(d.cells, hc.cmc_mask)],
            }
        return out


def _prepared(x: Surface | PreparedSurface, p: CMCParams) -> PreparedSurface:
    if isinstance(x, PreparedSurface):
        if abs(x.spacing_um - p.spacing_um) > 1e-9:
            raise ValueError(f"prepared at {x.spacing_um} um but params ask for {p.spacing_um} um; prepare again")
        if (x.highpass_um, x.prior_highpass_um) != (p.highpass_um, p.prior_highpass_um) \
                or abs(x.prior_spacing_um - p.prior_spacing_um) > 1e-9:
            raise ValueError(f"prepared on another band (views up to {x.highpass_um} um, prior at "
                             f"{x.prior_spacing_um} um up to {x.prior_highpass_um} um) than params ask for "
                             f"({p.highpass_um} um; {p.prior_spacing_um} um up to {p.prior_highpass_um} um); "
                             "prepare again with these params")
        return x
    if isinstance(x, Surface):
        return prepare(x, p)
    raise TypeError(f"expected a Surface or PreparedSurface, got {type(x).__name__}")


def compare_pair(reference: Surface | PreparedSurface, target: Surface | PreparedSurface,
                 params: CMCParams | None = None, *, model: "PairModel | None | str" = "default",
                 search: str = "standard", hint: PoseHint | None = None) -> PairResult:
    """Compare two preprocessed breech faces with Congruent Matching Cells, both ways.

    Parameters
    ----------
    reference, target : Surface or PreparedSurface
        Preprocessed breech faces (:func:`ballistic.cartridge.breech_face.preprocess_cartridge`),
        any relative rotation.
    params : CMCParams, optional
    model : PairModel, None or "default", keyword-only
        Scores the pair features (:mod:`ballistic.cartridge.score.model`); ``"default"`` is the model
        shipped with the package (skipped if absent), None skips the model score.
    search : {"standard", "thorough"}, keyword-only
        How the pose is found: :func:`~ballistic.cartridge.cmc.register.register_global` (every comparison of
        the benchmarks, the calibrations and the service), or the ~8 times slower (a pair, measured)
        :func:`~ballistic.cartridge.cmc.register.register_thorough` (the whole circle at the coarse spacing), a
        second look at a pair whose registration an examiner doubts. A thorough comparison reports the CMC
        counts, the features and the model's score, but no calibrated likelihood ratio
        (``model_log10_lr`` None): the calibration was fitted on the standard search, and a wider search
        also finds higher chance correlations between different sources.
    hint : PoseHint, optional, keyword-only
        Register near a pose known from elsewhere (the retrieval's re-rank passes the descriptor's best
        rotation of the candidate): the standard search with its rotation prior limited to the hint's window
        (:func:`~ballistic.cartridge.cmc.register.register_global`), about half the time of a comparison.
        The result is marked ``search="hinted"``; it reports the CMC counts and decision but no model score
        and no likelihood ratio (the prior's runner-up, one of the model's features, is then searched within the
        window only, and the calibration was fitted on the full circle).

    Returns
    -------
    PairResult
        CMC counts and decision (C >= 6), the pair features and, with a model, its score
        (log-odds at equal priors, > 0 = the model's identification) and calibrated log10 LR.
    """
    if search not in SEARCHES:
        raise InputError(f"compare_pair: search must be one of {SEARCHES}, got {search!r}")
    if hint is not None and search != "standard":
        raise InputError("compare_pair: a pose hint narrows the standard search; pass search='standard' with it")
    p = params or CMCParams()
    t0 = time.perf_counter()
    a, b = _prepared(reference, p), _prepared(target, p)
    reg = register_global(a, b, p, hint=hint) if search == "standard" else register_thorough(a, b, p)
    bb = mirrored(b) if reg.mirrored else b     # cells run on the target as registered
    fwd = compare_cells(a, bb, reg, p)
    bwd = compare_cells(bb, a, invert_registration(reg), p)
    orig = (cmc_count(fwd, p), cmc_count(bwd, p))
    high = (high_cmc_count(fwd, p), high_cmc_count(bwd, p))
    k = 0 if high[0].count <= high[1].count else 1
    count = high[k].count
    sim = count + (high[k].mean_cmc_corr if count else 0.0)
    res = PairResult(a.name, b.name, fwd, bwd, orig, high, count, float(sim), decide(count, p),
                     0.0, p, search="hinted" if hint is not None else search)
    res.features = pair_features(res)
    mdl = default_model() if isinstance(model, str) and model == "default" else model
    if hint is not None:        # the window-searched prior margin is not the feature the model was fitted on
        mdl = None
    if mdl is not None:
        res.model_score = float(mdl.score(res.features))
        lr = mdl.log10_lr(res.features) if search == "standard" else None
        res.model_log10_lr = None if lr is None else float(lr)
        res.model_version = f"{mdl.format}:{mdl.population.get('id', '')}"
    res.seconds = time.perf_counter() - t0
    return res
