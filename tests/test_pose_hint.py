"""Pose hints: the descriptor's best rotation of a candidate narrows the rotation stages and the comparison.

:class:`~ballistic.cartridge.cmc.register.PoseHint`, ``register_global(hint=)``, ``compare_pair(hint=)``,
``RotationPrior.score_many(hints=)``, :meth:`PolarPhaseDescriptor.row_pose` and
``RetrievalParams.pose_window_deg`` in :meth:`Retriever.query`.
"""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.cartridge.cmc.params import CMCParams, prepare
from ballistic.cartridge.cmc.register import PoseHint, register_global
from ballistic.cartridge.synth import fire, synthetic_firearm
from ballistic.errors import DescriptorError, InputError
from ballistic.preprocess.filters import crop_to_mask, rotate
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.polar_phase import PolarPhaseDescriptor, rotation_similarity
from ballistic.retrieval.search import CMCComparison, RetrievalParams, Retriever, RotationPrior, best_per_id


def _firing(firearm: int, shot: int):
    return fire(synthetic_firearm(firearm), shot)


def _gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.fixture(scope="module")
def pair():
    """A firing and another firing of the same firearm turned by 120 degrees, prepared, with the full pose."""
    p = CMCParams()
    a = prepare(_firing(3, 1), p)
    b = prepare(crop_to_mask(rotate(_firing(3, 2), 120.0)), p)
    return a, b, p, register_global(a, b, p)


def test_row_pose_names_the_rotation_search_pose():
    rng = np.random.default_rng(5)
    d = PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32)
    C = rng.normal(size=(3, 4, 12)) + 1j * rng.normal(size=(3, 4, 12))
    C /= np.linalg.norm(C.reshape(3, -1), axis=1)[:, None, None]
    C[2] = np.conj(C[2])                                   # a mirror image
    stored = np.stack([np.stack([c.real, c.imag], axis=-1).ravel() for c in C]).astype(np.float32)
    q = C[0] * np.exp(-1j * np.arange(1, 13) * np.radians(33.75))[None, :]     # candidate 0 turned by 33.75
    qv = np.stack([q.real, q.imag], axis=-1).ravel().astype(np.float32)
    rows = d.query_vectors(qv)
    ids, _, row = best_per_id(np.tile(np.arange(3), (len(rows), 1)), rows @ stored.T, rows=True)
    ang, mir = d.row_pose(row)
    s, a, f = rotation_similarity(q, C, n_angles=32)
    for i, an, mi in zip(ids, ang, mir):
        assert an == pytest.approx(a[i]) and bool(mi) == bool(f[i])
    assert ang[list(ids).index(0)] == pytest.approx(33.75) and not mir[list(ids).index(0)]
    with pytest.raises(DescriptorError, match="rows must be in"):
        d.row_pose([64])


def test_hinted_registration_searches_near_the_hint_only(pair):
    a, b, p, full = pair
    near = register_global(a, b, p, hint=PoseHint(full.angle_deg + 5.0, full.mirrored, 8.0))
    assert _gap(near.angle_deg, full.angle_deg) < 0.6 and near.ncc == pytest.approx(full.ncc, abs=0.02)
    assert near.mirrored == full.mirrored
    # a hint far from the pose keeps the registration near the hint, at a worse correlation
    far = register_global(a, b, p, hint=PoseHint(full.angle_deg + 90.0, full.mirrored, 8.0))
    assert _gap(far.angle_deg, full.angle_deg + 90.0) <= 8.0 + p.coarse_halfwidth_deg + 1.0
    assert far.ncc < full.ncc - 0.2
    with pytest.raises(ValueError, match="mirror"):
        register_global(a, b, CMCParams(mirror=False), hint=PoseHint(10.0, True))
    with pytest.raises(ValueError, match="half-width"):
        PoseHint(10.0, False, 0.0)


def test_hinted_comparison_is_marked_and_carries_no_likelihood_ratio(pair):
    a, b, p, full = pair
    std = compare_pair(a, b, p)
    hinted = compare_pair(a, b, p, hint=PoseHint(full.angle_deg, full.mirrored, 8.0))
    assert hinted.search == "hinted" and hinted.summary()["search"] == "hinted"
    assert hinted.model_score is None and hinted.model_log10_lr is None
    assert hinted.cmc_count == std.cmc_count and hinted.identification
    with pytest.raises(InputError, match="pose hint"):
        compare_pair(a, b, p, search="thorough", hint=PoseHint(0.0))


