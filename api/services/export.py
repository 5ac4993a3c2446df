"""Link-chart exports of confirmed hits (audited: who took which export, when).

:func:`i2_export` is ONE CSV in which every row is a link carrying both end entities' identity and
attributes (``from_*`` / ``to_*`` columns), the layout IBM i2 Analyst's Notebook imports as
entity-link-entity. Link types: ``ballistic_hit`` (exhibit-exhibit), ``in_case`` (exhibit-case) and
``test_fired_from`` (test-fire exhibit-firearm). :func:`graphml_export` is the same graph as GraphML.
"""
from __future__ import annotations

from api import audit
from api.services.graph import confirmed_graph, graphml, i2_csv

__all__ = ["i2_export", "graphml_export"]


def _audit(rt, who, what: str, n_links: int) -> None:
    with rt.session_factory() as s:
        audit.append(s, actor=who.actor, action=f"export.{what}", resource_type="export", resource_id=what,
                     detail={"links": n_links})
        s.commit()


def i2_export(rt, session, who) -> str:
    g = confirmed_graph(session)
    body = i2_csv(g)
    _audit(rt, who, "i2_csv", len(g.links))
    return body


def graphml_export(rt, session, who) -> str:
    g = confirmed_graph(session)
    body = graphml(g)
    _audit(rt, who, "graphml", len(g.links))
    return body
