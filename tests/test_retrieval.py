"""Tests of :mod:`ballistic.retrieval` on a small synthetic database (mates known by construction)."""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.cartridge.synth import SyntheticCatalogue, fire, synthetic_firearm
from ballistic.retrieval.descriptor import PCAWhitener, PolarFFTDescriptor
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.search import RetrievalParams, Retriever, RotationPrior, rotation_prior_scores

N_DB = 80           # 40 firearms x 2 firings


@pytest.fixture(scope="module")
def db():
    cat = SyntheticCatalogue(id_offset=100, firings_per_firearm=2, spacing_um=12.5)
    desc = PolarFFTDescriptor()
    ids = np.arange(100, 100 + N_DB)
    X = np.stack([desc(cat(i, spacing_um=25.0)) for i in ids])
    w = PCAWhitener.fit(X, dim=48)
    idx = VectorIndex(w.out_dim)
    idx.add(ids, w.transform(X))
    return cat, desc, w, idx


def _query(firearm_seed: int):
    # a third firing of a database firearm, preprocessed-like at 6.25 um
    return fire(synthetic_firearm(firearm_seed), 10_000 + firearm_seed)


def test_rotation_prior_ranks_mate_first(db):
    cat = db[0]
    q = _query(7)
    cands = [cat(i, spacing_um=50.0) for i in range(100, 120)]     # firearms 0..9
    s = rotation_prior_scores(q, cands)
    assert s.shape == (20, 2)
    best = np.argsort(-s[:, 0])[:2]
    assert set(best) == {14, 15}                                   # firearm 7's two firings
    # a PreparedSurface query gives the same scores through its prior view
    from ballistic.cartridge.cmc.params import prepare
    rp = RotationPrior(prepare(q))
    assert abs(rp.score(cands[14])[0] - s[14, 0]) < 0.05
    # at the screen's coarser spacing a PreparedSurface candidate scores as its Surface does (same band)
    screen = RotationPrior(q, spacing_um=100.0, step_deg=4.0)
    full = [cat(i, spacing_um=12.5) for i in (114, 115, 102)]
    for c in full:
        assert abs(screen.score(prepare(c))[0] - screen.score(c)[0]) < 0.03


def test_rotation_prior_finds_a_mirrored_mate_only_when_searching_the_mirror(db):
    """Exporters disagree on the y axis: a mate stored mirrored (rows reversed) must still rank first."""
    cat = db[0]
    q = _query(7)
    cands = [cat(i, spacing_um=50.0) for i in range(100, 120)]
    cands[14] = cands[14].with_heights(cands[14].heights[::-1].copy())
    with_mirror = rotation_prior_scores(q, cands)
    assert np.argmax(with_mirror[:, 0]) == 14
    without = rotation_prior_scores(q, cands, mirror=False)
    assert np.argmax(without[:, 0]) == 15                           # the other firing; the mirrored one is lost
    assert without[14, 0] < with_mirror[14, 0] - 0.1
    # the score of an unmirrored candidate does not depend on the option
    assert abs(with_mirror[15, 0] - without[15, 0]) < 1e-6


@pytest.mark.parametrize("workers", [1, 2])
def test_retriever_three_stages(db, workers):
    cat, desc, w, idx = db
    params = RetrievalParams(k=20, cmc_k=4, workers=workers)
    with Retriever(idx, cat, descriptor=desc, whitener=w, params=params) as r:
        for seed in (3, 22):
            res = r.query(_query(seed), exclude=[100 + 2 * seed + 1])   # hide one mate: the other must lead
            ids = res.ids()
            assert len(ids) == 20 and [c.rank for c in res.candidates] == list(range(1, 21))
            assert ids[0] == 100 + 2 * seed and 100 + 2 * seed + 1 not in ids
            top = res.candidates[0]
            assert top.cmc_count >= 6 and top.identification and np.isfinite(top.prior_ncc)
            assert all(c.cmc_count is not None for c in res.candidates[:4])
            assert all(c.cmc_count is None for c in res.candidates[4:])
            assert res.candidates[1].cmc_count < 6
            assert set(res.seconds) >= {"descriptor", "index", "prior", "cmc", "total"}
            assert top.as_dict()["id"] == ids[0]


