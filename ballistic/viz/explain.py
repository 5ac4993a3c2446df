"""Explanation of a comparison for examiners: reference, aligned target, cell map.

:func:`aligned_target` puts the target into the reference frame with the pair's
registration; :func:`explanation_figure` draws, for both directions, the cells coloured by their CMC
status on one scan, the other registered onto it and their overlay, with a legend, scale bars, a
height colour bar and (when given) the likelihood ratio, and writes a PNG. :func:`firing_pin_figure`
shows two firing-pin impressions, the target registered onto the reference the way
:func:`~ballistic.cartridge.firing_pin.compare_firing_pins` registered it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ballistic.cartridge.cmc.pair import PairResult
from ballistic.cartridge.cmc.register import warp_to_reference
from ballistic.preprocess.filters import resample
from ballistic.surface import Surface
from ballistic.viz.render import save_figure

__all__ = ["aligned_target", "explanation_figure", "firing_pin_figure", "CELL_COLOURS"]


def aligned_target(reference: Surface, target: Surface, result: PairResult, *,
                   direction: str = "forward") -> tuple[np.ndarray, np.ndarray]:
    """Reference and target heights at the comparison spacing, target warped onto the reference.

    Returns
    -------
    ref, tgt : ndarray, shape (ny, nx)
        Same grid (the reference's, at ``result.params.spacing_um``); NaN = missing.
        A registration with ``mirrored`` ran on the target flipped top-bottom: with ``direction``
        "forward" (``result.registration`` maps the target onto the reference) the target is shown
        flipped; with "backward" (it maps the pair's reference, passed here as ``target``, onto the
        flipped pair target, passed as ``reference``) the fixed side is.
    """
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    reg = result.registration
    m = bool(getattr(reg, "mirrored", False))
    return _aligned(reference, target, reg, result.params.spacing_um, flip=m and direction == "forward",
                    flip_reference=m and direction == "backward")


def _aligned(reference: Surface, target: Surface, reg, spacing_um: float, *, flip: bool = False,
             flip_reference: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``flip`` / ``flip_reference``: take the target / the reference with its rows reversed (the
    mirrored scan of a registration with ``mirrored``: the target forward, the fixed side backward)."""
    ref = resample(reference, spacing_um=spacing_um).heights
    tgt = resample(target, spacing_um=spacing_um).heights
    if flip_reference:
        ref = ref[::-1]
    if flip:
        tgt = tgt[::-1]
    return ref, warp_to_reference(tgt, reg.angle_deg, reg.dy_um / spacing_um, reg.dx_um / spacing_um, ref.shape)


#: cell colours: congruent (CMC), high correlation but not congruent, low correlation
CELL_COLOURS = {"cmc": "#00c853", "incongruent": "#ff6d00", "low": "#2979ff"}


def _scale_bar_um(width_um: float) -> float:
    """A round length (1, 2, 5 x 10^k um) near a quarter of the panel width."""
    target = max(width_um / 4.0, 1e-9)
    k = 10.0 ** np.floor(np.log10(target))
    return float(max((m * k for m in (1, 2, 5, 10) if m * k <= target), default=k))


def _height_label(surface: Surface) -> str:
    pre = str((surface.meta or {}).get("preprocess", ""))
    return "contrast (robust z-score)" if pre.startswith("image2d") else "height (µm, band-passed)"


def explanation_figure(reference: Surface, target: Surface, result: PairResult, path: str | Path, *,
                       dpi: int = 150, log10_lr: float | None = None,
                       log10_lr_interval: tuple[float | None, float | None] | None = None,
                       calibration_id: str | None = None) -> Path:
    """Write the explanation figure of a comparison as a PNG an examiner can put in a report.

    One row per direction (the pair's count is the smaller of the two): the scan whose cells are searched,
    with each cell outlined by its status and labelled with its correlation; the other scan registered onto
    it (rotation and shift in the title); a red/cyan overlay. Heights share one grey scale with a colour bar
    (um, or contrast for 2D images); every panel has a scale bar. The header states the CMC count of each
    direction, the decision, the similarity and, when given, the log10 likelihood ratio with its interval
    and calibration; a legend explains the cell colours and the congruence rule.

    Parameters
    ----------
    reference, target : Surface
        The preprocessed surfaces that were compared (as passed to ``compare_pair``).
    result : PairResult
        ``compare_pair(reference, target)``.
    path : str or Path
        Output PNG; its folder is created.
    dpi : int, keyword-only
    log10_lr : float, optional, keyword-only
        The pair's calibrated log10 likelihood ratio, shown in the header.
    log10_lr_interval : (low, high), optional, keyword-only
        Its 95% interval.
    calibration_id : str, optional, keyword-only
        The calibration behind it.

    Returns
    -------
    Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    p = result.params
    sp = float(p.spacing_um)
    rows = [("forward", reference, target, result.reference, result.target, result.forward, result.high[0]),
            ("backward", target, reference, result.target, result.reference, result.backward, result.high[1])]
    views = []
    mirror = bool(getattr(result.registration, "mirrored", False))   # cells ran on the target mirrored
    for name, a_s, b_s, a_name, b_name, d, hc in rows:
        a, b = _aligned(a_s, b_s, d.registration, sp, flip=mirror and name == "forward",
                        flip_reference=mirror and name == "backward")
        views.append((name, a, b, a_name, b_name, d, hc))
    finite = np.concatenate([v[i][np.isfinite(v[i])] for v in views for i in (1, 2)])
    lim = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    lim = lim if lim > 0 else 1.0
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")

    fig = plt.figure(figsize=(15, 11.2))
    gs = fig.add_gridspec(2, 4, width_ratios=[1, 1, 1, 0.05], left=0.02, right=0.95, top=0.86, bottom=0.12,
                          wspace=0.06, hspace=0.28)
    # header: the result in words
    verdict = (f"IDENTIFICATION (C = {result.cmc_count} >= {p.decision_threshold})" if result.identification
               else f"no identification (C = {result.cmc_count} < {p.decision_threshold})")
    head = [f"{result.reference}  vs  {result.target}",
            f"{verdict}    congruent matching cells: forward {result.high[0].count}, backward {result.high[1].count} "
            f"(the pair counts the smaller)    similarity {result.similarity:.2f}"]
    if log10_lr is not None:
        lr = f"log10 likelihood ratio {log10_lr:+.2f}"
        if log10_lr_interval is not None and None not in tuple(log10_lr_interval):
            lo, hi = log10_lr_interval
            lr += f"  (95% interval {lo:+.2f} to {hi:+.2f})"
        if calibration_id:
            lr += f"    calibration {calibration_id}"
        head.append(lr)
    fig.text(0.02, 0.975, head[0], fontsize=15, fontweight="bold", va="top")
    fig.text(0.02, 0.94, "\n".join(head[1:]), fontsize=11.5, va="top", linespacing=1.5)

    for r, (name, a, b, a_name, b_name, d, hc) in enumerate(views):
        reg = d.registration
        axes = [fig.add_subplot(gs[r, c]) for c in range(3)]
        im = axes[0].imshow(a, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        axes[1].imshow(b, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
        for c, is_cmc in zip(d.cells, hc.cmc_mask):
            corr = c.corr if np.isfinite(c.corr) else -1.0
            kind = "cmc" if is_cmc else ("incongruent" if corr >= p.corr_threshold else "low")
            axes[0].add_patch(Rectangle((c.x0_px - 0.5, c.y0_px - 0.5), c.size_px, c.size_px, fill=False,
                                        edgecolor=CELL_COLOURS[kind], lw=2.2 if is_cmc else 1.4))
            if np.isfinite(c.corr):
                axes[0].text(c.x0_px + c.size_px / 2 - 0.5, c.y0_px + c.size_px / 2 - 0.5, f"{c.corr:.2f}",
                             ha="center", va="center", fontsize=7.5, color="black",
                             bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=CELL_COLOURS[kind], lw=1,
                                       alpha=0.85))
        axes[0].set_title(f"{name}: cells of {a_name}\n{hc.count} congruent of {len(d.cells)} cells ({hc.rule})",
                          fontsize=10.5)
        axes[1].set_title(f"{b_name} registered onto it\n{'mirrored, ' if mirror else ''}"
                          f"rotated {reg.angle_deg:.1f} deg, shift (y, x) = "
                          f"({reg.dy_um:.0f}, {reg.dx_um:.0f}) µm", fontsize=10.5)
        both = np.isfinite(a) & np.isfinite(b)
        an = np.clip((a + lim) / (2 * lim), 0, 1)
        bn = np.clip((b + lim) / (2 * lim), 0, 1)
        rgb = np.ones(a.shape + (3,))
        rgb[..., 0] = np.where(both, an, 1.0)
        rgb[..., 1] = np.where(both, bn, 1.0)
        rgb[..., 2] = np.where(both, bn, 1.0)
        rgb[~both & np.isfinite(a)] = [0.9, 0.75, 0.75]
        rgb[~both & np.isfinite(b)] = [0.75, 0.9, 0.9]
        axes[2].imshow(rgb, interpolation="nearest")
        axes[2].set_title(f"overlay: red = {a_name}, cyan = {b_name}\n(grey where they agree; registration "
                          f"NCC {reg.ncc:.2f})", fontsize=10.5)
        ny, nx = a.shape
        bar_um = _scale_bar_um(nx * sp)
        bar_px = bar_um / sp
        label = f"{bar_um / 1000:g} mm" if bar_um >= 1000 else f"{bar_um:g} µm"
        for ax in axes:  # scale bar under each panel (never over a cell): x in pixels, y in axes fractions
            ax.set_xticks([])
            ax.set_yticks([])
            tr = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
            ax.plot([0, bar_px], [-0.03, -0.03], color="black", lw=4, solid_capstyle="butt", transform=tr,
                    clip_on=False)
            ax.text(bar_px + 0.02 * nx, -0.03, label, ha="left", va="center", fontsize=9.5, transform=tr)
        cb = fig.colorbar(im, cax=fig.add_subplot(gs[r, 3]))
        cb.set_label(_height_label(a_s if name == "forward" else b_s), fontsize=10)

    handles = [Patch(fill=False, edgecolor=CELL_COLOURS["cmc"], lw=2.2,
                     label=f"congruent matching cell (CMC): correlation >= {p.corr_threshold:g} and its pose "
                           f"agrees with the consensus\n(shift within {p.translation_threshold_um:g} µm, rotation "
                           f"within {p.angle_threshold_deg:g} deg)"),
               Patch(fill=False, edgecolor=CELL_COLOURS["incongruent"], lw=1.4,
                     label=f"correlation >= {p.corr_threshold:g} but pose not congruent"),
               Patch(fill=False, edgecolor=CELL_COLOURS["low"], lw=1.4,
                     label=f"correlation < {p.corr_threshold:g}"),
               Line2D([], [], color="none", label=f"number in a cell: its best correlation; cells need "
                                                  f"{p.min_cell_valid:.0%} measured points;\nwhite: not measured")]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.02, 0.005), ncol=2, fontsize=9.5,
               frameon=False, handlelength=2.2, columnspacing=3.0)
    return save_figure(fig, path, dpi=dpi)  # atomic: the service caches these figures


def firing_pin_figure(reference: Surface, target: Surface, registration, path: str | Path, *, score: float,
                      spacing_um: float = 6.25, labels: tuple[str, str] = ("reference", "target"),
                      dpi: int = 100) -> Path:
    """Write a PNG of two firing-pin impressions, shaded, the target registered onto the reference.

    Parameters
    ----------
    reference, target : Surface
        Extracted impressions (:func:`~ballistic.cartridge.firing_pin.extract_firing_pin`).
    registration : mapping or object
        ``angle_deg``, ``dy_um``, ``dx_um`` of the comparison (a
        :class:`~ballistic.cartridge.firing_pin.FiringPinResult`, or its stored dict): the target is warped
        onto the reference with them (:func:`~ballistic.cartridge.cmc.register.warp_to_reference`), at
        ``spacing_um`` (the comparison's fine spacing, um).
    path : str or Path
    score : float, keyword-only
        The registered correlation shown in the title.
    labels : (str, str), keyword-only

    Returns
    -------
    Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ballistic.viz.render import shade

    get = registration.get if hasattr(registration, "get") else (lambda k, _r=registration: getattr(_r, k, None))
    ang = float(get("angle_deg") or 0.0)
    dy, dx = float(get("dy_um") or 0.0), float(get("dx_um") or 0.0)
    ref = resample(reference, spacing_um=spacing_um)
    tgt = resample(target, spacing_um=spacing_um).heights
    warped = Surface(warp_to_reference(tgt, ang, dy / spacing_um, dx / spacing_um, ref.shape), spacing_um)
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="white")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, s_, t in ((axes[0], ref, f"{labels[0]} (reference)"),
                      (axes[1], warped, f"{labels[1]} registered: {ang:.1f} deg, ({dx:.0f}, {dy:.0f}) um")):
        ax.imshow(shade(s_, z_factor=5.0), cmap=cmap, vmin=0, vmax=1)
        ax.set_title(t, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"firing pin: registered correlation {score:.3f} (mean of both directions; weak evidence, "
                 "provisional threshold)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
