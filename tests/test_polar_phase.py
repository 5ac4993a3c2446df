"""Tests of the rotation-searched polar descriptor (:mod:`ballistic.retrieval.polar_phase`)."""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.cartridge.synth import fire, synthetic_firearm
from ballistic.errors import DescriptorError
from ballistic.preprocess.filters import crop_to_mask, rotate
from ballistic.retrieval.descriptor import breech_face_descriptor
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.polar_phase import (PolarPhaseDescriptor, polar_phase_coefficients, rotation_scan,
                                            rotation_similarity)
from ballistic.retrieval.registry import available_descriptors, load_descriptor
from ballistic.retrieval.search import RetrievalParams, Retriever, best_per_id, index_queries
from tests import naive


def _firing(firearm: int, shot: int):
    return fire(synthetic_firearm(firearm), shot)


def _random_coefficients(rng, n, nb=4, nh=12):
    C = rng.normal(size=(n, nb, nh)) + 1j * rng.normal(size=(n, nb, nh))
    C[:, 0] = 0                                     # an unmeasured band
    return C / np.linalg.norm(C.reshape(n, -1), axis=1)[:, None, None]


@pytest.mark.parametrize("mirror", [True, False])
def test_rotation_similarity_matches_the_loop_twin(mirror):
    rng = np.random.default_rng(3)
    C = _random_coefficients(rng, 6)
    q = C[0] * np.exp(-1j * np.arange(1, 13) * np.radians(45.0))[None, :]     # candidate 0 turned by 45 degrees
    s, a, f = rotation_similarity(q, C, mirror=mirror, n_angles=32)
    twin = naive.rotation_similarity(q, C, mirror, 32)
    np.testing.assert_allclose(s, [t[0] for t in twin], atol=1e-9)
    np.testing.assert_allclose(a, [t[1] for t in twin])
    assert list(f) == [t[2] for t in twin]
    assert a[0] == 45.0 and s[0] == pytest.approx(1.0) and not f[0]
    # a mirrored candidate is found only when the mirror is searched
    s2, _, f2 = rotation_similarity(q, np.conj(C[:1]), mirror=mirror, n_angles=32)
    assert (s2[0] == pytest.approx(1.0) and f2[0]) if mirror else s2[0] < 0.9
    # one candidate of shape (n_bands, n_harmonics) gives arrays of one
    assert rotation_similarity(q, C[0], n_angles=32)[0].shape == (1,)


def test_query_expansion_inner_products_are_the_sampled_rotation_search():
    rng = np.random.default_rng(4)
    d = PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32)
    C = _random_coefficients(rng, 5)
    stored = np.stack([np.stack([c.real, c.imag], axis=-1).ravel() for c in C]).astype(np.float32)
    rows = d.query_vectors(stored[1])
    assert rows.shape == (64, d.dim) and rows.dtype == np.float32
    best = (stored @ rows.T).max(axis=1)
    s, _, _ = rotation_similarity(C[1], C, mirror=True, n_angles=32)
    np.testing.assert_allclose(best, s, atol=1e-5)
    assert d.query_vectors(stored[1]).tobytes() == rows.tobytes()          # input untouched, deterministic
    assert PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32, mirror=False).query_vectors(
        stored[1]).shape == (32, d.dim)


def _stored(C):
    return np.stack([np.stack([c.real, c.imag], axis=-1).ravel() for c in C]).astype(np.float32)


