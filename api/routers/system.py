"""Liveness and service status (jobs by state, index vs DB consistency)."""
from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from api.deps import Admin, ReadSessionDep, RuntimeDep
from api.models import Exhibit, Job
from api.schemas import StatusPublic

router = APIRouter(tags=["system"])


@router.get("/v1/health", summary="Liveness (no key needed)")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/status", response_model=StatusPublic, summary="Jobs, exhibits and index consistency (admin)")
def service_status(rt: RuntimeDep, session: ReadSessionDep, who: Admin) -> StatusPublic:
    jobs = {s: n for s, n in session.execute(select(Job.status, func.count()).group_by(Job.status)).all()}
    n = session.execute(select(func.count(Exhibit.id))).scalar_one()
    return StatusPublic(jobs={k: jobs.get(k, 0) for k in ("queued", "running", "done", "failed")}, exhibits=n,
                        index=_index_status(rt, session), startup=rt.startup_report)


def _index_status(rt, session) -> dict:
    """The breech-face index (2D images included) at the top level, the bullet index under ``bullet``;
    ``consistent`` is true only when both agree with the DB."""
    bf = rt.retrieval.consistency(session)
    bl = rt.bullet_retrieval.consistency(session)
    return {**bf, "consistent": bool(bf["consistent"] and bl["consistent"]), "breech_face_consistent": bf["consistent"],
            "bullet": bl}
