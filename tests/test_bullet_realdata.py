"""Bullet lands on the real Hamby 252 (NanoFocus, striae along x) and Hamby 44 (Sensofar,
striae along y, float32) scans in ../shared/data/bullet (skipped when absent)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ballistic.bullet.crosscut import choose_crosscut
from ballistic.bullet.features import land_features
from ballistic.bullet.grooves import locate_grooves
from ballistic.bullet.orient import orient_striae, striation_direction
from ballistic.bullet.signature import extract_signature, land_signatures
from ballistic.cli import app
from ballistic.io.x3p import read_x3p

pytestmark = pytest.mark.realdata

H252 = "hamby252/Hamby252_Barrel{}_Bullet{}_Land{}.x3p"
H44 = "hamby44/HS44_Barrel1_Bullet{}_Land{}.x3p"


@pytest.fixture(scope="module")
def bullet_dir(shared_data):
    d = shared_data / "bullet"
    if not (d / "labels.csv").exists():
        pytest.skip(f"bullet scans not found in {d}")
    return d


_CACHE: dict = {}


def lands(bullet_dir, rel):
    """land_signatures of one scan, computed once per test session."""
    if rel not in _CACHE:
        _CACHE[rel] = land_signatures(read_x3p(bullet_dir / rel))
    return _CACHE[rel]


def test_direction_detected_on_both_instruments(bullet_dir):
    s252 = read_x3p(bullet_dir / H252.format(1, 1, 2))
    s44 = read_x3p(bullet_dir / H44.format(1, 1))
    assert s44.meta["dtype_in_file"] == "float32"
    assert striation_direction(s252) == "x"
    assert striation_direction(s44) == "y"
    assert striation_direction(orient_striae(s44)) == "x"


@pytest.mark.parametrize("rel", [H252.format(1, 1, 1), H252.format(2, 1, 1), H44.format(1, 6), H44.format(2, 4)])
def test_grooves_are_sane_and_signature_is_in_um(bullet_dir, rel):
    s = orient_striae(read_x3p(bullet_dir / rel))
    cc = choose_crosscut(s)
    assert 0 < cc.position_um < s.extent_um[1]
    g = locate_grooves(cc)
    width = cc.profile.shape[0] * cc.spacing_um            # ~2.4 mm across the scan
    assert 0 < g.left_um < 0.2 * width and 0.8 * width < g.right_um < width
    assert g.right_um - g.left_um > 0.7 * width            # the land keeps most of the width
    sig = extract_signature(cc, g)
    assert sig.spacing_um == pytest.approx(1.5625)
    assert sig.length_um == pytest.approx(g.right_um - g.left_um, abs=0.1 * width)
    assert sig.values.shape[0] == pytest.approx(sig.length_um / sig.spacing_um)
    assert sig.valid_fraction > 0.9
    assert 0.1 < np.nanstd(sig.values) < 5.0               # striae are tenths of um to a few um
    assert abs(np.nanmean(sig.values)) < 0.5


@pytest.mark.parametrize("same, different", [
    # Hamby 252: B1-L3 ~ B2-L5 (same land of barrel 1); B2-L4 and the barrel-2 land are not its mates
    ((H252.format(1, 1, 3), H252.format(1, 2, 5)), (H252.format(1, 1, 3), H252.format(2, 1, 1))),
    # Hamby 44: B1-L6 ~ B2-L4, its hardest pair (mates only ~300 um from one end of B1-L6)
    ((H44.format(1, 6), H44.format(2, 4)), (H44.format(1, 6), H44.format(2, 5))),
])
def test_known_same_source_land_pair_outscores_different_source(bullet_dir, same, different):
    fs = land_features(lands(bullet_dir, same[0]), lands(bullet_dir, same[1]))
    fd = land_features(lands(bullet_dir, different[0]), lands(bullet_dir, different[1]))
    assert fs.score > 0.8 > 0.7 > fd.score
    assert abs(fs.lag_um) < 100
    assert fs.cms > fd.cms and fs.matches_per_mm > fd.matches_per_mm


def test_bench_cli_on_a_subset_writes_json_csv_and_plots(bullet_dir, tmp_path):
    keep = {"Hamby252_Barrel1_Bullet1_Land3", "Hamby252_Barrel1_Bullet2_Land5", "Hamby252_Barrel1_Bullet2_Land4",
            "Hamby252_Barrel2_Bullet1_Land1", "HS44_Barrel1_Bullet1_Land1", "HS44_Barrel1_Bullet2_Land5",
            "HS44_Barrel1_Bullet2_Land6"}
    with open(bullet_dir / "labels.csv", newline="", encoding="utf-8") as fh:
        rd = csv.DictReader(fh)
        rows = [r for r in rd if r["path"].split("/")[-1][:-4] in keep]
        fields = rd.fieldnames
    for r in rows:  # a hostile barrel name must reach the CSVs as text, not as a formula (issue 12)
        if r["barrel"] == "Br2":
            r["barrel"] = "=SUM(1+1)"
    labels = tmp_path / "labels.csv"                     # a subset of the labels; the scans stay where they are
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "bullet.json"
    res = CliRunner().invoke(app, ["bench", "bullet", str(bullet_dir), "--labels", str(labels), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "hamby252" in res.output and "SAM" in res.output
    s = json.loads(out.read_text())
    for key in ("sets", "bullets", "bullet_summary", "descriptor", "pairs_csv", "bullets_csv", "plots",
                "extract_seconds", "compare_seconds", "land_score_model", "lands", "lands_with_signature",
                "lands_low_confidence", "failed_lands"):
        assert key in s, key
    assert s["lands_with_signature"] == 7 and s["failed_lands"] == {} and s["lands_low_confidence"] == []
    assert {r["striae_direction"] for r in s["lands"].values()} == {"x", "y"}
    for b in s["bullets"]:
        for key in ("phase_contrast", "phase_sigma", "phase_p_value", "identified_phase_test"):
            assert key in b, key
    for st, n_pairs in (("hamby252", 6), ("hamby44", 3)):
        d = s["sets"][st]
        for key in ("pairs", "same_source_pairs", "auc", "same_source_min", "different_source_max", "margin",
                    "separated", "failing_pairs", "feature_auc"):
            assert key in d, (st, key)
        assert d["pairs"] == n_pairs and d["same_source_pairs"] == 1
        assert d["separated"] and d["failing_pairs"] == [] and d["auc"] == 1.0
    bs = s["bullet_summary"]
    assert bs["separated"] and bs["errors"] == 0
    same = [b for b in s["bullets"] if b["same_barrel"]]
    assert {b["set"] for b in same} == {"hamby252", "hamby44"}
    assert all(b["sam"] >= bs["threshold"] for b in same)
    assert all(b["sam"] < bs["threshold"] for b in s["bullets"] if not b["same_barrel"])
    with open(s["pairs_csv"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 9
    from test_csv import assert_no_formula  # tests/ is on sys.path (its conftest.py)

    for f in (s["pairs_csv"], s["bullets_csv"]):
        text = open(f, newline="").read()
        assert_no_formula(text)
        assert "'=SUM(1+1)" in text
    for f in s["plots"]:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
