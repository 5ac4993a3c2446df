"""Correlation jobs: pipeline results, ranking, filters, figure, retries, failures, resume, index rebuild."""
from __future__ import annotations

import time

import pytest
from api_helpers import ADMIN, make_settings, new_key, run_jobs, upload
from fastapi.testclient import TestClient

from api.main import create_app


def _ingest(c, h, scans, names, **meta):
    ids = {}
    for n in names:
        r = upload(c, h, scans[n], name=f"{n}.x3p", case_number=f"case-{n}", exhibit_ref=n, **meta)
        assert r.status_code == 201, r.text
        ids[n] = r.json()["id"]
    return ids


def test_job_pipeline_ranks_same_source_first(client, examiner, scans, settings):
    ids = _ingest(client, examiner, scans, ["a1", "b1", "c1", "a2", "b2"])
    assert run_jobs(client) == 5
    jobs = client.get("/v1/jobs", headers=examiner).json()
    assert {j["status"] for j in jobs} == {"done"} and all(j["attempts"] == 1 for j in jobs)
    j = client.get(f"/v1/jobs/{jobs[0]['id']}", headers=examiner).json()
    assert j["finished_at"] and j["candidates_found"] == 4   # the last one compared with all four
    ex = client.get(f"/v1/exhibits/{ids['a1']}", headers=examiner).json()
    assert ex["descriptor_version"] and ex["preprocess_info"].startswith("processed")
    assert (settings.evidence_dir / "derived").rglob("*.x3p")
    for q, mate in (("a1", "a2"), ("a2", "a1"), ("b1", "b2"), ("b2", "b1")):
        cl = client.get(f"/v1/exhibits/{ids[q]}/candidates", headers=examiner).json()
        assert cl["region"] == "breech_face"
        items = cl["items"]
        assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
        assert items[0]["candidate"]["id"] == ids[mate], (q, [(i["candidate"]["exhibit_ref"], i["score"])
                                                              for i in items])
        assert items[0]["identification"] and items[0]["cmc_count"] >= 6
        assert all(items[k]["score"] >= items[k + 1]["score"] for k in range(len(items) - 1))
        top = items[0]
        assert top["explanation"] is None  # lists are light; the explanation comes per candidate
        expl = client.get(top["explanation_url"], headers=examiner).json()["explanation"]
        assert expl["forward"]["cells"] and expl["algorithm"]
        assert set(top["registration"]) == {"angle_deg", "dy_um", "dx_um", "ncc"}
    # status: index and DB agree
    st = client.get("/v1/status", headers=ADMIN).json()
    assert st["index"]["consistent"] and st["index"]["index_count"] == 5 and st["jobs"]["done"] == 5


def test_candidate_filters(client, examiner, scans):
    a = upload(client, examiner, scans["a1"], name="a1.x3p", agency="North", recovery_date="2024-01-10").json()["id"]
    upload(client, examiner, scans["a2"], name="a2.x3p", agency="South", recovery_date="2024-06-01",
           role="test_fire", firearm_serial="SN-1")
    upload(client, examiner, scans["b1"], name="b1.x3p", agency="North", recovery_date="2023-05-05")
    upload(client, examiner, scans["c1"], name="c1.x3p", calibre=".40", agency="North")  # other partition
    run_jobs(client)
    get = lambda **p: [i["candidate"]["exhibit_ref"] for i in client.get(
        f"/v1/exhibits/{a}/candidates", headers=examiner, params={"include_explanation": False, **p}
    ).json()["items"]]
    assert set(get()) == {"a2.x3p", "b1.x3p"}  # c1 is another calibre: another partition, never compared
    assert get(agency="South") == ["a2.x3p"]
    assert get(role="test_fire") == ["a2.x3p"]
    assert get(date_from="2024-01-01") == ["a2.x3p"]
    assert get(date_to="2023-12-31") == ["b1.x3p"]
    assert get(calibre=".40") == []
    # a score between the unrelated pair's and the mates' (53): the tiny synthetic scans' chance count
    # reaches C = 6 with a fine rotation prior, so 6 would test the data, not the filter
    assert get(min_score=20) == ["a2.x3p"]
    assert client.get("/v1/exhibits/999/candidates", headers=examiner).status_code == 404


