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
            kind: str = typer.Option("auto", help="auto | raw | processed")) -> None:
    """Compare two breech-face scans (x3p) and print the CMC result."""
    from ballistic.correlate import compare_pair
    from ballistic.io import read_x3p
    from ballistic.preprocess import preprocess_cartridge
    a = preprocess_cartridge(read_x3p(reference), kind=kind)
    b = preprocess_cartridge(read_x3p(target), kind=kind)
    r = compare_pair(a.with_heights(a.heights, source=reference.stem), b.with_heights(b.heights, source=target.stem))
    typer.echo(json.dumps(r.summary(), indent=2))
    if json_out:
        json_out.write_text(json.dumps(r.to_dict(), indent=2))
    if figure:
        from ballistic.explain import explanation_figure
        explanation_figure(a, b, r, figure)
        typer.echo(f"figure: {figure}")


@bench_app.command("cartridge")
def bench_cartridge(directory: Path, labels: Path = typer.Option(..., help="labels CSV (path/scan, slide)"),
                    json_out: Path = typer.Option(..., "--json", help="summary JSON; CSV and plots go beside it"),
                    reference: Optional[Path] = typer.Option(None, help="published per-pair counts (NIST CSV)"),
                    rotate_random: bool = typer.Option(False, "--rotate-random", help="rotate each scan randomly"),
                    seed: int = 0, workers: Optional[int] = None, limit: Optional[int] = None) -> None:
    """Compare all pairs of a labelled cartridge-case folder; print and write the summary."""
    from ballistic.bench import run_cartridge_bench
    s = run_cartridge_bench(directory, labels, json_out=json_out, reference_csv=reference,
                            rotate_random=rotate_random, seed=seed, workers=workers, limit=limit)
    keys = ["pairs", "auc", "eer", "errors_at_6", "km_cmc_min", "km_cmc_median", "knm_cmc_max",
            "spearman_vs_reference", "spearman_vs_reference_same_source", "pairs_per_second", "workers"]
    for k in keys:
        if k in s:
            typer.echo(f"{k:>24}: {s[k]}")
    lr = s.get("likelihood_ratio", {})
    for k in ("cllr", "log10_lr_min", "log10_lr_max", "same_source_lr_gt_1", "different_source_lr_lt_1"):
        if k in lr:
            typer.echo(f"{'LR ' + k:>24}: {lr[k]}")


@bench_app.command("bullet")
def bench_bullet(directory: Path,
                 labels: Path = typer.Option(..., help="labels CSV (path, same_source_group, barrel, bullet, land)"),
                 json_out: Path = typer.Option(..., "--json", help="summary JSON; CSVs and plots go beside it"),
                 threshold: float = typer.Option(0.8, help="bullet-level decision: same barrel when SAM >= this"),
                 step_um: float = typer.Option(50.0, help="distance between crosscuts along each land, um"),
                 progress: bool = typer.Option(False, "--progress", help="show progress bars")) -> None:
    """Compare every land pair and bullet pair within each set of a labelled bullet folder."""
    from ballistic.bullet import format_bullet_summary, run_bullet_bench
    s = run_bullet_bench(directory, labels, json_out=json_out, threshold=threshold, step_um=step_um,
                         progress=progress)
    typer.echo(format_bullet_summary(s))


if __name__ == "__main__":  # pragma: no cover
    app()
