"""The Ray executor of :mod:`ballistic.retrieval.sharded` and of the one search path
(:class:`~ballistic.retrieval.search.Retriever`) on a real local Ray cluster: a head node (no CPUs) and two
worker nodes (one CPU each), token authentication on, no dashboard, loopback only.

Shard actors need the custom resource ``shard_host`` that only the worker nodes have, so they live on
the worker nodes and a shard whose node is removed can only come back on the other one.
"""
from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'ballistic[scale]')")

from ballistic.errors import ShardUnavailableError  # noqa: E402
from ballistic.retrieval.executor import RaySettings  # noqa: E402
from ballistic.retrieval.search import RetrievalParams, Retriever  # noqa: E402
from ballistic.retrieval.sharded import SQLiteRowSource, ShardedIndex  # noqa: E402

from ray_helpers import add_worker_node, local_cluster  # noqa: E402
from test_scaleout import DIM, StubDescriptor, _fetch, _materialise, _surface, _unit  # noqa: E402

# "slow" is a registered marker (pyproject.toml); select these tests with -k ray or by this file's path
pytestmark = pytest.mark.slow


def _settings(**kw) -> RaySettings:
    base = dict(actor_options={"resources": {"shard_host": 1}}, call_timeout_s=30.0, retries=1)
    return RaySettings(**{**base, **kw})


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2, resources={"shard_host": 4}) as c:
        # the actors and tasks run functions and classes of these test modules: ship them by value
        import test_scaleout
        ray.cloudpickle.register_pickle_by_value(test_scaleout)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            yield c
        finally:
            if ray.is_initialized():
                ray.shutdown()


@pytest.fixture()
def db(tmp_path):
    src = SQLiteRowSource(tmp_path / "rows.sqlite")
    src.append(np.arange(2000, dtype=np.int64) * 5 + 1, _unit(2000, 21),
               partition=["p1" if i % 4 else "p2" for i in range(2000)])
    return src


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _listening(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    t = os.readlink(fd)
                except OSError:
                    continue
                if t.startswith("socket:["):
                    inodes[t[8:-1]] = pid
        except OSError:
            continue
    out = set()
    for fn, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(fn).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if f[3] != "0A" or f[9] not in inodes:            # 0A = LISTEN
                continue
            raw = bytes.fromhex(f[1].split(":")[0])        # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            out.add(str(ip.ipv4_mapped if v6 and ip.ipv4_mapped else ip))
    return out


def test_auth_loopback_and_merged_search_equal_single_index(cluster, db, tmp_path):
    # token auth: right token answers, a wrong token is refused by the GCS itself
    probe = ("from ray._raylet import GcsClient\n"
             f"try:\n    print('NODES', len(GcsClient(address='{cluster.address}').get_all_node_info(timeout=5)))\n"
             "except Exception as e:\n    print('REFUSED', type(e).__name__, str(e)[:120])\n")
    for token, want in ((os.environ["RAY_AUTH_TOKEN"], "NODES 3"), ("0" * 64, "REFUSED AuthenticationError")):
        env = {**os.environ, "RAY_AUTH_TOKEN": token}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        assert want in out.stdout, (out.stdout, out.stderr[-2000:])
    # every Ray process listens on loopback only (GCS, raylets, object managers, agents, workers); no dashboard
    addrs = _listening(_descendants(os.getpid()))
    assert addrs and addrs <= {"127.0.0.1", "::1"}, addrs

    ref = _materialise(db)
    q = _unit(30, 22)
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=3, backend="ray", ray_address=cluster.address,
                      ray=_settings()) as si:
        from ray._raylet import AuthenticationMode, get_authentication_mode
        assert get_authentication_mode() == AuthenticationMode.TOKEN
        nodes = {v["node_id"] for v in si.info().values()}
        assert len(nodes) == 2                                   # spread over both worker nodes
        for part in ("p1", "p2", None):
            r = si.query(q, 40, partition=part)
            D, I = ref.search(q, 40, partition=part)
            np.testing.assert_array_equal(r.ids, I)
            np.testing.assert_array_equal(r.scores, D)
            assert r.eligible == (len(ref) if part is None else ref.count(part))

        # the one search path on the same executor: screens and comparisons are Ray tasks on the workers
        params = RetrievalParams(k=8, screen_k=0, cmc_k=3, workers=1)
        query, qvec = _surface(3, 0), q[0]
        with Retriever(si, _fetch, descriptor=StubDescriptor(), params=params, executor=si.executor) as r:
            assert r.executor.backend == "ray" and r.executor.slots == 2
            on_ray = r.query(query, vector=qvec, partition="p2")
    # the same search in this process on one VectorIndex of the same rows
    with Retriever(ref, _fetch, descriptor=StubDescriptor(), params=params) as r:
        local = r.query(query, vector=qvec, partition="p2")
    assert [(c.id, c.score, c.prior_ncc, c.compared) for c in on_ray.candidates] == \
        [(c.id, c.score, c.prior_ncc, c.compared) for c in local.candidates]
    assert sum(c.compared == "now" for c in on_ray.candidates) == 3
    assert on_ray.state_id == local.state_id and on_ray.n_in_partition == ref.count("p2")