def test_figure_is_rendered_cached_and_audited(client, examiner, scans):
    _ingest(client, examiner, scans, ["a1", "a2"])
    run_jobs(client)
    cand = client.get("/v1/exhibits/1/candidates", headers=examiner).json()["items"][0]
    r = client.get(cand["figure_url"], headers=examiner)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    t0 = time.perf_counter()
    assert client.get(cand["figure_url"], headers=examiner).content == r.content  # cached
    assert time.perf_counter() - t0 < 1.0
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    assert actions.count("evidence.read_figure") == 2
    assert client.get("/v1/candidates/12345/figure.png", headers=examiner).status_code == 404


def test_second_look_compares_again_thoroughly_caches_and_audits(client, examiner, intel, scans):
    _ingest(client, examiner, scans, ["a1", "a2"])
    run_jobs(client)
    cand = client.get("/v1/exhibits/1/candidates", headers=examiner).json()["items"][0]
    url = f"/v1/candidates/{cand['id']}/second-look"
    r = client.get(url, headers=examiner)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["search"] == "thorough" and s["identification"] and s["cmc_count"] >= 6
    assert s["stored"]["cmc_count"] == cand["cmc_count"] and s["stored"]["identification"]
    assert s["pose_changed"] is False       # the mates' pose: the standard search already had it
    assert s["registration"]["ncc"] >= cand["registration"]["ncc"] - 0.02
    assert "no likelihood ratio" in s["note"] and "log10_lr" not in s
    again = client.get(url, headers=examiner).json()
    assert again["seconds"] == s["seconds"]            # computed once, read from the cache after
    after = client.get(f"/v1/candidates/{cand['id']}", headers=examiner).json()
    assert after["score"] == cand["score"] and after["cmc_count"] == cand["cmc_count"]   # nothing stored changed
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    assert actions.count("evidence.second_look") == 2
    fig = client.get(s["figure_url"], headers=examiner)
    assert fig.status_code == 200 and fig.content[:4] == b"\x89PNG"
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    assert actions.count("evidence.read_figure") == 1
    assert client.get(url, headers=intel).status_code == 403
    assert client.get(s["figure_url"], headers=intel).status_code == 403
    assert client.get("/v1/candidates/12345/second-look", headers=examiner).status_code == 404
    assert client.get("/v1/candidates/12345/second-look/figure.png", headers=examiner).status_code == 404


def test_transient_failure_is_retried_permanent_one_fails(client, examiner, scans, monkeypatch):
    from api.index import DescriptorSpace

    calls = {"n": 0}
    real = DescriptorSpace.describe

    def flaky(self, surface):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk hiccup")
        return real(self, surface)

    monkeypatch.setattr(DescriptorSpace, "describe", flaky)
    _ingest(client, examiner, scans, ["a1"])
    run_jobs(client)
    j = client.get("/v1/jobs/1", headers=examiner).json()
    assert j["status"] == "done" and j["attempts"] == 2 and j["error"] is None

    def broken(self, surface):
        raise ValueError("descriptor cannot be computed")

    monkeypatch.setattr(DescriptorSpace, "describe", broken)
    _ingest(client, examiner, scans, ["b1"])
    run_jobs(client)
    j = client.get("/v1/jobs/2", headers=examiner).json()
    assert j["status"] == "failed" and j["attempts"] == 1 and "descriptor cannot be computed" in j["error"]
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    assert "job.retry" in actions and "job.failed" in actions
    # a failed job can be run again on request; a pending one cannot be duplicated
    monkeypatch.setattr(DescriptorSpace, "describe", real)
    r = client.post("/v1/jobs", headers=examiner, json={"exhibit_id": 2})
    assert r.status_code == 201
    assert client.post("/v1/jobs", headers=examiner, json={"exhibit_id": 2}).status_code == 409
    run_jobs(client)
    assert client.get(f"/v1/jobs/{r.json()['id']}", headers=examiner).json()["status"] == "done"


