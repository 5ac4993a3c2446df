"""``/v1/hits/feed``: the intelligence feed, cursor-paginated, with ETag / If-None-Match. HTTP only: the work is
:mod:`api.services.hits`."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Header, Query, Response, status

from api.deps import IntelReader, ReadSessionDep
from api.schemas import ErrorPublic, HitFeed
from api.services import hits as svc

router = APIRouter(prefix="/v1/hits", tags=["hits"])


@router.get("/feed", response_model=HitFeed, responses={304: {"description": "nothing new (ETag matched)"},
                                                        400: {"model": ErrorPublic}},
            summary="Confirmed hits (and retractions) after a cursor, oldest first; 400 for a cursor this "
                    "server never issued")
def hits_feed(response: Response, session: ReadSessionDep, who: IntelReader,
              after: Annotated[Optional[str], Query(max_length=100, description="opaque cursor")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              if_none_match: Annotated[Optional[str], Header(max_length=200)] = None):
    page = svc.hits_feed(session, after=after, limit=limit, if_none_match=if_none_match)
    headers = {"ETag": page.etag, "Cache-Control": "no-cache"}
    if page.feed is None:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    response.headers.update(headers)
    return page.feed
