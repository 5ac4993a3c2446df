"""Recipes, cross-validation by firearm, ablations and the command line of ``python -m models.train``.

A :class:`Recipe` is a synthetic-only pretraining (sees no real scan, so it is shared by every fold)
followed by a fine-tuning on the real training firearms plus synthetic ones. Cross-validation
(:func:`cross_validate`) fine-tunes one model per fold of :func:`models.breech_face.evaluate.firearm_folds`
and queries it only with its held-out firearms. :data:`ABLATIONS` removes one ingredient at a time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from models.breech_face.data import AugmentConfig, RealScan, load_real_scans, synthetic_pool
from models.breech_face.train import TrainConfig

__all__ = ["Recipe", "DEFAULT_RECIPE", "ABLATIONS", "pretrain", "finetune", "save_checkpoint", "cross_validate",
           "main"]


@dataclass(frozen=True)
class Recipe:
    """Pretraining on synthetic firearms only (``None``: none), then fine-tuning on real (+ synthetic) ones
    (``None``: the pretrained model as it is)."""

    pretrain: TrainConfig | None
    finetune: TrainConfig | None
    synth_firearms: int = 2000
    synth_firings: int = 3

    def as_dict(self) -> dict:
        return {"pretrain": self.pretrain.as_dict() if self.pretrain else None,
                "finetune": self.finetune.as_dict() if self.finetune else None,
                "synth_firearms": self.synth_firearms, "synth_firings": self.synth_firings}


_PT = TrainConfig(real=False, steps=500, lr=2e-3, warmup=50, synth_firearms=40, synth_views=2)
_FT = TrainConfig(real=True, steps=300, lr=1e-3, warmup=20, real_views=3, synth_firearms=16, synth_views=2)
DEFAULT_RECIPE = Recipe(_PT, _FT)


def _without(*names: str) -> Recipe:
    return Recipe(replace(_PT, augment=_PT.augment.without(*names)), replace(_FT, augment=_FT.augment.without(*names)))


#: One ingredient removed at a time (same compute unless stated).
ABLATIONS: dict[str, Recipe] = {
    "full": DEFAULT_RECIPE,
    # real pairs only: no synthetic pretraining, no synthetic firearms in the batches (same number of steps)
    "no-synthetic": Recipe(None, replace(_FT, synth=False, steps=_PT.steps + _FT.steps, lr=2e-3, warmup=50)),
    # synthetic only: the pretrained model, never fine-tuned on real scans
    "no-real": Recipe(_PT, None),
    "no-augmentation": Recipe(replace(_PT, augment=AugmentConfig.none()),
                              replace(_FT, augment=AugmentConfig.none())),
    "no-rotation-augmentation": _without("rotation", "centre_jitter_px"),
    "no-contact": _without("contact"),
    "no-dropout": _without("dropout"),
    "no-noise": _without("noise"),
    "no-resolution": _without("resolution"),
    "no-refilter": _without("refilter"),
    # invariance by augmentation only: a plain Cartesian CNN, rotation augmentation on
    "cartesian": Recipe(replace(_PT, arch="cartesian"), replace(_FT, arch="cartesian")),
}


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (DataLoader workers, pools)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pretrain(recipe: Recipe, synth: np.ndarray | None, *, cache_dir: Path | None, progress: bool = True
             ) -> tuple[dict | None, dict]:
    """The synthetic-only pretraining of ``recipe`` (cached in ``cache_dir`` by its settings)."""
    import torch

    from ballistic.cartridge.normalise import normalisation_key
    from ballistic.cartridge.synth import SYNTH_VERSION
    from models.breech_face.train import train

    if recipe.pretrain is None:
        return None, {}
    f = None
    if cache_dir is not None:
        what = {k: v for k, v in recipe.pretrain.as_dict().items() if k not in ("threads", "workers")}
        key = _key(what, recipe.synth_firearms, recipe.synth_firings, SYNTH_VERSION, normalisation_key())
        f = Path(cache_dir) / f"pretrain-{key}.pt"
        if f.is_file():
            ck = torch.load(f, map_location="cpu", weights_only=True)
            return ck["state_dict"], ck["log"]
    t, c = time.perf_counter(), _cpu_seconds()
    model, log = train(recipe.pretrain, [], synth, progress=progress, desc="pretrain (synthetic)")
    log.update(wall_s=round(time.perf_counter() - t, 1), cpu_s=round(_cpu_seconds() - c, 1))
    state = model.state_dict()
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"state_dict": state, "log": log}, tmp)
        os.replace(tmp, f)
    return state, log


def finetune(recipe: Recipe, real: Sequence[RealScan], synth: np.ndarray | None, init: dict | None, *,
             held_out: Sequence[str] = (), progress: bool = True, desc: str = "fine-tune"):
    """Fine-tune (or, without a fine-tuning stage, rebuild the pretrained model); returns (model, log)."""
    from models.breech_face.network import build_network
    from models.breech_face.polar import PolarGrid
    from models.breech_face.train import train

    cfg = recipe.finetune
    if cfg is None:
        pc = recipe.pretrain
        model = build_network(pc.arch, n_r=PolarGrid(**pc.grid).n_r, dim=pc.dim)
        model.load_state_dict(init)
        return model.eval(), {"wall_s": 0.0, "cpu_s": 0.0}
    train_real = [s for s in real if s.firearm not in set(held_out)]
    t, c = time.perf_counter(), _cpu_seconds()
    model, log = train(cfg, train_real, synth, init_state=init, progress=progress, desc=desc)
    log.update(wall_s=round(time.perf_counter() - t, 1), cpu_s=round(_cpu_seconds() - c, 1))
    log["trained_on"] = sorted({s.firearm for s in train_real})
    return model, log


def save_checkpoint(path: str | Path, model, recipe: Recipe, meta: dict) -> Path:
    """Weights + the config needed to rebuild the network + provenance, written atomically."""
    import io

    import torch

    from ballistic.io.atomic import atomic_write_bytes

    cfg = recipe.finetune or recipe.pretrain
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "config": cfg.as_dict(), "recipe": recipe.as_dict(), "meta": meta}, buf)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _embedder(model, cfg: TrainConfig):
    import torch

    from models.breech_face.data import cartesian_view
    from models.breech_face.polar import PolarGrid, polar_input
    from ballistic.preprocess.filters import resample

    grid = PolarGrid(**cfg.grid)

    def inputs(s):
        if cfg.arch == "cartesian":
            return cartesian_view(resample(s, spacing_um=grid.spacing_um).heights, None, cfg.augment)
        return polar_input(s, grid)

    def embed(surfaces):
        X = torch.from_numpy(np.stack([inputs(s) for s in surfaces]))
        with torch.inference_mode():
            return model(X).numpy()
    return embed


def cross_validate(recipe: Recipe, real: Sequence[RealScan], synth: np.ndarray | None, *,
                   folds: Sequence[Sequence[str]] | None = None, fold_ids: Sequence[int] | None = None,
                   out_dir: Path | None = None,
                   cache_dir: Path | None = None, progress: bool = True, seed: int = 0, name: str = "full",
                   rotated: dict | None = None) -> dict:
    """Fine-tune one model per fold, query it with its held-out firearms only; summary + per-query rows.

    ``rotated``: per study the query/gallery surfaces (:func:`~models.breech_face.evaluate.rotated_studies`);
    default the training surfaces rotated at the training spacing."""
    from models.breech_face.evaluate import firearm_folds, fold_metrics, rotated_copies, summarise_folds

    folds = [tuple(f) for f in (folds or firearm_folds(real))]
    fold_ids = list(fold_ids) if fold_ids is not None else list(range(len(folds)))
    if rotated is None:
        rotated = {st: rotated_copies([s.surface for s in real if s.study == st], seed=seed)[0]
                   for st in ("fadul", "dfsc")}
    t, c = time.perf_counter(), _cpu_seconds()
    init, plog = pretrain(recipe, synth, cache_dir=cache_dir, progress=progress)
    per, logs = [], []
    for k, held in zip(fold_ids, folds):
        model, log = finetune(recipe, real, synth, init, held_out=held, progress=progress,
                              desc=f"{name} fold {k}")
        fm = fold_metrics(_embedder(model, recipe.finetune or recipe.pretrain), real, held, rotated)
        per.append(fm)
        logs.append({"fold": k, "held_out": list(held), "wall_s": log.get("wall_s"), "cpu_s": log.get("cpu_s"),
                     "final_loss": (log.get("loss") or [[None, None]])[-1][1]})
        if out_dir is not None:
            save_checkpoint(Path(out_dir) / f"fold-{k:02d}.pt", model, recipe,
                            {"version": "bf-learned/1", "fold": k, "held_out": list(held), "seed": seed,
                             "trained_on": log.get("trained_on", []), "variant": name})
        if progress:
            msg = {st: round(float(np.mean([r["recall@10"] for r in v])), 3) for st, v in fm.items()}
            print(f"  {name} fold {k}: held out {', '.join(held)}: recall@10 {msg}", flush=True)
    return {"variant": name, "summary": summarise_folds(per), "folds": logs, "per_query": per,
            "pretrain": {k: plog.get(k) for k in ("wall_s", "cpu_s")},
            "wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(_cpu_seconds() - c, 1)}


def _write_json(path: Path, obj) -> None:
    from ballistic.io.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def _evaluate_saved_folds(a, real: Sequence[RealScan]) -> None:
    """``--evaluate DIR``: held-out recall of the saved fold models vs polar, printed and written as JSON."""
    import torch

    from models.breech_face.evaluate import compare_checkpoints, rotated_studies

    paths = sorted(Path(a.evaluate).glob("fold-*.pt"))
    if not paths:
        raise SystemExit(f"no fold-*.pt weights in {a.evaluate}")
    t = time.perf_counter()
    res = compare_checkpoints(paths, real, rotated_studies(a.data, real, seed=a.seed))
    res.update(seed=a.seed, wall_s=round(time.perf_counter() - t, 1), loadavg=os.getloadavg(),
               env={"python": platform.python_version(), "torch": str(torch.__version__), "cpus": os.cpu_count()})
    for f in res["folds"]:
        print(f"fold {f['fold']} held out {', '.join(f['held_out'][:3])}{' ...' if len(f['held_out']) > 3 else ''}: "
              f"recall@10 learned {f['learned_recall@10']} polar {f['polar_recall@10']} "
              f"fused {f['fused_recall@10']}", flush=True)
    for st in res["learned"]:
        lm, pm, fm = res["learned"][st], res["polar"][st], res["fused"][st]
        print(f"{st}: {lm['queries']} held-out queries: recall@10 learned {lm['recall@10']:.3f} polar "
              f"{pm['recall@10']:.3f} fused {fm['recall@10']:.3f}; top-1 mate learned {lm['top1']:.3f} "
              f"polar {pm['top1']:.3f} fused {fm['top1']:.3f}", flush=True)
    if a.json:
        _write_json(Path(a.json), res)


def main(argv: Sequence[str] | None = None) -> None:
    from models.breech_face.descriptor import DEFAULT_WEIGHTS

    ap = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2].parent / "shared" / "data"),
                    help="folder holding cartridge/ (the real labelled scans; default ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="weights of the final model (all real data)")
    ap.add_argument("--no-final", action="store_true", help="skip the final model")
    ap.add_argument("--folds", default=None, help="also cross-validate: fold weights and cv.json in this folder")
    ap.add_argument("--ablation", default=None, help=f"cross-validate these variants (comma-separated) of: "
                    f"{', '.join(ABLATIONS)}; results in --folds or out/ablation")
    ap.add_argument("--protocol", choices=("firearm", "study"), default="firearm",
                    help="folds: leave one firearm out (Fadul slide + DFSC gun per fold), or leave one study "
                         "out (all Fadul firearms, then all DFSC/Baldwin ones)")
    ap.add_argument("--cv-folds", default=None, help="only these fold numbers (0-based, comma-separated)")
    ap.add_argument("--cache", default="out/cache", help="preprocessed scans, synthetic pool, pretraining")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 on an idle 2-core machine)")
    ap.add_argument("--workers", type=int, default=1, help="batch-building worker processes")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (quick runs)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--evaluate", default=None, metavar="DIR",
                    help="only evaluate the fold weights saved in DIR (fold-*.pt) on their held-out firearms, "
                         "against the polar-FFT descriptor on the same queries; JSON to --json")
    ap.add_argument("--json", default=None, help="with --evaluate: where the comparison goes")
    a = ap.parse_args(argv)
    progress = not a.no_progress
    cache = Path(a.cache) if a.cache else None

    def adapt(r: Recipe) -> Recipe:
        def f(c):
            return None if c is None else replace(c, seed=a.seed, threads=a.threads, workers=a.workers,
                                                  steps=max(1, int(round(c.steps * a.steps_scale))))
        return replace(r, pretrain=f(r.pretrain), finetune=f(r.finetune))

    import torch

    torch.set_num_threads(a.threads)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    real = load_real_scans(a.data, cache_dir=cache)
    if a.evaluate:
        _evaluate_saved_folds(a, real)
        return
    variants = [v.strip() for v in a.ablation.split(",")] if a.ablation else []
    bad = [v for v in variants if v not in ABLATIONS]
    if bad:
        raise SystemExit(f"unknown ablation(s) {bad}; choose from {', '.join(ABLATIONS)}")
    recipes = {v: adapt(ABLATIONS[v]) for v in variants}
    base = adapt(DEFAULT_RECIPE)
    need_synth = any(r.pretrain and r.pretrain.synth or r.finetune and r.finetune.synth
                     for r in [base, *recipes.values()])
    synth = synthetic_pool(base.synth_firearms, base.synth_firings, cache_dir=cache, workers=max(1, a.threads),
                           progress=progress) if need_synth else None
    from models.breech_face.evaluate import firearm_folds, study_folds

    folds = study_folds(real) if a.protocol == "study" else firearm_folds(real)
    fold_ids = [int(k) for k in a.cv_folds.split(",")] if a.cv_folds else list(range(len(folds)))
    folds = [folds[k] for k in fold_ids]
    env = {"python": platform.python_version(), "torch": str(torch.__version__), "cpus": os.cpu_count(),
           "threads": a.threads, "platform": platform.platform()}
    if a.folds or variants:
        from models.breech_face.evaluate import rotated_studies

        rotated = rotated_studies(a.data, real, seed=a.seed)
        out = Path(a.folds or "out/ablation")
        for v, r in ([("full", base)] if a.folds and not variants else []) + list(recipes.items()):
            res = cross_validate(r, real, synth, folds=folds, fold_ids=fold_ids,
                                 out_dir=out / v if v != "full" or not a.folds else out,
                                 cache_dir=cache, progress=progress, seed=a.seed, name=v, rotated=rotated)
            res.update(recipe=r.as_dict(), env=env, seed=a.seed, protocol=a.protocol)
            _write_json(out / (f"cv-{v}.json" if variants else "cv.json"), res)
            s = res["summary"]
            print(f"{v}: " + "; ".join(f"{st}: recall@10 {m['recall@10']:.3f} top1 {m['top1']:.3f} "
                                       f"({m['queries']} queries)" for st, m in s.items())
                  + f"  [{res['cpu_s']:.0f} CPU s]", flush=True)
    if not a.no_final:
        t, c = time.perf_counter(), _cpu_seconds()
        init, plog = pretrain(base, synth, cache_dir=cache, progress=progress)
        model, log = finetune(base, real, synth, init, progress=progress, desc="final (all real data)")
        meta = {"version": "bf-learned/1", "seed": a.seed, "held_out": [], "trained_on": log.get("trained_on"),
                "scans": [{"name": s.name, "study": s.study, "firearm": s.firearm} for s in real],
                "pretrain": {k: plog.get(k) for k in ("wall_s", "cpu_s")},
                "finetune": {k: log.get(k) for k in ("wall_s", "cpu_s")}, "env": env}
        p = save_checkpoint(a.out, model, base, meta)
        print(f"weights: {p} ({p.stat().st_size / 1e6:.2f} MB); pretrain {plog.get('wall_s')} s wall "
              f"{plog.get('cpu_s')} CPU s, fine-tune {log['wall_s']} s wall {log['cpu_s']} CPU s "
              f"(this run: {time.perf_counter() - t:.0f} s wall, {_cpu_seconds() - c:.0f} CPU s)", flush=True)
    print(f"total: {time.perf_counter() - t0:.0f} s wall, {_cpu_seconds() - c0:.0f} CPU s", flush=True)
