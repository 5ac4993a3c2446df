"""The ``ballistic`` command line (typer)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Open ballistic comparison and correlation.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks on labelled reference data.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def compare(reference: Path, target: Path,
            figure: Optional[Path] = typer.Option(None, help="write the explanation figure (PNG) here"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="write the full result (cells) as JSON"),
            kind: str = typer.Option("auto", help="auto | raw | processed"),
            thorough: bool = typer.Option(False, help="search the whole circle at the coarse spacing (about 8x "
                                                      "slower; no calibrated LR): a second look at a doubted pair")) -> None:
    """Compare two breech-face scans (x3p) and print the CMC result."""
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.io.x3p import read_x3p
    for out in (json_out, figure):  # create the output folders first: a long comparison then a crash helps nobody
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
    a = preprocess_cartridge(read_x3p(reference), kind=kind)
    b = preprocess_cartridge(read_x3p(target), kind=kind)
    r = compare_pair(a.with_heights(a.heights, source=reference.stem), b.with_heights(b.heights, source=target.stem),
                     search="thorough" if thorough else "standard")
    typer.echo(json.dumps(r.summary(), indent=2))
    if json_out:
        json_out.write_text(json.dumps(r.to_dict(), indent=2))
        typer.echo(f"json: {json_out}")
    if figure:
        from ballistic.viz.explain import explanation_figure
        explanation_figure(a, b, r, figure)
        typer.echo(f"figure: {figure}")


@bench_app.command("cartridge")
def bench_cartridge(directory: Path, labels: Path = typer.Option(..., help="labels CSV (path/scan, slide)"),
                    json_out: Path = typer.Option(..., "--json", help="summary JSON; CSV and plots go beside it"),
                    reference: Optional[Path] = typer.Option(None, help="published per-pair counts (NIST CSV)"),
                    rotate_random: bool = typer.Option(False, "--rotate-random", help="rotate each scan randomly"),
                    seed: int = 0, workers: Optional[int] = None, limit: Optional[int] = None) -> None:
    """Compare all pairs of a labelled cartridge-case folder; print and write the summary."""
    from ballistic.bench.cartridge import run_cartridge_bench
    s = run_cartridge_bench(directory, labels, json_out=json_out, reference_csv=reference,
                            rotate_random=rotate_random, seed=seed, workers=workers, limit=limit)
    keys = ["pairs", "auc", "eer", "errors_at_6", "km_cmc_min", "km_cmc_median", "knm_cmc_max",
            "spearman_vs_reference", "spearman_vs_reference_same_source", "pairs_per_second",
            "pairs_per_second_end_to_end", "workers"]
    for k in keys:
        if k in s:
            typer.echo(f"{k:>24}: {s[k]}")
    for k, v in (s.get("stage_seconds") or {}).items():
        typer.echo(f"{'seconds ' + k:>24}: {v if v is None else round(v, 2)}")
    m = s.get("pair_model") or {}
    if m.get("available"):
        for k in ("auc", "eer", "errors_at_0", "false_positives_at_0", "false_negatives_at_0"):
            typer.echo(f"{'model ' + k:>24}: {m[k]}")
    lr = s.get("likelihood_ratio", {})
    for k in ("cllr", "log10_lr_min", "log10_lr_max", "same_source_lr_gt_1", "different_source_lr_lt_1"):
        if k in lr:
            typer.echo(f"{'LR ' + k:>24}: {lr[k]}")


def _draw_seeds(text: Optional[str]) -> Optional[list[int]]:
    """The rotation draws of a bench's ``--seeds`` (None when not given); a malformed list is a usage error."""
    if text is None:
        return None
    from ballistic.bench.draws import parse_seeds
    try:
        return parse_seeds(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--seeds")


@bench_app.command("generalization")
def bench_generalization(data: Path = typer.Option(Path("../shared/data"), help="data root holding cartridge/fadul, "
                                                   "cartridge/dfsc, cartridge/baldwin"),
                         json_out: Path = typer.Option(Path("benchmarks/results/generalization.json"), "--json",
                                                       help="summary JSON"),
                         cache: Path = typer.Option(Path("out/generalization"), help="per-pair cache folder"),
                         workers: int = 2, seed: int = 0,
                         fit: bool = typer.Option(False, "--fit", help="also fit and write the shipped pair model"),
                         model_out: Optional[Path] = typer.Option(None, help="where --fit writes the model "
                                                                  "(default: ballistic/cartridge/score/data/pair_model.json)"),
                         search: str = typer.Option("standard", help="registration of every pair: standard | "
                                                    "thorough (the whole circle at the coarse spacing, ~8x slower)"),
                         seeds: Optional[str] = typer.Option(None, help="several rotation draws, e.g. '0-9': every "
                                                             "protocol per draw and its mean / range over the draws "
                                                             "(instead of --seed)")) -> None:
    """Train on some labelled cartridge sets, test on others: pair model and CMC rule side by side."""
    from ballistic.bench.generalization import run_generalization_bench, run_generalization_draws
    draws = _draw_seeds(seeds)
    if draws is not None:
        if fit:
            raise typer.BadParameter("the shipped model is fitted on one draw (--seed); drop --seeds to fit",
                                     param_hint="--fit")
        run_generalization_draws(data, seeds=draws, json_out=json_out, cache_dir=cache, workers=workers,
                                 log=typer.echo, search=search)
        return
    run_generalization_bench(data, json_out=json_out, cache_dir=cache, workers=workers, seed=seed, fit=fit,
                             model_out=model_out, log=typer.echo, search=search)


@bench_app.command("bullet")
def bench_bullet(directory: Path,
                 labels: Path = typer.Option(..., help="labels CSV (path, same_source_group, barrel, bullet, land)"),
                 json_out: Path = typer.Option(..., "--json", help="summary JSON; CSVs and plots go beside it"),
                 threshold: float = typer.Option(0.8, help="bullet-level decision: same barrel when SAM >= this"),
                 alpha: float = typer.Option(0.01, help="phase-test decision: same barrel when its p-value <= this"),
                 step_um: float = typer.Option(50.0, help="distance between crosscuts along each land, um"),
                 grooves: Path = typer.Option(None, help="manually chosen grooves CSV (filename, left_groove, "
                                                         "right_groove, crosscut_y) to check the grooves found"),
                 progress: bool = typer.Option(False, "--progress", help="show progress bars")) -> None:
    """Compare every land pair and bullet pair within each set of a labelled bullet folder."""
    from ballistic.bench.bullet import format_bullet_summary, run_bullet_bench
    s = run_bullet_bench(directory, labels, json_out=json_out, threshold=threshold, alpha=alpha, step_um=step_um,
                         grooves_csv=grooves, progress=progress)
    typer.echo(format_bullet_summary(s))


@bench_app.command("retrieval")
def bench_retrieval(directory: Path, labels: Path = typer.Option(..., help="labels CSV (path/scan, slide)"),
                    json_out: Path = typer.Option(..., "--json", help="summary JSON"),
                    distractors: str = typer.Option("1000,10000,100000", help="comma-separated distractor counts"),
                    k: int = typer.Option(1000, help="FAISS candidates per query (stage 1)"),
                    screen_k: int = typer.Option(50, help="kept by the 100 um rotation screen (0 = no screen)"),
                    cmc_k: int = typer.Option(10, help="candidates re-ranked with CMC (stage 3)"),
                    k_sweep: str = typer.Option("100,250,500,1000", help="K values rerun at the largest N"),
                    factory: str = typer.Option("HNSW32", help="FAISS index factory string"),
                    nprobe: int = typer.Option(32, help="IVF lists searched per query row (IVF factories)"),
                    ef_search: int = typer.Option(128, help="HNSW efSearch (HNSW factories)"),
                    whiten_dim: int = 128, workers: int = 2, seed: int = 0,
                    cache: Optional[Path] = typer.Option(None, help="distractor descriptor cache folder"),
                    descriptor: str = typer.Option("phase,polar", help="descriptors benchmarked side by side "
                                                   "(comma-separated registry names: learned, polar, phase)"),
                    fold_models: Optional[Path] = typer.Option(
                        None, help="folder of the learned descriptor's cross-validation weights (python -m "
                        "models.train --folds DIR): each query is described by the model that never saw its "
                        "firearm, and only held-out scans query (every arm); without it the shipped model "
                        "answers every query (not held out)"),
                    e2e: bool = typer.Option(True, "--e2e/--faiss-only",
                                             help="also run the re-ranking stages (recall after CMC, latency)"),
                    faiss_ks: str = typer.Option("10,25,50,100,200,500,1000", help="K of the FAISS-stage recall"),
                    screen_step: Optional[float] = typer.Option(None, help="rotation step of the screen (degrees; "
                                                                "default RetrievalParams')"),
                    prior_step: Optional[float] = typer.Option(None, help="rotation step of the stage-2 prior "
                                                               "(degrees; default RetrievalParams')"),
                    prior: bool = typer.Option(True, "--prior/--no-prior", help="run the stage-2 rotation prior "
                                               "(without it the comparison takes the top cmc-k of the earlier stages)"),
                    pose_window: Optional[float] = typer.Option(
                        None, help="search the rotation stages and the comparison only within this many degrees of "
                        "the pose the descriptor found for each candidate (RetrievalParams.pose_window_deg; a "
                        "descriptor that searches rotations, e.g. phase)"),
                    thumb_spacings: str = typer.Option("100", help="spacings (um) at which the distractors' coarse "
                                                       "height maps are stored for the rotation stages (100: the "
                                                       "screen's; 100,50 serves the prior too)"),
                    stored_views: bool = typer.Option(
                        True, "--stored-views/--regenerate-views", help="the comparison loads each candidate's "
                        "prepared views as the service does (a distractor's made and stored in the cache folder the "
                        "first time it is a candidate), or regenerates and prepares it at every comparison"),
                    seeds: Optional[str] = typer.Option(None, help="several rotation draws, e.g. '0-9': one run "
                                                        "per draw (its JSON beside --json, _seed<S>) and each "
                                                        "figure's mean / range over them (instead of --seed)"),
                    ) -> None:
    """Hide the real scans among synthetic distractors; recall of the mates and query latency per descriptor."""
    from ballistic.bench.retrieval import run_retrieval_bench, run_retrieval_draws

    def ints(x: str) -> tuple[int, ...]:
        return tuple(int(float(v)) for v in x.split(",") if v.strip())

    bench = dict(distractors=ints(distractors), k=k, cmc_k=cmc_k, screen_k=screen_k, k_sweep=ints(k_sweep),
                 factory=factory, nprobe=nprobe, ef_search=ef_search, whiten_dim=whiten_dim, workers=workers,
                 cache_dir=cache, descriptors=tuple(v.strip() for v in descriptor.split(",") if v.strip()),
                 fold_models=fold_models, e2e=e2e, faiss_ks=ints(faiss_ks), screen_step_deg=screen_step,
                 prior_step_deg=prior_step, prior=prior, pose_window_deg=pose_window,
                 thumb_spacings=tuple(float(v) for v in thumb_spacings.split(",") if v.strip()),
                 stored_views=stored_views)
    draws = _draw_seeds(seeds)
    if draws is not None:
        run_retrieval_draws(directory, labels, seeds=draws, json_out=json_out, **bench)
        return
    run_retrieval_bench(directory, labels, json_out=json_out, seed=seed, **bench)


index_app = typer.Typer(help="Descriptor index of breech-face scans (build, inspect, search).", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(directory: Path, out: Path = typer.Option(..., help="index folder (snapshots are written here)"),
                factory: str = typer.Option("Flat", help="FAISS index factory string"),
                calibre: Optional[str] = None, firing_pin_shape: Optional[str] = None,
                whiten_dim: int = typer.Option(0, help="PCA-whiten to this many dimensions (0 = raw descriptors)"),
                kind: str = typer.Option("auto", help="auto | raw | processed"),
                descriptor: Optional[str] = typer.Option(None, help="registry name (polar, learned); default "
                                                         "the default descriptor ($BALLISTIC_DESCRIPTOR)")) -> None:
    """Describe every x3p scan in DIRECTORY and save an index (ids = order of the sorted file names)."""
    import numpy as np

    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.io.x3p import read_x3p
    from ballistic.retrieval.descriptor import PCAWhitener
    from ballistic.retrieval.index import VectorIndex, partition_key
    from ballistic.retrieval.registry import default_descriptor, load_descriptor
    paths = sorted(directory.glob("*.x3p"))
    if not paths:
        raise typer.BadParameter(f"no .x3p files in {directory}")
    desc = load_descriptor(descriptor) if descriptor else default_descriptor()
    X = np.stack([desc(preprocess_cartridge(read_x3p(p), kind=kind)) for p in paths])
    w = PCAWhitener.fit(X, dim=whiten_dim, descriptor=desc.name) if whiten_dim else None
    V = w.transform(X) if w else X
    idx = VectorIndex(V.shape[1], factory=factory)
    part = partition_key(calibre, firing_pin_shape)
    idx.add(np.arange(len(paths)), V, partition=part)
    idx.meta.update(descriptor=desc.name, paths=[str(p.resolve()) for p in paths], kind=kind)
    if w:
        import io
        buf = io.BytesIO()
        np.savez(buf, mean=w.mean, components=w.components, eigenvalues=w.eigenvalues, eps=w.eps)
        idx.attachments["whitener.npz"] = buf.getvalue()
    sid = idx.save(out)
    typer.echo(f"{len(idx)} scans in partition {part!r}; snapshot {sid} in {out}")


def _load_index(folder: Path):
    import io

    import numpy as np

    from ballistic.retrieval.descriptor import PCAWhitener
    from ballistic.retrieval.index import VectorIndex
    idx = VectorIndex.load(folder)
    w = None
    if "whitener.npz" in idx.attachments:
        with np.load(io.BytesIO(idx.attachments["whitener.npz"])) as z:
            w = PCAWhitener(z["mean"], z["components"], z["eigenvalues"], float(z["eps"]))
    return idx, w


def _descriptor_of(idx):
    """The registered descriptor an index was built with (by its stored name)."""
    from ballistic.errors import DescriptorError
    from ballistic.retrieval.registry import available_descriptors, load_descriptor

    stored = idx.meta.get("descriptor")
    for name in sorted(available_descriptors(), key=lambda n: n != "polar"):     # polar first: no torch to load
        try:
            d = load_descriptor(name)
        except DescriptorError:
            continue
        if d.name == stored:
            return d
    raise typer.BadParameter(f"the index was built with descriptor {stored!r}, which is not available here "
                             f"(available: {', '.join(available_descriptors())}); rebuild it")


@index_app.command("info")
def index_info(folder: Path) -> None:
    """Print what a saved index holds."""
    idx, w = _load_index(folder)
    typer.echo(json.dumps({"snapshot_id": idx.snapshot_id, "dim": idx.dim, "factory": idx.factory,
                           "metric": idx.metric, "count": len(idx),
                           "partitions": {p: idx.count(p) for p in idx.partitions()},
                           "descriptor": idx.meta.get("descriptor"), "whitened": w is not None}, indent=2))


class _PathFetch:
    def __init__(self, paths: list[str], kind: str) -> None:
        self.paths, self.kind = paths, kind

    def __call__(self, id: int):
        from ballistic.cartridge.breech_face import preprocess_cartridge
        from ballistic.io.x3p import read_x3p
        return preprocess_cartridge(read_x3p(self.paths[int(id)]), kind=self.kind)


@index_app.command("search")
def index_search(folder: Path, query: Path, k: int = typer.Option(10, help="candidates (stage 1)"),
                 cmc_k: int = typer.Option(3, help="candidates re-ranked with CMC (0 = descriptor only)"),
                 partition: Optional[str] = typer.Option(None, help="partition (default: all)"),
                 workers: int = 1, kind: str = typer.Option("auto", help="auto | raw | processed")) -> None:
    """Search a saved index with one scan: descriptor shortlist, rotation prior, CMC re-rank."""
    from ballistic.cartridge.breech_face import preprocess_cartridge
    from ballistic.io.x3p import read_x3p
    from ballistic.retrieval.search import RetrievalParams, Retriever
    idx, w = _load_index(folder)
    paths = idx.meta.get("paths") or []
    q = preprocess_cartridge(read_x3p(query), kind=kind)
    params = RetrievalParams(k=k, cmc_k=cmc_k if paths else 0, prior=bool(paths) and cmc_k > 0, workers=workers)
    with Retriever(idx, _PathFetch(paths, idx.meta.get("kind", "auto")), descriptor=_descriptor_of(idx), whitener=w,
                   params=params) as r:
        res = r.query(q, partition=partition)
    for c in res.candidates:
        name = Path(paths[c.id]).stem if c.id < len(paths) else str(c.id)
        typer.echo(f"{c.rank:>3}  {name:<24} descriptor {c.descriptor_score:7.4f}  prior_ncc "
                   f"{c.prior_ncc:6.3f}  CMC {'' if c.cmc_count is None else c.cmc_count}")
    typer.echo(f"seconds: {json.dumps({s: round(v, 3) for s, v in res.seconds.items()})}")


if __name__ == "__main__":  # pragma: no cover
    app()