def test_a_job_out_of_memory_frees_its_arrays_and_calls_the_hook_before_its_failure_is_recorded(
        client, examiner, scans, monkeypatch):
    """Under a worker's address-space limit, recording the failure of a job that ran out of memory needs memory:
    the job's arrays (alive in its traceback's frames) are released and the worker's hook (which lifts the
    limit) runs first; before, a MemoryError while recording aborted the worker and the job was retried."""
    import weakref

    import numpy as np

    import api.jobs.correlate as correlate
    from api.index import DescriptorSpace

    held = {}

    def exhausting(self, surface):
        big = np.ones(2_000_000)                     # what a job holds when its next allocation fails
        held["ref"] = weakref.ref(big)
        raise MemoryError("Unable to allocate")

    seen = []
    ctx = client.app.state.runtime.job_context()
    monkeypatch.setattr(ctx, "on_memory_error", lambda: seen.append(("hook", held["ref"]() is None)))
    real_fail = correlate.fail_job

    def recording(*args, **kwargs):
        seen.append(("fail_job", held["ref"]() is None))
        return real_fail(*args, **kwargs)

    monkeypatch.setattr(correlate, "fail_job", recording)
    monkeypatch.setattr(DescriptorSpace, "describe", exhausting)
    _ingest(client, examiner, scans, ["a1"])
    run_jobs(client)
    assert seen == [("hook", True), ("fail_job", True)], seen
    j = client.get("/v1/jobs/1", headers=examiner).json()
    assert j["status"] == "failed" and j["attempts"] == 1 and "more memory" in j["error"], j


