"""Exhibit submission (write-once originals), listing, metadata and original download."""
from __future__ import annotations

import logging
import re
from typing import Annotated, Optional

from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.responses import FileResponse
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api import audit
from api.deps import EvidenceReader, ExaminerWrite, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.models import Case, Exhibit, Job
from api.retrieval import partition_for, region_for_media
from api.schemas import ErrorPublic, ExhibitCreate, ExhibitPage, ExhibitPublic
from api.storage import UploadTooLarge, sniff_media_type
from api.views import exhibit_public

router = APIRouter(prefix="/v1/exhibits", tags=["exhibits"])
log = logging.getLogger("ballistic.api")

_ERR = {"model": ErrorPublic}


def _duplicate(existing_id: int) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, {
        "reason": "this file was already submitted (same SHA-256)", "existing_exhibit_id": existing_id})


def _safe_name(name: str | None) -> str:
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()
    return (base or "upload")[:300]


def _validate_scan(rt, path, media_type: str, spacing_um: float | None):
    """Open the scan with the typed readers: malformed -> 422, over a limit -> 413 (nothing stored yet)."""
    from ballistic.io import ImageFormatError, ImageLimitError, X3PError, X3PLimitError, read_image, read_x3p

    try:
        if media_type == "x3p":
            surf = read_x3p(path, max_points=rt.settings.max_pixels)
        else:
            surf = read_image(path, max_pixels=rt.settings.max_pixels, spacing_um=spacing_um)
    except (X3PLimitError, ImageLimitError) as e:
        raise HTTPException(413, f"{type(e).__name__}: {e}") from None
    except (X3PError, ImageFormatError) as e:
        raise HTTPException(422, f"{type(e).__name__}: {e}") from None
    except (ValueError, OSError) as e:
        raise HTTPException(422, f"unreadable scan: {type(e).__name__}: {e}") from None
    if surf.valid_fraction == 0:
        raise HTTPException(422, "the scan holds no measured points (all NaN)")
    return surf


def _get_or_create_case(session, agency: str, case_number: str) -> Case:
    q = select(Case).where(Case.agency == agency, Case.case_number == case_number)
    case = session.execute(q).scalar_one_or_none()
    if case is None:
        try:
            with session.begin_nested():  # PostgreSQL: another upload may create the same case meanwhile
                case = Case(agency=agency, case_number=case_number)
                session.add(case)
        except IntegrityError:
            case = session.execute(q).scalar_one()
    return case


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExhibitPublic,
             responses={401: _ERR, 403: _ERR, 409: _ERR, 413: _ERR, 415: _ERR, 422: _ERR},
             summary="Submit a scan (x3p, PNG or TIFF) with its metadata; queues a correlation job")
