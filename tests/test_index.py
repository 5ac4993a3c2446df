"""Tests of :mod:`ballistic.retrieval.index`: exact vs approximate search, stable ids, partitions, snapshots."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ballistic.errors import IndexStateError
from ballistic.retrieval.index import VectorIndex, partition_key

DIM = 32


def _clustered(n: int, *, seed: int = 0, n_clusters: int = 500, spread: float = 0.3, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_clusters, dim))
    x = c[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def _recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx_ids, exact_ids)]))


def test_partition_key_normalises():
    assert partition_key("9mm Luger", "Hemispherical") == "breech_face|9mm-luger|hemispherical"
    assert partition_key() == "breech_face|any|any"
    assert partition_key(" .40 S&W ", None, region="Firing pin") == "firing-pin|.40-s-w|any"


@pytest.fixture(scope="module")
def data():
    x = _clustered(6000, seed=1)
    ids = np.arange(6000, dtype=np.int64) * 11 + 5          # ids unrelated to positions
    q = _clustered(200, seed=2)
    return ids, x, q


@pytest.fixture(scope="module")
def exact(data):
    ids, x, q = data
    idx = VectorIndex(DIM, factory="Flat")
    idx.add(ids, x)
    return idx.search(q, 10)


def test_flat_matches_numpy(data, exact):
    ids, x, q = data
    S, I = exact
    ref = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(I[:, 0], ids[ref[:, 0]])
    np.testing.assert_allclose(S, np.take_along_axis(q @ x.T, ref, axis=1), rtol=1e-5, atol=1e-5)
    assert S.dtype == np.float32 and I.dtype == np.int64 and S.shape == I.shape == (200, 10)


@pytest.mark.parametrize("factory, kwargs", [
    ("HNSW32", dict(ef_search=128)),
    ("IVF64,PQ16x4fs,RFlat", dict(nprobe=32, k_factor=16)),
    ("IVF64,Flat", dict(nprobe=32)),
])
def test_approximate_recall_vs_exact(data, exact, factory, kwargs):
    ids, x, q = data
    idx = VectorIndex(DIM, factory=factory, **kwargs)
    for lo in range(0, len(ids), 1500):                   # incremental; trains lazily on the way
        idx.add(ids[lo:lo + 1500], x[lo:lo + 1500])
    assert idx.is_trained and len(idx) == len(ids)
    _, I = idx.search(q, 10)
    rec = _recall_at_k(I, exact[1], 10)
    assert rec >= 0.95, f"{factory}: recall@10 vs exact {rec:.3f}"


def test_set_search_params_retunes_every_partition(data, exact):
    """One IVF list a query misses neighbours; every list is the exact search (IVF keeps exact distances)."""
    ids, x, q = data
    idx = VectorIndex(DIM, factory="IVF64,Flat", nprobe=1)
    idx.add(ids, x)
    low = _recall_at_k(idx.search(q, 10)[1], exact[1], 10)
    idx.set_search_params(nprobe=64)
    S, I = idx.search(q, 10)
    assert low < 0.9 and _recall_at_k(I, exact[1], 10) == 1.0 and idx.nprobe == 64
    np.testing.assert_allclose(S, exact[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="ef_search must be >= 1"):
        idx.set_search_params(ef_search=0)


@pytest.mark.parametrize("factory, code_bytes", [("Flat", 4 * DIM), ("SQ8", DIM)])
def test_faiss_nbytes_counts_the_codes_and_ids_of_every_partition(factory, code_bytes):
    """Memory per vector as the benchmarks report it: the codes (4 bytes a value for Flat, 1 for SQ8) plus
    the int64 id maps, over every partition; nothing before the first vector."""
    idx = VectorIndex(DIM, factory=factory)
    assert idx.faiss_nbytes() == 0
    v = _clustered(1000, seed=3)
    idx.add(np.arange(600), v[:600], partition="a")
    idx.add(np.arange(600, 1000), v[600:], partition="b")
    per = idx.faiss_nbytes() / len(idx)
    assert code_bytes + 8 <= per <= code_bytes + 8 * 3 + 2       # codes + id map (+ reverse map, headers)


def test_untrained_index_searches_pending_exactly(data, exact):
    ids, x, q = data
    idx = VectorIndex(DIM, factory="IVF256,Flat", min_train=100_000)
    idx.add(ids, x)
    assert not idx.is_trained
    np.testing.assert_array_equal(idx.search(q, 10)[1], exact[1])
    idx.train()
    assert idx.is_trained and len(idx) == len(ids)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ16x4fs,RFlat"])
def test_stable_ids_after_remove_and_add(factory):
    x = _clustered(1200, seed=3)
    ids = np.arange(1200, dtype=np.int64) * 7 + 1000
    idx = VectorIndex(DIM, factory=factory, min_train=600, nprobe=16, k_factor=16)
    idx.add(ids, x)
    gone = ids[::3]
    assert idx.remove(np.concatenate([gone, [123456789]])) == gone.size   # unknown id ignored
    assert len(idx) == 800 and gone[0] not in idx and ids[1] in idx
    S, I = idx.search(x[1:2], 1)
    assert I[0, 0] == ids[1]
    # removed vectors are never returned
    _, I = idx.search(x[gone[:50] // 7 - 1000 // 7], 20)
    assert not np.isin(I, gone).any()
    # add back under the same ids and a fresh one: each vector answers with its own id
    idx.add(gone[:10], x[::3][:10])
    idx.add(np.array([5]), x[:1] * 0 + x[2:3])
    _, I = idx.search(x[::3][:10], 1)
    np.testing.assert_array_equal(I[:, 0], gone[:10])
    assert 5 in idx and len(idx) == 811


def test_partitions_isolate_and_merge():
    a, b = _clustered(300, seed=4), _clustered(300, seed=5)
    idx = VectorIndex(DIM)
    pa, pb = partition_key("9mm", "round"), partition_key("9mm", "rectangular")
    idx.add(np.arange(300), a, partition=pa)
    idx.add(np.arange(300) + 1000, b, partition=pb)
    assert idx.partitions() == sorted([pa, pb]) and idx.count(pa) == 300 and idx.count("nope") == 0
    _, I = idx.search(b[:5], 10, partition=pa)
    assert (I < 1000).all()
    _, I = idx.search(b[:5], 1, partition=None)
    np.testing.assert_array_equal(I[:, 0], np.arange(5) + 1000)
    S, I = idx.search(a[:2], 4, partition="empty")
    assert (I == -1).all() and np.isneginf(S).all()
    # fewer results than k
    small = VectorIndex(DIM)
    small.add([1, 2], a[:2])
    S, I = small.search(a[:1], 5)
    assert list(I[0, 2:]) == [-1, -1, -1] and np.isneginf(S[0, 2:]).all()


def test_bad_input_raises_clear_errors():
    idx = VectorIndex(DIM)
    x = _clustered(10, seed=6)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        idx.add(np.arange(10), x[:, :16])
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        idx.add(np.arange(10), bad)
    with pytest.raises(ValueError, match="duplicate"):
        idx.add(np.array([1, 1, 2, 3, 4, 5, 6, 7, 8, 9]), x)
    idx.add(np.arange(10), x, partition="p1")
    with pytest.raises(ValueError, match="already in partition 'p1'"):
        idx.add(np.array([3]), x[:1], partition="p2")
    with pytest.raises(ValueError, match="one id per vector"):
        idx.add(np.arange(20, 25), x)
    with pytest.raises(ValueError, match=">= 0"):
        idx.add(np.array([-4]), x[:1])
    with pytest.raises(ValueError, match="NaN"):
        idx.search(bad, 3)
    with pytest.raises(ValueError, match="factory"):
        VectorIndex(DIM, factory="NoSuchIndex")
    with pytest.raises(ValueError, match="metric"):
        VectorIndex(DIM, metric="cosine")
    assert len(idx) == 10      # failed adds changed nothing


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ16x4fs,RFlat"])
def test_save_load_round_trip(tmp_path, factory):
    x = _clustered(1500, seed=7)
    idx = VectorIndex(DIM, factory=factory, min_train=1000, k_factor=4)
    idx.add(np.arange(1000) * 3, x[:1000], partition="a")
    idx.add(np.arange(1000, 1500) * 3, x[1000:], partition="b")
    idx.remove(np.arange(0, 90, 3))
    idx.meta["descriptor"] = "test"
    idx.attachments["whitener.npz"] = b"abc"
    q = _clustered(40, seed=8)
    before = idx.search(q, 10, partition=None)
    sid = idx.save(tmp_path / "ix")
    assert idx.snapshot_id == sid and (tmp_path / "ix" / "CURRENT").read_text().strip() == sid
    back = VectorIndex.load(tmp_path / "ix")
    after = back.search(q, 10, partition=None)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    assert back.snapshot_id == sid and back.meta == {"descriptor": "test"}
    assert back.attachments == {"whitener.npz": b"abc"} and back.partitions() == ["a", "b"]
    assert back.save(tmp_path / "ix") == sid            # same content -> same id


def _saved(tmp_path, n=200):
    x = _clustered(n, seed=9)
    idx = VectorIndex(DIM)
    idx.add(np.arange(n), x)
    sid = idx.save(tmp_path / "ix")
    return idx, x, sid


def test_interrupted_save_keeps_previous_snapshot(tmp_path, monkeypatch):
    idx, x, sid = _saved(tmp_path)
    idx.add(np.arange(1000, 1100), _clustered(100, seed=10))

    def boom(*a, **k):
        raise OSError("simulated crash before CURRENT was replaced")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        idx.save(tmp_path / "ix")
    monkeypatch.undo()
    back = VectorIndex.load(tmp_path / "ix")
    assert back.snapshot_id == sid and len(back) == 200


def test_killed_save_keeps_previous_snapshot(tmp_path):
    _, _, sid = _saved(tmp_path)
    # a child process adds a big partition and is killed (SIGKILL) in the middle of writing its files
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from ballistic import index as M
        idx = M.VectorIndex.load({str(tmp_path / 'ix')!r})
        idx.add(np.arange(10**6, 10**6 + 20000), np.random.default_rng(0).random((20000, {DIM}), dtype=np.float32))
        real = M._write_synced
        calls = []
        def slow(path, data):
            calls.append(path)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, data)
        M._write_synced = slow
        idx.save({str(tmp_path / 'ix')!r})
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode != 0
    back = VectorIndex.load(tmp_path / "ix")
    assert back.snapshot_id == sid and len(back) == 200


def test_corrupt_snapshot_raises_index_state_error(tmp_path):
    _, _, sid = _saved(tmp_path)
    f = tmp_path / "ix" / "snapshots" / sid / "p0.faiss"
    f.write_bytes(f.read_bytes()[:-7] + b"garbage")
    with pytest.raises(IndexStateError, match="checksum mismatch"):
        VectorIndex.load(tmp_path / "ix")
    with pytest.raises(IndexStateError, match="no CURRENT"):
        VectorIndex.load(tmp_path / "nothing")


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_rebuild_gives_identical_results(factory):
    x = _clustered(2000, seed=11)
    ids = np.arange(2000, dtype=np.int64) * 13
    parts = [partition_key(c) for c in ("9mm", "40sw")]
    inc = VectorIndex(DIM, factory=factory, min_train=1000)
    items = []
    for lo in range(0, 2000, 250):
        p = parts[(lo // 250) % 2]
        inc.add(ids[lo:lo + 250], x[lo:lo + 250], partition=p)
        items += [(int(i), p, v) for i, v in zip(ids[lo:lo + 250], x[lo:lo + 250])]
    reb = VectorIndex.rebuild(DIM, iter(items), factory=factory, min_train=1000, batch=250)
    q = _clustered(50, seed=12)
    for part in parts + [None]:
        a, b = inc.search(q, 10, partition=part), reb.search(q, 10, partition=part)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
