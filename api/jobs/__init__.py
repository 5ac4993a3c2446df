"""Correlation jobs, run in worker processes apart from the API.

======================  =====================================================================================
module                  what
======================  =====================================================================================
``queue``               :class:`JobQueue`: huey's SQLite queue, which only carries job ids (the DB holds job state)
``context``             :class:`JobContext`: what a job needs (settings, sessions, evidence store, descriptor spaces,
                        calibration, stop event, enqueue) - not the API's runtime
``fetch``               picklable ``fetch(id)`` of stored surfaces / land signatures for the search's tasks
``correlate``           :func:`run_correlation_job`: claim, correlate (the library's one search path), store, or
                        fail / retry by the error's kind
``worker``              ``ballistic worker``: one worker process (nice, memory limit, one job at a time)
``supervisor``          :class:`WorkerPool`: started by the API process, restarts dead workers, fails or requeues the
                        job a dead worker held, stops a worker over its memory limit
======================  =====================================================================================

Dependency direction: the API's runtime and services import ``queue`` (and the runtime the supervisor); the
jobs never import routes, services or the runtime.
"""
