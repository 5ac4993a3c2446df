"""Link analysis over confirmed hits: union-find series, i2 CSV and GraphML exports."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from api.db.models import Candidate, Exhibit, HitEvent


class UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class LinkGraph:
    exhibits: dict[int, Exhibit]
    links: list[Candidate]          # confirmed candidates (current review status)
    confirmed: dict[int, tuple[str, "dt.datetime"]]  # candidate id -> (examiner, when) of the live confirmation

    def series(self) -> list[tuple[list[Exhibit], list[Candidate]]]:
        uf = UnionFind()
        for c in self.links:
            uf.union(c.exhibit_a_id, c.exhibit_b_id)
        groups: dict[int, list[int]] = {}
        for i in self.exhibits:
            if i in uf.parent:
                groups.setdefault(uf.find(i), []).append(i)
        links_by_root: dict[int, list[Candidate]] = {}
        for c in self.links:  # one pass: the links of every group
            links_by_root.setdefault(uf.find(c.exhibit_a_id), []).append(c)
        return [([self.exhibits[i] for i in sorted(members)],
                 sorted(links_by_root.get(root, []), key=lambda c: c.id))
                for root, members in sorted(groups.items())]


def confirmed_graph(session: Session) -> LinkGraph:
    # the explanation JSON (cells of both directions) is not needed for the graph: load it only on access
    links = session.execute(select(Candidate).options(defer(Candidate.explanation))
                            .where(Candidate.review_status == "confirmed").order_by(Candidate.id)
                            ).scalars().unique().all()
    exhibits: dict[int, Exhibit] = {}
    for c in links:
        exhibits[c.exhibit_a.id] = c.exhibit_a
        exhibits[c.exhibit_b.id] = c.exhibit_b
    confirmed: dict[int, tuple[str, dt.datetime]] = {}
    if links:
        for cid, who, when in session.execute(
                select(HitEvent.candidate_id, HitEvent.confirmed_by, HitEvent.created_at)
                .where(HitEvent.kind == "hit", HitEvent.candidate_id.in_([c.id for c in links]))
                .order_by(HitEvent.seq)).all():
            confirmed[cid] = (who, when)  # the latest confirmation wins
    return LinkGraph(exhibits, list(links), confirmed)


def _exhibit_attrs(e: Exhibit) -> dict:
    return {"id": f"EXH-{e.id}", "type": "Exhibit", "label": f"{e.case.case_number} / {e.exhibit_ref}",
            "case": e.case.case_number, "agency": e.case.agency, "exhibit_type": e.exhibit_type, "role": e.role,
            "calibre": e.calibre or "", "date": e.recovery_date.isoformat() if e.recovery_date else "",
            "place": e.place_text or "", "lat": "" if e.lat is None else e.lat, "lon": "" if e.lon is None else e.lon,
            "firearm_serial": e.firearm_serial or ""}


def _case_attrs(e: Exhibit) -> dict:
    return {"id": f"CASE-{e.case.id}", "type": "Case", "label": f"{e.case.agency} {e.case.case_number}",
            "case": e.case.case_number, "agency": e.case.agency, "exhibit_type": "", "role": "", "calibre": "",
            "date": "", "place": "", "lat": "", "lon": "", "firearm_serial": ""}


def _firearm_attrs(e: Exhibit) -> dict:
    return {"id": f"FIREARM-{e.firearm_serial}", "type": "Firearm", "label": f"firearm {e.firearm_serial}",
            "case": "", "agency": e.case.agency, "exhibit_type": "", "role": "", "calibre": e.calibre or "",
            "date": "", "place": "", "lat": "", "lon": "", "firearm_serial": e.firearm_serial}


ENTITY_FIELDS = ["id", "type", "label", "case", "agency", "exhibit_type", "role", "calibre", "date", "place", "lat",
                 "lon", "firearm_serial"]
LINK_FIELDS = ["link_id", "link_type", "link_label", "link_date", "region", "score", "cmc_count", "confirmed_by"]


def _hit_label(c) -> str:
    if c.cmc_count is not None:
        return f"CMC {c.cmc_count}"
    if c.region == "bullet_lea":
        return f"bullet SAM {c.similarity:.3f}"
    return f"{c.region} {c.similarity:.3f}"


def i2_csv(g: LinkGraph) -> str:
    """One CSV, one row per link, each row carrying both end entities' identity and attributes
    (columns ``from_*`` and ``to_*``) - the layout Analyst's Notebook's importer maps to
    entity-link-entity. Links: ``ballistic_hit`` (exhibit-exhibit, confirmed), ``in_case``
    (exhibit-case) and ``test_fired_from`` (test-fire exhibit-firearm). Written by the project's one
    CSV writer (:mod:`ballistic.io.csv`): a cell that a spreadsheet would run as a formula gets a
    leading single quote; numbers stay numbers."""
    from ballistic.io.csv import csv_text

    cols = LINK_FIELDS + [f"from_{f}" for f in ENTITY_FIELDS] + [f"to_{f}" for f in ENTITY_FIELDS]
    rows: list[dict] = []

    def row(link: dict, a: dict, b: dict) -> None:
        r = {k: link.get(k, "") for k in LINK_FIELDS}
        r.update({f"from_{k}": v for k, v in a.items()})
        r.update({f"to_{k}": v for k, v in b.items()})
        rows.append(r)

    for c in g.links:
        row({"link_id": f"HIT-{c.id}", "link_type": "ballistic_hit", "link_label": _hit_label(c),
             "link_date": c.created_at.date().isoformat(), "region": c.region, "score": round(c.similarity, 4),
             "cmc_count": "" if c.cmc_count is None else c.cmc_count,
             "confirmed_by": g.confirmed.get(c.id, ("", None))[0]}, _exhibit_attrs(c.exhibit_a), _exhibit_attrs(c.exhibit_b))
    for e in g.exhibits.values():
        row({"link_id": f"INCASE-{e.id}", "link_type": "in_case", "link_label": "exhibit of"},
            _exhibit_attrs(e), _case_attrs(e))
        if e.role == "test_fire" and e.firearm_serial:
            row({"link_id": f"TESTFIRE-{e.id}", "link_type": "test_fired_from", "link_label": "test fired from"},
                _exhibit_attrs(e), _firearm_attrs(e))
    # formula-safe cells (OWASP CSV injection): metadata such as '=HYPERLINK(...)' is written as text
    return csv_text(rows, columns=cols)


def graphml(g: LinkGraph) -> str:
    """GraphML: exhibit, case and firearm nodes; hit, in_case and test_fired_from edges."""
    keys = [("type", "node"), ("label", "node"), ("case", "node"), ("agency", "node"), ("role", "node"),
            ("calibre", "node"), ("date", "node"), ("place", "node"), ("lat", "node"), ("lon", "node"),
            ("firearm_serial", "node"), ("link_type", "edge"), ("region", "edge"), ("score", "edge"),
            ("cmc_count", "edge"),
            ("confirmed_by", "edge")]
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
           'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
           'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">']
    for name, dom in keys:
        typ = "double" if name in ("lat", "lon", "score") else ("int" if name == "cmc_count" else "string")
        out.append(f'  <key id="{name}" for="{dom}" attr.name="{name}" attr.type="{typ}"/>')
    out.append('  <graph id="ballistic" edgedefault="undirected">')
    nodes: dict[str, dict] = {}
    edges: list[tuple[str, str, str, dict]] = []
    for e in g.exhibits.values():
        nodes[f"EXH-{e.id}"] = _exhibit_attrs(e)
        nodes[f"CASE-{e.case.id}"] = _case_attrs(e)
        edges.append((f"INCASE-{e.id}", f"EXH-{e.id}", f"CASE-{e.case.id}", {"link_type": "in_case"}))
        if e.role == "test_fire" and e.firearm_serial:
            nodes[f"FIREARM-{e.firearm_serial}"] = _firearm_attrs(e)
            edges.append((f"TESTFIRE-{e.id}", f"EXH-{e.id}", f"FIREARM-{e.firearm_serial}",
                          {"link_type": "test_fired_from"}))
    for c in g.links:
        edges.append((f"HIT-{c.id}", f"EXH-{c.exhibit_a_id}", f"EXH-{c.exhibit_b_id}",
                      {"link_type": "ballistic_hit", "region": c.region, "score": round(c.similarity, 4),
                       "cmc_count": "" if c.cmc_count is None else c.cmc_count,
                       "confirmed_by": g.confirmed.get(c.id, ("", None))[0]}))
    for nid, attrs in nodes.items():
        out.append(f"    <node id={quoteattr(nid)}>")
        for k, v in attrs.items():
            if k != "id" and v != "":
                out.append(f'      <data key="{k}">{escape(str(v))}</data>')
        out.append("    </node>")
    for eid, s, t, attrs in edges:
        out.append(f"    <edge id={quoteattr(eid)} source={quoteattr(s)} target={quoteattr(t)}>")
        for k, v in attrs.items():
            if v != "":
                out.append(f'      <data key="{k}">{escape(str(v))}</data>')
        out.append("    </edge>")
    out.append("  </graph>")
    out.append("</graphml>")
    return "\n".join(out) + "\n"
