"""The benchmark and the command line on a few real Fadul scans (skipped without the data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ballistic.bench.cartridge import summarise
from ballistic.cli import app

runner = CliRunner()


def test_summarise_counts_errors_at_the_decision_threshold():
    rows = [{"same_source": True, "cmc_count": 20, "similarity": 20.8, "reference": "a", "target": "b"},
            {"same_source": True, "cmc_count": 5, "similarity": 5.7, "reference": "c", "target": "d"},
            {"same_source": False, "cmc_count": 6, "similarity": 6.6, "reference": "a", "target": "c"},
            {"same_source": False, "cmc_count": 0, "similarity": 0.0, "reference": "b", "target": "d"}]
    s = summarise(rows, reference_counts={frozenset(("a", "b")): 27, frozenset(("c", "d")): 10,
                                          frozenset(("a", "c")): 1, frozenset(("b", "d")): 0})
    assert s["errors_at_6"] == 2 and s["false_positives_at_6"] == 1 and s["false_negatives_at_6"] == 1
    assert s["km_cmc_min"] == 5 and s["knm_cmc_max"] == 6
    assert s["auc"] == pytest.approx(0.75)
    assert s["spearman_vs_reference"] == pytest.approx(0.8)   # ranks (4,2,3,1) vs (4,3,2,1)


@pytest.mark.realdata
def test_bench_cartridge_cli_writes_summary_csv_and_plots(shared_data, tmp_path):
    d = shared_data / "cartridge" / "fadul"
    out = tmp_path / "fadul.json"
    res = runner.invoke(app, ["bench", "cartridge", str(d), "--labels", str(d / "labels.csv"), "--json", str(out),
                              "--reference", str(shared_data / "published" / "fadul_cmc_nist.csv"),
                              "--rotate-random", "--limit", "6", "--workers", "2"])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    for key in ("pairs", "auc", "eer", "errors_at_6", "km_cmc_min", "knm_cmc_max", "pairs_per_second",
                "spearman_vs_reference"):
        assert key in s, key
    assert s["pairs"] == 15                      # 6 scans: 1-1, 1-2, 10-1, 10-2, 2-1, 2-2
    assert s["same_source_pairs"] == 3
    assert s["auc"] == 1.0 and s["errors_at_6"] == 0
    assert out.with_suffix(".pairs.csv").exists()
    for f in s["plots"]:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.realdata
def test_compare_cli_writes_explanation(shared_data, tmp_path):
    d = shared_data / "cartridge" / "fadul"
    fig, js = tmp_path / "f.png", tmp_path / "r.json"
    res = runner.invoke(app, ["compare", str(d / "Fadul 1-1.x3p"), str(d / "Fadul 1-2.x3p"),
                              "--figure", str(fig), "--json", str(js)])
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())
    assert r["identification"] is True and r["cmc_count"] >= 15
    cells = r["forward"]["cells"]
    assert sum(c["cmc"] for c in cells) == r["cmc_forward"]
    assert all(c["corr"] is None or -1.0 <= c["corr"] <= 1.0 for c in cells)
    assert fig.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.realdata
def test_compare_cli_thorough_search(shared_data, tmp_path):
    d = shared_data / "cartridge" / "fadul"
    js = tmp_path / "r.json"
    res = runner.invoke(app, ["compare", str(d / "Fadul 1-1.x3p"), str(d / "Fadul 1-2.x3p"), "--thorough",
                              "--json", str(js)])
    assert res.exit_code == 0, res.output
    r = json.loads(js.read_text())
    assert r["search"] == "thorough" and r["identification"] is True and r["cmc_count"] >= 15
    assert r["model_log10_lr"] is None


def test_bench_rejects_labels_without_source_column(tmp_path):
    lab = tmp_path / "labels.csv"
    lab.write_text("path,comment\nx.x3p,hello\n")
    res = runner.invoke(app, ["bench", "cartridge", str(tmp_path), "--labels", str(lab), "--json",
                              str(tmp_path / "o.json")])
    assert res.exit_code != 0
    assert "slide" in str(res.exception) or "slide" in res.output


def test_parallel_loading_and_comparison_match_serial(tmp_path):
    """Scans preprocessed on worker processes and pairs compared on forked workers give the
    serial results, in the order asked for."""
    import scipy.ndimage as ndi

    from ballistic.bench.cartridge import compare_all_pairs, load_scans_parallel
    from ballistic.cartridge.cmc.params import CMCParams
    from ballistic.io.x3p import write_x3p
    from ballistic.surface import Surface

    rng = np.random.default_rng(0)
    n = 160
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    paths = []
    base = ndi.gaussian_filter(rng.normal(size=(n, n)), 2.0)
    for k in range(3):
        z = base + (0.3 if k < 2 else 3.0) * ndi.gaussian_filter(rng.normal(size=(n, n)), 2.0)
        z[(r > 75) | (r < 25)] = np.nan
        p = tmp_path / f"s{k}.x3p"
        write_x3p(Surface(z, 12.5), p)
        paths.append(p)
    p = CMCParams()
    names = ["a", "b", "c"]
    ser, _ = load_scans_parallel(paths, names, [0.0, 30.0, 0.0], p, workers=1)
    par, _ = load_scans_parallel(paths, names, [0.0, 30.0, 0.0], p, workers=2)
    for s1, s2 in zip(ser, par):
        np.testing.assert_array_equal(s1.fine, s2.fine)
        assert s1.name == s2.name
    pairs = [(1, 2), (0, 1), (0, 2)]
    one, _ = compare_all_pairs(ser, pairs, p, workers=1, model=None)
    two, _ = compare_all_pairs(par, pairs, p, workers=2, model=None, prefetch=("json",))
    assert [(r["reference"], r["target"]) for r in two] == [("b", "c"), ("a", "b"), ("a", "c")]
    for r1, r2 in zip(one, two):
        assert r1["cmc_count"] == r2["cmc_count"] and r1["registration_ncc"] == r2["registration_ncc"]
    assert two[1]["cmc_count"] > two[2]["cmc_count"]      # a ~ b (shared texture), a vs c mostly noise
    assert {r["search"] for r in two} == {"standard"}
    thorough, _ = compare_all_pairs(par, pairs[1:2], p, workers=2, model=None, search="thorough")
    assert thorough[0]["search"] == "thorough" and thorough[0]["cmc_count"] >= two[1]["cmc_count"] - 2


def test_time_vs_area_recovers_a_power_law():
    from ballistic.bench.cartridge import time_vs_area
    a = np.linspace(5.0, 40.0, 30)
    r = time_vs_area(0.01 * a ** 1.3, a)
    assert r["exponent"] == pytest.approx(1.3, abs=1e-9) and r["pairs"] == 30
    assert r["seconds_per_pair_large_quarter"] > r["seconds_per_pair_small_quarter"]
    assert time_vs_area([1.0, 1.0], [2.0, 2.0])["exponent"] is None


@pytest.mark.realdata
@pytest.mark.slow
def test_bench_retrieval_runs_the_descriptors_side_by_side(shared_data, tmp_path):
    """FAISS stage only, 40 Fadul queries among 30 distractors, the three descriptors in one run."""
    pytest.importorskip("torch", reason="torch is a runtime dependency of models/")
    from ballistic.bench.retrieval import run_retrieval_bench

    d = shared_data / "cartridge" / "fadul"
    s = run_retrieval_bench(d, d / "labels.csv", json_out=tmp_path / "r.json", distractors=(30,), factory="Flat",
                            descriptors=("learned", "polar", "phase"), e2e=False, workers=1, whiten_dim=16,
                            faiss_ks=(10, 50), cache_dir=tmp_path / "cache")
    assert json.loads((tmp_path / "r.json").read_text())["arms"].keys() == {"learned", "polar", "phase"}
    learned, polar = s["arms"]["learned"], s["arms"]["polar"]
    assert learned["descriptor"].startswith("bf-learned/1") and polar["descriptor"].startswith("bf-polar-fft/2")
    assert learned["queries_held_out"] is False            # the shipped model saw every Fadul slide
    for arm in (learned, polar):
        r = arm["per_n"]["30"]
        assert 0.0 <= r["faiss_recall"]["@10"] <= r["faiss_recall"]["@50"] <= 1.0
        assert set(arm["real_synthetic_separability"]) >= {"linear_auc", "nn_synthetic_fraction"}
        assert 0.0 <= r["distractors_vs_real_nonmates"]["fraction_above_median_real_nonmate"] <= 1.0
    # the rotation-searched phase descriptor: searched by query expansion, nothing fitted (held out), no
    # real-vs-synthetic separability (its vectors are bound to each scan's orientation)
    phase = s["arms"]["phase"]
    assert phase["descriptor"].startswith("bf-polar-phase/1") and phase["queries_held_out"] is True
    assert "real_synthetic_separability" not in phase and phase["whitener_dim"] is None
    # measured 0.948 among the 39 other scans alone; the plain inner product (no expansion) finds few mates
    assert phase["per_n"]["30"]["faiss_recall"]["@10"] > 0.85


def test_aggregate_retrieval_draws_means_and_worst_draw():
    """Per arm and distractor count, each FAISS-stage and end-to-end figure's mean / min / max over the draws,
    draws in seed order; a figure only some draws have is summarised over those."""
    from ballistic.bench.retrieval import aggregate_retrieval_draws, format_retrieval_draws

    def summary(r10, r100, e2e=None):
        per = {"faiss_recall": {"@10": r10, "@100": r100}, "faiss_recall_projected_10x": {"@10": r10 / 2,
                                                                                          "@100": r100 / 2}}
        if e2e is not None:
            per["recall@10"] = e2e
        return {"arms": {"phase": {"per_n": {"1000": per}}}}
    agg = aggregate_retrieval_draws({7: summary(0.5, 0.9), 2: summary(0.7, 1.0, e2e=0.8)})
    o = agg["arms"]["phase"]["1000"]
    assert agg["seeds"] == [2, 7] and o["draws"] == 2
    assert o["faiss_recall"]["@10"] == {"mean": pytest.approx(0.6), "min": 0.5, "max": 0.7, "per_draw": [0.7, 0.5]}
    assert o["faiss_recall_projected_10x"]["@100"]["min"] == pytest.approx(0.45)
    assert o["recall@10"]["per_draw"] == [0.8]                 # only the draw that ran the re-ranking
    table = format_retrieval_draws(agg, ks=("@10", "@100"))
    assert "2 rotation draws (seeds 2..7)" in table and "0.600 (0.500)" in table
    with pytest.raises(ValueError, match="no draws"):
        aggregate_retrieval_draws({})


@pytest.mark.realdata
def test_bench_retrieval_over_rotation_draws(shared_data, tmp_path):
    """``--seeds 0-1``: one run per draw (its JSON beside --json) and the summary of both; a bad list is refused."""
    from typer.testing import CliRunner

    from ballistic.cli import app
    d = shared_data / "cartridge" / "fadul"
    out = tmp_path / "r.json"
    args = ["bench", "retrieval", str(d), "--labels", str(d / "labels.csv"), "--json", str(out), "--descriptor",
            "phase", "--distractors", "30", "--factory", "Flat", "--faiss-only", "--workers", "1",
            "--faiss-ks", "10,50", "--k-sweep", "", "--cache", str(tmp_path / "cache")]
    res = CliRunner().invoke(app, args + ["--seeds", "0-1"])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    per = [json.loads((tmp_path / f"r_seed{k}.json").read_text()) for k in (0, 1)]
    assert s["seeds"] == [0, 1] and set(s["per_draw_files"]) == {"0", "1"}
    got = s["arms"]["phase"]["30"]["faiss_recall"]["@10"]
    assert got["per_draw"] == [p["arms"]["phase"]["per_n"]["30"]["faiss_recall"]["@10"] for p in per]
    assert 0.85 < got["min"] <= got["mean"] <= got["max"] <= 1.0 and "2 rotation draws" in res.output
    bad = CliRunner().invoke(app, args + ["--seeds", "x"])
    assert bad.exit_code != 0 and "seeds" in bad.output


def test_real_synthetic_separability_tells_a_shifted_set_from_a_mixed_one():
    from ballistic.bench.retrieval import real_synthetic_separability
    rng = np.random.default_rng(0)
    real, synth = rng.normal(size=(40, 16)), rng.normal(size=(400, 16))
    mixed = real_synthetic_separability(real, synth)
    apart = real_synthetic_separability(real + 1.0, synth)
    assert 0.3 < mixed["linear_auc"] < 0.7 and 0.3 < mixed["nn_synthetic_fraction"] < 0.7
    assert apart["linear_auc"] > 0.95 and apart["nn_synthetic_fraction"] < 0.1


def test_bench_fetch_serves_the_stored_view_that_fits_the_stage():
    from ballistic.bench.retrieval import BenchFetch, distractor_catalogue, distractor_thumbnails
    from ballistic.surface import Surface
    cat = distractor_catalogue()
    views = {s: distractor_thumbnails(2, catalogue=cat, spacing_um=s, workers=1) for s in (100.0, 50.0)}
    assert views[100.0].shape == (2, 40, 40) and views[50.0].shape == (2, 80, 80)     # one 4 mm field
    real = Surface(np.zeros((5, 5)), 25.0)
    f = BenchFetch({7: real}, cat, thumbs=views)
    d = cat.id_offset + 1
    assert f(7, spacing_um=50.0) is real
    assert f(d, spacing_um=100.0).spacing_um == 100.0 and f(d, spacing_um=200.0).spacing_um == 100.0
    got = f(d, spacing_um=50.0)
    assert got.spacing_um == 50.0 and got.heights.shape == (80, 80)
    np.testing.assert_array_equal(got.heights, views[50.0][1].astype(np.float64))
    assert f(d, spacing_um=25.0).spacing_um == 25.0                     # finer than any stored view: regenerated
    # one array at one spacing, as before
    old = BenchFetch({}, cat, thumbs=views[100.0])
    assert old(d, spacing_um=100.0).spacing_um == 100.0 and old(d, spacing_um=50.0).spacing_um == 50.0
    # a stored view is the regenerated surface at that spacing, centred (float16 heights)
    fresh = cat(d, spacing_um=50.0)
    assert np.nanmax(np.abs(fresh.heights)) == pytest.approx(np.nanmax(np.abs(got.heights)), rel=1e-2)


def test_bench_fetch_serves_stored_prepared_views_to_the_comparison(tmp_path):
    """As the service: a candidate's prepared views are stored once and loaded, bit-identical to preparing it."""
    import pickle

    from ballistic.bench.retrieval import BenchFetch, distractor_catalogue
    from ballistic.cartridge.cmc.params import CMCParams, PreparedSurface, prepare
    cat = distractor_catalogue()
    p = CMCParams()
    real = cat(cat.id_offset + 5)                   # any preprocessed surface serves as a "real" scan
    f = BenchFetch({7: real}, cat, views_dir=tmp_path / "views", params=p)
    d = cat.id_offset + 1
    want = prepare(cat(d), p)
    got = f(d)
    assert isinstance(got, PreparedSurface) and (tmp_path / "views" / f"{d}.npz").is_file()
    again = f(d)                                    # now loaded from the file
    for v in ("fine", "coarse", "prior"):
        np.testing.assert_array_equal(getattr(got, v), getattr(want, v))
        np.testing.assert_array_equal(getattr(again, v), getattr(want, v))
    assert again.spacing_um == want.spacing_um
    # a damaged file is made again, not served
    (tmp_path / "views" / f"{d}.npz").write_bytes(b"not an npz")
    np.testing.assert_array_equal(f(d).fine, want.fine)
    # a real scan is prepared once per process, and a pickled fetch prepares its own
    r1 = f(7)
    assert isinstance(r1, PreparedSurface) and f(7) is r1
    np.testing.assert_array_equal(r1.fine, prepare(real, p).fine)
    assert pickle.loads(pickle.dumps(f))._real_views == {}
    # the rotation stages still get surfaces; without views_dir the comparison gets the surface itself
    assert f(7, spacing_um=50.0) is real
    assert BenchFetch({7: real}, cat)(7) is real
