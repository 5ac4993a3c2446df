"""Tests of :mod:`ballistic.retrieval.sharded` and of the one search path over it
(:class:`~ballistic.retrieval.search.Retriever`) on the embedded (in-process) executor: no Ray needed.

The Ray executor runs the same shard and re-ranking code; it is exercised on a real local
multi-node Ray cluster in ``tests/test_scaleout_ray.py``.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.errors import ScaleOutConfigError, ScaleOutError
from ballistic.retrieval.index import VectorIndex
from ballistic.retrieval.search import RetrievalParams, Retriever
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
        assert len(si) == 0


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


class StubDescriptor:
    """A descriptor model of DIM: the tests hand the query vector in (``vector=``)."""

    name = version = "stub/1"
    dim = DIM

    def __call__(self, surface):
        raise AssertionError("the query vector is given")


class GappyFetch:
    """``_fetch`` with some ids not available yet (None), picklable for pools and Ray."""

    def __init__(self, missing=()):
        self.missing = set(missing)

    def __call__(self, cid: int):
        return None if int(cid) in self.missing else _fetch(cid)


CANDS = [31, 12, 33, 45, 22]                   # 31 and 33 share the query's source (3)


def _cands_db(tmp_path) -> SQLiteRowSource:
    src = SQLiteRowSource(tmp_path / "cands.sqlite")
    src.append(CANDS, _unit(len(CANDS), 3), partition="p")
    return src


def test_retriever_on_a_sharded_index_reranks_like_compare_pair(tmp_path):
    query, qvec = _surface(3, 0), _unit(1, 4)[0]
    params = RetrievalParams(k=5, screen_k=0, cmc_k=3, workers=1)     # the prior keeps 3 of the 4 eligible
    with ShardedIndex(DIM, _cands_db(tmp_path), None, n_shards=2) as si:
        with Retriever(si, _fetch, descriptor=StubDescriptor(), params=params) as r:
            res = r.query(query, vector=qvec, partition="p", exclude=[22])
        with Retriever(si, _fetch, descriptor=StubDescriptor(), params=params.__class__(
                k=5, screen_k=0, cmc_k=3, workers=2)) as r2:                 # a local process pool
            res2 = r2.query(query, vector=qvec, partition="p", exclude=[22])
    top = [c for c in res.candidates if c.compared == "now"]
    assert len(res.candidates) == 4 and len(top) == 3 and 22 not in res.ids()
    assert all(np.isfinite(c.prior_ncc) for c in res.candidates)
    direct = {c.id: compare_pair(query, _fetch(c.id)) for c in top}
    assert [c.id for c in top] == sorted(direct, key=lambda i: -direct[i].similarity)
    assert {c.id for c in top[:2]} == {31, 33} and top[0].cmc_count >= 6 and top[-1].cmc_count < 6
    for c in top:
        assert c.score == direct[c.id].similarity and c.cmc_count == direct[c.id].cmc_count
        assert c.summary["cmc_count"] == c.cmc_count
    assert [(c.id, c.score) for c in res2.candidates] == [(c.id, c.score) for c in res.candidates]
    # the state searched: the partition's ids, their number and the database position
    assert res.state_id.startswith("ids:") and res.n_in_partition == 5 and res.n_eligible == 4
    assert res.max_id == 45 and res.search.seq == 5 and sorted(s["shard"] for s in res.shards()) == ["h0of2", "h1of2"]
    assert res.descriptor_version == "stub/1" and res.transform_id == "raw"


def test_known_outcomes_are_not_compared_again_and_unavailable_ones_are_listed(tmp_path):
    from ballistic.errors import SearchCancelled
    query, qvec = _surface(3, 0), _unit(1, 4)[0]
    params = RetrievalParams(k=5, screen_k=0, cmc_k=5, prior=False, workers=1)
    known = {45: {"score": 99.0, "summary": {"similarity": 99.0, "cmc_count": 40}}}
    with ShardedIndex(DIM, _cands_db(tmp_path), None, n_shards=1) as si, \
            Retriever(si, GappyFetch({12}), descriptor=StubDescriptor(), params=params) as r:
        res = r.query(query, vector=qvec, partition="p", known=known.get)
        stop = __import__("threading").Event()
        stop.set()
        with pytest.raises(SearchCancelled):
            r.query(query, vector=qvec, partition="p", stop=stop)
    by = {c.id: c for c in res.candidates}
    assert res.candidates[0].id == 45 and by[45].compared == "earlier" and by[45].cmc_count == 40
    assert by[12].compared == "unavailable" and by[12].score is None and res.candidates[-1].id == 12
    assert {by[i].compared for i in (31, 33, 22)} == {"now"} and res.n_scored == 4


def test_ray_refuses_a_remote_cluster_without_token_and_weak_tokens(monkeypatch, tmp_path):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'ballistic[scale]')")
    from ballistic.retrieval.executor import RaySettings, secure_ray_env
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
    with pytest.raises(ScaleOutConfigError, match="neither loopback nor a private"):
        ShardedIndex(DIM, lambda after: [], None, backend="ray",
                     ray=RaySettings(address="8.8.8.8:6379", auth_token="x" * 64))


def test_the_local_executor_never_imports_ray(tmp_path):
    """The embedded default (sharded index, search, re-ranking in this process) runs without Ray."""
    import subprocess
    import sys
    code = f"""
import sys, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_scaleout import CANDS, DIM, StubDescriptor, _fetch, _surface, _unit
from ballistic.retrieval.search import RetrievalParams, Retriever
from ballistic.retrieval.sharded import SQLiteRowSource, ShardedIndex
src = SQLiteRowSource({str(tmp_path / "r.sqlite")!r})
src.append(CANDS, _unit(len(CANDS), 3), partition="p")
with ShardedIndex(DIM, src, {str(tmp_path / "snap")!r}) as si:
    si.save()
    info = si.info()
    with Retriever(si, _fetch, descriptor=StubDescriptor(), params=RetrievalParams(k=5, cmc_k=2, workers=1)) as r:
        res = r.query(_surface(3, 0), vector=_unit(1, 4)[0], partition="p")
print("RAY", "ray" in sys.modules, res.candidates[0].compared)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "RAY False now" in out.stdout, out.stdout + out.stderr[-3000:]
