"""Bullet lands on the real Houston FSC persistence scans (Sensofar 1.935 um, Ruger LCP, worn barrel,
weak striae) in ../shared/data/bullet/houston (skipped when absent).

Ground truth there is at bullet level only (barrel and bullet; which land of one bullet matches which
land of another is not known), plus manually chosen grooves for the six lands of barrel A bullet 50
(grooves.csv), used here to check the grooves found - never as their input."""
from __future__ import annotations

import numpy as np
import pytest

from ballistic.bench.bullet import _groove_agreement, read_bullet_labels, read_manual_grooves
from ballistic.bullet.signature import land_signatures
from ballistic.io.x3p import read_x3p

pytestmark = pytest.mark.realdata

#: Tolerance of the groove check against grooves.csv. The manual grooves sit on average inside ours
#: (the examiner left out part of the worn roll-off next to each groove; we stop at the foot of the
#: groove's shoulder): every groove within 300 um (16 % of the 1.89 mm scan width) and the median error
#: within 125 um. A groove finder that stops at damage in the middle of the land (error 400-700 um) fails.
GROOVE_MAX_ERROR_UM = 300.0
GROOVE_MEDIAN_ERROR_UM = 125.0


@pytest.fixture(scope="module")
def houston(shared_data):
    d = shared_data / "bullet" / "houston"
    if not (d / "labels.csv").exists():
        pytest.skip(f"Houston bullet scans not found in {d}")
    return d


@pytest.fixture(scope="module")
def lands(houston):
    """``{file stem: (surface shape, spacing, land_signatures)}`` for all 30 lands, computed once."""
    out = {}
    for p in sorted(houston.glob("*.x3p")):
        s = read_x3p(p)
        out[p.stem] = (s.shape, s.spacing_um, land_signatures(s))
    return out


def test_every_land_gets_a_signature(houston, lands):
    scans = read_bullet_labels(houston.parent, houston / "labels.csv")
    assert len(scans) == 30 and {sc["path"].stem for sc in scans} == set(lands)
    for name, (_, sp, sigs) in lands.items():
        assert sigs, name
        assert all(sg.spacing_um == pytest.approx(1.935) for sg in sigs)
        # striae run along y in every Houston file (x3p convention); found from the data, not assumed
        assert sigs[0].meta["striae_direction"] == "y" and sigs[0].meta["direction_source"] == "data", name
        assert all(0.0 <= sg.quality <= 1.0 for sg in sigs), name
        # a land signature spans most of the ~1.9 mm land and carries heights of tenths of um to a few um
        assert max(sg.length_um for sg in sigs) > 1000.0, name
        assert 0.1 < np.nanstd(sigs[len(sigs) // 2].values) < 5.0, name


def test_grooves_agree_with_the_manual_ones(houston, lands):
    manual = read_manual_grooves(houston / "grooves.csv")
    assert len(manual) == 6
    errors = []
    for stem, m in manual.items():
        shape, sp, sigs = lands[stem]
        a = _groove_agreement(sigs, shape, sp, m)
        errors += a["error_um"]
        assert abs(a["manual_crosscut_um"] - a["crosscut_um"]) <= 50.0          # the same height of the land
    e = np.abs(errors)
    assert e.max() <= GROOVE_MAX_ERROR_UM, errors
    assert np.median(e) <= GROOVE_MEDIAN_ERROR_UM, errors


def test_grooves_are_located_on_every_land(lands):
    """No Houston land needs the middle-of-the-profile fallback: every land's grooves are found on its
    crosscuts, and its groove lines are close to parallel to the scan's y axis, as its striae are."""
    for name, (_, sp, sigs) in lands.items():
        assert all(sg.meta["grooves_source"] in ("crosscut", "land-line") for sg in sigs), name
        assert sum(sg.meta["grooves_source"] == "crosscut" for sg in sigs) >= len(sigs) // 2, name
        lg = sigs[0].meta["land_grooves"]
        assert abs(lg["tilt"]) < 0.1 and abs(sigs[0].meta["striae_tilt"]) < 0.1, name
        assert 900.0 < lg["right_um"] - lg["left_um"] < 1850.0, name
