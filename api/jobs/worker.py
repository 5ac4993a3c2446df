"""``ballistic worker``: one correlation worker process.

Started by the API process's :class:`~api.jobs.supervisor.WorkerPool` (``ballistic serve`` starts
``WORKERS`` of them; one job at a time each), or by hand. It

* lowers its CPU priority (``nice``, ``WORKER_NICE``) so that the API answers while jobs run;
* loads the comparison code, its compiled kernels and the descriptor first (``_warm_up``; OpenCV on one
  thread), then caps its address space
  with ``RLIMIT_AS`` at what it holds idle plus the memory one job may use (``WORKER_MEMORY_LIMIT_MB``,
  default ``JOB_MEMORY_BUDGET_MB``; local backend): a job that needs more gets a ``MemoryError`` and fails
  with a reason, and the worker ends after it so the pool starts a clean one (the supervisor's watchdog on the
  resident size is the backstop, and the only limit with the Ray backend, whose object store maps memory);
* opens its :class:`~api.jobs.context.JobContext` (its own engines, the descriptor spaces on the configured
  executor: in this process, or the Ray cluster), consumes job ids from the queue with one thread and runs
  :func:`~api.jobs.correlate.run_correlation_job`;
* says which job it runs in ``<data_dir>/run/worker-<slot>.json`` (the supervisor fails or requeues that
  job if the process dies), and stops when its parent does (``PR_SET_PDEATHSIG``, and a parent check);
* on SIGTERM finishes nothing half: the running job goes back to 'queued' at its next stop check.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["main", "run_worker", "job_handler", "status_path", "read_status", "SETTINGS_ENV", "THREAD_ENV"]

log = logging.getLogger("ballistic.api.worker")

#: the settings a worker runs with, as JSON (set by the supervisor; ``ballistic worker`` reads BALLISTIC_* otherwise)
SETTINGS_ENV = "BALLISTIC_WORKER_SETTINGS"
#: one job at a time per process: no thread pools competing for the cores inside it
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


def status_path(run_dir: Path, slot: int) -> Path:
    return Path(run_dir) / f"worker-{int(slot)}.json"


def read_status(run_dir: Path, slot: int) -> dict:
    try:
        return json.loads(status_path(run_dir, slot).read_text())
    except (OSError, ValueError):
        return {}


def _write_status(run_dir: Path, values: dict) -> None:
    from ballistic.io.atomic import atomic_write_bytes

    atomic_write_bytes(status_path(run_dir, values["slot"]), json.dumps(values).encode())


def _memory(field: str) -> int:
    """VmSize / VmRSS of this process in bytes (Linux), 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies (a kill -9 of the server)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the parent check below stops it
        pass


def _warm_up(ctx) -> None:
    """Load the comparison code and its compiled kernels, run the breech-face descriptor (with its query
    variants and rotation scan) and a many-row index search once, before the address-space limit is taken:
    importing numba/llvmlite, loading (or, with a cold or rewritten cache, compiling) the kernels, torch's first
    inference (its thread pool and oneDNN primitives) and the BLAS work buffers of a batched FAISS search map memory that belongs to the worker, not
    to a job. Without this a small job could fail the job limit ("could not
    create a primitive" from the learned descriptor in a freshly restarted worker)."""
    import numpy as np

    from ballistic.cartridge.cmc.pair import compare_pair
    from ballistic.surface import Surface

    n = 160
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    z = np.random.default_rng(0).normal(size=(n, n))
    z[(r > 75) | (r < 20)] = np.nan
    try:
        compare_pair(Surface(z, 12.5), Surface(np.ascontiguousarray(np.rot90(z)), 12.5))
    except Exception as e:  # noqa: BLE001 - a warm-up only; a real job reports its own errors
        log.info("worker warm-up comparison raised %s: %s", type(e).__name__, e)
    try:
        # the descriptor, its query's centre variants and its rotation scan as a job searches with them: the
        # scan's compiled kernels (both precisions) load on first use (one block of rows: no threads, whose
        # memory arenas are the job's to pay)
        from ballistic.retrieval.search import index_queries, query_scan, query_variants

        space = ctx.spaces["breech_face"]
        q = Surface(z, 12.5)
        v = space.describe(q)
        scan = query_scan(space.model, query_variants(space.model, q) if space.whitener is None else None)
        if scan is not None:
            stored = np.zeros((64, int(space.dim)), np.float32)
            for dtype in (np.float32, np.float16):
                scan(index_queries(space.model, v), stored.astype(dtype, copy=False), 8)
    except Exception as e:  # noqa: BLE001 - as above
        log.info("worker warm-up descriptor raised %s: %s", type(e).__name__, e)
    try:
        # a search of many rows at once (the default descriptor's query expansion: 256) takes FAISS's BLAS path,
        # whose library maps its work buffers on first use; under the limit that mapping fails as a SIGSEGV
        import faiss

        d = int(ctx.spaces["breech_face"].dim)
        flat = faiss.IndexFlatIP(d)
        flat.add(np.zeros((64, d), np.float32))
        flat.search(np.zeros((256, d), np.float32), 8)
    except Exception as e:  # noqa: BLE001 - as above
        log.info("worker warm-up search raised %s: %s", type(e).__name__, e)


