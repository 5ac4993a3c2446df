"""Tests of :mod:`ballistic.retrieval.sharded` on the embedded (in-process) backend: no Ray needed.

The Ray backend runs the same shard and re-ranking code; it is exercised on a real local
multi-node Ray cluster in ``tests/test_scaleout_ray.py``.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.errors import ScaleOutConfigError, ScaleOutError
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.sharded import Row, RowSource, SQLiteRowSource, ShardMap, ShardedIndex
from ballistic.surface import Surface

DIM = 16


def _unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _materialise(src: RowSource, dim: int = DIM) -> VectorIndex:
    """The single VectorIndex the database rows describe (last write per id wins; None deletes)."""
    final: dict[int, Row] = {}
    for r in src(0):
        final[r.id] = r
    return VectorIndex.rebuild(dim, ((i, r.partition, r.vector) for i, r in sorted(final.items())
                                     if r.vector is not None))


@pytest.fixture()
def db(tmp_path):
    src = SQLiteRowSource(tmp_path / "rows.sqlite")
    x = _unit(1500, 1)
    ids = np.arange(1500, dtype=np.int64) * 13 + 7
    parts = np.array(["bf|9mm|hemi", "bf|9mm|rect", "bf|40sw|hemi"])[np.arange(1500) % 3]
    src.append(ids, x, partition=list(parts))
    return src


def test_shard_map_hash_is_stable_and_balanced():
    m = ShardMap("id", 4)
    ids = np.arange(100_000, dtype=np.int64)
    names = m.shard_of(ids, ["any"] * ids.size)
    assert names[:6] == m.shard_of(ids[:6], ["x"] * 6)               # partition plays no part
    counts = {n: names.count(n) for n in m.names}
    assert set(counts) == {"h0of4", "h1of4", "h2of4", "h3of4"}
    assert min(counts.values()) > 0.23 * ids.size                  # close to even
    assert m.shard_of([0, 1, 2, 123456789], ["any"] * 4) == ["h3of4", "h1of4", "h2of4", "h1of4"]
    p = ShardMap("partition", partitions=("a", "b"))
    assert p.names == ["a", "b", "*"]
    assert p.shard_of([1, 2, 3], ["a", "zz", "b"]) == ["a", "*", "b"]
    assert p.shards_for("b") == ["b"] and p.shards_for("c") == ["*"] and p.shards_for(None) == ["a", "b", "*"]
    with pytest.raises(ScaleOutConfigError):
        ShardMap("colour")
    with pytest.raises(ScaleOutConfigError):
        ShardMap("partition", partitions=("a", "a"))


def test_splitmix_values_are_pinned():
    """Shard assignment is persisted in snapshots: pin it so a change of the hash is noticed.

    splitmix64(0) = 0xE220A8397B1DCDAF (the reference generator's first output from state 0).
    """
    got = ShardMap("id", 1000).shard_of([0, 1, 2, 3, 2**62], ["any"] * 5)
    assert got[0] == f"h{0xE220A8397B1DCDAF % 1000}of1000"
    assert got == ["h535of1000", "h465of1000", "h110of1000", "h53of1000", "h75of1000"]


def test_sqlite_row_source_roundtrip_and_pickles(tmp_path):
    src = SQLiteRowSource(tmp_path / "r.sqlite")
    x = _unit(3, 0)
    assert src.append([5, 6, 7], x, partition="p") == 3
    assert src.delete([6], partition="p") == 4
    rows = src(0)
    assert [r.seq for r in rows] == [1, 2, 3, 4] and [r.id for r in rows] == [5, 6, 7, 6]
    np.testing.assert_array_equal(rows[1].vector, x[1])
    assert rows[3].vector is None
    assert [r.seq for r in src(2)] == [3, 4] and [r.seq for r in src(1, 3)] == [2, 3]
    clone = pickle.loads(pickle.dumps(src))
    assert [r.id for r in clone(0)] == [5, 6, 7, 6] and clone.head() == 4
    assert isinstance(src, RowSource)


@pytest.mark.parametrize("shard_by, kw", [("id", {"n_shards": 3}),
                                          ("partition", {"partitions": ["bf|9mm|hemi", "bf|9mm|rect"]})])
def test_sharded_search_equals_single_index(db, tmp_path, shard_by, kw):
    ref = _materialise(db)
    q = _unit(40, 2)
    with ShardedIndex(DIM, db, tmp_path / "snap", shard_by=shard_by, **kw) as si:
        assert len(si) == len(ref) == 1500
        for part in ("bf|9mm|hemi", "bf|40sw|hemi", None, "no-such-partition"):
            r = si.query(q, 25, partition=part)
            D, I = ref.search(q, 25, partition=part)
            np.testing.assert_array_equal(r.ids, I)
            np.testing.assert_array_equal(r.scores, D)
            assert r.eligible == (len(ref) if part is None else ref.count(part))
            assert r.seq == 1500
            if shard_by == "partition" and part is not None:
                assert len(r.shards) == 1                         # one partition -> one shard asked
        assert si.query(q, 5, partition=None).state_id == si.query(q, 5, partition=None).state_id


def test_more_k_than_vectors_pads_like_vector_index(db, tmp_path):
    ref = _materialise(db)
    with ShardedIndex(DIM, db, None, n_shards=4) as si:
        D, I = si.search(_unit(3, 9), 600, partition="bf|40sw|hemi")
    D2, I2 = ref.search(_unit(3, 9), 600, partition="bf|40sw|hemi")
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_array_equal(D, D2)
    assert (I[:, 500:] == -1).all() and np.isneginf(D[:, 500:]).all()


def test_updates_deletes_and_partition_moves_follow_the_database(db, tmp_path):
    with ShardedIndex(DIM, db, tmp_path / "snap", shard_by="partition", partitions=["bf|9mm|hemi"]) as si:
        ids = np.arange(1500, dtype=np.int64) * 13 + 7
        db.delete(ids[:10], partition="bf|9mm|hemi")                            # deletions
        db.append(ids[10:20], _unit(10, 5), partition="bf|40sw|hemi")          # moved + new vectors
        db.append([10**9], _unit(1, 6), partition="bf|9mm|hemi")                 # a new exhibit
        q = _unit(30, 7)
        ref = _materialise(db)
        for part in ("bf|9mm|hemi", "bf|40sw|hemi", None):
            D, I = si.search(q, 30, partition=part)        # sync=True: each shard pulls the new rows
            D2, I2 = ref.search(q, 30, partition=part)
            np.testing.assert_array_equal(I, I2)
            np.testing.assert_array_equal(D, D2)
        assert len(si) == len(ref) == 1500 - 10 + 1
        assert not np.isin(ids[:10], si.search(q, 1500, partition=None)[1]).any()


def test_restart_reloads_snapshot_and_replays_newer_rows(db, tmp_path):
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=2) as si:
        saved = si.save()
        assert all(s["seq"] == 1500 and s["snapshot"] for s in saved.values())
        db.append([10**9, 10**9 + 1, 10**9 + 2], _unit(3, 11), partition="bf|9mm|hemi")
        db.delete([7], partition="bf|9mm|hemi")
        for name in si.shard_names:
            si.restart_shard(name)
        info = si.info()
        for name, inf in info.items():
            assert inf["loaded_snapshot"] == saved[name]["snapshot"]
            assert inf["snapshot_error"] is None
            assert inf["replayed_on_start"] == 4 and inf["seq"] == 1504
        q = _unit(20, 12)
        D, I = si.search(q, 50, partition=None, sync=False)       # no sync: only what the restart replayed
        D2, I2 = _materialise(db).search(q, 50, partition=None)
        np.testing.assert_array_equal(I, I2)
        np.testing.assert_array_equal(D, D2)


def test_corrupt_or_foreign_snapshot_is_rebuilt_from_rows(db, tmp_path):
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=2) as si:
        si.save()
    # corrupt one shard's snapshot files
    for f in (tmp_path / "snap").glob("h0of2-*/snapshots/*/p*.faiss"):
        f.write_bytes(b"garbage")
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=2) as si:
        inf = si.info()
        assert inf["h0of2"]["loaded_snapshot"] is None and "checksum" in inf["h0of2"]["snapshot_error"]
        assert inf["h1of2"]["loaded_snapshot"] is not None
        q = _unit(10, 3)
        np.testing.assert_array_equal(si.search(q, 20, partition=None)[1],
                                      _materialise(db).search(q, 20, partition=None)[1])
    # the same folder read with another shard map is not reused
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=3) as si:
        assert all(v["loaded_snapshot"] is None for v in si.info().values())
        assert len(si) == 1500


def test_rows_arriving_mid_query_still_give_one_database_position(db, tmp_path):
    """A row source that gains rows between the shards' calls: lagging shards are brought to the same seq."""

    class Growing:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __call__(self, after, upto=None):
            self.calls += 1
            rows = self.inner(after, upto)
            if self.calls == 4:                 # right after the first shard read, during the fan-out below
                self.inner.append([10**9], _unit(1, 4), partition="bf|9mm|hemi")
            return rows

    src = Growing(db)
    with ShardedIndex(DIM, src, None, n_shards=3) as si:
        assert src.calls == 3
        r = si.query(_unit(5, 1), 10, partition=None)
        assert {s.seq for s in r.shards} == {r.seq} == {1501}
        assert src.calls == 3 + 3 + 1            # the lagging shard was asked again, up to seq 1501
        assert 10**9 in si.search(_unit(1, 4), 1, partition="bf|9mm|hemi", sync=False)[1]


def test_bad_settings_and_rows(tmp_path):
    with pytest.raises(ScaleOutConfigError):
        ShardedIndex(DIM, lambda after: [], None, backend="spark")
    with pytest.raises(ScaleOutConfigError):
        ShardedIndex(DIM, lambda after: [], None, ray_address="127.0.0.1:6379")
    with pytest.raises(ValueError):
        ShardedIndex(DIM, lambda after: [], None, factory="NotAFactory")
    with pytest.raises(ScaleOutError, match="increasing"):
        ShardedIndex(DIM, lambda after: [(2, 1, "a", np.ones(DIM)), (2, 2, "a", np.ones(DIM))], None)
    with pytest.raises(ScaleOutError, match="dimension"):
        ShardedIndex(DIM, lambda after: [(1, 1, "a", np.ones(DIM + 1))] if after == 0 else [], None)
    with ShardedIndex(DIM, lambda after: [], None) as si:              # plain callable, no upto parameter
        with pytest.raises(ValueError):
            si.search(np.ones((1, DIM + 1)), 3)
        with pytest.raises(ValueError):
            si.search(np.ones((1, DIM)), 0)
        assert len(si) == 0 and si.rerank(None, {}) == []


# ------------------------------------------------------------------------------------------------ re-ranking
def _surface(source: int, firing: int, n: int = 150) -> Surface:
    """A small synthetic breech-face-like surface: firearm texture + per-firing noise on an annulus."""
    g = np.random.default_rng(source).standard_normal((n, n))
    z = gaussian_filter(g, 1.5) - gaussian_filter(g, 12)
    z = z / z.std() + 0.3 * np.random.default_rng([source, firing]).standard_normal((n, n))
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx)
    z[(r > n * 0.48) | (r < n * 0.12)] = np.nan
    return Surface(z, 12.5, {"source": f"{source}-{firing}"})


