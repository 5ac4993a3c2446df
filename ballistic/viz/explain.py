"""Explanation of a comparison for examiners: reference, aligned target, cell map.

:func:`aligned_target` puts the target into the reference frame with the pair's
registration; :func:`explanation_figure` draws reference, aligned target, an
overlay and the cells coloured by their CMC status, and writes a PNG.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ballistic.cartridge.cmc.pair import PairResult
from ballistic.cartridge.cmc.register import warp_to_reference
from ballistic.preprocess.filters import resample
from ballistic.surface import Surface

__all__ = ["aligned_target", "explanation_figure"]


def aligned_target(reference: Surface, target: Surface, result: PairResult) -> tuple[np.ndarray, np.ndarray]:
    """Reference and target heights at the comparison spacing, target warped onto the reference.

    Returns
    -------
    ref, tgt : ndarray, shape (ny, nx)
        Same grid (the reference's, at ``result.params.spacing_um``); NaN = missing.
    """
    s = result.params.spacing_um
    ref = resample(reference, spacing_um=s).heights
    tgt = resample(target, spacing_um=s).heights
    r = result.registration
    return ref, warp_to_reference(tgt, r.angle_deg, r.dy_um / s, r.dx_um / s, ref.shape)


def _shade(h: np.ndarray) -> np.ndarray:
    lo, hi = np.nanpercentile(h, [2, 98]) if np.isfinite(h).any() else (0.0, 1.0)
    out = np.clip((h - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.where(np.isfinite(out), out, np.nan)


def explanation_figure(reference: Surface, target: Surface, result: PairResult, path: str | Path, *,
                       dpi: int = 110) -> Path:
    """Write a PNG: reference, aligned target, red/cyan overlay, and cells coloured by
    CMC (green), high correlation but incongruent (orange) or low correlation (grey)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ref, tgt = aligned_target(reference, target, result)
    a, b = _shade(ref), _shade(tgt)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    axes[0].imshow(a, cmap=cmap)
    axes[0].set_title(f"reference: {result.reference}")
    axes[1].imshow(b, cmap=cmap)
    r = result.registration
    axes[1].set_title(f"aligned target: {result.target}\nrot {r.angle_deg:.1f} deg, "
                      f"shift ({r.dy_um:.0f}, {r.dx_um:.0f}) um")
    rgb = np.ones(ref.shape + (3,))
    both = np.isfinite(a) & np.isfinite(b)
    rgb[..., 0] = np.where(np.isfinite(a), a, 1.0)
    rgb[..., 1] = np.where(np.isfinite(b), b, 1.0)
    rgb[..., 2] = np.where(np.isfinite(b), b, 1.0)
    rgb[~both & np.isfinite(a)] = [0.85, 0.7, 0.7]
    rgb[~both & np.isfinite(b)] = [0.7, 0.85, 0.85]
    rgb[~np.isfinite(a) & ~np.isfinite(b)] = 1.0
    axes[2].imshow(rgb)
    axes[2].set_title(f"overlay (red = reference, cyan = target)\nregistration NCC {r.ncc:.2f}")
    axes[3].imshow(a, cmap=cmap)
    hc = result.high[0]
    for c, is_cmc in zip(result.forward.cells, hc.cmc_mask):
        corr = c.corr if np.isfinite(c.corr) else -1
        color = "lime" if is_cmc else ("orange" if corr >= result.params.corr_threshold else "0.5")
        axes[3].add_patch(Rectangle((c.x0_px - 0.5, c.y0_px - 0.5), c.size_px, c.size_px, fill=False,
                                    edgecolor=color, lw=1.6 if is_cmc else 0.8))
        if np.isfinite(c.corr):
            axes[3].text(c.x0_px + c.size_px / 2, c.y0_px + c.size_px / 2, f"{c.corr:.2f}", color=color,
                         ha="center", va="center", fontsize=6)
    verdict = "IDENTIFICATION (C >= %d)" % result.params.decision_threshold if result.identification \
        else "no identification"
    axes[3].set_title(f"cells: {result.cmc_count} CMC ({hc.rule})\n{verdict}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
