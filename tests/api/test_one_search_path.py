"""One search implementation (issue 13): the service, ``ballistic index search`` and ``ballistic bench retrieval``
all call :meth:`ballistic.retrieval.search.Retriever.query` - the same function, seen here being called -, the
service's index is the library's :class:`~ballistic.retrieval.sharded.ShardedIndex`, and the embedded default
never imports Ray."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs, synthetic_breech_face, upload, x3p_bytes

from ballistic.retrieval.search import Retriever
from ballistic.retrieval.sharded import ShardedIndex


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of Retriever.query (the one search function) and keeps the callers' retrievers."""
    calls = []
    real = Retriever.query

    def query(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Retriever, "query", query)
    return calls


def test_the_service_searches_with_the_library_retriever_on_its_sharded_index(tmp_path, scans, spy):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(tmp_path))) as c:
        ex = new_key(c, "examiner")
        for n in ("a1", "a2", "b1"):
            assert upload(c, ex, scans[n], name=f"{n}.x3p").status_code == 201
        assert run_jobs(c) == 3
        ctx = c.app.state.runtime.job_context()
        space = ctx.spaces["breech_face"]
        assert type(space.index) is ShardedIndex and space.executor.backend == "local"
        assert type(space.retriever(None, params=None)) is Retriever
        assert len(spy) == 3 and all(r.index is space.index for r in spy)
        for j in c.get("/v1/jobs", headers=ex).json():
            rec = c.get(f"/v1/jobs/{j['id']}", headers=ex).json()["search_record"]
            assert rec["descriptor"]["search"] == "ballistic.retrieval.search.Retriever.query"
            assert rec["descriptor"]["backend"] == "local" and rec["shards"] and rec["index_snapshot_id"].startswith("ids:")
        st = c.get("/v1/status", headers=ADMIN).json()
        assert st["index"]["consistent"] and st["index"]["backend"] == "local" and st["index"]["shards"] == 1


@pytest.mark.parametrize("window", [8.0, 0.0])
def test_the_service_screens_near_the_descriptor_pose_and_stores_full_comparisons(tmp_path, scans, window):
    """With the default (phase) descriptor the service's coarse screen searches each candidate near the pose the
    descriptor found (``pose_window_deg``; 0: the full circle), and the comparisons it stores are always the
    full-circle ones that carry the likelihood ratio."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(tmp_path, rerank_k=1, pose_window_deg=window))) as c:
        ex = new_key(c, "examiner")
        ids = []
        for n in ("a1", "b1", "a2"):                  # the last one's job screens 2 candidates for 1 comparison
            r = upload(c, ex, scans[n], name=f"{n}.x3p")
            assert r.status_code == 201
            ids.append(r.json()["id"])
        assert run_jobs(c) == 3
        last = max(c.get("/v1/jobs", headers=ex).json(), key=lambda j: j["id"])
        screen = c.get(f"/v1/jobs/{last['id']}", headers=ex).json()["search_record"]["retrieval_params"]["screen"]
        assert screen["used"] and screen["pose_window_deg"] == (window or None)
        items = c.get(f"/v1/exhibits/{ids[2]}/candidates", headers=ex,
                      params={"include_explanation": True}).json()["items"]
        assert items and items[0]["candidate"]["id"] == ids[0]          # its mate, compared in full
        assert items[0]["explanation"]["search"] == "standard" and items[0]["log10_lr"] is not None


def test_the_approximate_index_settings_reach_every_shard_and_the_search_record(tmp_path, scans):
    """``index_nprobe`` / ``index_ef_search`` are search-time settings of an IVF / HNSW factory: each shard's
    index is built with them and every search record says which were in force (a recall figure is only
    reproducible with them)."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(tmp_path, index_factory="IVF2,Flat", index_nprobe=2, index_ef_search=77)
    with TestClient(create_app(settings)) as c:
        ex = new_key(c, "examiner")
        for n in ("a1", "a2"):
            assert upload(c, ex, scans[n], name=f"{n}.x3p").status_code == 201
        assert run_jobs(c) == 2
        space = c.app.state.runtime.job_context().spaces["breech_face"]
        assert space.index._index_kwargs == {"factory": "IVF2,Flat", "metric": "ip", "nprobe": 2, "ef_search": 77}
        for j in c.get("/v1/jobs", headers=ex).json():
            d = c.get(f"/v1/jobs/{j['id']}", headers=ex).json()["search_record"]["descriptor"]
            assert (d["index_factory"], d["index_nprobe"], d["index_ef_search"]) == ("IVF2,Flat", 2, 77)