def test_retriever_without_prior_and_bad_dims(db):
    cat, desc, w, idx = db
    with Retriever(idx, cat, descriptor=desc, whitener=w, params=RetrievalParams(k=10, cmc_k=0, prior=False,
                                                                                 workers=1)) as r:
        res = r.query(_query(9))
        assert len(res.candidates) == 10 and res.candidates[0].cmc_count is None
        assert set(res.ids()[:2]) <= set(range(100, 100 + N_DB))
    with pytest.raises(ValueError, match="index holds 48-d"):
        Retriever(idx, cat, descriptor=desc)
    with pytest.raises(ValueError, match="k >= 1"):
        RetrievalParams(k=0)


def test_screen_stage_narrows_before_the_prior(db):
    cat, desc, w, idx = db
    params = RetrievalParams(k=40, screen_k=6, cmc_k=2, workers=1)
    with Retriever(idx, cat, descriptor=desc, whitener=w, params=params) as r:
        res = r.query(_query(31))
    c = res.candidates
    assert len(c) == 40 and res.ids()[0] in (100 + 62, 100 + 63) and c[0].cmc_count >= 6
    assert all(np.isfinite(x.screen_ncc) for x in c)                 # every shortlisted one screened
    assert sum(np.isfinite(x.prior_ncc) for x in c) == 6             # only screen_k went on to stage 2
    assert "screen" in res.seconds


def test_rotation_stages_order_by_descriptor_and_ncc_together():
    from ballistic.retrieval.search import Candidate, order_after_stage
    # descriptor scores and screen NCCs of six candidates: 1 is first by NCC but last by descriptor, 3 is a
    # close second by NCC and high by descriptor, first by both; 5 was not scored by the stage (NaN)
    desc = [0.30, 0.05, 0.20, 0.28, 0.10, 0.50]
    ncc = [0.20, 0.45, 0.30, 0.42, 0.25, float("nan")]
    cands = {i: Candidate(i, 0, d, screen_ncc=n) for i, (d, n) in enumerate(zip(desc, ncc))}
    ids = list(range(6))
    assert order_after_stage(ids, cands, "screen_ncc", "ncc") == [1, 3, 2, 4, 0, 5]
    fused = order_after_stage(ids, cands, "screen_ncc", "fused")
    assert fused[0] == 3 and fused[-1] == 5 and fused.index(1) > 0
    assert order_after_stage(ids, cands, "screen_ncc") == fused                  # fused is the default
    # equal scores keep the earlier order; nothing scored: the earlier order
    same = {i: Candidate(i, 0, 0.2, screen_ncc=0.3) for i in (7, 4, 9)}
    assert order_after_stage([7, 4, 9], same, "screen_ncc") == [7, 4, 9]
    none = {i: Candidate(i, 0, 0.2) for i in (7, 4)}
    assert order_after_stage([7, 4], none, "screen_ncc") == [7, 4]
    with pytest.raises(ValueError, match="stage_order"):
        RetrievalParams(stage_order="best")


def test_the_screen_passes_on_its_fused_order(db):
    from ballistic.retrieval.search import order_after_stage
    cat, desc, w, idx = db
    for how in ("fused", "ncc"):
        params = RetrievalParams(k=40, screen_k=6, cmc_k=0, prior=False, workers=1, stage_order=how)
        with Retriever(idx, cat, descriptor=desc, whitener=w, params=params) as r:
            res = r.query(_query(31))
        by_id = {c.id: c for c in res.candidates}
        assert [c.id for c in res.candidates] == order_after_stage(list(by_id), by_id, "screen_ncc", how)