def test_actor_restart_reloads_snapshot_and_replays_rows(cluster, db, tmp_path):
    with ShardedIndex(DIM, db, tmp_path / "snap", n_shards=2, backend="ray", ray_address=cluster.address,
                      ray=_settings()) as si:
        saved = si.save()
        before = si.info()
        # the database gains rows after the snapshot (new exhibits, a deletion, a moved vector)
        db.append(np.arange(10**9, 10**9 + 40), _unit(40, 23), partition="p2")
        db.delete([1, 6], partition="p1")
        db.append([11], _unit(1, 24), partition="p2")
        for name in si.shard_names:
            si.restart_shard(name)                 # ray.kill(no_restart=False): Ray restarts the actor
        deadline = time.time() + 60
        while True:
            info = si.info()
            if all(info[n]["pid"] != before[n]["pid"] for n in si.shard_names) or time.time() > deadline:
                break
            time.sleep(0.2)
        for n in si.shard_names:
            assert info[n]["pid"] != before[n]["pid"], "actor was not restarted"
            assert info[n]["loaded_snapshot"] == saved[n]["snapshot"]
            assert info[n]["replayed_on_start"] == 43 and info[n]["seq"] == 2043
        q = _unit(25, 25)
        ref = _materialise(db)
        D, I = si.search(q, 60, partition=None, sync=False)          # only what the restart replayed
        D2, I2 = ref.search(q, 60, partition=None)
        np.testing.assert_array_equal(I, I2)
        np.testing.assert_array_equal(D, D2)


class _SlowRows:
    """Row source that stalls while a flag file exists (holds a shard's search in flight)."""

    def __init__(self, inner: SQLiteRowSource, flag: str, delay: float) -> None:
        self.inner, self.flag, self.delay = inner, flag, delay

    def __call__(self, after, upto=None):
        if os.path.exists(self.flag):
            time.sleep(self.delay)
        return self.inner(after, upto)


