"""The worker processes of a service, started and watched by the API process: :class:`WorkerPool`.

The API process only serves requests (and enqueues job ids); ``WORKERS`` worker processes
(:mod:`api.jobs.worker`, one job at a time each, at lower CPU priority, with a memory limit) run the
correlations. The pool

* starts them with the settings of the service (as JSON in the environment, never the command line) and
  one-thread numeric libraries;
* restarts a worker that died (after ``WORKER_RESTART_DELAY_S``), and settles the job it held: queued again
  while it has attempts left (a crash, a lost node), failed with a reason otherwise - a job that kills its
  worker every time ends failed, never in a loop;
* stops a worker whose resident memory passes what it held idle plus ``WORKER_MEMORY_LIMIT_MB`` while it
  runs a job (the watchdog behind the address-space limit); that job fails at once, memory being a
  property of the data;
* on shutdown asks every worker to stop (SIGTERM: the running job goes back to 'queued'), then kills
  what is left.

Workers die with the API process (``PR_SET_PDEATHSIG``): after a kill -9 of the server the jobs they held
stay 'running' in the database and the next start's sweep queues them again.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select

from api.db.models import Job
from api.jobs.worker import SETTINGS_ENV, THREAD_ENV, read_status, status_path

__all__ = ["WorkerPool"]

log = logging.getLogger("ballistic.api.workers")


def _rss(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _Slot:
    slot: int
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    last_exit: str | None = None
    killed_for_memory: set = field(default_factory=set)


class WorkerPool:
    """``settings.workers`` worker processes (see the module notes). ``enqueue(job_id, delay=)`` re-delivers
    a job a dead worker held."""

    def __init__(self, settings, session_factory, enqueue) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.enqueue = enqueue
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "WorkerPool":
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        for s in self.slots:
            status_path(self.settings.run_dir, s.slot).unlink(missing_ok=True)
        started = threading.Event()
        # every worker is started from this one long-lived thread: PR_SET_PDEATHSIG follows the thread that
        # started a process, so it must outlive the workers
        self._thread = threading.Thread(target=self._run, args=(started,), name="ballistic-worker-pool",
                                        daemon=True)
        self._thread.start()
        started.wait(60)
        return self

    def _env(self) -> dict:
        values = self.settings.model_dump(mode="json", exclude={"admin_key"})
        return {**os.environ, **THREAD_ENV, SETTINGS_ENV: json.dumps(values), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, s: _Slot) -> None:
        cmd = [sys.executable, "-m", "api.jobs.worker", "--slot", str(s.slot), "--parent", str(os.getpid())]
        s.proc = subprocess.Popen(cmd, env=self._env(), stdin=subprocess.DEVNULL)
        s.started = time.monotonic()
        log.info("worker %s started (pid %s)", s.slot, s.proc.pid)

    def _run(self, started: threading.Event) -> None:
        for s in self.slots:
            self._spawn(s)
        started.set()
        while not self._stop.wait(0.5):
            for s in self.slots:
                try:
                    self._check(s)
                except Exception:  # never let the pool die
                    log.exception("worker pool check failed")

    def _check(self, s: _Slot) -> None:
        if s.proc is None:
            return
        rc = s.proc.poll()
        st = read_status(self.settings.run_dir, s.slot)
        if rc is None:                           # alive: the memory watchdog
            job = st.get("job_id")
            limit = self.settings.memory_limit_bytes
            if job and limit and st.get("pid") == s.proc.pid:
                rss = _rss(s.proc.pid)
                if rss > int(st.get("rss_idle") or 0) + limit:
                    log.warning("worker %s (pid %s) holds %d MB running job %s: over its memory limit, stopped",
                                s.slot, s.proc.pid, rss >> 20, job)
                    s.killed_for_memory.add(s.proc.pid)
                    s.proc.kill()
            return
        if self._stop.is_set():
            return
        why = f"exit status {rc}" if rc >= 0 else f"signal {signal.Signals(-rc).name}"
        s.last_exit = why
        job = st.get("job_id") if st.get("pid") == s.proc.pid else None
        memory = s.proc.pid in s.killed_for_memory
        log.warning("worker %s (pid %s) died (%s)%s", s.slot, s.proc.pid, why,
                    f" while running job {job}" if job else "")
        if job:
            self._settle(int(job), why, memory=memory)
        status_path(self.settings.run_dir, s.slot).unlink(missing_ok=True)
        time.sleep(self.settings.worker_restart_delay_s)
        if not self._stop.is_set():
            s.restarts += 1
            self._spawn(s)

    def _settle(self, job_id: int, why: str, *, memory: bool) -> None:
        """The job a dead worker held: queued again while it has attempts left, else failed with a reason."""
        from api.errors import MEMORY_TEXT
        from api.jobs.correlate import fail_job

        with self.session_factory() as sess:
            j = sess.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()
            if j is None or j.status not in ("queued", "running"):
                return
            if j.status == "queued":     # died after taking the message, before claiming the job: deliver again
                self.enqueue(job_id)
                return
            attempts, max_attempts, exhibit_id = j.attempts, j.max_attempts, j.exhibit_id
        if memory:
            mb = self.settings.memory_limit_bytes >> 20
            fail_job(self.session_factory, job_id, f"MemoryError: worker over its memory limit ({mb} MB above idle)",
                     retry=False, attempt=attempts, exhibit_id=exhibit_id,
                     user_msg=MEMORY_TEXT)
            return
        retry = attempts < max_attempts
        msg = f"WorkerLost: the worker process running the job stopped ({why})"
        fail_job(self.session_factory, job_id, msg, retry=retry, attempt=attempts, exhibit_id=exhibit_id,
                 user_msg=("the worker running this job stopped unexpectedly; it will run again" if retry else
                           f"the worker running this job stopped unexpectedly on each of its {attempts} attempts "
                           f"({why}); the administrator finds the details in the log"))
        if retry:
            self.enqueue(job_id, delay=self.settings.job_retry_delay_s * attempts)

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM every worker (running jobs go back to 'queued'), wait, kill what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        out = []
        for s in self.slots:
            st = read_status(self.settings.run_dir, s.slot)
            alive = s.proc is not None and s.proc.poll() is None
            out.append({"slot": s.slot, "pid": s.proc.pid if s.proc else None, "alive": alive,
                        "ready": alive and st.get("pid") == s.proc.pid, "job_id": st.get("job_id"),
                        "rss_mb": _rss(s.proc.pid) >> 20 if alive else 0, "restarts": s.restarts,
                        "last_exit": s.last_exit})
        return {"mode": "process", "workers": out, "nice": self.settings.worker_nice,
                "memory_limit_mb": self.settings.memory_limit_bytes >> 20, "backend": self.settings.backend}