def test_hinted_rotation_prior_scores_within_the_window(pair):
    a, b, p, full = pair
    rp = RotationPrior(a, spacing_um=50.0, step_deg=2.0)
    (v_all, ang_all), = rp.score_many([b])
    (v_hint, ang_hint), = rp.score_many([b], hints=[PoseHint(full.angle_deg, full.mirrored, 8.0)])
    assert v_hint == pytest.approx(v_all) and ang_hint == pytest.approx(ang_all)
    # the query turns the other way: its angle is minus the candidate's
    assert _gap(ang_hint, -full.angle_deg) <= 2.0
    (v_far, ang_far), = rp.score_many([b], hints=[PoseHint(full.angle_deg + 90.0, full.mirrored, 8.0)])
    assert v_far < v_all - 0.2 and _gap(ang_far, -(full.angle_deg + 90.0)) <= 8.0
    # a mirrored hint of a query searched without its mirror image: nothing to score
    rp1 = RotationPrior(a, spacing_um=50.0, step_deg=2.0, mirror=False)
    (v_m, ang_m), None_ = rp1.score_many([b, b], hints=[PoseHint(10.0, True), None])
    assert v_m == -np.inf and np.isnan(ang_m) and None_[0] == pytest.approx(v_all)
    with pytest.raises(ValueError, match="hints for"):
        rp.score_many([b], hints=[])


def test_hinted_rotation_prior_batches_candidates_without_mixing_them(pair):
    """Hinted candidates go through the transforms together, a bounded number of (candidate, row) pairs at a
    time: each one's score and angle are those it gets alone, whatever the batch holds; a window of the
    whole circle is the unhinted score of that parity."""
    a, b, p, full = pair
    cands = [b] + [prepare(_firing(f, 1), p) for f in (4, 5, 6)]
    rng = np.random.default_rng(2)
    hints = [PoseHint(float(rng.uniform(0, 360)), bool(rng.integers(2)), float(rng.choice([2.0, 8.0, 30.0])))
             for _ in range(9)] + [None, PoseHint(full.angle_deg, full.mirrored, 8.0)]
    many = [cands[j % len(cands)] for j in range(len(hints))]
    rp = RotationPrior(a, spacing_um=100.0, step_deg=4.0)
    alone = np.array([rp.score_many([c], hints=[h])[0] for c, h in zip(many, hints)])
    for per_batch in (1, 7, 64, 10_000):
        rp._PAIRS_PER_BATCH = per_batch
        together = rp.score_many(many, hints=hints)
        np.testing.assert_allclose(together, alone, rtol=1e-5)     # batched transforms: float rounding only
    assert alone[9][0] == pytest.approx(rp.score_many([many[9]])[0][0])      # None: every row
    one_parity = RotationPrior(a, spacing_um=100.0, step_deg=4.0, mirror=False)
    circle = one_parity.score_many(cands, hints=[PoseHint(1.0, False, 179.9)] * len(cands))
    np.testing.assert_allclose(circle, one_parity.score_many(cands), rtol=1e-6)


def test_retriever_passes_the_descriptors_pose_down_the_stages():
    d = PolarPhaseDescriptor()
    surfaces = {10 + k: _firing(k, 1) for k in range(8)}
    idx = VectorIndex(d.dim)
    idx.add(np.array(list(surfaces)), np.stack([d(s) for s in surfaces.values()]))
    q = crop_to_mask(rotate(_firing(4, 2), 137.0))
    base = RetrievalParams(k=4, cmc_k=1, screen_k=0, prior=True, workers=1)
    with Retriever(idx, surfaces.get, descriptor=d, params=base) as r:
        full = r.query(q)
        hinted = r.query(q, params=RetrievalParams(k=4, cmc_k=1, screen_k=0, prior=True, workers=1,
                                                   pose_window_deg=8.0))
    top_f, top_h = full.candidates[0], hinted.candidates[0]
    assert top_f.id == top_h.id == 14
    # the descriptor's pose is the full comparison's, within the row step and the descriptor's own error
    reg = top_f.outcome["summary"]
    assert _gap(top_h.descriptor_angle_deg, reg["angle_deg"]) < 4.0
    assert top_h.descriptor_mirrored == reg["mirrored"]
    assert top_f.summary["search"] == "standard" and top_h.summary["search"] == "hinted"
    assert top_h.cmc_count == top_f.cmc_count and top_h.prior_ncc == pytest.approx(top_f.prior_ncc)
    assert hinted.algorithm_version == f"{full.algorithm_version}+pose-window=8"
    # a comparison that declines hints (the service stores its comparisons with their LR) is the full one,
    # while the rotation prior still searches the window
    with Retriever(idx, surfaces.get, descriptor=d, params=base, compare=CMCComparison(accepts_hint=False)) as r:
        declined = r.query(q, params=RetrievalParams(k=4, cmc_k=1, screen_k=0, prior=True, workers=1,
                                                     pose_window_deg=8.0))
    top_d = declined.candidates[0]
    assert top_d.summary["search"] == "standard" and top_d.summary["model_log10_lr"] == top_f.summary["model_log10_lr"]
    assert declined.algorithm_version == full.algorithm_version and top_d.prior_ncc == pytest.approx(top_h.prior_ncc)
    assert all(np.isfinite(c.descriptor_angle_deg) for c in hinted.candidates)
    with pytest.raises(ValueError, match="pose_window_deg"):
        RetrievalParams(pose_window_deg=180.0)
