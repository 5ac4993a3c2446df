"""Service status: jobs by state, exhibits, each descriptor space's index against the database, the start-up
report. Called by ``api.routes.system``."""
from __future__ import annotations

from sqlalchemy import func, select

from api.db.models import Exhibit, Job
from api.schemas import StatusPublic

__all__ = ["service_status", "index_status"]


def service_status(rt, session) -> StatusPublic:
    jobs = {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()}
    n = session.execute(select(func.count(Exhibit.id))).scalar_one()
    return StatusPublic(jobs={k: jobs.get(k, 0) for k in ("queued", "running", "done", "failed")}, exhibits=n,
                        index=index_status(rt, session), startup=rt.startup_report, workers=rt.worker_status())


def index_status(rt, session) -> dict:
    """The breech-face index (2D images included) at the top level, the bullet index under ``bullet``;
    ``consistent`` is true only when both agree with the DB."""
    bf = rt.spaces["breech_face"].consistency(session)
    bl = rt.spaces["bullet"].consistency(session)
    return {**bf, "consistent": bool(bf["consistent"] and bl["consistent"]), "breech_face_consistent": bf["consistent"],
            "bullet": bl}