def test_node_removed_mid_query_restarts_shard_or_raises_never_partial(cluster, db, tmp_path):
    flag = str(tmp_path / "slow")
    src = _SlowRows(db, flag, 3.0)
    ref = _materialise(db)
    q = _unit(20, 26)
    D_ref, I_ref = ref.search(q, 30, partition=None)
    restartable = ShardedIndex(DIM, src, tmp_path / "a", n_shards=2, backend="ray", ray_address=cluster.address,
                               ray=_settings())
    fragile = ShardedIndex(DIM, src, tmp_path / "b", n_shards=2, backend="ray", ray_address=cluster.address,
                           ray=_settings(max_restarts=0, max_task_retries=0))
    victim, removed = None, False
    try:
        restartable.save()
        fragile.save()
        node_of = restartable.info()["h0of2"]["node_id"]
        assert node_of in {v["node_id"] for v in fragile.info().values()}     # both indexes spread on 2 nodes
        victim = next(n for n in cluster.workers_started if n.node_id == node_of)

        out: dict = {}

        def run(name, index):
            try:
                out[name] = index.search(q, 30, partition=None)
            except Exception as e:                    # noqa: BLE001 - inspected below
                out[name] = e

        Path(flag).touch()                            # both searches now stall inside the shards
        threads = [threading.Thread(target=run, args=a) for a in (("a", restartable), ("b", fragile))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cluster.remove_node(victim)                   # the node holding shard h0of2 goes away mid-query
        removed = True
        os.unlink(flag)
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)

        # restartable shards: the actor came back on the other node (snapshot + replay), the call was retried
        a = out["a"]
        assert not isinstance(a, Exception), repr(a)
        np.testing.assert_array_equal(a[1], I_ref)
        np.testing.assert_array_equal(a[0], D_ref)
        info = restartable.info()
        survivor = next(n for n in cluster.workers_started if n is not victim)
        assert {v["node_id"] for v in info.values()} == {survivor.node_id}
        assert info["h0of2"]["loaded_snapshot"] is not None

        # shards that may not restart: a typed error naming the shard, never a shorter list
        b = out["b"]
        assert isinstance(b, ShardUnavailableError), repr(b)
        assert b.shard in ("h0of2", "h1of2")
        with pytest.raises(ShardUnavailableError):
            fragile.search(q, 30, partition=None)
    finally:
        restartable.close()
        fragile.close()
        if removed:                                   # leave the cluster with two worker nodes again
            cluster.workers_started = [n for n in cluster.workers_started if n is not victim] + [
                add_worker_node(cluster, {"shard_host": 4})]


_EMBEDDED = """
import os, subprocess, sys
sys.path.insert(0, {tests!r})
for k in [k for k in os.environ if k.startswith("RAY_")]:
    del os.environ[k]
from test_scaleout_ray import _descendants, _listening
from ballistic.retrieval.executor import RaySettings
from ballistic.retrieval.sharded import ShardedIndex
import numpy as np
with ShardedIndex(4, lambda after: [(1, 7, "any", np.ones(4) / 2)] if after == 0 else [], None, backend="ray",
                  ray=RaySettings(num_cpus=1, object_store_memory=80 * 2**20)) as si:
    import ray
    gcs = ray.get_runtime_context().gcs_address
    print("ANSWER", si.search(np.ones((1, 4)) / 2, 1)[1].tolist())
    print("GCS", gcs)
    print("LISTEN", sorted(_listening(_descendants(os.getpid()) | {{os.getpid()}})))
    probe = ("from ray._raylet import GcsClient\\ntry:\\n print('NODES', len(GcsClient(address=%r)"
             ".get_all_node_info(timeout=5)))\\nexcept Exception as e:\\n print('REFUSED', type(e).__name__)" % gcs)
    for name, env in (("right", dict(os.environ)), ("wrong", {{**os.environ, "RAY_AUTH_TOKEN": "1" * 64}}),
                      ("none", {{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}})):
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        print("PROBE", name, out.stdout.strip())
print("TOKEN_FILE", os.path.exists(os.path.expanduser("~/.ray/auth_token")))
"""


def test_embedded_default_ray_is_token_authenticated_and_loopback_only(tmp_path):
    """backend="ray" without an address starts its own Ray: loopback only, token auth with a token kept in
    the process environment, no dashboard. Run in a fresh interpreter (one Ray per process)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)                    # nothing may be written to ~/.ray
    out = subprocess.run([sys.executable, "-c", _EMBEDDED.format(tests=str(Path(__file__).parent))], env=env,
                         capture_output=True, text=True, timeout=180)
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    assert "ANSWER" in lines, out.stdout + out.stderr[-3000:]
    assert lines["ANSWER"] == "[[7]]"
    assert lines["GCS"].startswith("127.0.0.1:")
    assert set(eval(lines["LISTEN"])) <= {"127.0.0.1", "::1"} and eval(lines["LISTEN"])   # noqa: S307 - own output
    assert [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE")] == [
        "PROBE right NODES 1", "PROBE wrong REFUSED AuthenticationError", "PROBE none REFUSED AuthenticationError"]
    assert lines["TOKEN_FILE"] == "False"
