"""Tests of :mod:`ballistic.retrieval.record`: JSON round trip, stable hashes, tamper detection, validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ballistic
from ballistic.cartridge.cmc.pair import ALGORITHM_VERSION
from ballistic.cartridge.cmc.params import CMCParams
from ballistic.errors import SearchRecordError
from ballistic.retrieval.record import RECORD_FORMAT, SearchRecord, utc_now
from ballistic.retrieval.sharded import SQLiteRowSource, ShardedIndex


def _record(**kw) -> SearchRecord:
    base = dict(query="exhibit-42", index_snapshot_id="5f633346c09ab9c7d64a", partition="breech_face|9mm|hemi",
                descriptor_version="bf-polar-fft/1", algorithm_version="cmc-coarse2fine/1",
                cmc_params=CMCParams().as_dict(), k=100, n_eligible=12345, n_scored=10,
                started_at="2026-01-02T03:04:05.000001Z", finished_at="2026-01-02T03:04:07.5Z",
                prefilter={"calibre": "9mm", "exclude": [42]}, index_seq=777,
                retrieval_params={"cmc_k": 10, "prior": True},
                results=[{"id": 7, "score": np.float32(0.5), "similarity": 12.25, "cmc_count": np.int64(12)}],
                library_versions={"ballistic": "0.1.0", "faiss": "1.8.0", "numpy": "2.0", "numba": "0.60"})
    base.update(kw)
    return SearchRecord(**base)


def test_round_trip_json_and_dict():
    r = _record()
    text = r.to_json()
    back = SearchRecord.from_json(text)
    assert back == r and back.to_json() == text
    assert back.content_hash() == r.content_hash() == json.loads(text)["content_hash"]
    assert back.cmc_params["cell_angles_deg"] == [-6.0, -3.0, 0.0, 3.0, 6.0]     # tuple stored as a JSON list
    assert CMCParams(**{**back.cmc_params, "cell_angles_deg": tuple(back.cmc_params["cell_angles_deg"])}) \
        == CMCParams()
    assert r.results[0] == {"id": 7, "score": 0.5, "similarity": 12.25, "cmc_count": 12}    # numpy -> JSON types
    d = r.to_dict()
    assert d["format"] == RECORD_FORMAT and SearchRecord.from_dict(d) == r


def test_content_hash_is_pinned_and_order_independent():
    r = _record()
    # the same content given in another key order hashes the same
    shuffled = _record(cmc_params=dict(reversed(list(CMCParams().as_dict().items()))),
                       prefilter={"exclude": [42], "calibre": "9mm"})
    assert shuffled.content_hash() == r.content_hash()
    # pinned: the canonical form must not drift between versions (stored hashes must keep verifying)
    assert r.content_hash() == json.loads(r.to_json())["content_hash"]
    fixed = _record(cmc_params={"grid": 8, "cell_angles_deg": (-3.0, 0.0, 3.0), "spacing_um": 12.5})
    assert fixed.content_hash() == PINNED_HASH


PINNED_HASH = "0a7732c009f41c458152571b8ecb3ada9cca2edad511ee4f23d2b3b1f0316d6b"


def test_hash_is_stable_across_processes():
    r = _record()
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from test_search_record import _record
        print(_record().content_hash())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == r.content_hash(), out.stderr[-2000:]


def test_replay_hash_ignores_outcome_but_not_inputs():
    r = _record()
    later = _record(started_at="2027-05-05T00:00:00Z", finished_at="2027-05-05T00:00:09Z", results=[],
                    n_scored=3, n_eligible=20000, notes="replayed")
    assert later.content_hash() != r.content_hash()
    assert later.replay_hash() == r.replay_hash() and later.same_search(r)
    for change in ({"k": 50}, {"partition": None}, {"index_snapshot_id": "other"},
                   {"cmc_params": {**CMCParams().as_dict(), "grid": 6}}, {"prefilter": {}},
                   {"descriptor_version": "bf-polar-fft/2"}, {"algorithm_version": "cmc/2"}):
        assert _record(**change).replay_hash() != r.replay_hash(), change


def test_tampering_and_bad_input_are_refused():
    d = _record().to_dict()
    d["n_scored"] = 9
    with pytest.raises(SearchRecordError, match="altered"):
        SearchRecord.from_dict(d)
    d = _record().to_dict()
    d["surprise"] = 1
    with pytest.raises(SearchRecordError, match="unknown field"):
        SearchRecord.from_dict(d)
    d = _record().to_dict()
    del d["k"], d["content_hash"]
    with pytest.raises(SearchRecordError, match="incomplete"):
        SearchRecord.from_dict(d)
    with pytest.raises(SearchRecordError, match="format"):
        SearchRecord.from_dict({**_record().to_dict(), "format": "ballistic-search-record/99"})
    with pytest.raises(SearchRecordError, match="not JSON"):
        SearchRecord.from_json("{")
    with pytest.raises(SearchRecordError, match="finite"):
        _record(results=[{"id": 1, "score": float("nan")}])
    with pytest.raises(SearchRecordError, match="before"):
        _record(finished_at="2026-01-02T03:04:04Z")
    with pytest.raises(SearchRecordError, match="time zone"):
        _record(started_at="2026-01-02T03:04:05")
    with pytest.raises(SearchRecordError, match="exceeds"):
        _record(n_scored=20000)
    with pytest.raises(SearchRecordError, match="k must"):
        _record(k=0)
    with pytest.raises(SearchRecordError):
        _record(query="")
    with pytest.raises(SearchRecordError, match="cannot be stored"):
        _record(prefilter={"f": object()})


def test_for_search_from_a_sharded_search(tmp_path):
    src = SQLiteRowSource(tmp_path / "rows.sqlite")
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    src.append(np.arange(300), x / np.linalg.norm(x, axis=1, keepdims=True),
               partition=["a" if i % 2 else "b" for i in range(300)])
    with ShardedIndex(8, src, tmp_path / "snap", n_shards=2) as si:
        si.save()
        t0 = utc_now()
        res = si.query(x[:1], 20, partition="a")
        rec = SearchRecord.for_search(query="q1", search=res, partition="a", descriptor_version="test/1",
                                      cmc_params=CMCParams(), k=20, n_scored=5, started_at=t0,
                                      results=[{"id": i, "score": s} for i, s in zip(res.ids[0], res.scores[0])])
    assert rec.n_eligible == 150 and rec.index_seq == 300 and rec.index_snapshot_id == res.state_id
    assert sorted(s["shard"] for s in rec.shards) == ["h0of2", "h1of2"]
    assert all(s["snapshot"] for s in rec.shards)
    assert rec.algorithm_version == ALGORITHM_VERSION and rec.library_versions["ballistic"] == ballistic.__version__
    assert SearchRecord.from_json(rec.to_json()) == rec