def create_exhibit(rt: RuntimeDep, session: SessionDep, who: ExaminerWrite,
                   file: Annotated[UploadFile, File(description="x3p topography, or PNG / TIFF image")],
                   meta: Annotated[ExhibitCreate, Form()]) -> ExhibitPublic:
    try:
        staged = rt.store.stage(file.file, rt.settings.max_upload_bytes)
    except UploadTooLarge as e:
        raise HTTPException(413, str(e)) from None
    try:
        if staged.size == 0:
            raise HTTPException(422, "the uploaded file is empty")
        media_type = sniff_media_type(staged.head)
        if media_type is None:
            raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                "unsupported file type: send an x3p (ISO 25178-72 zip), PNG or TIFF")
        with rt.read_factory() as rs:
            dup = rs.execute(select(Exhibit.id).where(Exhibit.original_sha256 == staged.sha256)).scalar()
        if dup is not None:
            raise _duplicate(dup)
        if meta.exhibit_type == "bullet" and media_type != "x3p":
            raise HTTPException(422, "bullet scans must be x3p topographies")
        _validate_scan(rt, staged.path, media_type, meta.spacing_um)
        rt.store.commit_original(staged)  # durable and read-only before the DB says it exists
    finally:
        staged.discard()

    region = region_for_media(media_type)
    try:
        case = _get_or_create_case(session, meta.agency, meta.case_number)
        ex = Exhibit(case_id=case.id, exhibit_ref=meta.exhibit_ref, exhibit_type=meta.exhibit_type, role=meta.role,
                     calibre=meta.calibre, firing_pin_shape=meta.firing_pin_shape, land_count=meta.land_count,
                     twist=meta.twist, recovery_date=meta.recovery_date, place_text=meta.place_text, lat=meta.lat,
                     lon=meta.lon, firearm_serial=meta.firearm_serial, spacing_um=meta.spacing_um,
                     original_sha256=staged.sha256, original_filename=_safe_name(file.filename),
                     original_size=staged.size, media_type=media_type, region=region,
                     partition=partition_for(meta.calibre, meta.firing_pin_shape, region), created_by=who.actor)
        session.add(ex)
        session.flush()
        job = None
        if meta.exhibit_type == "cartridge_case":
            job = Job(exhibit_id=ex.id, kind="correlate", status="queued", max_attempts=rt.settings.job_max_attempts)
            session.add(job)
            session.flush()
        audit.append(session, actor=who.actor, action="exhibit.create", resource_type="exhibit", resource_id=ex.id,
                     detail={"sha256": staged.sha256, "size": staged.size, "media_type": media_type,
                             "filename": ex.original_filename, "case_id": case.id, "case_number": case.case_number,
                             "agency": case.agency, "exhibit_ref": ex.exhibit_ref, "role": ex.role,
                             "job_id": job.id if job else None})
        session.commit()
    except IntegrityError:
        session.rollback()
        with rt.read_factory() as rs:
            dup = rs.execute(select(Exhibit.id).where(Exhibit.original_sha256 == staged.sha256)).scalar()
        if dup is not None:
            raise _duplicate(dup) from None
        raise
    if job is not None:
        try:
            rt.enqueue(job.id)
        except Exception:  # committed and queued in the DB: the sweeper delivers it
            log.exception("enqueue of job %s failed; the sweeper will deliver it", job.id)
    return exhibit_public(session, ex)


@router.get("", response_model=ExhibitPage, summary="List exhibits")
def list_exhibits(session: ReadSessionDep, who: EvidenceReader,
                  case_number: Annotated[Optional[str], Query(max_length=200)] = None,
                  agency: Annotated[Optional[str], Query(max_length=200)] = None,
                  calibre: Annotated[Optional[str], Query(max_length=50)] = None,
                  role: Annotated[Optional[str], Query(pattern="^(evidence|test_fire)$")] = None,
                  sha256: Annotated[Optional[str], Query(pattern="^[0-9a-f]{64}$")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ExhibitPage:
    q = select(Exhibit).join(Case)
    if case_number:
        q = q.where(Case.case_number == case_number)
    if agency:
        q = q.where(Case.agency == agency)
    if calibre:
        q = q.where(Exhibit.calibre == calibre)
    if role:
        q = q.where(Exhibit.role == role)
    if sha256:
        q = q.where(Exhibit.original_sha256 == sha256)
    total = session.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = session.execute(q.order_by(Exhibit.id).limit(limit).offset(offset)).scalars().unique().all()
    return ExhibitPage(items=[exhibit_public(session, e) for e in rows], total=total)


@router.get("/{exhibit_id}", response_model=ExhibitPublic, responses={404: _ERR}, summary="Exhibit metadata")
def get_exhibit(exhibit_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> ExhibitPublic:
    e = session.get(Exhibit, exhibit_id)
    if e is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
    return exhibit_public(session, e)


@router.get("/{exhibit_id}/original", response_class=FileResponse, responses={404: _ERR, 200: {
    "content": {"application/octet-stream": {}}, "description": "the original file, byte for byte"}},
    summary="Download the original scan (audited)")
def get_original(exhibit_id: IdPath, rt: RuntimeDep, session: SessionDep, who: EvidenceReader) -> FileResponse:
    e = session.get(Exhibit, exhibit_id)
    if e is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
    path = rt.store.original_path(e.original_sha256)
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "the original file is missing from the evidence store")
    audit.append(session, actor=who.actor, action="evidence.read_original", resource_type="exhibit",
                 resource_id=e.id, detail={"sha256": e.original_sha256})
    session.commit()
    return FileResponse(path, media_type="application/octet-stream", filename=e.original_filename,
                        headers={"X-Content-SHA256": e.original_sha256})