def test_the_cli_index_search_calls_the_same_function(tmp_path, spy):
    from typer.testing import CliRunner

    from api.cli import app

    d = tmp_path / "scans"
    d.mkdir()
    for name, seed, angle in (("a1", 1, 0.0), ("a2", 1, 40.0), ("b1", 2, 0.0), ("c1", 3, 10.0)):
        (d / f"{name}.x3p").write_bytes(x3p_bytes(synthetic_breech_face(seed, angle=angle)))
    q = tmp_path / "q.x3p"
    q.write_bytes(x3p_bytes(synthetic_breech_face(1, angle=-75.0)))
    r = CliRunner().invoke(app, ["index", "build", str(d), "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["index", "search", str(tmp_path / "idx"), str(q), "--k", "4", "--cmc-k", "2"])
    assert r.exit_code == 0, r.output
    assert len(spy) == 1
    first = r.output.splitlines()[0].split()
    assert first[1] in ("a1", "a2"), r.output      # a mate of the query leads


def test_the_retrieval_benchmark_calls_the_same_function(tmp_path, spy):
    from ballistic.bench.retrieval import run_retrieval_bench

    d = tmp_path / "set"
    d.mkdir()
    rows = ["scan,slide"]
    for name, seed, angle in (("s1-1", 1, 0.0), ("s1-2", 1, 40.0), ("s2-1", 2, 0.0), ("s2-2", 2, 100.0)):
        (d / f"{name}.x3p").write_bytes(x3p_bytes(synthetic_breech_face(seed, angle=angle)))
        rows.append(f"{name},{name.split('-')[0]}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    s = run_retrieval_bench(d, d / "labels.csv", json_out=tmp_path / "out" / "r.json", distractors=(6,), k=8,
                            cmc_k=2, screen_k=0, k_sweep=(8,), factory="Flat", whiten_dim=4, whiten_sample=6,
                            workers=1, cache_dir=tmp_path / "cache")
    assert len(spy) == 4                     # one search per labelled scan, through Retriever.query
    assert s["arms"]["polar"]["per_n"]["6"]["recall@10"] == 1.0


_NO_RAY = """
import sys
sys.path.insert(0, {tests!r})
from api_helpers import make_settings, new_key, run_jobs, synthetic_scans, upload
from pathlib import Path
from fastapi.testclient import TestClient
from api.main import create_app
scans = synthetic_scans()
with TestClient(create_app(make_settings(Path({tmp!r})))) as c:
    ex = new_key(c, "examiner")
    for n in ("a1", "a2"):
        upload(c, ex, scans[n], name=n + ".x3p")
    n = run_jobs(c)
    top = c.get("/v1/exhibits/1/candidates", headers=ex).json()["items"][0]["candidate"]["exhibit_ref"]
print("RESULT", n, top, "ray" in sys.modules)
"""


def test_the_embedded_default_never_imports_ray(tmp_path):
    """BACKEND=local (the default): the API process, its start-up, the index and the jobs run without Ray."""
    code = _NO_RAY.format(tests=str(Path(__file__).parent), tmp=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "RESULT 2 a2.x3p False" in out.stdout, out.stdout + out.stderr[-3000:]


def test_the_ray_backend_needs_a_private_cluster_address(tmp_path):
    from pydantic import ValidationError

    from api.index import make_executor
    from ballistic.errors import ScaleOutConfigError

    with pytest.raises(ValidationError, match="ray_address"):
        make_settings(tmp_path, backend="ray")
    s = make_settings(tmp_path, backend="ray", ray_address="8.8.8.8:6379")
    with pytest.raises(ScaleOutConfigError, match="neither loopback nor a private"):
        make_executor(s)
    json.dumps(s.model_dump(mode="json"))      # the settings the worker processes get are JSON
