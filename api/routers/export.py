"""Link-chart exports of confirmed hits (audited: who took which export, when).

``/v1/export/i2.csv`` is ONE CSV in which every row is a link carrying both end entities'
identity and attributes (``from_*`` / ``to_*`` columns), the layout IBM i2 Analyst's
Notebook imports as entity-link-entity. Link types: ``ballistic_hit`` (exhibit-exhibit),
``in_case`` (exhibit-case) and ``test_fired_from`` (test-fire exhibit-firearm).
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api import audit
from api.deps import IntelReader, ReadSessionDep, RuntimeDep
from api.graph import confirmed_graph, graphml, i2_csv

router = APIRouter(prefix="/v1/export", tags=["export"])


def _audit(rt, who, what: str, n_links: int) -> None:
    with rt.session_factory() as s:
        audit.append(s, actor=who.actor, action=f"export.{what}", resource_type="export", resource_id=what,
                     detail={"links": n_links})
        s.commit()


@router.get("/i2.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}},
            summary="Entity-link CSV for IBM i2 Analyst's Notebook (one row per link, both entities)")
def export_i2(rt: RuntimeDep, session: ReadSessionDep, who: IntelReader) -> Response:
    g = confirmed_graph(session)
    body = i2_csv(g)
    _audit(rt, who, "i2_csv", len(g.links))
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="ballistic-links-i2.csv"'})


@router.get("/graph.graphml", response_class=Response, responses={200: {"content": {"application/xml": {}}}},
            summary="GraphML of exhibits, cases, firearms and confirmed hits")
def export_graphml(rt: RuntimeDep, session: ReadSessionDep, who: IntelReader) -> Response:
    g = confirmed_graph(session)
    body = graphml(g)
    _audit(rt, who, "graphml", len(g.links))
    return Response(body, media_type="application/graphml+xml",
                    headers={"Content-Disposition": 'attachment; filename="ballistic.graphml"'})
