"""The service's handling of library errors (api/errors.py): HTTP status, job retry and the words for users, by
kind and structured attributes, never by message text."""
from __future__ import annotations

import pytest
from api_helpers import ADMIN, run_jobs, upload
from fastapi import FastAPI
from fastapi.testclient import TestClient

import ballistic.errors as E
from api.errors import http_status, install_error_handlers, job_retryable, user_message

# every typed library error: (instance, HTTP status, job retried)
CASES = [
    (E.X3PError("bad x3p"), 422, False),
    (E.X3PFormatError("not a zip"), 422, False),
    (E.X3PChecksumError("md5 mismatch"), 422, False),
    (E.X3PLimitError("too many points"), 413, False),
    (E.ImageFormatError("cannot decode"), 422, False),
    (E.ImageLimitError("too many pixels"), 413, False),
    (E.SearchRecordError("hash mismatch"), 422, False),
    (E.PairModelError("not a pair model"), 422, False),
    (E.PreprocessError("no breech face"), 422, False),
    (E.FiringPinError("no crater"), 422, False),
    (E.BulletError("no grooves"), 422, False),
    (E.UnusableLandError("no measured points"), 422, False),
    (E.DescriptorError("too few points"), 422, False),
    (E.IndexStateError("snapshot corrupt"), 503, True),
    (E.PreparedViewsError("stored views damaged"), 503, True),
    (E.ScaleOutError("row order"), 503, True),
    (E.ShardUnavailableError("s0", "actor died"), 503, True),
    (E.RerankError("batch lost"), 503, True),
    (E.ScaleOutConfigError("no token"), 500, False),
    (E.SearchCancelled("service stopping"), 503, True),
]


def test_every_library_error_is_listed_here():
    listed = {type(e) for e, _, _ in CASES}
    kinds = {E.BallisticError, E.InputError, E.LimitError, E.ProcessingError, E.StateError}
    typed = {getattr(E, n) for n in E.__all__ if isinstance(getattr(E, n), type)} - kinds
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
                                          "smaller crop", limit="max_pixels", value=81e6, maximum=1e6,
                                          shape=(9000, 9000)),
               "input": E.X3PFormatError("main.xml missing"),
               "processing": E.PreprocessError("find_breech_face: no planar breech-face region found",
                                               reason="breech_face_not_planar"),
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
            assert r.json() == {"detail": user_message(exc)}  # words for users, not "XError: ..."
            assert "Error" not in r.json()["detail"]
        assert c.get("/raise/state").headers["retry-after"] == "30"
        assert c.get("/raise/processing").json()["detail"].startswith("breech face not found: no flat primer")
        assert c.get("/raise/limit").json()["detail"] == ("file too large for this service: the image is 9000 x 9000 "
                                                          "pixels")
        assert "retry-after" not in c.get("/raise/input").headers


@pytest.mark.parametrize("exc,retried", [(E.ShardUnavailableError("s0", "node lost"), True),
                                         (E.IndexStateError("snapshot corrupt"), True),
                                         (E.PreprocessError("no breech face found"), False),
                                         (E.DescriptorError("too few valid points"), False)])
def test_job_retries_infrastructure_errors_and_fails_data_errors_at_once(client, examiner, scans, monkeypatch,
                                                                         exc, retried):
    from api.index import DescriptorSpace

    calls = {"n": 0}
    real = DescriptorSpace.describe

    def once(self, surface):
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(self, surface)

    monkeypatch.setattr(DescriptorSpace, "describe", once)
    assert upload(client, examiner, scans["a1"], name="a1.x3p").status_code == 201
    run_jobs(client)
    j = client.get("/v1/jobs/1", headers=examiner).json()
    actions = [e["action"] for e in client.get("/v1/audit", headers=ADMIN).json()["items"]]
    if retried:
        assert j["status"] == "done" and j["attempts"] == 2 and "job.retry" in actions
    else:
        assert j["status"] == "failed" and j["attempts"] == 1 and "job.retry" not in actions
        # the job's error speaks to the uploader (api.errors.job_error); the library's text is in the audit row
        from api.errors import job_error

        assert j["error"] == job_error(exc)
        failed = next(e for e in client.get("/v1/audit", headers=ADMIN).json()["items"] if e["action"] == "job.failed")
        assert f"{type(exc).__name__}: {exc}" in failed["detail"]


def test_every_reason_code_has_words_for_users_and_unknown_codes_are_refused():
    from api.errors import REASON_TEXT

    assert set(REASON_TEXT) == set(E.REASONS)
    with pytest.raises(KeyError, match="REASONS"):
        E.PreprocessError("x", reason="not_a_code")


def test_words_come_from_type_and_attributes_not_from_the_message():
    """The same message under two reasons gives two texts; a reworded library message changes nothing."""
    from api.errors import REASON_TEXT, job_error

    for code in E.REASONS:
        assert job_error(E.PreprocessError("reworded text", reason=code)) == REASON_TEXT[code]
    assert job_error(E.DescriptorError("anything")).startswith("scan area not recognised")
    assert job_error(E.FiringPinError("anything")).startswith("the firing-pin impression could not be found")
    assert job_error(E.X3PLimitError("anything", limit="max_points")).startswith("file too large")
    assert job_error(MemoryError()).startswith("the scan needs more memory")


def test_limit_errors_carry_the_limit_and_survive_pickling(tmp_path):
    import pickle

    from api.errors import upload_error
    from api_helpers import make_settings

    e = E.X3PLimitError("declares a grid of 210x150x1 = 3.15e+04 points, which exceeds max_points=3e+04; pass "
                        "max_points=31500", limit="max_points", value=31500, maximum=30000, shape=(150, 210))
    back = pickle.loads(pickle.dumps(e))
    assert (back.limit, back.value, back.maximum, back.shape, str(back)) == ("max_points", 31500, 30000, (150, 210),
                                                                           str(e))
    assert pickle.loads(pickle.dumps(E.PreprocessError("x", reason="breech_face_too_small"))).reason == \
        "breech_face_too_small"
    err = upload_error(make_settings(tmp_path, max_pixels=30_000), E.X3PLimitError("no numbers here", limit="max_points",
                                                                             value=31500, shape=(150, 210)))
    assert err.status == 413 and err.reason.startswith("file too large for this service: the scan is a 210 x 150 "
                                                       "grid (31,500 points)")
