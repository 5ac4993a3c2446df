"""The intelligence feed: confirmed hits in order, cursor-paginated, with an ETag. Called by ``api.routes.hits``
and the web pages."""
from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select

from api.db.models import Candidate, HitEvent
from api.errors import ServiceError
from api.schemas import CasePublic, ExhibitSummary, HitFeed, HitPublic

__all__ = ["encode_cursor", "decode_cursor", "FeedPage", "hits_feed"]


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"hit:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, n = raw.partition(":")
        seq = int(n)
        if kind != "hit" or seq < 0 or seq > 2**62:
            raise ValueError
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ServiceError("invalid cursor: pass back a next_cursor value", 400) from None


def _item(ev: HitEvent, lr) -> HitPublic:
    exs = [ExhibitSummary.model_validate(ev.exhibit_a), ExhibitSummary.model_validate(ev.exhibit_b)]
    cases = {e.case.id: e.case for e in exs}
    calibrated = lr is not None and lr.log10_lr is not None
    return HitPublic(seq=ev.seq, kind=ev.kind, candidate_id=ev.candidate_id, region=ev.region, score=ev.score,
                     cmc_count=ev.cmc_count,
                     log10_lr=lr.log10_lr if calibrated else None,
                     log10_lr_interval=[lr.log10_lr_low, lr.log10_lr_high]
                     if calibrated and lr.log10_lr_low is not None else None,
                     calibration_id=lr.calibration_id if calibrated else None,
                     confirmed_by=ev.confirmed_by, confirmed_at=ev.created_at, exhibits=exs,
                     cases=[CasePublic.model_validate(c) for c in cases.values()])


@dataclass
class FeedPage:
    """One page of the feed and its ETag; ``feed`` is None when the client's ``If-None-Match`` matched."""

    feed: HitFeed | None
    etag: str


def hits_feed(session, *, after: str | None = None, limit: int = 100, if_none_match: str | None = None) -> FeedPage:
    """Confirmed hits (and retractions) after the cursor ``after``, oldest first; a cursor this server never
    issued (past the newest event) is refused (400)."""
    after_seq = decode_cursor(after) if after else 0
    head = session.execute(select(func.max(HitEvent.seq))).scalar() or 0
    if after_seq > head:  # never issued: a client holding it would silently never see the hits that follow
        raise ServiceError((
            "cursor never issued by this feed: it points past the newest event. Pass back a next_cursor value "
            "this server returned, or leave 'after' out to read the feed from the start"), 400)
    if head <= after_seq:
        events = []
    else:
        events = session.execute(select(HitEvent).where(HitEvent.seq > after_seq).order_by(HitEvent.seq)
                                 .limit(limit + 1)).scalars().unique().all()
    has_more = len(events) > limit
    events = events[:limit]
    last = events[-1].seq if events else after_seq
    # the likelihood ratio of each pair (calibrated regions), as stored on its candidate now
    lrs = {r.id: r for r in session.execute(
        select(Candidate.id, Candidate.log10_lr, Candidate.log10_lr_low, Candidate.log10_lr_high,
               Candidate.calibration_id).where(Candidate.id.in_({e.candidate_id for e in events})))} if events else {}
    # events are append-only, so (after, limit, last seq, count) identifies the page's events; the calibrations
    # behind their LRs change only when the service is configured with another one
    cal_ids = sorted({str(r.calibration_id) for r in lrs.values() if r.calibration_id})
    etag = '"' + hashlib.sha256(f"{after_seq}:{limit}:{last}:{len(events)}:{has_more}:{cal_ids}".encode()
                                ).hexdigest()[:32] + '"'
    if if_none_match and etag in [t.strip().removeprefix("W/") for t in if_none_match.split(",")]:
        return FeedPage(None, etag)
    return FeedPage(HitFeed(items=[_item(e, lrs.get(e.candidate_id)) for e in events],
                            next_cursor=encode_cursor(last), has_more=has_more), etag)
