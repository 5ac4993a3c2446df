"""The service's boundary for the library's errors (:mod:`ballistic.errors`): for each error, an HTTP status,
whether a correlation job is retried, and the words a user reads. All three are decided from the error's kind
(its type) and its structured attributes (``reason``, and a :class:`~ballistic.errors.LimitError`'s
``limit`` / ``value`` / ``maximum`` / ``shape``), never from the text of its message.

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

Words (issue 12, item 7): the library speaks to programmers ("pass max_points=62410000", "raise
r_max_um"); someone uploading a scan can send another file, re-export it, give its pixel spacing or ask
the administrator to raise a limit. The service tells them that, and keeps the library's own message for
the log and the audit rows:

* :func:`upload_error` - reading an uploaded scan: a :class:`~api.limits.ScanRejected` (status and reason);
* :func:`job_error` - the text stored on a failed correlation job;
* :func:`user_message` - any library error that leaves a route (the handlers' ``detail``);
* :func:`plain` - a library message without its advice to programmers, for the details quoted in the above.
"""
from __future__ import annotations

import re

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from api.limits import ScanRejected, points_text, too_large
from api.settings import Settings
from ballistic.errors import (BallisticError, BulletError, DescriptorError, FiringPinError, ImageFormatError,
                              InputError, LimitError, PreprocessError, ProcessingError, ScaleOutConfigError,
                              StateError, UnusableLandError, X3PChecksumError, X3PError)

__all__ = ["HTTP_STATUS", "http_status", "http_exception", "install_error_handlers", "job_retryable",
           "REASON_TEXT", "user_message", "upload_error", "job_error", "plain",
           "ServiceError", "NotFound", "Conflict", "Gone", "Unprocessable"]


# --------------------------------------------------------------------------- the services' refusals
class ServiceError(Exception):
    """A request the service refuses, raised by :mod:`api.services` (which know no HTTP): the status the
    route answers with and a ``detail`` for the user (text, or a JSON object such as
    ``{"reason": ..., "existing_exhibit_id": ...}``). Routes let it pass (:func:`install_error_handlers`);
    web pages turn it into their error page."""

    status = 400

    def __init__(self, detail, status: int | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail))
        self.detail = detail
        if status is not None:
            self.status = int(status)


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Gone(ServiceError):
    status = 410


class Unprocessable(ServiceError):
    status = 422

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
    return user_message(exc)


