"""The service's handling of library errors (api/errors.py): HTTP status by kind, job retry by kind."""
from __future__ import annotations

import pytest
from api_helpers import ADMIN, run_jobs, upload
from fastapi import FastAPI
from fastapi.testclient import TestClient

import ballistic.errors as E
from api.errors import http_status, install_error_handlers, job_retryable

# every typed library error: (instance, HTTP status, job retried)
CASES = [
    (E.X3PError("bad x3p"), 422, False),
    (E.X3PFormatError("not a zip"), 422, False),
    (E.X3PChecksumError("md5 mismatch"), 422, False),
    (E.X3PLimitError("too many points"), 413, False),
    (E.ImageFormatError("cannot decode"), 422, False),
    (E.ImageLimitError("too many pixels"), 413, False),
    (E.SearchRecordError("hash mismatch"), 422, False),
    (E.PreprocessError("no breech face"), 422, False),
    (E.FiringPinError("no crater"), 422, False),
    (E.BulletError("no grooves"), 422, False),
    (E.DescriptorError("too few points"), 422, False),
    (E.IndexStateError("snapshot corrupt"), 503, True),
    (E.ScaleOutError("row order"), 503, True),
    (E.ShardUnavailableError("s0", "actor died"), 503, True),
    (E.RerankError("batch lost"), 503, True),
    (E.ScaleOutConfigError("no token"), 500, False),
]


def test_every_library_error_is_listed_here():
    listed = {type(e) for e, _, _ in CASES}
    kinds = {E.BallisticError, E.InputError, E.LimitError, E.ProcessingError, E.StateError}
    typed = {getattr(E, n) for n in E.__all__} - kinds
    assert typed == listed


@pytest.mark.parametrize("exc,status,retry", CASES, ids=lambda v: type(v).__name__ if isinstance(v, Exception)
                         else str(v))
def test_http_status_and_retry_by_kind(exc, status, retry):
    assert http_status(exc) == status
    assert job_retryable(exc) is retry


def test_retry_rule_outside_the_library():
    assert job_retryable(OSError("disk hiccup")) and job_retryable(RuntimeError("database is locked"))
    assert job_retryable(ConnectionError("lost"))
    for e in (FileNotFoundError("evidence gone"), TypeError("bug"), ValueError("bad value"), MemoryError()):
        assert not job_retryable(e)


def test_handlers_answer_with_the_status_and_the_reason():
    app = FastAPI()
    install_error_handlers(app)
    raising = {"limit": E.ImageLimitError("image of 9000 x 9000 pixels over max_pixels=1000000; send a "
                                          "smaller crop"),
               "input": E.X3PFormatError("main.xml missing"),
               "processing": E.PreprocessError("find_breech_face: no planar breech-face region found"),
               "state": E.ShardUnavailableError("s1", "no answer after 3 attempts"),
               "config": E.ScaleOutConfigError("backend='ray' needs Ray")}

    @app.get("/raise/{kind}")
    def _raise(kind: str):
        raise raising[kind]

    with TestClient(app) as c:
        for kind, code in (("limit", 413), ("input", 422), ("processing", 422), ("state", 503), ("config", 500)):
            r = c.get(f"/raise/{kind}")
            assert r.status_code == code, kind
            exc = raising[kind]
            assert r.json() == {"detail": f"{type(exc).__name__}: {exc}"}
        assert c.get("/raise/state").headers["retry-after"] == "30"
        assert "retry-after" not in c.get("/raise/input").headers


@pytest.mark.parametrize("exc,retried", [(E.ShardUnavailableError("s0", "node lost"), True),
                                         (E.IndexStateError("snapshot corrupt"), True),
                                         (E.PreprocessError("no breech face found"), False),
                                         (E.DescriptorError("too few valid points"), False)])
def test_job_retries_infrastructure_errors_and_fails_data_errors_at_once(client, examiner, scans, monkeypatch,
                                                                         exc, retried):
    from api.retrieval import Retrieval

    calls = {"n": 0}
    real = Retrieval.compute_descriptor

    def once(surface):
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(surface)

    monkeypatch.setattr(Retrieval, "compute_descriptor", staticmethod(once))
    assert upload(client, examiner, scans["a1"], name="a1.x3p").status_code == 201
    run_jobs(client)
    j = client.get("/v1/jobs/1", headers=examiner).json()
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    if retried:
        assert j["status"] == "done" and j["attempts"] == 2 and "job.retry" in actions
    else:
        assert j["status"] == "failed" and j["attempts"] == 1 and "job.retry" not in actions
        # the job's error speaks to the uploader (api/user_errors.py); the library's text is in the audit row
        from api.user_errors import job_error

        assert j["error"] == job_error(exc)
        failed = next(e for e in client.get("/v1/audit", headers=ADMIN).json()["items"] if e["action"] == "job.failed")
        assert f"{type(exc).__name__}: {exc}" in failed["detail"]