def test_restart_resumes_interrupted_jobs_and_rebuilds_stale_index(tmp_path, scans):
    s = make_settings(tmp_path)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        _ingest(c, ex, scans, ["a1", "a2", "b1"])
        c.app.state.runtime.run_pending_inline()
        _ingest(c, ex, scans, ["b2"])
        # simulate a crash in the middle of job 4: the DB says 'running'
        from sqlalchemy import update

        from api.db.models import Job
        with c.app.state.runtime.session_factory() as sess:
            sess.execute(update(Job).where(Job.id == 4).values(status="running", attempts=1))
            sess.commit()
    # the snapshot on disk has 3 vectors; remove it to force a rebuild from DB descriptors as well
    import shutil

    shutil.rmtree(s.index_dir)
    s2 = make_settings(tmp_path, run_worker=True, workers=1)
    with TestClient(create_app(s2)) as c:
        rt = c.app.state.runtime
        assert rt.startup_report["requeued_jobs"] == 1
        assert rt.startup_report["index"]["action"] == "rebuilt"
        assert rt.startup_report["index"]["index_count"] == 3
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            j = c.get("/v1/jobs/4", headers=ADMIN).json()
            if j["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert j["status"] == "done" and j["attempts"] == 2, j
        st = c.get("/v1/status", headers=ADMIN).json()
        assert st["index"]["consistent"] and st["index"]["index_count"] == 4
    # clean restart: the snapshot is current and simply loaded
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.app.state.runtime.startup_report["index"]["action"] == "loaded"
        assert c.app.state.runtime.startup_report["requeued_jobs"] == 0


def test_snapshot_behind_the_log_replays_and_one_ahead_of_it_is_rebuilt(tmp_path, scans):
    """The index is derived from the descriptor log: a snapshot taken before the last jobs is loaded and the
    newer rows replayed; a snapshot holding more than the database (another, or a restored, database) is
    rebuilt from the log."""
    import shutil

    s = make_settings(tmp_path, index_save_interval_s=3600)  # job-time snapshots effectively off
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        _ingest(c, ex, scans, ["a1"])
        c.app.state.runtime.run_pending_inline()
        c.app.state.runtime.spaces["breech_face"].save(force=True)
        shutil.copytree(s.index_dir, tmp_path / "index-with-a1")
        _ingest(c, ex, scans, ["b1"])
        c.app.state.runtime.run_pending_inline()
        c.app.state.runtime.spaces["breech_face"]._dirty = False  # pretend the process died before the next snapshot
    shutil.rmtree(s.index_dir)
    shutil.copytree(tmp_path / "index-with-a1", s.index_dir)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        rep = c.app.state.runtime.startup_report["index"]
        assert rep["action"] == "loaded" and rep["replayed"] == 1 and rep["consistent"] and rep["index_count"] == 2
    # (that start's snapshot holds both) the database loses b1's descriptor row (say, restored from an older backup): the snapshot is ahead
    from sqlalchemy import create_engine, text
    eng = create_engine(s.database_url)
    with eng.begin() as conn:
        conn.execute(text("DELETE FROM descriptor_rows WHERE exhibit_id = 2"))
        conn.execute(text("UPDATE exhibits SET descriptor = NULL WHERE id = 2"))
    eng.dispose()
    with TestClient(create_app(make_settings(tmp_path))) as c:
        rep = c.app.state.runtime.startup_report["index"]
        assert rep["action"] == "rebuilt" and "stale" in rep["reason"] and rep["index_count"] == 1 and rep["consistent"]


@pytest.mark.parametrize("bad", ["status=nope", "limit=0", "exhibit_id=-1"])
def test_job_list_validation(client, examiner, bad):
    assert client.get(f"/v1/jobs?{bad}", headers=examiner).status_code == 422


def test_sweeper_delivers_a_job_whose_enqueue_was_lost(tmp_path, scans, monkeypatch):
    from api.runtime import Runtime

    s = make_settings(tmp_path, run_worker=True, sweep_interval_s=0.5)
    lost = {"n": 0}
    real = Runtime.enqueue

    def flaky(self, job_id, *, delay=0.0):
        if lost["n"] == 0:
            lost["n"] += 1
            raise OSError("queue unavailable")
        return real(self, job_id, delay=delay)

    monkeypatch.setattr(Runtime, "enqueue", flaky)
    with TestClient(create_app(s)) as c:
        ex = new_key(c, "examiner")
        assert upload(c, ex, scans["a1"], name="a1.x3p").status_code == 201  # acknowledged despite the queue
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and c.get("/v1/jobs/1", headers=ex).json()["status"] != "done":
            time.sleep(0.2)
        assert c.get("/v1/jobs/1", headers=ex).json()["status"] == "done"


def _stored_pairs(c) -> dict:
    from sqlalchemy import select

    from api.db.models import Candidate

    with c.app.state.runtime.session_factory() as s:
        return {(r.pair_lo, r.pair_hi, r.region): (r.id, r.similarity, r.cmc_count, r.descriptor_version)
                for r in s.execute(select(Candidate)).scalars()}


def test_descriptor_upgrade_polar_to_learned_reindexes_and_keeps_every_comparison(tmp_path, scans):
    """A database built with the polar-FFT descriptor, opened by a service set to the learned one
    (BALLISTIC_DESCRIPTOR=learned): every exhibit is described again and re-indexed; stored comparisons and
    candidate lists are kept, not redone. Back to polar, then to the default (phase): the same again."""
    pytest.importorskip("torch", reason="torch is a runtime dependency of models/")
    with TestClient(create_app(make_settings(tmp_path, descriptor="polar"))) as c:
        ex = new_key(c, "examiner")
        _ingest(c, ex, scans, ["a1", "a2", "b1"])
        c.app.state.runtime.run_pending_inline()
        assert c.get("/v1/exhibits/1", headers=ex).json()["descriptor_version"].startswith("bf-polar-fft/2")
        before = _stored_pairs(c)
        lists = {i: [x["candidate"]["id"] for x in c.get(f"/v1/exhibits/{i}/candidates", headers=ex).json()["items"]]
                 for i in (1, 2, 3)}
    assert before and all(lists.values())
    with TestClient(create_app(make_settings(tmp_path, descriptor="learned"))) as c:
        rt = c.app.state.runtime
        learned = rt.spaces["breech_face"].descriptor_version
        assert learned.startswith("bf-learned/1?weights=") and rt.spaces["breech_face"].raw_dim == 128
        assert rt.startup_report["redescribe_jobs"] == 3
        assert rt.startup_report["index"]["index_count"] == 0  # old-version vectors are not served
        rt.run_pending_inline()
        st = c.get("/v1/status", headers=ADMIN).json()
        assert st["index"]["consistent"] and st["index"]["index_count"] == 3
        assert st["index"]["descriptor_version"] == learned
        for i in (1, 2, 3):
            assert c.get(f"/v1/exhibits/{i}", headers=ADMIN).json()["descriptor_version"] == learned
            items = c.get(f"/v1/exhibits/{i}/candidates", headers=ADMIN).json()["items"]
            assert [x["candidate"]["id"] for x in items] == lists[i]
        assert _stored_pairs(c) == before       # same rows (ids, scores, versions): kept, not redone or doubled
    with TestClient(create_app(make_settings(tmp_path, descriptor="learned"))) as c:   # the same again: nothing
        assert c.app.state.runtime.startup_report["redescribe_jobs"] == 0
    with TestClient(create_app(make_settings(tmp_path, descriptor="polar"))) as c:     # back to polar by name
        rt = c.app.state.runtime
        assert rt.startup_report["redescribe_jobs"] == 3
        assert rt.spaces["breech_face"].descriptor_version.startswith("bf-polar-fft/2")
        rt.run_pending_inline()
        assert _stored_pairs(c) == before
    with TestClient(create_app(make_settings(tmp_path, descriptor="polar"))) as c:     # polar again: nothing
        assert c.app.state.runtime.startup_report["redescribe_jobs"] == 0
    with TestClient(create_app(make_settings(tmp_path))) as c:     # the default descriptor (phase): again
        rt = c.app.state.runtime
        assert rt.startup_report["redescribe_jobs"] == 3
        assert rt.spaces["breech_face"].descriptor_version.startswith("bf-polar-phase/1?")
        rt.run_pending_inline()
        assert _stored_pairs(c) == before


def test_service_with_the_phase_descriptor_reindexes_and_ranks_a_turned_mate_first(tmp_path, scans):
    """The default descriptor (phase) on a database built with polar: every exhibit is described again (1280-d
    vectors searched by query expansion through the one search path), comparisons are kept, and a new upload's
    candidate list puts its turned mates first."""
    with TestClient(create_app(make_settings(tmp_path, descriptor="polar"))) as c:
        ex = new_key(c, "examiner")
        _ingest(c, ex, scans, ["a1", "b1", "c1"])
        c.app.state.runtime.run_pending_inline()
        before = _stored_pairs(c)
    with TestClient(create_app(make_settings(tmp_path))) as c:
        rt = c.app.state.runtime
        space = rt.spaces["breech_face"]
        assert space.descriptor_version.startswith("bf-polar-phase/1?") and space.raw_dim == 1280
        assert rt.startup_report["redescribe_jobs"] == 3
        rt.run_pending_inline()
        assert _stored_pairs(c) == before
        ex = new_key(c, "examiner")
        new = _ingest(c, ex, scans, ["a2"])["a2"]          # a1 turned by 40 degrees
        rt.run_pending_inline()
        assert c.get(f"/v1/exhibits/{new}", headers=ex).json()["descriptor_version"] == space.descriptor_version
        items = c.get(f"/v1/exhibits/{new}/candidates", headers=ex).json()["items"]
        assert items and items[0]["candidate"]["id"] == 1


def test_a_whitener_with_the_phase_descriptor_is_refused_at_start_up(tmp_path):
    """Query expansion rotates each harmonic separately; a PCA whitener would mix them: the service says so."""
    w = tmp_path / "w.npz"
    w.write_bytes(b"not read")
    with pytest.raises(ValueError, match="query expansion.*BALLISTIC_WHITENER_PATH"):
        with TestClient(create_app(make_settings(tmp_path, whitener_path=w))):
            pass