def http_exception(exc: BallisticError) -> HTTPException:
    """The :class:`HTTPException` a route raises for a library error it catches itself."""
    return HTTPException(http_status(exc), _detail(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Map every library error, and every :class:`ServiceError`, that leaves a route to its status with a
    ``{"detail": ...}`` body."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BallisticError)
        code = http_status(exc)
        headers = {"Retry-After": "30"} if code == 503 else None
        return JSONResponse({"detail": _detail(exc)}, status_code=code, headers=headers)

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    app.add_exception_handler(BallisticError, handle)
    app.add_exception_handler(ServiceError, refused)


def job_retryable(exc: BaseException) -> bool:
    """True when a correlation job that failed with ``exc`` should be queued again (see the module notes)."""
    if isinstance(exc, (InputError, ProcessingError)):
        return False
    if isinstance(exc, StateError):
        return True
    if isinstance(exc, BallisticError):  # a kind added later without a rule here: do not loop on it
        return False
    return not isinstance(exc, (FileNotFoundError, TypeError, ValueError, MemoryError))


# --------------------------------------------------------------------------- words for users
#: What a ``reason`` code (:data:`ballistic.errors.REASONS`) means for the person who uploaded the scan.
REASON_TEXT: dict[str, str] = {
    "descriptor_no_band":
        "scan area not recognised: too little of the breech face was measured around its centre to describe it. "
        "Check that the scan shows the whole breech face, centred",
    "breech_face_centre_sparse":
        "breech face not found: too few measured points in the centre of the scan; is the primer centred in the "
        "field of view?",
    "breech_face_not_planar":
        "breech face not found: no flat primer surface in the scan; is this a breech-face scan of a cartridge case?",
    "breech_face_too_small": "breech face not found: the flat primer region is too small",
    "breech_face_no_annulus":
        "breech face not found: the firing-pin hole and the edges leave no breech-face area to compare",
    "primer_edge_not_found":
        "scale unknown: the primer edge was not found in this photo, so its scale cannot be measured; upload it "
        "again with spacing_um (micrometres per pixel)",
    "image_uncalibrated": "scale unknown: upload the photo again with spacing_um (micrometres per pixel)",
    "image_masked_view":
        "this image looks like a masked or rendered view, not a ring-light photograph of the primer",
    "primer_ring_not_found": "primer not found: upload a ring-light photograph with the whole primer in view",
    "primer_disc_not_found": "primer not found: check that the photo shows the primer, centred",
}

_FUNC_PREFIX = re.compile(r"^[a-z_][a-z0-9_]*: ")
_PAREN_ADVICE = re.compile(r"\s*\((?:or )?(?:pass|raise|lower) [^)]*\)")
_ADVICE = re.compile(r"\b(?:pass|raise|lower)\b[^.;]*\b[a-z]+_[a-z0-9_]+\b")
_STAGING = re.compile(r"'upload-[0-9a-f]{16}'")


#: (kind, sentence), first match wins (more specific kinds first); ``{detail}`` is :func:`plain` of the message.
_KIND_TEXT: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (X3PError, "not a readable x3p file: {detail}"),
    (ImageFormatError, "not a readable PNG or TIFF image: {detail}"),
    (DescriptorError, "scan area not recognised: {detail}"),
    (FiringPinError, "the firing-pin impression could not be found in this scan: {detail}"),
    (PreprocessError, "the breech face could not be found in this scan: {detail}"),
    (UnusableLandError, "no usable land engraved area in this scan: {detail}"),
    (BulletError, "the bullet could not be compared: {detail}"),
    (StateError, "temporarily unavailable ({detail}); try again in a minute"),
    ((InputError, ProcessingError, ValueError, TypeError), "the scan could not be processed: {detail}"),
)


def plain(message: str, filename: str | None = None) -> str:
    """``message`` without the programmer's advice in it (clauses such as "pass max_points=...", "raise
    r_max_um"), without a leading ``function_name:`` and with the staging file's name replaced by the
    uploaded file's. Used only for the detail quoted after a sentence chosen by the error's type."""
    msg = _STAGING.sub(repr(filename) if filename else "the file", str(message))
    msg = _PAREN_ADVICE.sub("", _FUNC_PREFIX.sub("", msg))
    parts = [p for p in re.split(r";\s+|\s+-\s+", msg) if p and not _ADVICE.search(p)]
    return "; ".join(parts).strip().rstrip(";,") or "the scan could not be read"


MEMORY_TEXT = "the scan needs more memory than this service allows for one job; ask the administrator"
"""What a job that ran out of its memory limit says to the user (the worker that ran it restarts)."""


def user_message(exc: BaseException, *, filename: str | None = None) -> str:
    """What a library error means for the person using the service, from its type and attributes.

    Parameters
    ----------
    exc : BaseException
        Usually a :class:`~ballistic.errors.BallisticError`; ``MemoryError`` and other exceptions get a
        generic sentence.
    filename : str, optional
        The uploaded file's name, shown instead of the staging file's.
    """
    reason = getattr(exc, "reason", None)
    if reason in REASON_TEXT:
        return REASON_TEXT[reason]
    detail = plain(str(exc), filename)
    if isinstance(exc, MemoryError):
        return MEMORY_TEXT
    if isinstance(exc, ScaleOutConfigError):
        return "the service's search settings cannot work; the administrator finds the details in the log"
    if isinstance(exc, LimitError):
        what = _limit_what(exc)
        return f"file too large for this service: {what}" if what else \
            f"file refused by the service's size limits: {detail}"
    if isinstance(exc, X3PChecksumError):
        return ("the file is damaged or was altered after export: its checksum does not match its content; "
                "obtain a fresh copy from the instrument")
    for kind, text in _KIND_TEXT:
        if isinstance(exc, kind):
            return text.format(detail=detail)
    return "processing failed on the server (the administrator finds the details in the log and the audit log)"


def _limit_what(exc: LimitError) -> str | None:
    """The input's size as the limit that was hit describes it (``shape``, ``value``), or None."""
    shape = exc.shape
    if exc.limit == "max_pixels":
        return f"the image is {shape[1]} x {shape[0]} pixels" if shape else \
            "the image has more pixels than can be decoded safely"
    if exc.limit == "max_points" and shape:
        points = exc.value if exc.value is not None else shape[0] * shape[1]
        return f"the scan is a {shape[1]} x {shape[0]} grid ({points_text(points)} points)"
    if exc.limit == "max_upload_bytes":
        size = f"{exc.maximum / 2**20:.4g} MiB" if exc.maximum else "the size the administrator set"
        return f"uploads are limited to {size}"
    return None


def _limit_rejection(settings: Settings, exc: LimitError, filename: str | None) -> ScanRejected:
    """413 for an upload over one of the readers' limits, said from the limit that was hit."""
    if exc.limit in ("max_pixels", "max_points") and _limit_what(exc):
        return too_large(settings, _limit_what(exc))  # + the most this service opens, and whom to ask
    if exc.limit == "max_compression_ratio":
        fold = f"more than {exc.maximum:.0f}-fold" if exc.maximum else "far more"
        return ScanRejected(413, f"file refused: its point data would expand {fold} when unpacked, which genuine "
                                 "x3p files never do (a zip bomb?)")
    if exc.limit == "max_members":
        return ScanRejected(413, "not a genuine x3p file: it holds far more files than an x3p does; re-export the "
                                 "scan from the instrument software")
    if exc.limit == "max_uncompressed_bytes":
        return too_large(settings, "it unpacks to more data than a scan of that size holds")
    return ScanRejected(413, user_message(exc, filename=filename))


def upload_error(settings: Settings, exc: BaseException, filename: str | None = None) -> ScanRejected:
    """Status and user-facing reason for an error raised while opening an uploaded scan: the kind's status
    (:func:`http_status`), a sentence from the error's type and attributes (:func:`user_message`)."""
    if isinstance(exc, ScanRejected):
        return exc
    if isinstance(exc, LimitError):
        return _limit_rejection(settings, exc, filename)
    if isinstance(exc, BallisticError):
        return ScanRejected(http_status(exc), user_message(exc, filename=filename))
    return ScanRejected(422, f"the file could not be read as a scan ({plain(str(exc), filename)})")


def job_error(exc: BaseException) -> str:
    """What a correlation job's failure means for the person who uploaded the scan (stored on the job)."""
    if isinstance(exc, LimitError):
        return "file too large for this service (its limits were lowered since it was uploaded)"
    if isinstance(exc, X3PError):
        return f"the stored scan could not be read: {plain(str(exc))}"
    return user_message(exc)
