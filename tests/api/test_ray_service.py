"""The service on Ray (issue 13): ``ballistic serve`` with ``BALLISTIC_BACKEND=ray`` on a local
``ray.cluster_utils.Cluster`` (a head without CPUs and two worker nodes of one CPU each; token
authentication, loopback only, no dashboard) gives, through the HTTP API, the same candidates as the
embedded default on the same real Fadul uploads; a worker node removed while a correlation runs gives a
retried job (the shard actor restarts elsewhere, lost tasks run again) or a clear failed job, never a short
candidate list."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'ballistic[scale]')")

from api_helpers import wait_job  # noqa: E402
from ray_helpers import add_worker_node, local_cluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

ADMIN = "bk_ray-service-admin-key"
SCANS = ["Fadul 1-1", "Fadul 1-2", "Fadul 2-1", "Fadul 2-2", "Fadul 3-1"]
LAST = "Fadul F"                      # slide 1, like 1-1 and 1-2; correlated while a node is removed


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2) as c:
        yield c


def _upload(c: httpx.Client, key: str, path) -> int:
    r = c.post("/v1/exhibits", headers={"X-API-Key": key},
               data={"case_number": path.stem, "exhibit_ref": path.stem, "agency": "NIST", "calibre": "9mm"},
               files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
    assert r.status_code == 201, r.text
    return r.json()["job"]["id"]


def _lists(c: httpx.Client, key: str, n: int) -> dict:
    """Every exhibit's candidates: (other exhibit's ref, score, CMC count), best first."""
    out = {}
    for eid in range(1, n + 1):
        items = c.get(f"/v1/exhibits/{eid}/candidates", headers={"X-API-Key": key}).json()["items"]
        out[eid] = [(i["candidate"]["exhibit_ref"], round(i["score"], 9), i["cmc_count"]) for i in items]
    return out


def _run(tmp_path, files, env, *, during_last=None) -> tuple[dict, dict]:
    """Upload one scan at a time (each job done before the next upload: the same order in every run) through
    a `ballistic serve`; ``during_last(client)`` runs while the last scan's job runs. Returns the candidate
    lists and the last job."""
    from api.process import ServerProcess

    srv = ServerProcess(tmp_path / "data", admin_key=ADMIN, workers=1, log=tmp_path / "server.log",
                        env={"BALLISTIC_RERANK_K": "10", **env}).start()
    try:
        with srv.client(timeout=300) as c:
            exam = c.post("/v1/keys", json={"name": "ray", "scope": "examiner"}).json()["key"]
            last, backends = None, set()
            for i, f in enumerate(files):
                job = _upload(c, exam, f)
                if i == len(files) - 1 and during_last is not None:
                    while c.get(f"/v1/jobs/{job}").json()["status"] == "queued":
                        time.sleep(0.05)
                    during_last(c)
                last = wait_job(c, job)
                if last["status"] == "done":        # where the job's search ran (its search record says)
                    backends.add(c.get(f"/v1/jobs/{job}").json()["search_record"]["descriptor"]["backend"])
                if i < len(files) - 1:
                    assert last["status"] == "done", last
            lists = _lists(c, exam, len(files))
            st = c.get("/v1/status").json()
            assert st["index"]["consistent"], st["index"]
            return lists, {**last, "backends": backends, "workers": st["workers"]}
    finally:
        srv.stop()


def test_http_api_on_a_ray_cluster_gives_the_embedded_candidates_and_survives_a_lost_node(shared_data, cluster,
                                                                                           tmp_path):
    fadul = shared_data / "cartridge" / "fadul"
    files = [fadul / f"{s}.x3p" for s in SCANS + [LAST]]
    embedded, last_local = _run(tmp_path / "local", files, {})
    assert last_local["status"] == "done" and last_local["backends"] == {"local"}
    assert embedded[6][0][0] == "Fadul 1-2" or embedded[6][0][0] == "Fadul 1-1"   # 1-3's mates lead

    removed = {}

    def remove_a_node(c):
        t0 = time.monotonic()
        time.sleep(1.0)                          # inside the correlation: preprocessing, search, re-ranking
        victim = cluster.workers_started[0]
        removed["at"] = round(time.monotonic() - t0, 2)
        t = threading.Thread(target=cluster.remove_node, args=(victim,))
        t.start()
        t.join(120)
        removed["node"] = victim

    env = {"BALLISTIC_BACKEND": "ray", "BALLISTIC_RAY_ADDRESS": cluster.address, "BALLISTIC_INDEX_SHARDS": "2",
           "BALLISTIC_RAY_CALL_TIMEOUT_S": "20", "BALLISTIC_JOB_RETRY_DELAY_S": "1"}
    try:
        on_ray, last = _run(tmp_path / "ray", files, env, during_last=remove_a_node)
    finally:
        if "node" in removed:                    # leave the cluster as it was for the next test
            cluster.workers_started = [n for n in cluster.workers_started if n is not removed["node"]] + \
                [add_worker_node(cluster)]
    print(f"lost-node job: {last['status']} after {last['attempts']} attempt(s); error {last['error']!r}; "
          f"node removed at {removed.get('at')} s into the job")
    assert last["backends"] == {"ray"} and last["workers"]["backend"] == "ray"
    # the five uploads before the lost node: exactly the embedded candidates (same pairs, scores, CMC counts)
    for eid in range(1, len(SCANS) + 1):
        mine = [x for x in on_ray[eid] if x[0] != LAST]
        assert mine == [x for x in embedded[eid] if x[0] != LAST], eid
    # the correlation that lost a node: retried to completion with the full list, or failed with a reason
    if last["status"] == "done":
        assert on_ray[6] == embedded[6], (on_ray[6], embedded[6])
        for eid in range(1, len(SCANS) + 1):
            assert on_ray[eid] == embedded[eid]
    else:
        assert last["status"] == "failed" and last["error"], last
        assert on_ray[6] == [], "a failed job stores no candidates"
