"""Library errors put in words for the service's users (issue 12, item 7).

The library speaks to programmers: "pass max_points=62410000", "raise r_max_um", "lower
edge_margin_um". Someone uploading a scan can do none of that; they can send another file, re-export
it, give its pixel spacing, or ask the administrator to raise a limit. This module maps each typed
library error, at the API boundary, to a status and a sentence that says what happened and what the
user can do. The library's own message stays for library callers, in the log and in the audit rows.

* :func:`upload_error` - reading an uploaded scan (413 too large, 422 unusable);
* :func:`job_error` - a correlation job's failure (the text stored on the job).
"""
from __future__ import annotations

import re

from api.limits import ScanRejected, points_text, too_large
from api.settings import Settings

__all__ = ["upload_error", "job_error", "plain"]

_GRID = re.compile(r"grid of (\d+)x(\d+)x\d+")
_IMAGE = re.compile(r"is (\d+)x(\d+) = ")
_FUNC_PREFIX = re.compile(r"^[a-z_][a-z0-9_]*: ")
_PAREN_ADVICE = re.compile(r"\s*\((?:or )?(?:pass|raise|lower) [^)]*\)")
_ADVICE = re.compile(r"\b(?:pass|raise|lower)\b[^.;]*\b[a-z]+_[a-z0-9_]+\b")
_STAGING = re.compile(r"'upload-[0-9a-f]{16}'")


def plain(message: str, filename: str | None = None) -> str:
    """``message`` without the programmer's advice in it (clauses such as "pass max_points=...", "raise
    r_max_um"), without a leading ``function_name:`` and with the staging file's name replaced by the
    uploaded file's."""
    msg = _STAGING.sub(repr(filename) if filename else "the file", str(message))
    msg = _PAREN_ADVICE.sub("", _FUNC_PREFIX.sub("", msg))
    parts = [p for p in re.split(r";\s+|\s+-\s+", msg) if p and not _ADVICE.search(p)]
    return "; ".join(parts).strip().rstrip(";,") or "the scan could not be read"


def upload_error(settings: Settings, exc: BaseException, filename: str | None = None) -> ScanRejected:
    """Status and user-facing reason for an error raised while opening an uploaded scan."""
    from ballistic.errors import ImageFormatError, ImageLimitError, X3PChecksumError, X3PError, X3PLimitError

    msg = str(exc)
    if isinstance(exc, ScanRejected):
        return exc
    if isinstance(exc, ImageLimitError):
        m = _IMAGE.search(msg)
        return too_large(settings, f"the image is {m[1]} x {m[2]} pixels" if m else
                         "the image has more pixels than can be decoded safely")
    if isinstance(exc, X3PLimitError):
        m = _GRID.search(msg)
        if m:
            return too_large(settings, f"the scan is a {m[1]} x {m[2]} grid ({points_text(int(m[1]) * int(m[2]))} points)")
        if "compression ratio" in msg:
            return ScanRejected(413, "file refused: its point data would expand more than 1000-fold when "
                                     "unpacked, which genuine x3p files never do (a zip bomb?)")
        if "zip members" in msg:
            return ScanRejected(422, "not a genuine x3p file: it holds far more files than an x3p does; "
                                     "re-export the scan from the instrument software")
        if "uncompressed bytes" in msg:
            return too_large(settings, "it unpacks to more data than a scan of that size holds")
        return ScanRejected(413, f"file refused by the service's size limits: {plain(msg, filename)}")
    if isinstance(exc, X3PChecksumError):
        return ScanRejected(422, "the file is damaged or was altered after export: its checksum does not match "
                                 "its content; obtain a fresh copy from the instrument")
    if isinstance(exc, X3PError):
        return ScanRejected(422, f"not a readable x3p file: {plain(msg, filename)}")
    if isinstance(exc, ImageFormatError):
        return ScanRejected(422, f"not a readable PNG or TIFF image: {plain(msg, filename)}")
    return ScanRejected(422, f"the file could not be read as a scan ({plain(msg, filename)})")


#: (library error text, what to tell the user): first match wins; the library text is matched by substring
_JOB_HINTS: tuple[tuple[str, str], ...] = (
    ("no radial band has enough measured points",
     "scan area not recognised: too little of the breech face was measured around its centre to describe it. "
     "Check that the scan shows the whole breech face, centred"),
    ("too few valid points in the centre",
     "breech face not found: too few measured points in the centre of the scan; is the primer centred in the "
     "field of view?"),
    ("no planar breech-face region",
     "breech face not found: no flat primer surface in the scan; is this a breech-face scan of a cartridge case?"),
    ("breech-face region too small", "breech face not found: the flat primer region is too small"),
    ("leave no breech-face annulus",
     "breech face not found: the firing-pin hole and the edges leave no breech-face area to compare"),
    ("primer edge was not found",
     "scale unknown: the primer edge was not found in this photo, so its scale cannot be measured; upload it "
     "again with spacing_um (micrometres per pixel)"),
    ("segment='none' gives no primer",
     "scale unknown: upload the photo again with spacing_um (micrometres per pixel)"),
    ("masked or rendered view",
     "this image looks like a masked or rendered view, not a ring-light photograph of the primer"),
    ("no bright region enclosed by a dark ring",
     "primer not found: upload a ring-light photograph with the whole primer in view"),
    ("bright disc enclosed by the dark primer ring",
     "primer not found: check that the photo shows the primer, centred"),
)


def job_error(exc: BaseException) -> str:
    """What a correlation job's failure means for the person who uploaded the scan."""
    from ballistic.errors import (BulletError, DescriptorError, ImageLimitError, PreprocessError, X3PError,
                                  X3PLimitError)

    msg = str(exc)
    for needle, text in _JOB_HINTS:
        if needle in msg:
            return text
    if isinstance(exc, MemoryError):
        return "the scan needs more memory than this service allows for one job; ask the administrator"
    if isinstance(exc, (X3PLimitError, ImageLimitError)):
        return "file too large for this service (its limits were lowered since it was uploaded)"
    if isinstance(exc, X3PError):
        return f"the stored scan could not be read: {plain(msg)}"
    if isinstance(exc, DescriptorError):
        return f"scan area not recognised: {plain(msg)}"
    if isinstance(exc, PreprocessError):
        return f"the breech face could not be found in this scan: {plain(msg)}"
    if isinstance(exc, BulletError):
        return f"the bullet could not be compared: {plain(msg)}"
    if isinstance(exc, (ValueError, TypeError)):
        return f"the scan could not be processed: {plain(msg)}"
    return "processing failed on the server (the administrator finds the details in the log and the audit log)"
