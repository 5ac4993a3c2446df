"""Benchmark plots (score histograms, ROC curves, bullet SAMs), written as PNG next to a benchmark's JSON.

matplotlib is imported when a plot is drawn (Agg backend), never at import.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ballistic.bullet.sam import BULLET_SAM_THRESHOLD
from ballistic.stats.metrics import roc_auc, roc_curve
from ballistic.viz.render import save_figure

__all__ = ["cartridge_bench_plots", "bullet_bench_plots"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_prefix: Path, suffix: str) -> str:
    """Lay out, write ``<out_prefix><suffix>`` at 110 dpi, close; returns the path."""
    fig.tight_layout()
    return str(save_figure(fig, out_prefix.with_name(out_prefix.name + suffix), dpi=110))


def cartridge_bench_plots(rows: list[dict], out_prefix: Path) -> list[str]:
    """CMC-count histogram by ground truth and ROC of the similarity: ``<prefix>_hist.png``, ``<prefix>_roc.png``."""
    plt = _pyplot()
    y = np.array([r["same_source"] for r in rows], dtype=bool)
    cmc = np.array([r["cmc_count"] for r in rows], dtype=float)
    sim = np.array([r["similarity"] for r in rows], dtype=float)
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.arange(-0.5, max(cmc.max(), 6) + 1.5)
    ax.hist(cmc[~y], bins=bins, alpha=0.7, label=f"different source (n={int((~y).sum())})", color="tab:blue")
    ax.hist(cmc[y], bins=bins, alpha=0.7, label=f"same source (n={int(y.sum())})", color="tab:red")
    ax.axvline(5.5, color="k", ls="--", lw=1, label="C >= 6")
    ax.set_xlabel("CMC count")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.legend()
    files.append(_save(fig, out_prefix, "_hist.png"))
    fpr, tpr, _ = roc_curve(sim, y)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, AUC = {roc_auc(sim, y):.4f}")
    files.append(_save(fig, out_prefix, "_roc.png"))
    return files


def bullet_bench_plots(rows: list[dict], bullets: list[dict], out_prefix: Path) -> list[str]:
    """Land-score histograms and ROC per set, bullet SAMs: ``<prefix>_hist.png``, ``_roc.png``, ``_bullets.png``."""
    plt = _pyplot()
    sets = sorted({r["set"] for r in rows})
    files = []
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.8), squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, st in zip(axes[0], sets):
        s = np.array([r["score"] for r in rows if r["set"] == st])
        y = np.array([r["same_source"] for r in rows if r["set"] == st], dtype=bool)
        ax.hist(s[~y], bins=bins, alpha=0.7, color="tab:blue", label=f"different source (n={int((~y).sum())})")
        ax.hist(s[y], bins=bins, alpha=0.7, color="tab:red", label=f"same source (n={int(y.sum())})")
        ax.set_title(st)
        ax.set_xlabel("land score (ccf)")
        ax.set_ylabel("land pairs")
        ax.legend(fontsize=8)
    files.append(_save(fig, out_prefix, "_hist.png"))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for st in sets:
        s = np.array([r["score"] for r in rows if r["set"] == st])
        y = np.array([r["same_source"] for r in rows if r["set"] == st], dtype=bool)
        if y.any() and not y.all():
            fpr, tpr, _ = roc_curve(s, y)
            ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{st} AUC={roc_auc(s, y):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("land-to-land ROC")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:  # e.g. Houston: land correspondence unknown, no land-level ground truth
        ax.text(0.5, 0.5, "no land-level ground truth", ha="center", va="center", transform=ax.transAxes)
    files.append(_save(fig, out_prefix, "_roc.png"))
    if bullets:
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(bullets) + 1.2))
        labels = [f"{b['set']}: {b['bullet_a']} vs {b['bullet_b']}" for b in bullets]
        vals = [b["sam"] for b in bullets]
        colors = ["tab:red" if b["same_barrel"] else "tab:blue" for b in bullets]
        ax.barh(range(len(bullets)), vals, color=colors)
        ax.axvline(BULLET_SAM_THRESHOLD, color="k", ls="--", lw=1)
        ax.set_yticks(range(len(bullets)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlabel("bullet score (SAM of land ccf); red = same barrel")
        files.append(_save(fig, out_prefix, "_bullets.png"))
    return files
