"""Series: connected groups of exhibits linked by confirmed hits (union-find over
:func:`api.services.graph.confirmed_graph`), with timeline and places. Called by ``api.routes.series``."""
from __future__ import annotations

from api.schemas import CasePublic, ExhibitSummary, PlacePublic, SeriesList, SeriesPublic, TimelineEntry
from api.services.graph import confirmed_graph

__all__ = ["list_series"]


def list_series(session, *, min_exhibits: int = 2) -> SeriesList:
    items = []
    for exhibits, links in confirmed_graph(session).series():
        if len(exhibits) < min_exhibits:
            continue
        cases = {e.case.id: e.case for e in exhibits}
        dated = sorted(exhibits, key=lambda e: (e.recovery_date is None, e.recovery_date or 0, e.id))
        dates = [e.recovery_date for e in exhibits if e.recovery_date]
        items.append(SeriesPublic(
            id=f"S{exhibits[0].id}", exhibits=[ExhibitSummary.model_validate(e) for e in exhibits],
            cases=[CasePublic.model_validate(c) for c in cases.values()], hits=[c.id for c in links],
            firearm_serials=sorted({e.firearm_serial for e in exhibits if e.firearm_serial}),
            first_date=min(dates) if dates else None, last_date=max(dates) if dates else None,
            timeline=[TimelineEntry(date=e.recovery_date, exhibit_id=e.id, exhibit_ref=e.exhibit_ref,
                                    case_number=e.case.case_number, agency=e.case.agency, role=e.role,
                                    place_text=e.place_text) for e in dated],
            places=[PlacePublic(exhibit_id=e.id, place_text=e.place_text, lat=e.lat, lon=e.lon)
                    for e in exhibits if e.place_text or e.lat is not None]))
    items.sort(key=lambda s: (-len(s.exhibits), s.id))
    return SeriesList(items=items)
