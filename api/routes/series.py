"""``/v1/series``: connected groups of linked exhibits. HTTP only: the work is :mod:`api.services.series`."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import IntelReader, ReadSessionDep
from api.schemas import SeriesList
from api.services import series as svc

router = APIRouter(prefix="/v1/series", tags=["series"])


@router.get("", response_model=SeriesList, summary="Connected groups of linked exhibits")
def list_series(session: ReadSessionDep, who: IntelReader,
                min_exhibits: Annotated[int, Query(ge=2, le=10**6)] = 2) -> SeriesList:
    return svc.list_series(session, min_exhibits=min_exhibits)
