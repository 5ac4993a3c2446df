"""Prepared comparison views stored beside each preprocessed scan (``api.jobs.fetch.StoredSurfaces``): the exhibit's
job writes them, a search loads them instead of reading and preparing every candidate again, and views that are
missing (an exhibit stored before they existed), stale or damaged are made again - never served."""
from __future__ import annotations

import os

import numpy as np
import pytest
from api_helpers import make_settings, new_key, run_jobs, upload


@pytest.fixture
def stored(tmp_path, scans):
    """A service with three processed exhibits: (fetch, {exhibit id: derived scan path})."""
    from fastapi.testclient import TestClient

    from api.db.models import Exhibit
    from api.jobs.fetch import StoredSurfaces
    from api.main import create_app

    with TestClient(create_app(make_settings(tmp_path))) as c:
        ex = new_key(c, "examiner")
        for n in ("a1", "a2", "b1"):
            assert upload(c, ex, scans[n], name=f"{n}.x3p").status_code == 201
        assert run_jobs(c) == 3
        rt = c.app.state.runtime
        with rt.read_factory() as s:
            paths = {e.id: rt.store.resolve(e.derived_path) for e in s.query(Exhibit).all()}
        yield StoredSurfaces(rt.settings.database_url, str(rt.store.root), rt.settings.max_pixels), paths


def _fresh(fetch, i):
    """fetch(i) as a new worker process sees it (nothing read yet)."""
    from api.jobs import fetch as F

    F._CACHES.clear()
    return fetch(i)


def _same(a, b):
    return all(np.array_equal(getattr(a, v), getattr(b, v), equal_nan=True) for v in ("fine", "coarse", "prior"))


def test_the_job_stores_views_that_searches_load_without_preparing_again(stored, monkeypatch):
    from ballistic.cartridge.cmc import params as P
    from ballistic.cartridge.cmc.params import CMCParams, prepare
    from ballistic.io.x3p import read_x3p

    from api.jobs.fetch import prepared_views_path

    fetch, paths = stored
    assert len(paths) == 3 and all(prepared_views_path(p).is_file() for p in paths.values())
    expected = {i: prepare(read_x3p(p), CMCParams()) for i, p in paths.items()}

    def refuse(*a, **k):
        raise AssertionError("prepared again although its views are stored")

    monkeypatch.setattr(P, "prepare", refuse)
    for i in paths:
        got = _fresh(fetch, i)
        assert _same(got, expected[i]) and got.name    # exactly what prepare makes, named by case/exhibit


def test_missing_stale_or_damaged_views_are_made_again_and_stored(stored, monkeypatch):
    from ballistic.cartridge.cmc import params as P
    from ballistic.cartridge.cmc.params import CMCParams, load_prepared, prepare
    from ballistic.io.x3p import read_x3p

    from api.jobs.fetch import prepared_views_path

    fetch, paths = stored
    calls = []
    real = P.prepare
    monkeypatch.setattr(P, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    (i, path), (j, path_j), (k, path_k) = paths.items()
    want = {n: prepare(read_x3p(p), CMCParams()) for n, p in paths.items()}
    prepared_views_path(path).unlink()                         # an exhibit stored before views existed
    st = os.stat(path_j)
    os.utime(path_j, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # its scan rewritten after the views
    prepared_views_path(path_k).write_bytes(b"PK\x03\x04 damaged")  # a torn or foreign file
    for n, p in ((i, path), (j, path_j), (k, path_k)):
        assert _same(_fresh(fetch, n), want[n])
        load_prepared(prepared_views_path(p), CMCParams(), source=p)    # stored again, current
    assert len(calls) == 3
    for n in (i, j, k):                                        # and from now on loaded
        _fresh(fetch, n)
    assert len(calls) == 3


def test_a_store_that_cannot_be_written_is_only_read(stored, monkeypatch):
    from ballistic.cartridge.cmc import params as P

    from api.jobs.fetch import prepared_views_path

    fetch, paths = stored
    i, path = next(iter(paths.items()))
    prepared_views_path(path).unlink()

    def read_only(*a, **k):
        raise PermissionError("read-only evidence store")

    monkeypatch.setattr(P, "save_prepared", read_only)
    assert _fresh(fetch, i) is not None and not prepared_views_path(path).exists()
