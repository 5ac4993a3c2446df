"""How the service treats the library's errors (:mod:`ballistic.errors`): an HTTP status for a request,
retry or not for a correlation job. Decided from the error's kind, explicitly, in the two tables below.

HTTP (:func:`http_status`, installed as exception handlers by :func:`install_error_handlers`):

==========================  ======  =====================================================================
kind                        status  why
==========================  ======  =====================================================================
``ScaleOutConfigError``     500     the service's own search settings cannot work: not the client's fault
``LimitError``              413     the upload is over a size limit (points, pixels, bytes); send less
``InputError``              422     the file or parameters cannot be used (malformed x3p, bad image ...)
``ProcessingError``         422     valid file, but the method finds nothing usable in it (no breech face)
``StateError``              503     an index snapshot, a shard or a worker is not available; try later
==========================  ======  =====================================================================

Jobs (:func:`job_retryable`): a *data* error fails the same way on every attempt, so the job fails at
once with the message; an *infrastructure* error may pass, so the job is queued again (up to its
``max_attempts``):

* never retried: ``InputError``, ``ProcessingError`` (the exhibit's data or the settings), and outside
  the library ``FileNotFoundError`` (the stored evidence is gone), ``TypeError`` and ``ValueError`` (a
  bug or a bad value in code that is not the library's: it fails the same way again) and ``MemoryError``
  (the job needs more than its memory limit: it runs out again);
* retried: ``StateError`` (``IndexStateError``, ``ShardUnavailableError``, ``RerankError``) and any
  other exception (``OSError``, a database that is locked, a lost connection ...).
"""
from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ballistic.errors import (BallisticError, InputError, LimitError, ProcessingError, ScaleOutConfigError,
                              StateError)

__all__ = ["HTTP_STATUS", "http_status", "http_exception", "install_error_handlers", "job_retryable"]

#: (kind, HTTP status), first match wins: more specific kinds first.
HTTP_STATUS: tuple[tuple[type[BallisticError], int], ...] = (
    (ScaleOutConfigError, 500),
    (LimitError, 413),
    (InputError, 422),
    (ProcessingError, 422),
    (StateError, 503),
)


def http_status(exc: BallisticError) -> int:
    """The HTTP status of a library error (see the module table); 500 for a kind not listed."""
    for kind, code in HTTP_STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def _detail(exc: BallisticError) -> str:
    return f"{type(exc).__name__}: {exc}"


def http_exception(exc: BallisticError) -> HTTPException:
    """The :class:`HTTPException` a route raises for a library error it catches itself."""
    return HTTPException(http_status(exc), _detail(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Map every library error that leaves a route to its status with a ``{"detail": ...}`` body."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BallisticError)
        code = http_status(exc)
        headers = {"Retry-After": "30"} if code == 503 else None
        return JSONResponse({"detail": _detail(exc)}, status_code=code, headers=headers)

    app.add_exception_handler(BallisticError, handle)


def job_retryable(exc: BaseException) -> bool:
    """True when a correlation job that failed with ``exc`` should be queued again (see the module notes)."""
    if isinstance(exc, (InputError, ProcessingError)):
        return False
    if isinstance(exc, StateError):
        return True
    if isinstance(exc, BallisticError):  # a kind added later without a rule here: do not loop on it
        return False
    return not isinstance(exc, (FileNotFoundError, TypeError, ValueError, MemoryError))
