"""Rotation draws of a benchmark: the seeds asked for and each figure's spread over them.

Every labelled benchmark turns each scan by a seeded random angle, so that orientation cannot help; a pair's
registration, a scan's descriptor and the few results near a threshold move a little with the draw. One
draw's figure is therefore a sample, and ``--seeds 0-9`` on ``ballistic bench generalization`` and
``ballistic bench retrieval`` reports each figure's mean and range over the draws
(:func:`spread`), beside the per-draw values.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

__all__ = ["parse_seeds", "draw_seeds", "spread", "heading"]


def parse_seeds(text: str) -> list[int]:
    """Rotation draws from ``"0-9"``, ``"0,3,5"`` or a mix (``"0-4,7"``): sorted, each once.

    Raises
    ------
    ValueError
        Anything else (says what was given).
    """
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"seeds: expected non-negative integers and ranges such as '0-9' or '0,3,5', got "
                             f"{text!r}")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    return sorted(out)


def draw_seeds(seeds: Iterable, *, caller: str) -> list[int]:
    """The draws a draws-mode run covers: ``seeds`` as sorted, distinct ints.

    Raises
    ------
    ValueError
        When there is none (named after ``caller``, the function that was given them).
    """
    out = sorted({int(s) for s in seeds})
    if not out:
        raise ValueError(f"{caller}: give at least one seed")
    return out


def spread(values: Iterable) -> dict | None:
    """``{"mean", "min", "max", "per_draw"}`` of the finite values (draw order kept), None when there are none."""
    v = [float(x) for x in values if x is not None and np.isfinite(float(x))]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)), "per_draw": v}


def heading(seeds) -> str:
    """First line of a draws table: how many draws and which seeds."""
    seeds = list(seeds)
    return f"{len(seeds)} rotation draws (seeds {seeds[0]}..{seeds[-1]})"
