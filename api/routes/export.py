"""``/v1/export``: link-chart exports of confirmed hits (audited). HTTP only: the work is
:mod:`api.services.export`."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import IntelReader, ReadSessionDep, RuntimeDep
from api.services import export as svc

router = APIRouter(prefix="/v1/export", tags=["export"])


@router.get("/i2.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}},
            summary="Entity-link CSV for IBM i2 Analyst's Notebook (one row per link, both entities)")
def export_i2(rt: RuntimeDep, session: ReadSessionDep, who: IntelReader) -> Response:
    return Response(svc.i2_export(rt, session, who), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="ballistic-links-i2.csv"'})


@router.get("/graph.graphml", response_class=Response, responses={200: {"content": {"application/xml": {}}}},
            summary="GraphML of exhibits, cases, firearms and confirmed hits")
def export_graphml(rt: RuntimeDep, session: ReadSessionDep, who: IntelReader) -> Response:
    return Response(svc.graphml_export(rt, session, who), media_type="application/graphml+xml",
                    headers={"Content-Disposition": 'attachment; filename="ballistic.graphml"'})