@pytest.mark.parametrize("mirror", [True, False])
@pytest.mark.parametrize("n_rot", [24, 17, 13])          # above 2 n_harmonics, odd, and aliasing (12 < R < 24)
def test_rotation_scan_matches_the_copy_by_copy_twin(mirror, n_rot):
    rng = np.random.default_rng(5)
    C = _random_coefficients(rng, 40)
    X = _stored(C)
    X[7] = np.nan                                          # never returned
    X[8, 3] = np.inf
    q = _stored((C[3] * np.exp(-1j * np.arange(1, 13) * np.radians(100.0))[None, :])[None])[0]
    before = X.copy()
    for k, chunk, threads in ((5, 4096, 1), (40, 7, 2), (100, 3, 3)):
        s, pos, row = rotation_scan(q, X, k, n_harmonics=12, n_rotations=n_rot, mirror=mirror, chunk=chunk,
                                    threads=threads)
        ts, tpos, trow = naive.rotation_scan(q, X, k, 12, n_rot, mirror)
        assert s.dtype == np.float32 and pos.dtype == np.int64 and len(s) == min(k, 38)
        np.testing.assert_allclose(s, ts, atol=2e-6)
        np.testing.assert_array_equal(pos, tpos)
        np.testing.assert_array_equal(row, trow)
        assert 7 not in pos and 8 not in pos
    np.testing.assert_array_equal(X, before)               # read, never changed
    assert pos[0] == 3                                     # the turned query finds its own scan first
    X16 = X.astype(np.float16)                             # as a half-precision (SQfp16) index holds them
    X16[9, :6] = [6e-8, -6e-8, 3e-5, -0.0, 0.0, 65504.0]   # subnormal halves, signed zero, the largest half
    s, pos, row = rotation_scan(q, X16, 40, n_harmonics=12, n_rotations=n_rot, mirror=mirror, chunk=7, threads=2)
    ts, tpos, trow = naive.rotation_scan(q, X16, 40, 12, n_rot, mirror)
    np.testing.assert_allclose(s, ts, atol=2e-6)
    np.testing.assert_array_equal(pos, tpos)
    np.testing.assert_array_equal(row, trow)


def test_half_precision_rows_decode_exactly():
    from ballistic.retrieval.polar_phase import _cross_spectra, _cross_spectra_half
    rng = np.random.default_rng(8)
    H = rng.normal(scale=0.05, size=(5, 96)).astype(np.float16)
    H[1, :8] = [6e-8, -6e-8, 3e-5, -3e-5, -0.0, 0.0, 65504.0, -65504.0]    # subnormals, zeros, extremes
    H[2, 5], H[3, 7], H[4, 9] = np.inf, -np.inf, np.nan
    qa = rng.normal(size=(4, 24)).astype(np.float32)
    qb = np.ascontiguousarray(qa.reshape(4, 12, 2)[..., ::-1].reshape(4, 24))
    Z16, Z32 = np.empty((5, 32), np.complex64), np.empty((5, 32), np.complex64)
    _cross_spectra_half(H.view(np.uint16), 0, 5, qa, qb, Z16.view(np.float32))
    _cross_spectra(H.astype(np.float32), 0, 5, qa, qb, Z32.view(np.float32))
    np.testing.assert_array_equal(Z16, Z32)
    assert np.isfinite(Z16[:2]).all() and all(not np.isfinite(z).all() for z in Z16[2:])


def test_rotation_scan_is_the_best_row_of_the_index_search_and_names_the_pose():
    rng = np.random.default_rng(6)
    d = PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32)
    C = _random_coefficients(rng, 300)
    C[11] = np.conj(C[11])                                 # a mirror image of nothing in particular
    X = _stored(C)
    turned = C[5] * np.exp(-1j * np.arange(1, 13) * np.radians(78.75))[None, :]  # 7 steps of 11.25 degrees
    q = _stored(np.conj(turned)[None])[0]                  # the query is the mirror image of 5, turned
    rows = d.query_vectors(q)
    S = X @ rows.T
    order = np.lexsort((np.arange(len(X)), -S.max(axis=1)))[:50]
    s, pos, row = d.scan(rows, X, 50)
    np.testing.assert_array_equal(pos, order)
    np.testing.assert_allclose(s, S.max(axis=1)[order], atol=2e-6)
    np.testing.assert_array_equal(row, S.argmax(axis=1)[order])
    ang, mir = d.row_pose(row[:1])
    assert pos[0] == 5 and mir[0] and s[0] == pytest.approx(1.0, abs=1e-5)
    assert rotation_similarity(np.conj(turned), C[5], n_angles=32)[1][0] == pytest.approx(ang[0])
    with pytest.raises(DescriptorError, match="query copies"):
        d.scan(rows[:10], X, 5)


