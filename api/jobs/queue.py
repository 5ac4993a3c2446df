"""The job queue: huey's SQLite queue carrying job ids from the API process to the worker processes.

The database is the only durable record of jobs (state, attempts, error); the queue is a transport that
the API process empties and fills again from the database at each start (one ``ballistic serve`` per
database owns it). A job id delivered twice runs once: workers claim a job with ``UPDATE ... WHERE
status='queued'`` (:func:`api.jobs.correlate.run_correlation_job`).
"""
from __future__ import annotations

from typing import Callable

from huey import SqliteHuey

from api.settings import Settings

__all__ = ["JobQueue", "TASK_NAME"]

TASK_NAME = "correlate"


class JobQueue:
    """huey on ``QUEUE_PATH``; the worker process sets :attr:`handler` (what a delivered job id runs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.huey = SqliteHuey(name="ballistic", filename=str(settings.queue_path), results=False,
                               journal_mode="wal", timeout=30)
        self.handler: Callable[[int], object] | None = None
        queue = self

        @self.huey.task(name=TASK_NAME, context=False)
        def correlate(job_id: int) -> None:
            if queue.handler is None:   # pragma: no cover - only worker processes consume
                raise RuntimeError("this process does not run jobs")
            queue.handler(int(job_id))

        self._task = correlate

    def enqueue(self, job_id: int, *, delay: float = 0.0) -> None:
        """Deliver a job id (after ``delay`` seconds)."""
        if delay > 0:
            self._task.schedule(args=(int(job_id),), delay=delay)
        else:
            self._task(int(job_id))

    def flush(self) -> None:
        """Drop every message (start-up: the database says what is pending)."""
        self.huey.flush()

    def close(self) -> None:
        try:
            self.huey.storage.close()
        except Exception:  # pragma: no cover
            pass
