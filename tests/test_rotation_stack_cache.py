"""The rotation search keeps the moving side's rotated-stack spectra between calls (register._stack_spectra).

What it must guarantee: a kept result is the same arrays the search would have computed, it is found only
for the same heights, angles, transform shape and FFT backend, it cannot be modified through a caller, its
memory stays within the budget, and an all-pairs run (grouped by target for it) returns its pairs in the
order asked.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from ballistic.bench.cartridge import compare_all_pairs
from ballistic.cartridge.cmc import register as R
from ballistic.cartridge.cmc.params import CMCParams, prepare
from ballistic.surface import Surface

PARAMS = CMCParams(spacing_um=12.5, coarse_spacing_um=25.0, prior_spacing_um=50.0)


def _annulus(seed: int, n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = ndi.gaussian_filter(rng.normal(size=(n, n)), 1.5)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    z[(r > n / 2 - 3) | (r < 6)] = np.nan
    return z


@pytest.fixture
def fresh_cache(monkeypatch):
    """An empty cache with the shipped budget, whatever earlier tests left in it."""
    monkeypatch.setattr(R, "_stack_cache", type(R._stack_cache)())
    return R._stack_cache


@pytest.fixture
def stack_calls(monkeypatch):
    calls = []
    real = R._rotated_stack

    def spy(h, angles):
        calls.append(len(angles))
        return real(h, angles)
    monkeypatch.setattr(R, "_rotated_stack", spy)
    return calls


ANGLES = np.arange(0.0, 360.0, 7.5)


def _search(fixed, moving, **kw):
    return R.search_rotation(fixed, moving, ANGLES, min_overlap=50, max_shift_px=12, **kw)


@pytest.mark.parametrize("mirror,centred", [(False, True), (True, False)])
def test_a_kept_stack_gives_exactly_the_search_without_one(monkeypatch, fresh_cache, mirror, centred):
    moving = _annulus(1)
    fixed_a, fixed_b = _annulus(2), _annulus(3, n=40)         # two partners, two transform shapes
    got = [_search(f, moving, mirror=mirror, centred=centred) for f in (fixed_a, fixed_b, fixed_a, fixed_b)]
    assert len(fresh_cache) == 2                                 # one entry per transform shape
    monkeypatch.setattr(R, "_STACK_CACHE_BYTES", 0)              # nothing kept: the search as it was
    want = [_search(f, moving, mirror=mirror, centred=centred) for f in (fixed_a, fixed_b)]
    assert got[0] == got[2] == want[0] and got[1] == got[3] == want[1]


def test_a_chunked_search_reads_the_kept_spectra_in_its_own_chunks(monkeypatch, fresh_cache):
    moving, fixed = _annulus(1), _annulus(2)
    whole = _search(fixed, moving)
    monkeypatch.setattr(R, "_SEARCH_CHUNK_BYTES", 1)             # one angle a chunk on the next call
    assert _search(fixed, moving) == whole
    assert len(fresh_cache) == 1


def test_the_stack_is_rotated_once_for_many_partners(fresh_cache, stack_calls):
    moving = _annulus(1)
    for seed in (2, 4, 5, 6):
        _search(_annulus(seed), moving)
    assert sum(stack_calls) == len(ANGLES)                      # each angle rotated once, in the chunks of the first


def test_other_heights_angles_or_backend_are_not_served_the_kept_stack(monkeypatch, fresh_cache, stack_calls):
    moving, fixed = _annulus(1), _annulus(2)
    _search(fixed, moving)
    changed = moving.copy()
    changed[10, 32] += 1e-9                                      # one measured height, by a hair
    _search(fixed, changed)
    R.search_rotation(fixed, moving, ANGLES[:-1], min_overlap=50, max_shift_px=12)
    monkeypatch.setenv("BALLISTIC_FFT", "scipy")
    _search(fixed, moving)
    assert sum(stack_calls) == 4 * len(ANGLES) - 1 and len(fresh_cache) == 4     # four misses, rotated in full


def test_kept_spectra_cannot_be_modified(fresh_cache):
    _search(_annulus(2), _annulus(1))
    (spectra,) = fresh_cache.values()
    assert len(spectra) == 3
    for a in spectra:
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0, 0] = 0


def test_the_cache_stays_within_its_budget(monkeypatch, fresh_cache):
    _search(_annulus(2), _annulus(1))
    one = sum(a.nbytes for v in fresh_cache.values() for a in v)
    monkeypatch.setattr(R, "_STACK_CACHE_BYTES", int(2.5 * one))
    for seed in (10, 11, 12, 13):
        _search(_annulus(2), _annulus(seed))
    assert len(fresh_cache) == 2
    assert sum(a.nbytes for v in fresh_cache.values() for a in v) <= R._STACK_CACHE_BYTES
    # the least recently used went first: the last two movings are the ones kept
    monkeypatch.setattr(R, "_rotated_stack", lambda *a: pytest.fail("a kept stack was rotated again"))
    _search(_annulus(2), _annulus(13))
    _search(_annulus(2), _annulus(12))


def test_spectra_larger_than_half_the_budget_are_not_kept(monkeypatch, fresh_cache, stack_calls):
    moving, fixed = _annulus(1), _annulus(2)
    want = _search(fixed, moving)
    one = sum(a.nbytes for v in fresh_cache.values() for a in v)
    fresh_cache.clear()
    stack_calls.clear()
    monkeypatch.setattr(R, "_STACK_CACHE_BYTES", 2 * one - 1)
    monkeypatch.setattr(R, "_SEARCH_CHUNK_BYTES", 1)
    assert _search(fixed, moving) == want
    assert not fresh_cache
    assert stack_calls == [1] * len(ANGLES)                     # made one chunk at a time, as before


def test_all_pairs_come_back_in_the_order_asked():
    prepared = [prepare(Surface(_annulus(s, n=80), 12.5), PARAMS, name=f"s{s}") for s in range(4)]
    pairs = [(2, 3), (0, 1), (1, 3), (0, 3), (2, 1), (0, 2)]
    rows, _ = compare_all_pairs(prepared, pairs, PARAMS, workers=1, model=None)
    assert [(r["reference"], r["target"]) for r in rows] == [(f"s{i}", f"s{j}") for i, j in pairs]


def _search_in_child(q):
    q.put(len(_search(_annulus(2), _annulus(7))))


def test_a_child_forked_while_the_cache_is_locked_still_searches():
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with R._stack_cache_lock:                    # as if another thread were using the cache at the fork
        child = ctx.Process(target=_search_in_child, args=(q,))
        child.start()
    try:
        assert q.get(timeout=60) == len(ANGLES)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