def _fetch(cid: int) -> Surface:
    return _surface(cid // 10, cid % 10)


def test_rerank_local_matches_compare_pair_and_orders_best_first():
    query = _surface(3, 0)
    cands = [31, 12, 33, 45]                   # 31 and 33 share the query's source
    with ShardedIndex(DIM, lambda after: [], None) as si:
        hits = si.rerank(query, cands, _fetch, workers=1)
        by_map = si.rerank(query, {c: _fetch(c) for c in cands}, workers=2, batch=1)   # process pool
    direct = {c: compare_pair(query, _fetch(c)) for c in cands}
    assert [h.id for h in hits] == sorted(cands, key=lambda c: -direct[c].similarity)
    assert set(h.id for h in hits[:2]) == {31, 33} and hits[0].cmc_count >= 6 and hits[-1].cmc_count < 6
    for h in hits:
        assert h.similarity == direct[h.id].similarity and h.cmc_count == direct[h.id].cmc_count
        assert h.summary["cmc_count"] == h.cmc_count
    assert [(h.id, h.similarity) for h in by_map] == [(h.id, h.similarity) for h in hits]
    with pytest.raises(ValueError, match="fetch"):
        ShardedIndex(DIM, lambda after: [], None).rerank(query, [1])


def test_ray_refuses_a_remote_cluster_without_token_and_weak_tokens(monkeypatch, tmp_path):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'ballistic[scale]')")
    from ballistic.retrieval.sharded import RaySettings, secure_ray_env
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                      # no ~/.ray/auth_token either
    with pytest.raises(ScaleOutConfigError, match="without token authentication"):
        ShardedIndex(DIM, lambda after: [], None, backend="ray", ray_address="10.1.2.3:6379")
    with pytest.raises(ScaleOutConfigError, match="too short"):
        ShardedIndex(DIM, lambda after: [], None, backend="ray",
                     ray=RaySettings(address="10.1.2.3:6379", auth_token="secret"))
    with pytest.raises(ScaleOutConfigError, match="does not exist"):
        secure_ray_env(token_path=str(tmp_path / "missing"))
