"""Tests of :mod:`ballistic.cartridge.synth`: determinism, Fadul-like statistics, same/different source under CMC."""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.cartridge.synth import SPACINGS_UM, SyntheticCatalogue, fire, synthetic_firearm
from ballistic.preprocess.filters import resample
from ballistic.retrieval.descriptor import breech_face_descriptor


def test_deterministic_and_seeded():
    a, b = fire(synthetic_firearm(3), 7), fire(synthetic_firearm(3), 7)
    np.testing.assert_array_equal(a.heights, b.heights)
    c = fire(synthetic_firearm(3), 8)
    assert c.meta["rotation_deg"] != a.meta["rotation_deg"] or not np.array_equal(c.heights, a.heights, equal_nan=True)
    assert synthetic_firearm(3) == synthetic_firearm(3) and synthetic_firearm(3) != synthetic_firearm(4)
    assert synthetic_firearm(3).model == synthetic_firearm(23).model == 3


def test_looks_like_processed_fadul():
    s = fire(synthetic_firearm(5), 1)
    # real processed breech faces are 500-590 px at 6.25-7.4 um (Fadul, DFSC): outer radius 1.55-1.85 mm
    assert s.spacing_um == 6.25 and 480 <= s.shape[0] <= 640 and s.shape[0] == s.shape[1]
    assert 0.2 <= s.valid_fraction <= 0.45                      # ~70 % NaN, like Fadul
    assert 0.9 <= float(np.nanstd(s.heights)) <= 2.2             # um
    assert s.meta["synthetic_firearm"] == 5 and s.meta["synthetic_firing"] == 1


def test_coarse_fast_path_is_the_same_firing():
    fa = synthetic_firearm(11)
    fine, coarse = fire(fa, 2), fire(fa, 2, spacing_um=25.0)
    assert coarse.spacing_um == 25.0 and coarse.shape[0] < fine.shape[0] // 3
    a = resample(fine, spacing_um=25.0).heights
    n = min(a.shape[0], coarse.shape[0])
    a, b = a[:n, :n], coarse.heights[:n, :n]
    ok = np.isfinite(a) & np.isfinite(b)
    assert np.corrcoef(a[ok], b[ok])[0, 1] > 0.8
    assert float(breech_face_descriptor(fine) @ breech_face_descriptor(coarse)) > 0.95
    with pytest.raises(ValueError, match="generated at"):
        fire(fa, 2, spacing_um=10.0)
    assert SPACINGS_UM[-1] == 6.25


@pytest.mark.parametrize("seed", [5, 12])
def test_same_firearm_identified_different_not(seed):
    fa = synthetic_firearm(seed)
    s1, s2 = fire(fa, 1, spacing_um=12.5), fire(fa, 2, spacing_um=12.5)
    assert compare_pair(s1, s2).cmc_count >= 6
    same_model = fire(synthetic_firearm(seed + 20), 1, spacing_um=12.5)   # shares class marks
    other = fire(synthetic_firearm(seed + 1), 1, spacing_um=12.5)
    assert compare_pair(s1, same_model).cmc_count < 6
    assert compare_pair(s1, other).cmc_count < 6


def test_catalogue_ids():
    cat = SyntheticCatalogue(id_offset=1000, firings_per_firearm=2, spacing_um=25.0)
    assert cat.source(1000) == (0, 0) and cat.source(1003) == (1, 3)
    s = cat(1003)
    assert s.spacing_um == 25.0 and s.meta["synthetic_firearm"] == 1
    assert cat(1003, spacing_um=50.0).spacing_um == 50.0 and cat(1003, spacing_um=30.0).spacing_um == 25.0
    with pytest.raises(KeyError, match="id_offset"):
        cat(5)


def test_catalogue_preprocess_is_applied_and_named_in_its_key():
    """Distractors are stored as a service stores exhibits: normalised like a submitted scan, and the
    normalisation is part of the catalogue's repr (the benchmark's cache keys), so raw and normalised
    distractors never share cached descriptors."""
    import pickle

    from ballistic.bench.retrieval import distractor_catalogue, submitted_as_processed

    plain = SyntheticCatalogue(id_offset=1000, spacing_um=25.0)
    pp = SyntheticCatalogue(id_offset=1000, spacing_um=25.0, preprocess=submitted_as_processed)
    a, b = plain(1003), pp(1003)
    assert "preprocess" not in a.meta and b.meta["preprocess"].startswith("processed:")
    assert b.spacing_um == 25.0 and b.meta["provenance"]["kind"] == "processed"
    assert "submitted_as_processed" in repr(pp) and repr(pp) != repr(plain)
    assert np.isfinite(b.heights).sum() > 0.8 * np.isfinite(a.heights).sum()
    assert pickle.loads(pickle.dumps(pp))(1003).meta["preprocess"] == b.meta["preprocess"]
    assert "submitted_as_processed" in repr(distractor_catalogue())
    with pytest.raises(TypeError, match="callable"):
        SyntheticCatalogue(preprocess="preprocess_cartridge")


def test_normalisation_key_follows_the_code_and_the_parameters(monkeypatch):
    """Caches of normalised scans are keyed on the normalisation's code: a source edit that keeps the
    version string (it happened: models/ kept scans normalised by the old code) changes the key."""
    import ballistic.io.digest as D
    from ballistic.cartridge.normalise import NormalisationParams, normalisation_key

    k = normalisation_key()
    assert k == normalisation_key() and k != normalisation_key(NormalisationParams(form_cutoff_um=1500.0))
    real = D.source_digest
    monkeypatch.setattr(D, "source_digest", lambda *p: real(*p) + "edited")
    assert normalisation_key() != k
    with pytest.raises(ValueError, match="matches no file"):
        real("no_such_module.py")