def job_handler(run_job, ctx, *, enqueue, stop: threading.Event, lifted: threading.Event, status, slot: int = 0):
    """What a worker's queue consumer calls with each job id: ``run_job(ctx, job_id)`` between two ``status``
    writes (the job's id, then None).

    A worker that is ending (``stop`` set: a job ran into the memory limit, or SIGTERM) may still be handed one
    more message by its consumer before it stops; that job goes back to the queue (``enqueue``) for the next
    worker instead of running in a process whose limit was lifted. After a job that ran into the limit
    (``lifted`` set by ``ctx.on_memory_error``) the handler sets ``stop``: a process that hit its address-space
    limit may hold half-made state (a thread that could not start, a library lock), so it ends and the pool
    starts a fresh one.
    """
    def handle(job_id: int) -> None:
        if stop.is_set():
            log.info("worker %s: ending; job %s handed back to the queue", slot, job_id)
            enqueue(int(job_id))
            return
        status(int(job_id))
        try:
            run_job(ctx, int(job_id))
        finally:
            status(None)
        if lifted.is_set():
            log.warning("worker %s: job %s ran into the memory limit; this worker restarts", slot, job_id)
            stop.set()

    return handle


def run_worker(settings, *, slot: int = 0, parent_pid: int | None = None) -> int:
    """Run jobs until SIGTERM (or the parent's death); returns the exit status."""
    from huey.consumer import Consumer

    from api.jobs.context import JobContext
    from api.jobs.correlate import run_correlation_job
    from api.jobs.queue import JobQueue

    if parent_pid:
        _die_with_parent()
        if os.getppid() != parent_pid:
            return 1
    if settings.worker_nice:
        os.nice(int(settings.worker_nice))
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    queue = JobQueue(settings)
    ctx = JobContext.open(settings, enqueue=queue.enqueue, saves_snapshots=slot == 0)
    ctx.stop = stop
    import faiss

    faiss.omp_set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)              # OpenCV's own pool ignores OMP_NUM_THREADS; under a limit it cannot spawn
    limit = None
    lifted = threading.Event()          # a job ran into the limit, which was lifted (ctx.on_memory_error)
    if settings.backend == "local" and settings.memory_limit_bytes:
        import resource

        _warm_up(ctx)                 # only what a limit would count against a job needs loading first
        limit = _memory("VmSize") + settings.memory_limit_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

        def lift_limit() -> None:     # this worker ends after the job; the resident-size watchdog still guards
            resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
            lifted.set()

        ctx.on_memory_error = lift_limit
    base = {"slot": slot, "pid": os.getpid(), "rss_idle": _memory("VmRSS"), "address_space_limit": limit,
            "nice": os.nice(0), "backend": settings.backend}
    _write_status(run_dir, {**base, "job_id": None})

    def status(job_id: int | None) -> None:
        _write_status(run_dir, {**base, "job_id": job_id} if job_id is None else
                      {**base, "job_id": job_id, "since": time.time()})

    queue.handler = job_handler(run_correlation_job, ctx, enqueue=queue.enqueue, stop=stop, lifted=lifted,
                                status=status, slot=slot)

    class _Consumer(Consumer):
        def _set_signal_handlers(self):  # this process's own handlers stay
            pass

    consumer = _Consumer(queue.huey, workers=1, worker_type="thread", periodic=False, initial_delay=0.05,
                         backoff=1.3, max_delay=0.5, check_worker_health=False, shutdown_timeout=120)
    consumer.start()
    log.info("worker %s (pid %s) running jobs; nice %s, address-space limit %s", slot, os.getpid(), base["nice"],
             limit)
    try:
        while not stop.wait(0.5):
            if parent_pid and os.getppid() != parent_pid:   # the server is gone
                stop.set()
    finally:
        consumer.stop(graceful=True)
        ctx.close()
        queue.close()
        try:
            status_path(run_dir, slot).unlink()
        except OSError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from api.settings import Settings

    ap = argparse.ArgumentParser(prog="python -m api.jobs.worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--slot", type=int, default=0)
    ap.add_argument("--parent", type=int, default=None, help="stop when this process is gone")
    a = ap.parse_args(argv)
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings(**json.loads(raw)) if raw else Settings()
    logging.basicConfig(level=os.environ.get("BALLISTIC_LOG_LEVEL", "WARNING").upper(),
                        format=f"%(asctime)s %(levelname)s worker-{a.slot} %(name)s: %(message)s")
    return run_worker(settings, slot=a.slot, parent_pid=a.parent)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
