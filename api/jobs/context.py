"""What a correlation job needs, and nothing else: :class:`JobContext`.

The API process holds a runtime (keys, web sessions, uploads, status...); a job needs far less: settings,
database sessions, the evidence store, the descriptor spaces (index + the library's search path), the
likelihood-ratio calibration, a stop event and a way to schedule its retry. Worker processes open one
context each (:meth:`JobContext.open`); the API's inline runner (tests, tools) builds one from its own
resources.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.orm import Session, sessionmaker

from api.index import DescriptorSpace, make_executor
from api.settings import Settings
from api.storage import EvidenceStore

__all__ = ["JobContext", "JobInterrupted"]


class JobInterrupted(Exception):
    """The process is stopping; the job goes back to 'queued' and runs after the restart."""


@dataclass
class JobContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    read_factory: sessionmaker[Session]
    store: EvidenceStore
    spaces: dict[str, DescriptorSpace]
    calibration: Any = None
    enqueue: Callable[..., None] = lambda job_id, delay=0.0: None
    stop: threading.Event = field(default_factory=threading.Event)
    #: the worker that writes index snapshots (one per service: concurrent writers would prune each other)
    saves_snapshots: bool = True
    #: called when a job ran out of memory, before its failure is recorded (a worker under an address-space
    #: limit lifts it there: the process ends after the job, and recording the failure needs memory)
    on_memory_error: Callable[[], None] = lambda: None
    _owned: list = field(default_factory=list, repr=False)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise JobInterrupted("service shutting down")

    @classmethod
    def open(cls, settings: Settings, *, enqueue: Callable[..., None], saves_snapshots: bool = True,
             backend: str | None = None) -> "JobContext":
        """A worker process's context: its own engines, the descriptor spaces on the configured executor
        (local: in this process; ray: the cluster), opened from their snapshots + the log (the API process
        checked them against the database at start-up), the calibration."""
        from api.db import make_engine, make_sessionmaker
        from api.lr import Calibration

        engine = make_engine(settings.database_url)
        read_engine = make_engine(settings.database_url, immediate=False) if settings.is_sqlite else engine
        executor = make_executor(settings, backend=backend)
        spaces = {name: DescriptorSpace(settings, name, executor=executor) for name in ("breech_face", "bullet")}
        for sp in spaces.values():
            sp.open(check=False)
        ctx = cls(settings=settings, session_factory=make_sessionmaker(engine), read_factory=make_sessionmaker(read_engine),
                  store=EvidenceStore(settings.evidence_dir), spaces=spaces,
                  calibration=Calibration.load(settings.calibration_path) if settings.calibration_path else None,
                  enqueue=enqueue, saves_snapshots=saves_snapshots)
        ctx._owned = [engine, read_engine, executor]
        return ctx

    def close(self) -> None:
        """Snapshot (when this context writes them) and close what :meth:`open` opened."""
        for sp in self.spaces.values():
            if self.saves_snapshots:
                try:
                    sp.save()
                except Exception:  # noqa: BLE001 - replayed from the log at the next start
                    pass
        if self._owned:
            for sp in self.spaces.values():
                sp.close()
            engine, read_engine, executor = self._owned
            executor.close()
            engine.dispose()
            read_engine.dispose()
            self._owned = []
