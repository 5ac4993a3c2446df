"""Server-rendered SVG for the dashboard: hits over time (bars) and series as small link graphs.
Every text that comes from the database is XML-escaped here."""
from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

__all__ = ["hits_over_time_svg", "series_graph_svg", "bucket_hits"]

PALETTE = ["#2b6cb0", "#c05621", "#2f855a", "#805ad5", "#b83280", "#2c7a7b", "#975a16", "#4a5568"]


def bucket_hits(events: list[tuple[dt.datetime, str]], today: dt.date | None = None
                ) -> tuple[str, list[tuple[dt.date, int, int]]]:
    """(unit, [(bucket start, hits, retractions)]) over the span of ``events``: days when it spans
    at most 92 days, else months. Empty buckets are kept, so the axis is continuous."""
    if not events:
        return "day", []
    dates = [e[0].date() if isinstance(e[0], dt.datetime) else e[0] for e in events]
    last = max(max(dates), today or max(dates))
    first = min(min(dates), last - dt.timedelta(days=29))  # at least a 30-day axis
    monthly = (last - first).days > 92

    def key(d: dt.date) -> dt.date:
        return d.replace(day=1) if monthly else d

    hits, retr = Counter(), Counter()
    for d, (_, kind) in zip(dates, events):
        (hits if kind == "hit" else retr)[key(d)] += 1
    out, d = [], key(first)
    while d <= key(last):
        out.append((d, hits[d], retr[d]))
        d = (d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1) if monthly
             else d + dt.timedelta(days=1))
    return ("month" if monthly else "day"), out


def hits_over_time_svg(unit: str, buckets: list[tuple[dt.date, int, int]], *, width: int = 720,
                       height: int = 220) -> Markup:
    if not buckets:
        return Markup('<p class="muted">No confirmed hits yet.</p>')
    left, right, top, bottom = 40, 10, 14, 34
    w, h = width - left - right, height - top - bottom
    vmax = max(max(b[1] for b in buckets), max(b[2] for b in buckets), 1)
    step = max(1, math.ceil(vmax / 5))
    vmax = step * math.ceil(vmax / step)
    bw = w / len(buckets)
    parts = [f'<svg class="chart" role="img" aria-label="confirmed hits per {unit}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for v in range(0, vmax + 1, step):
        y = top + h - h * v / vmax
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v}</text>')
    label_every = max(1, math.ceil(len(buckets) / 10))
    for i, (d, nh, nr) in enumerate(buckets):
        x = left + i * bw
        inner = max(bw * 0.8, 1.0)
        half = inner / (2 if nr else 1)
        label = d.strftime("%Y-%m") if unit == "month" else d.isoformat()
        if nh:
            y = top + h - h * nh / vmax
            parts.append(f'<rect class="bar-hit" x="{x + bw * 0.1:.1f}" y="{y:.1f}" width="{half:.1f}" '
                         f'height="{top + h - y:.1f}"><title>{label}: {nh} hit(s)</title></rect>')
        if nr:
            y = top + h - h * nr / vmax
            parts.append(f'<rect class="bar-retraction" x="{x + bw * 0.1 + half:.1f}" y="{y:.1f}" '
                         f'width="{half:.1f}" height="{top + h - y:.1f}"><title>{label}: {nr} retraction(s)'
                         f'</title></rect>')
        if i % label_every == 0:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{top + h + 16}" text-anchor="middle" class="tick">'
                         f'{label}</text>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" class="axis"/>')
    parts.append(f'<text x="{left}" y="{height - 2}" class="tick">per {unit}; green = hits, red = '
                 f'retractions</text></svg>')
    return Markup("".join(parts))


def series_graph_svg(series: list[dict], *, panel: int = 230, columns: int = 3, link_exhibits: bool = False,
                     root: str = "") -> Markup:
    """One panel per series: its exhibits on a circle (colour = case), its confirmed links as edges
    labelled with the CMC count. ``series`` items: ``{"id", "nodes": [{"id", "label", "case"}],
    "edges": [{"a", "b", "cmc", "candidate_id"}]}``."""
    if not series:
        return Markup('<p class="muted">No series yet: a series appears when a hit is confirmed.</p>')
    rows = math.ceil(len(series) / columns)
    width, height = panel * min(columns, len(series)), panel * rows
    parts = [f'<svg class="graph" role="img" aria-label="series graph" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for k, s in enumerate(series):
        ox, oy = (k % columns) * panel, (k // columns) * panel
        cx, cy, r = ox + panel / 2, oy + panel / 2 + 8, panel * 0.3
        nodes = s["nodes"]
        cases = {n["case"]: PALETTE[i % len(PALETTE)] for i, n in enumerate(
            sorted({n["case"]: n for n in nodes}.values(), key=lambda n: n["case"]))}
        pos = {}
        for i, n in enumerate(nodes):
            a = -math.pi / 2 + 2 * math.pi * i / len(nodes)
            pos[n["id"]] = (cx + r * math.cos(a), cy + r * math.sin(a)) if len(nodes) > 1 else (cx, cy)
        parts.append(f'<rect x="{ox + 3}" y="{oy + 3}" width="{panel - 6}" height="{panel - 6}" rx="6" class="panel"/>'
                     f'<text x="{ox + 10}" y="{oy + 20}" class="panel-title">{escape(s["id"])} - '
                     f'{len(nodes)} exhibits, {len(cases)} case(s)</text>')
        for e in s["edges"]:
            (x1, y1), (x2, y2) = pos[e["a"]], pos[e["b"]]
            parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="edge">'
                         f'<title>hit {e["candidate_id"]}: CMC {e["cmc"]}</title></line>'
                         f'<text x="{(x1 + x2) / 2:.1f}" y="{(y1 + y2) / 2 - 3:.1f}" class="edge-label" '
                         f'text-anchor="middle">{e["cmc"]}</text>')
        for n in nodes:
            x, y = pos[n["id"]]
            circle = (f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="{cases[n["case"]]}" class="node">'
                      f'<title>{escape(n["label"])}</title></circle>')
            if link_exhibits:
                href = quoteattr(f"{root}/web/exhibits/{n['id']}")
                circle = f'<a href={href}>{circle}</a>'
            parts.append(circle + f'<text x="{x:.1f}" y="{y + 22:.1f}" text-anchor="middle" class="node-label">'
                                  f'{escape(n["label"][:28])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
