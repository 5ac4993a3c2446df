"""The generalisation benchmark: set discovery, protocols on synthetic rows, and the CLI on real data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ballistic.bench import generalization as G


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_discover_sets_labels_families_and_cartridges(tmp_path):
    c = tmp_path / "cartridge"
    (c / "fadul").mkdir(parents=True)
    (c / "fadul" / "labels.csv").write_text("path,scan,slide\ncartridge/fadul/F 1-1.x3p,F 1-1,1\n"
                                            "cartridge/fadul/F 1-2.x3p,F 1-2,1\n")
    (c / "dfsc").mkdir()
    (c / "dfsc" / "labels.csv").write_text("path,scan,slide,kit\ncartridge/dfsc/K013sA1_processed.x3p,"
                                           "K013sA1_processed,A,K013\ncartridge/dfsc/K004fA3.x3p,K004fA3,A,K004\n")
    for n in ("baldwin/K013sA1.x3p", "baldwin/K227iG3.x3p", "baldwin/notes.x3p"):
        _touch(c / n)
    scans = G.discover_sets(tmp_path)
    by = {s.name: s for s in scans}
    assert by["F 1-1"].firearm == "fadul:1" and by["F 1-1"].dataset == "fadul"
    assert by["K004fA3"].firearm == by["K013sA1"].firearm == "srx9:A"
    assert by["K227iG3"].firearm == "srx9:G" and by["K227iG3"].kit == "K227"
    assert "notes" not in by                                   # not a DFSC/Baldwin name: not labelled
    assert by["K013sA1"].cartridge == by["K013sA1_processed"].cartridge
    pairs = G._pairs(scans)
    names = {frozenset((scans[i].name, scans[j].name)) for i, j in pairs}
    assert frozenset(("K013sA1", "K013sA1_processed")) not in names   # one cartridge, two pipelines
    assert frozenset(("F 1-1", "K004fA3")) not in names               # no cross-family pairs
    assert frozenset(("K004fA3", "K013sA1")) in names


def test_discover_sets_checks_labels_against_names(tmp_path):
    d = tmp_path / "cartridge" / "dfsc"
    d.mkdir(parents=True)
    (d / "labels.csv").write_text("path,scan,slide\ncartridge/dfsc/K004fA3.x3p,K004fA3,B\n")
    with pytest.raises(ValueError, match="firearm"):
        G.discover_sets(tmp_path)


def _rows(seed=0):
    """Synthetic per-pair rows: two families, firearms per family, features that separate."""
    rng = np.random.default_rng(seed)
    rows = []
    for fam, n_fire, per, gap in (("fadul", 6, 3, 0.5), ("srx9", 5, 3, 0.3)):
        src = [f"{fam}:{i}" for i in range(n_fire) for _ in range(per)]
        kits = [f"K00{i % 3}" for i in range(len(src))]
        for i in range(len(src)):
            for j in range(i + 1, len(src)):
                same = src[i] == src[j]
                base = 0.2 + (gap if same else 0.0)
                rows.append({"same_source": same, "firearm_a": src[i], "firearm_b": src[j], "family": fam,
                             "dataset_a": "fadul" if fam == "fadul" else "dfsc",
                             "dataset_b": "fadul" if fam == "fadul" else "dfsc",
                             "kit_a": kits[i] if fam == "srx9" else "fadul", "kit_b": kits[j] if fam == "srx9" else "fadul",
                             "cmc_count": float(12 if same else rng.integers(0, 3)), "similarity": 0.0,
                             "f_ncc": base + rng.normal(0, 0.05), "f_cluster_frac_mean": base + rng.normal(0, 0.05),
                             "f_cluster_pose_frac_mean": max(0.0, (0.5 if same else 0.02) + rng.normal(0, 0.05)),
                             "f_cluster_offset_max_um": (5.0 if same else 150.0) + abs(rng.normal(0, 10)),
                             **{f"f_{k}": base + rng.normal(0, 0.05) for k in
                                ("cluster_frac_min", "cluster_corr_mean", "corr_frac_above", "prior_margin")}})
    for r in rows:
        r["similarity"] = r["cmc_count"] + 0.5
    return rows


def test_evaluate_runs_every_protocol_and_table():
    res = G.evaluate(_rows())
    p = res["protocols"]
    assert set(p) >= {"pooled_cv", "fadul_to_dfsc", "dfsc_to_fadul", "leave_one_kit_out"}
    pooled = p["pooled_cv"]["pooled"]
    assert pooled["model"]["auc"] > 0.95 and pooled["cmc"]["auc"] > 0.95
    assert pooled["model"]["pairs"] == len(_rows())
    assert "cllr" in pooled["model"] and "false_negatives" in pooled["cmc"]
    assert np.isfinite(res["cv_scores"]).all()
    table = G.format_table(res)
    assert "pooled_cv" in table and "leave_one_kit_out" in table and "AUC" in table.splitlines()[0]
    me = pooled["model"]["misleading_evidence"]
    assert me["lr_10^0"]["different_source"] >= me["lr_10^1"]["different_source"] >= me["lr_10^2"]["different_source"]
    assert "misleading LRs" in table and "diff>=10" in table


def test_metrics_without_a_threshold_and_with_one_class():
    s = np.array([0.1, 0.9, 0.2, 0.8])
    y = np.array([False, True, False, True])
    m = G._metrics(s, y, None, None)
    assert m["auc"] == 1.0 and "false_positives" not in m
    one = G._metrics(s, np.ones(4, bool), 0.5, None)
    assert "auc" not in one and one["same"] == 4


@pytest.mark.realdata
def test_generalization_cli_from_a_cache(shared_data, tmp_path, monkeypatch):
    """The CLI evaluates cached rows without recomputing them (rows from _rows, cache keyed to the scans)."""
    from typer.testing import CliRunner

    from ballistic.cli import app
    scans = G.discover_sets(shared_data)
    assert {s.dataset for s in scans} >= {"fadul", "dfsc", "baldwin"}
    key = G._cache_key(scans, 0)
    rows = _rows()
    cache = tmp_path / "cache"
    cache.mkdir()
    from ballistic.io.csv import write_rows_csv
    write_rows_csv(rows, cache / f"pairs_{key}.csv")
    out = tmp_path / "gen.json"
    res = CliRunner().invoke(app, ["bench", "generalization", "--data", str(shared_data), "--json", str(out),
                                   "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    assert s["pairs_info"]["cached"] is True and s["population"]["sets"]["fadul"]["scans"] == 40
    assert "pooled_cv" in s["protocols"] and "first_feature_set" in s
    prev = s["offset_feature_set"]                       # the model's previous features, evaluated beside it
    assert ["cluster_offset_max_um", "log_um"] in prev["features"] and "pooled_cv" in prev["protocols"]


def test_cached_pairs_are_keyed_to_the_comparison_source(tmp_path, monkeypatch):
    """An edit of the comparison code that keeps every version string and parameter must not reuse
    the pairs computed by the previous code (it once did: a benchmark reported the old code's figures)."""
    f = tmp_path / "a.x3p"
    f.write_bytes(b"x")
    scans = [G.Scan(name="a", path=f, dataset="fadul", firearm="fadul:1", kit="fadul", cartridge="a")]
    before = G._cache_key(scans, 0)
    assert G._cache_key(scans, 0) == before
    assert G._cache_key(scans, 0, "standard") == before             # the standard search keeps its old keys
    assert G._cache_key(scans, 0, "thorough") != before             # pairs of the thorough search are others
    monkeypatch.setattr(G, "_comparison_source_digest", lambda: "edited")
    assert G._cache_key(scans, 0) != before


def test_the_shipped_model_is_fitted_only_on_the_standard_search(tmp_path):
    with pytest.raises(ValueError, match="standard search"):
        G.run_generalization_bench(tmp_path, json_out=tmp_path / "g.json", fit=True, search="thorough")


def test_parse_seeds_ranges_lists_and_errors():
    from ballistic.bench.draws import parse_seeds, spread
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0-2,2") == [0, 1, 2, 5]
    for bad in ("", "a", "3-1", "-1", "1..3"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    assert spread([0.5, None, float("nan"), 1.0]) == {"mean": 0.75, "min": 0.5, "max": 1.0, "per_draw": [0.5, 1.0]}
    assert spread([None]) is None


def test_draws_modes_refuse_an_empty_list_of_seeds(tmp_path):
    from ballistic.bench.draws import draw_seeds
    from ballistic.bench.retrieval import run_retrieval_draws
    assert draw_seeds([3, "1", 3], caller="x") == [1, 3]
    with pytest.raises(ValueError, match="run_generalization_draws: give at least one seed"):
        G.run_generalization_draws(tmp_path, seeds=[], json_out=tmp_path / "g.json")
    with pytest.raises(ValueError, match="run_retrieval_draws: give at least one seed"):
        run_retrieval_draws(tmp_path, tmp_path / "labels.csv", seeds=(), json_out=tmp_path / "r.json")


def test_aggregate_draws_means_ranges_and_pairs_wrong_in_several_draws():
    """Two draws of synthetic rows that differ: the summary's mean / min / max are those of the draws' own
    figures, and a pair is listed with every draw it was wrong in."""
    draws = {s: G.evaluate(_rows(seed=s)) for s in (3, 1)}
    # make one pair wrong in both draws and one in a single draw, with known scores
    e = {"reference": "a", "target": "b", "same_source": False, "set": "dfsc", "cmc_count": 2, "wrong": ["model"],
         "registration_ncc": 0.3}
    draws[1]["errors"] = [{**e, "model_cv_score": 0.4}]
    draws[3]["errors"] = [{**e, "model_cv_score": 0.1},
                          {**e, "target": "c", "same_source": True, "model_cv_score": -1.0, "wrong": ["model", "cmc"]}]
    agg = G.aggregate_draws(draws)
    assert agg["seeds"] == [1, 3]
    for proto, sets in draws[1]["protocols"].items():
        for name, blk in sets.items():
            for score in ("model", "cmc"):
                if "auc" not in blk[score]:
                    continue
                got = agg["protocols"][proto][name][score]
                per = [draws[s]["protocols"][proto][name][score]["auc"] for s in (1, 3)]
                assert got["auc"]["per_draw"] == pytest.approx(per)
                assert got["auc"]["mean"] == pytest.approx(np.mean(per))
                assert got["auc"]["min"] == pytest.approx(min(per)) and got["draws"] == 2
                fp = [draws[s]["protocols"][proto][name][score]["false_positives"] for s in (1, 3)]
                assert got["false_positives"]["max"] == max(fp)
    first, second = agg["wrong_pairs"]
    assert (first["target"], first["draws"], first["model_cv_score"]) == ("b", [1, 3], [0.4, 0.1])
    assert (second["target"], second["draws"], second["wrong"]) == ("c", [3], ["model/cmc"])
    table = G.format_draws_table(agg)
    assert "2 rotation draws (seeds 1..3)" in table and " 2x a vs b [dfsc]" in table
    with pytest.raises(ValueError, match="no draws"):
        G.aggregate_draws({})


@pytest.mark.realdata
def test_generalization_cli_over_rotation_draws_from_caches(shared_data, tmp_path):
    """``--seeds`` evaluates each draw's cached pairs and writes the per-draw figures and their summary; it
    refuses --fit (the shipped model is fitted on one draw) and a malformed list."""
    from typer.testing import CliRunner

    from ballistic.cli import app
    from ballistic.io.csv import write_rows_csv
    scans = G.discover_sets(shared_data)
    cache = tmp_path / "cache"
    cache.mkdir()
    for s in (0, 1):
        write_rows_csv(_rows(seed=s), cache / f"pairs_{G._cache_key(scans, s)}.csv")
    out = tmp_path / "draws.json"
    args = ["bench", "generalization", "--data", str(shared_data), "--json", str(out), "--cache", str(cache)]
    res = CliRunner().invoke(app, args + ["--seeds", "0-1"])
    assert res.exit_code == 0, res.output
    s = json.loads(out.read_text())
    assert s["seeds"] == [0, 1] and set(s["per_draw"]) == {"0", "1"}
    assert all(s["pairs_info"][k]["cached"] is True for k in ("0", "1"))
    blk = s["protocols"]["pooled_cv"]["pooled"]["model"]
    per = [s["per_draw"][k]["protocols"]["pooled_cv"]["pooled"]["model"]["auc"] for k in ("0", "1")]
    assert blk["auc"]["per_draw"] == pytest.approx(per) and "2 rotation draws" in res.output
    prev = s["offset_feature_set"]["protocols"]["pooled_cv"]["pooled"]["model"]
    assert prev["draws"] == 2 and len(prev["auc"]["per_draw"]) == 2
    assert "previous features" in res.output
    bad = CliRunner().invoke(app, args + ["--seeds", "0-1", "--fit"])
    assert bad.exit_code != 0 and "--fit" in bad.output
    bad = CliRunner().invoke(app, args + ["--seeds", "1-0"])
    assert bad.exit_code != 0 and "seeds" in bad.output