def test_rotation_scan_refuses_what_it_cannot_score():
    X = np.zeros((3, 96), np.float32)
    q = np.ones(96, np.float32)
    assert [a.shape for a in rotation_scan(q, X[:0], 5, n_harmonics=12, n_rotations=32)] == [(0,)] * 3
    for bad, match in ((dict(query=q[:95]), "query must be one vector"), (dict(stored=X[:, :90]), "stored must"),
                       (dict(query=np.full(96, np.nan)), "NaN"), (dict(k=0), "positive"),
                       (dict(n_rotations=12), "must exceed")):
        args = dict(query=q, stored=X, k=2, n_harmonics=12, n_rotations=32) | bad
        with pytest.raises(DescriptorError, match=match):
            rotation_scan(args.pop("query"), args.pop("stored"), args.pop("k"), **args)


@pytest.mark.parametrize("factory", ["Flat", "SQfp16", "HNSW16", "IVF4,Flat"])
def test_an_index_scored_by_the_scan_answers_as_its_row_search(tmp_path, factory):
    from ballistic.retrieval.sharded import ShardedIndex, SQLiteRowSource
    rng = np.random.default_rng(7)
    d = PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32)
    X = _stored(_random_coefficients(rng, 400))
    ids = np.arange(400, dtype=np.int64) * 7 + 3
    parts = np.array(["a", "b"])[np.arange(400) % 2]
    idx = VectorIndex(d.dim, factory=factory, min_train=10_000)       # IVF: every vector still pending
    for part in ("a", "b"):
        idx.add(ids[parts == part], X[parts == part], partition=part)
    idx.remove(ids[:6])                                                # a removed id is never an answer
    rows = d.query_vectors(X[10])
    for partition in ("a", None):
        D, I = idx.search(rows, 30, partition=partition, scan=d.scan)
        D0, I0 = idx.search(rows, 30, partition=partition)
        got, want = best_per_id(I, D, rows=True), best_per_id(I0, D0, rows=True)
        n = 30 if factory != "HNSW16" else len(want[0])
        np.testing.assert_array_equal(got[0][:n], want[0][:n])
        np.testing.assert_allclose(got[1][:n], want[1][:n], atol=2e-6)
        np.testing.assert_array_equal(got[2][:n], want[2][:n])
        assert not set(got[0]) & set(ids[:6].tolist())
        if factory == "SQfp16":                                        # half the memory, scanned in place
            flat = VectorIndex(d.dim)
            flat.add(ids[6:], X[6:])
            assert idx.faiss_nbytes() < 0.6 * flat.faiss_nbytes()
        if factory == "HNSW16":                                        # not stored as is: searched row by row
            np.testing.assert_array_equal(I, I0)
        else:                                                          # each id once, in its best row
            assert (I >= 0).sum() == len(got[0]) >= 30 and (I[rows.shape[0] // 2:] >= 0).any()
    if factory == "HNSW16":
        return
    import pickle
    again = pickle.loads(pickle.dumps(d.scan))                         # as the Ray backend sends it to shards
    np.testing.assert_array_equal(again(rows, X, 5)[1], d.scan(rows, X, 5)[1])
    # the sharded index passes the scan to every shard and merges the same answer
    src = SQLiteRowSource(tmp_path / "rows.sqlite")
    src.append(ids, X, partition=list(parts))
    src.delete(ids[:6])
    with ShardedIndex(d.dim, src, None, n_shards=3, factory=factory) as si:
        r = si.query(rows, 30, partition=None, scan=d.scan)
    got = best_per_id(r.ids, r.scores)
    want = best_per_id(*idx.search(rows, 30, partition=None, scan=d.scan)[::-1])
    np.testing.assert_array_equal(got[0][:30], want[0][:30])
    np.testing.assert_allclose(got[1][:30], want[1][:30], atol=2e-6)


def test_a_turned_and_mirrored_scan_is_recognised_and_its_turn_recovered():
    s = _firing(1, 1)
    C = polar_phase_coefficients(s)
    assert C.shape == (10, 64) and C.dtype == np.complex128
    assert np.linalg.norm(C) == pytest.approx(1.0)
    turned = crop_to_mask(rotate(s, 70.0))
    other = [polar_phase_coefficients(_firing(k, 1)) for k in range(2, 6)]
    sc, ang, flip = rotation_similarity(polar_phase_coefficients(turned), np.stack([C] + other))
    assert np.argmax(sc) == 0 and sc[0] > 0.8 and sc[0] - max(sc[1:]) > 0.3
    assert abs(ang[0] - 70.0) < 2.0 and not flip[0]
    mirrored = s.with_heights(s.heights[::-1].copy())
    sc_m, _, flip_m = rotation_similarity(polar_phase_coefficients(mirrored), C)
    assert sc_m[0] > 0.95 and flip_m[0]
    # another firing of the same firearm outscores other firearms
    mate = polar_phase_coefficients(crop_to_mask(rotate(_firing(1, 2), 200.0)))
    sc2, _, _ = rotation_similarity(mate, np.stack([C] + other))
    assert np.argmax(sc2) == 0


def test_phase_descriptor_in_the_one_search_path():
    d = load_descriptor("phase")
    assert "phase" in available_descriptors() and isinstance(d, PolarPhaseDescriptor)
    assert d.name.startswith("bf-polar-phase/1?") and d.dim == 1280
    # what a database records fits its 100-character column, and another setting is another version
    from ballistic.retrieval.descriptor import descriptor_version
    v = descriptor_version(d)
    assert v.startswith("bf-polar-phase/1?") and len(v) <= 100 < len(d.name)
    assert descriptor_version(PolarPhaseDescriptor(n_rotations=256)) not in (v, None)
    surfaces = {10 + k: _firing(k, 1) for k in range(12)}
    idx = VectorIndex(d.dim)
    idx.add(np.array(list(surfaces)), np.stack([d(s) for s in surfaces.values()]))
    q = crop_to_mask(rotate(_firing(4, 2), 137.0))                 # another firing of firearm 4, turned
    p = RetrievalParams(k=5, cmc_k=0, screen_k=0, prior=False, workers=1)
    with Retriever(idx, surfaces.get, descriptor=d, params=p) as r:
        res = r.query(q)
    assert res.candidates[0].id == 14
    assert len({c.id for c in res.candidates}) == 5
    # the same first candidate and score as the exact search over the copies of the query about every centre
    # variant (12 stored vectors: all re-scored by the variants)
    rows = index_queries(d, d(q))
    assert rows.shape == (256, d.dim)
    stored = np.stack([d(s) for s in surfaces.values()])
    exact = max(float((stored @ index_queries(d, v).T).max()) for v in d.query_variants(q))
    assert exact > float((stored @ rows.T).max())            # a centre near the query's own fits better
    assert res.candidates[0].descriptor_score == pytest.approx(exact, abs=1e-5)
    # the plain inner product (no expansion) compares one orientation only: far below the turned match
    assert float(d(surfaces[14]) @ d(q)) < res.candidates[0].descriptor_score - 0.3
    from ballistic.retrieval.descriptor import PCAWhitener
    w = PCAWhitener.fit(np.stack([d(s) for s in surfaces.values()]), dim=8)
    with pytest.raises(ValueError, match="cannot be whitened"):
        Retriever(VectorIndex(8), surfaces.get, descriptor=d, whitener=w, params=p)


def test_best_per_id_merges_rows():
    ids = np.array([[3, 5, -1], [5, 7, 3]])
    scores = np.array([[0.9, 0.2, 0.0], [0.95, 0.5, 0.1]])
    i, s = best_per_id(ids, scores)
    assert i.tolist() == [5, 3, 7] and np.allclose(s, [0.95, 0.9, 0.5])
    i, s = best_per_id(ids, scores, metric="l2")                  # distances: the smallest is the best
    assert i.tolist() == [3, 5, 7] and np.allclose(s, [0.1, 0.2, 0.5])
    # the query row each best came from (the pose of a rotation-searched descriptor)
    i, s, r = best_per_id(ids, scores, rows=True)
    assert i.tolist() == [5, 3, 7] and r.tolist() == [1, 0, 1]
    assert best_per_id(ids, scores, metric="l2", rows=True)[2].tolist() == [1, 0, 1]


def test_polar_descriptors_share_one_polar_sampling():
    """The magnitude descriptor is the power of the rings whose sums the phase descriptor keeps: one band of
    one ring each makes them the same numbers."""
    s = _firing(2, 1)
    kw = dict(n_bands=80, n_harmonics=16, r_max_um=2000.0)        # 80 rings at 25 um: one ring a band
    C = polar_phase_coefficients(s, centre="annulus", **kw)
    A = breech_face_descriptor(s, **kw).reshape(80, 16)
    used = np.abs(C).sum(axis=1) > 0
    np.testing.assert_allclose(np.abs(C[used]) / np.linalg.norm(np.abs(C[used])),
                               A[used] / np.linalg.norm(A[used]), atol=1e-6)


def test_aperture_centre_holds_when_the_hole_joins_a_drop_out():
    """Contact loss next to the firing-pin hole joins it to a large unmeasured region; the centre must still be
    the hole's (the phases are sampled about it). Synthetic firearm 16, four firings in one pose: the plain fit
    put three of them 7-15 px (25 um pixels) from the others."""
    from ballistic.preprocess.filters import resample
    from ballistic.retrieval.descriptor import aperture_centre

    F = synthetic_firearm(16)
    c = np.array([aperture_centre(resample(fire(F, shot, rotation_deg=0.0, translation_um=(0.0, 0.0)),
                                           spacing_um=25.0))[:2] for shot in range(4)])
    assert np.hypot(*(c - np.median(c, axis=0)).T).max() < 2.0


def test_bad_input_says_what_to_fix():
    rng = np.random.default_rng(0)
    C = _random_coefficients(rng, 2)
    with pytest.raises(DescriptorError, match="exceed the harmonics"):
        rotation_similarity(C[0], C, n_angles=12)
    with pytest.raises(DescriptorError, match="differ"):
        rotation_similarity(C[0][:, :6], C)
    with pytest.raises(DescriptorError, match="complex coefficients"):
        rotation_similarity(np.abs(C[0]), C)
    with pytest.raises(DescriptorError, match="n_rotations"):
        PolarPhaseDescriptor(n_harmonics=64, n_rotations=64)
    with pytest.raises(DescriptorError, match="expected a"):
        PolarPhaseDescriptor().query_vectors(np.zeros(10, np.float32))
    s = _firing(1, 1)
    with pytest.raises(DescriptorError, match="valid points"):
        polar_phase_coefficients(s.with_heights(np.full_like(s.heights, np.nan)))
    with pytest.raises(DescriptorError, match="n_harmonics"):
        polar_phase_coefficients(s, n_harmonics=200)
    with pytest.raises(DescriptorError, match="centre must be"):
        polar_phase_coefficients(s, centre="middle")


# ----------------------------------------------------------------------- the query's centre variants

@pytest.mark.parametrize("variant_k", [None, 5, 12])
def test_rotation_scan_with_centre_variants_matches_the_twin(variant_k):
    rng = np.random.default_rng(11)
    C = _random_coefficients(rng, 40)
    X = _stored(C)
    X[7] = np.nan                                          # never returned, never re-scored
    q = _stored(C[3][None])[0] * 0.6 + _stored(_random_coefficients(rng, 1))[0] * 0.4
    V = np.stack([_stored(C[j][None])[0] * 0.5 + q * 0.5 for j in (4, 9, 20)])   # variants near other scans
    plain = rotation_scan(q, X, 40, n_harmonics=12, n_rotations=24)
    first = None
    for store, chunk, threads in ((X, 4096, 1), (X, 5, 2), (X.astype(np.float16), 3, 3)):
        before = store.copy()
        s, pos, row = rotation_scan(q, store, 10, n_harmonics=12, n_rotations=24, chunk=chunk, threads=threads,
                                    variants=V, variant_k=variant_k)
        ts, tpos, trow = naive.rotation_scan(q, store, 10, 12, 24, True, variants=V, variant_k=variant_k)
        np.testing.assert_allclose(s, ts, atol=2e-6)
        np.testing.assert_array_equal(pos, tpos)
        np.testing.assert_array_equal(row, trow)
        np.testing.assert_array_equal(store, before)
        assert 7 not in pos
        first = first or (s, pos)
    # a variant only ever raises a score, and with all vectors re-scored a scan near a variant comes up
    s, pos = first
    by_pos = dict(zip(plain[1].tolist(), plain[0].tolist()))
    assert all(v >= by_pos[p] - 1e-6 for v, p in zip(s, pos))
    if variant_k is None:
        assert {4, 9, 20} <= set(pos.tolist())


def test_rotation_scan_refuses_variants_it_cannot_score():
    X = np.zeros((3, 96), np.float32)
    q = np.ones(96, np.float32)
    for kw, match in ((dict(variants=np.ones((2, 95))), "variants must have shape"),
                      (dict(variants=np.full((1, 96), np.nan)), "NaN"),
                      (dict(variants=np.ones((1, 96)), variant_k=0), "variant_k")):
        with pytest.raises(DescriptorError, match=match):
            rotation_scan(q, X, 2, n_harmonics=12, n_rotations=32, **kw)


def test_query_variants_are_the_scan_described_about_nearby_centres():
    s = _firing(2, 1)
    d = PolarPhaseDescriptor()
    V = d.query_variants(s)
    off = d.jitter_offsets_um
    assert V.shape == (25, d.dim) and V.dtype == np.float32 and off.shape == (25, 2)
    assert off[0].tolist() == [0.0, 0.0] and np.abs(off).max() == 50.0 and len({tuple(o) for o in off}) == 25
    assert V[0].tobytes() == d(s).tobytes()                # row 0: the stored vector itself
    C = polar_phase_coefficients(s, offsets_um=off[[3, 17]])
    np.testing.assert_array_equal(V[[3, 17]], np.stack([C.real, C.imag], axis=-1).astype(np.float32).reshape(2, -1))
    assert not np.allclose(V[1], V[0]) and np.allclose(np.linalg.norm(V, axis=1), 1.0, atol=1e-5)
    assert PolarPhaseDescriptor(jitter_steps=0).query_variants(s) is None
    assert PolarPhaseDescriptor(jitter_steps=1).query_variants(s).shape == (9, d.dim)
    # the settings are part of the descriptor's name and version (an index names what answered it)
    assert "jitter_steps=2" in d.name and d.version != PolarPhaseDescriptor(jitter_steps=1).version
    assert d.variant_rows(100_000, 200) == 5000 and d.variant_rows(3000, 200) == 1000
    assert d.variant_rows(500, 200) == 500 and d.variant_rows(100_000, 8000) == 8000
    for bad in (dict(jitter_um=0.0), dict(jitter_steps=-1), dict(jitter_share=0.0), dict(jitter_share=1.5)):
        with pytest.raises(DescriptorError, match="jitter"):
            PolarPhaseDescriptor(**bad)
    with pytest.raises(DescriptorError, match="offsets_um"):
        polar_phase_coefficients(s, offsets_um=[(0.0, np.nan)])


def test_the_index_and_the_retriever_score_with_the_query_variants(tmp_path):
    """The Retriever describes a Surface query about nearby centres and the index's scan re-scores with them:
    the answer of ``descriptor.scan(..., variants=...)`` over the stored vectors, through a pickled scan too."""
    import pickle

    from ballistic.retrieval.search import query_scan, query_variants

    d = PolarPhaseDescriptor()
    shots = {i: _firing(1 + i // 2, 1 + i % 2) for i in range(8)}
    X = np.stack([d(shots[i]) for i in range(8)])
    idx = VectorIndex(d.dim)
    idx.add(np.arange(8) + 100, X)
    query = crop_to_mask(rotate(shots[0], 33.0))
    V = query_variants(d, query)
    assert V.shape == (25, d.dim) and query_variants(d, object()) is None
    assert query_scan(d, None) == d.scan and query_scan(object(), V) is None
    rows = index_queries(d, V[0])
    scan = pickle.loads(pickle.dumps(query_scan(d, V)))
    D, I = idx.search(rows, 8, scan=scan)
    got = best_per_id(I, D)
    s, pos, _ = d.scan(rows, X, 8, variants=V)
    np.testing.assert_array_equal(got[0], pos + 100)
    np.testing.assert_allclose(got[1], s, atol=1e-6)
    plain = best_per_id(*idx.search(rows, 8, scan=d.scan)[::-1])
    assert all(a >= b - 1e-6 for a, b in zip(sorted(got[1]), sorted(plain[1])))
    seen, described = [], []
    real = d.scan

    class Spy:
        def __getattr__(self, name):
            return getattr(d, name)

        def __call__(self, surface):
            described.append(1)
            return d(surface)

        def scan(self, *a, **kw):
            seen.append(kw.get("variants"))
            return real(*a, **kw)

    r = Retriever(idx, lambda i: shots[i - 100], descriptor=Spy(),
                  params=RetrievalParams(k=4, prior=False, cmc_k=0))
    res = r.query(query)
    assert res.ids()[0] == 100 and len(seen) == 1 and seen[0] is not None and seen[0].shape == (25, d.dim)
    assert not described                    # the query's vector is row 0 of its variants: described once
    r.close()


def test_the_benchmarks_exact_scores_are_the_index_stages_answer():
    """The retrieval benchmark projects recall from every stored vector's score (``_exact_scores``): with centre
    variants these must be the scores the index stage gives for its k, whatever number of scores is asked for
    (asking for all of them must not re-score all of them)."""
    from ballistic.bench.retrieval import _exact_scores
    from ballistic.retrieval.search import query_scan

    rng = np.random.default_rng(12)
    d = PolarPhaseDescriptor(n_bands=4, n_harmonics=12, n_rotations=32)
    X = _stored(_random_coefficients(rng, 3000))
    q = X[17] * 0.3 + _stored(_random_coefficients(rng, 1))[0]
    V = np.concatenate([q[None], X[[5, 2500, 2999]] * 0.5 + q * 0.5]).astype(np.float32)
    idx = VectorIndex(d.dim)
    idx.add(np.arange(3000), X)
    rows = d.query_vectors(q)
    k = 50
    got = best_per_id(*idx.search(rows, k, scan=query_scan(d, V))[::-1])
    exact = _exact_scores(d, rows, V, X, k)
    order = np.lexsort((np.arange(3000), -exact))[:k]
    np.testing.assert_array_equal(got[0], order)
    np.testing.assert_allclose(got[1], exact[order], atol=1e-6)
    assert d.variant_rows(3000, k) == 1000
    everything = d.scan(rows, X, 3000, variants=V, variant_k=3000)[0]     # all re-scored: higher somewhere
    assert everything.max() >= exact.max() and np.sort(everything)[::-1][k] >= np.sort(exact)[::-1][k]
