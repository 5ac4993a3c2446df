"""The explanation figure (ballistic.viz.explain) is one an examiner can put in a report: both directions, a
legend of the cell colours, scale bars, a height colour bar, the likelihood ratio when given, cell labels
on a white box (legible on the texture). Issue 12; failed on main at 7dd266b."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi


def _breech_face(seed: int, angle: float = 0.0):
    from ballistic.preprocess.filters import crop_to_mask, rotate
    from ballistic.surface import Surface

    n = 160
    z = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=(n, n)), 2.0) * 4.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    z[(r > n * 0.47) | (r < n * 0.12)] = np.nan
    s = Surface(z, 12.5, {"source": f"synthetic-{seed}"})
    return crop_to_mask(rotate(s, angle)) if angle else s


@pytest.fixture(scope="module")
def pair():
    from ballistic.cartridge.cmc.pair import compare_pair

    a, b = _breech_face(1), _breech_face(1, angle=40.0)
    return a, b, compare_pair(a.with_heights(a.heights, source="K-1/A"), b.with_heights(b.heights, source="K-2/B"))


def _draw(monkeypatch, tmp_path, *args, **kw):
    """Draw the figure; return (the matplotlib Figure as saved, the PNG path)."""
    import matplotlib.figure

    from ballistic.viz.explain import explanation_figure

    seen = {}
    real = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        seen["fig"] = fig
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = explanation_figure(*args, tmp_path / "sub" / "fig.png", **kw)
    return seen["fig"], out


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
    for lg in fig.legends:
        out += [t.get_text() for t in lg.get_texts()]
    return out


def test_figure_has_both_directions_legend_scale_bars_colour_bar_and_lr(pair, monkeypatch, tmp_path):
    a, b, r = pair
    fig, path = _draw(monkeypatch, tmp_path, a, b, r, log10_lr=3.12, log10_lr_interval=(2.9, 3.12),
                      calibration_id="breech_face_fadul/abc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(_texts(fig))
    # both directions, each with its CMC count
    assert "forward: cells of K-1/A" in text and "backward: cells of K-2/B" in text
    assert f"forward {r.high[0].count}, backward {r.high[1].count}" in text
    # the likelihood ratio with its interval and calibration
    assert "log10 likelihood ratio +3.12" in text and "+2.90 to +3.12" in text and "breech_face_fadul/abc" in text
    # a legend of the cell colours
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any(x.startswith("congruent matching cell (CMC)") for x in legend)
    assert any("not congruent" in x for x in legend) and any(x.startswith("correlation <") for x in legend)
    # a height colour bar (in um) per row, and a scale bar on each of the six image panels
    assert sum("height (µm" in x for x in _texts(fig)) == 2
    bars = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_text().endswith(("µm", "mm"))]
    assert len(bars) == 6
    # cell labels carry a white box (legible on the texture), one per cell with a correlation
    labels = [t for ax in fig.axes for t in ax.texts if t.get_bbox_patch() is not None
              and not t.get_text().endswith(("µm", "mm"))]
    n_cells = sum(np.isfinite(c.corr) for d in (r.forward, r.backward) for c in d.cells)
    assert len(labels) == n_cells and all(t.get_fontsize() >= 7 for t in labels)


def test_figure_without_lr_says_nothing_about_one(pair, monkeypatch, tmp_path):
    a, b, r = pair
    fig, _ = _draw(monkeypatch, tmp_path, a, b, r)
    assert not any("likelihood" in x for x in _texts(fig))


def test_scale_bar_lengths_are_round():
    from ballistic.viz.explain import _scale_bar_um

    assert _scale_bar_um(4000) == 1000 and _scale_bar_um(2000) == 500 and _scale_bar_um(900) == 200
