"""The shipped learned descriptor (bf-learned/1): weights, rotation invariance measured numerically,
determinism, NaN handling, batch API == single calls."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a runtime dependency of models/")

from ballistic.errors import DescriptorError  # noqa: E402
from ballistic.retrieval.descriptor import DescriptorModel  # noqa: E402
from ballistic.preprocess.filters import crop_to_mask, rotate  # noqa: E402
from ballistic.cartridge.synth import fire, synthetic_firearm  # noqa: E402
from models.breech_face.descriptor import DEFAULT_WEIGHTS, LearnedDescriptor, load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def desc():
    return LearnedDescriptor()


@pytest.fixture(scope="module")
def face():
    return fire(synthetic_firearm(12), 4)           # 6.25 um, like a processed scan


def test_shipped_weights_and_model_card():
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 10e6
    ck = load_checkpoint(DEFAULT_WEIGHTS)
    assert ck["meta"]["version"] == "bf-learned/1" and ck["meta"]["held_out"] == []
    assert {"fadul:1", "dfsc:A"} <= set(ck["meta"]["trained_on"])
    card = (DEFAULT_WEIGHTS.parent.parent / "MODEL_CARD.md").read_text()
    assert "bf-learned/1" in card and "leave-one-slide-out" in card


def test_protocol_name_and_output(desc, face):
    assert isinstance(desc, DescriptorModel) and desc.dim == 128
    assert desc.name.startswith("bf-learned/1?weights=") and desc.name.endswith(desc.weights_sha256[:16])
    before = face.heights.copy()
    v = desc(face)
    assert v.dtype == np.float32 and v.shape == (128,) and np.isfinite(v).all()
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    np.testing.assert_array_equal(face.heights, before)


def test_rotation_invariance_measured(desc, face):
    v0 = desc(face)
    cos = [float(desc(crop_to_mask(rotate(face, a))) @ v0) for a in (7.0, 33.0, 90.0, 181.5, 299.0)]
    assert min(cos) > 0.97, cos
    other = float(desc(fire(synthetic_firearm(13), 4)) @ v0)
    assert other < min(cos) - 0.1


def test_deterministic(desc, face):
    a, b = desc(face), desc(face)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, LearnedDescriptor()(face))


def test_batch_equals_single(desc):
    faces = [fire(synthetic_firearm(20 + i), i, spacing_um=12.5) for i in range(5)]
    V = desc.describe_many(faces)
    assert V.shape == (5, 128) and V.dtype == np.float32
    np.testing.assert_allclose(V, np.stack([desc(f) for f in faces]), atol=1e-5)
    assert desc.describe_many([]).shape == (0, 128)


def test_missing_data(desc, face):
    h = face.heights.copy()
    h[: h.shape[0] // 2] = np.nan                      # half the breech face not measured
    v = desc(face.with_heights(h))
    assert np.isfinite(v).all() and abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    with pytest.raises(DescriptorError, match="measured points"):
        desc(face.with_heights(np.full(face.shape, np.nan)))
    with pytest.raises(DescriptorError):
        desc(face.with_heights(face.heights[:20, :20]))
    with pytest.raises(TypeError, match="Surface"):
        desc(face.heights)


@pytest.mark.realdata
def test_real_scan_rotation_invariance(desc, shared_data):
    from ballistic.io.x3p import read_x3p
    from ballistic.cartridge.breech_face import preprocess_cartridge

    s = preprocess_cartridge(read_x3p(shared_data / "cartridge" / "fadul" / "Fadul 1-1.x3p"))
    v0 = desc(s)
    cos = [float(desc(crop_to_mask(rotate(s, a))) @ v0) for a in (45.0, 160.0, 271.0)]
    assert min(cos) > 0.97, cos


def test_bench_queries_each_scan_with_the_fold_model_that_held_it_out(tmp_path):
    """Fold weights that hold out only some firearms: the learned arm answers each of their scans with the
    fold that never saw it, and every arm (polar too) is queried with those scans only."""
    from ballistic.bench.retrieval import run_retrieval_bench
    from ballistic.io.x3p import write_x3p
    from models.breech_face.experiment import DEFAULT_RECIPE, save_checkpoint
    from models.breech_face.network import build_network
    from models.breech_face.polar import PolarGrid

    d = tmp_path / "set"
    d.mkdir()
    rows = ["scan,slide"]
    for f in (1, 2, 3):
        for j in (1, 2):
            write_x3p(fire(synthetic_firearm(100 + f), j, spacing_um=12.5), d / f"s{f}-{j}.x3p")
            rows.append(f"s{f}-{j},{f}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = DEFAULT_RECIPE.finetune
    folds = tmp_path / "folds"
    for k, held in enumerate((["set:1"], ["set:2"])):
        net = build_network(cfg.arch, n_r=PolarGrid(**cfg.grid).n_r, dim=cfg.dim).eval()
        save_checkpoint(folds / f"fold-{k:02d}.pt", net, DEFAULT_RECIPE,
                        {"version": "bf-learned/1", "fold": k, "held_out": held, "trained_on": ["set:3"]})
    s = run_retrieval_bench(d, d / "labels.csv", json_out=tmp_path / "r.json", distractors=(8,), factory="Flat",
                            descriptors=("learned", "polar"), fold_models=folds, e2e=False, workers=1,
                            whiten_dim=4, whiten_sample=8, faiss_ks=(10, 50), cache_dir=tmp_path / "cache")
    learned, polar = s["arms"]["learned"], s["arms"]["polar"]
    assert learned["queries_held_out"] and [m["queries"] for m in learned["models"]] == [2, 2]
    assert [m["weights"] for m in learned["models"]] == ["fold-00.pt", "fold-01.pt"]
    assert s["queries"] == 4 and s["scans"] == 6 and polar["models"][0]["queries"] == 4


def test_compare_checkpoints_fused_arm_is_the_mean_of_the_two_cosines_and_refuses_a_seen_firearm(tmp_path):
    """The held-out evaluation answers each fold's firearms with its own model only, polar on the same
    queries, and the fused arm ranks by the mean of the learned and polar cosines (nothing fitted)."""
    from ballistic.retrieval.registry import load_descriptor
    from models.breech_face.data import RealScan
    from models.breech_face.evaluate import compare_checkpoints
    from models.breech_face.experiment import DEFAULT_RECIPE, save_checkpoint
    from models.breech_face.network import build_network
    from models.breech_face.polar import PolarGrid

    real, surf = [], []
    for f in (1, 2, 3):
        for j in (1, 2, 3):
            s = crop_to_mask(rotate(fire(synthetic_firearm(200 + f), j, spacing_um=12.5), 37.0 * (f + j)))
            real.append(RealScan(f"s{f}-{j}", "fadul", f"fadul:{f}", f"s{f}-{j}", s))
            surf.append(s)
    cfg = DEFAULT_RECIPE.finetune
    torch.manual_seed(3)
    net = build_network(cfg.arch, n_r=PolarGrid(**cfg.grid).n_r, dim=cfg.dim).eval()
    p = save_checkpoint(tmp_path / "fold-00.pt", net, DEFAULT_RECIPE,
                        {"version": "bf-learned/1", "fold": 0, "held_out": ["fadul:1"], "trained_on": ["fadul:2"]})
    res = compare_checkpoints([p], real, {"fadul": surf})
    assert [r["query"] for r in res["per_query"]["fused"][0]["fadul"]] == [0, 1, 2]
    E_l = LearnedDescriptor(p).describe_many(surf)
    polar = load_descriptor("polar")
    E_p = np.stack([polar(s) for s in surf])
    G = (E_l @ E_l.T + E_p @ E_p.T) / 2.0                    # mean of the two cosines
    labels = np.array([s.firearm for s in real])
    for q, got in zip((0, 1, 2), res["per_query"]["fused"][0]["fadul"]):
        g = np.array([i for i in range(9) if i != q])
        order = g[np.argsort(-G[q, g], kind="stable")]
        mate_ranks = np.flatnonzero(labels[order] == labels[q]) + 1
        assert got["best_mate_rank"] == mate_ranks[0]
        assert got["recall@5"] == pytest.approx(np.mean(mate_ranks <= 5))
        assert sorted(got["mate_scores"]) == pytest.approx(sorted(G[q, g][labels[g] == labels[q]]), abs=1e-5)
    assert set(res) >= {"learned", "polar", "fused"} and res["fused"]["fadul"]["queries"] == 3

    bad = save_checkpoint(tmp_path / "fold-01.pt", net, DEFAULT_RECIPE,
                          {"version": "bf-learned/1", "fold": 1, "held_out": ["fadul:2"], "trained_on": ["fadul:2"]})
    with pytest.raises(ValueError, match="not a held-out fold model"):
        compare_checkpoints([bad], real, {"fadul": surf})
