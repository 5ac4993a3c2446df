"""Exhibit submission (write-once originals; bullets as sets of land scans), listing, metadata, original
download and the shaded-relief view of 3D scans."""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile, status
from fastapi.responses import FileResponse, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api import audit
from api.deps import EvidenceReader, ExaminerWrite, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.errors import upload_error
from api.models import Case, Exhibit, Job, LandScan
from api.retrieval import BULLET_REGION, partition_for, region_for_media
from api.schemas import ErrorPublic, ExhibitCreate, ExhibitPage, ExhibitPublic
from api.storage import StagedFile, UploadTooLarge, sniff_media_type
from api.views import exhibit_public
from ballistic.io.atomic import atomic_write_bytes

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


def _validate_scan(rt, path, media_type: str, spacing_um: float | None, *, bullet: bool = False,
                   filename: str | None = None):
    """Open the scan with the typed readers and refuse what its job could not work on (``api.limits``):
    over the job memory budget -> 413 (from the header, before decompressing), malformed or degenerate -> 422,
    each with a reason for the person uploading (``api.errors.upload_error``). Nothing is stored yet."""
    from ballistic.errors import BallisticError
    from ballistic.io.image import read_image
    from ballistic.io.x3p import read_x3p

    from api.limits import ScanRejected, check_surface, max_scan_points

    limit = max_scan_points(rt.settings)
    try:
        with rt.scan_check_slots:
            if media_type == "x3p":
                surf = read_x3p(path, max_points=limit)
            else:
                surf = read_image(path, max_pixels=limit, spacing_um=spacing_um)
            check_surface(rt.settings, surf, spacing_known=media_type == "x3p" or spacing_um is not None,
                          enlarges=not bullet)
    except (ScanRejected, BallisticError, ValueError, OSError) as e:  # status and words by the error's kind
        err = upload_error(rt.settings, e, filename)
        raise HTTPException(err.status, err.reason) from None
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


@dataclass
class _Upload:
    staged: StagedFile
    media_type: str
    filename: str


def _stage_all(rt, files: list[UploadFile], meta_spacing: float | None, *, bullet: bool) -> list[_Upload]:
    """Stream, hash, sniff, de-duplicate and open every uploaded file; nothing is stored unless all pass.
    The caller discards the staged files (``staged.discard()``) whatever happens."""
    out: list[_Upload] = []
    try:
        for f in files:
            try:
                staged = rt.store.stage(f.file, rt.settings.max_upload_bytes)
            except UploadTooLarge as e:
                err = upload_error(rt.settings, e, f.filename)
                raise HTTPException(err.status, err.reason) from None
            up = _Upload(staged, "", _safe_name(f.filename))
            out.append(up)
            if staged.size == 0:
                raise HTTPException(422, f"the uploaded file {up.filename!r} is empty")
            media_type = sniff_media_type(staged.head)
            if media_type is None:
                raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                                    "unsupported file type: send an x3p (ISO 25178-72 zip), PNG or TIFF")
            up.media_type = media_type
            if sum(1 for o in out if o.staged.sha256 == staged.sha256) > 1:
                raise HTTPException(422, f"the same file was sent twice in this request ({up.filename!r})")
            dup = _existing_exhibit_for(rt, staged.sha256)
            if dup is not None:
                raise _duplicate(dup)
            if bullet and media_type != "x3p":
                raise HTTPException(422, "bullet scans must be x3p topographies (one land engraved area per file)")
            _validate_scan(rt, staged.path, media_type, meta_spacing, bullet=bullet, filename=up.filename)
    except BaseException:
        for u in out:
            u.staged.discard()
        raise
    return out


def _existing_exhibit_for(rt, sha256: str) -> int | None:
    with rt.read_factory() as rs:
        dup = rs.execute(select(Exhibit.id).where(Exhibit.original_sha256 == sha256)).scalar()
        if dup is None:
            dup = rs.execute(select(LandScan.exhibit_id).where(LandScan.original_sha256 == sha256)).scalar()
    return dup


def _land_positions(meta: ExhibitCreate, n_files: int, taken: set[int]) -> list[int]:
    """Positions of the uploaded lands: land_indexes, or land_index then the following ones, or the next free."""
    if meta.land_indexes:
        idx = [int(x) for x in meta.land_indexes.split(",")]
        if len(idx) != n_files:
            raise HTTPException(422, f"land_indexes lists {len(idx)} position(s) for {n_files} file(s)")
    else:
        first = meta.land_index if meta.land_index is not None else max(taken, default=0) + 1
        idx = list(range(first, first + n_files))
    if len(set(idx)) != len(idx) or any(not 1 <= i <= 64 for i in idx):
        raise HTTPException(422, f"land positions must be distinct and within 1..64, got {idx}")
    if meta.land_count and max(idx) > meta.land_count:
        raise HTTPException(422, f"land position {max(idx)} exceeds land_count={meta.land_count}")
    clash = sorted(set(idx) & taken)
    if clash:
        raise HTTPException(status.HTTP_409_CONFLICT, {
            "reason": f"land position(s) {clash} of this bullet were already uploaded", "land_indexes": clash})
    return idx


def _find_bullet(session, case_id: int, exhibit_ref: str) -> Exhibit | None:
    return session.execute(select(Exhibit).where(Exhibit.case_id == case_id, Exhibit.exhibit_ref == exhibit_ref,
                                                 Exhibit.exhibit_type == "bullet").order_by(Exhibit.id).limit(1)
                           ).scalar_one_or_none()


def _queue_job(rt, session, exhibit_id: int) -> tuple[Job, bool]:
    """A queued job of this exhibit (it will see everything committed before it runs), or a new one."""
    # FOR UPDATE (PostgreSQL): a worker cannot claim it until this transaction (the new lands) commits
    j = session.execute(select(Job).where(Job.exhibit_id == exhibit_id, Job.status == "queued")
                        .order_by(Job.id).limit(1).with_for_update()).scalar_one_or_none()
    if j is not None:
        return j, False
    j = Job(exhibit_id=exhibit_id, kind="correlate", status="queued", max_attempts=rt.settings.job_max_attempts)
    session.add(j)
    session.flush()
    return j, True


def _add_lands(session, who, ex: Exhibit, uploads: list[_Upload], meta: ExhibitCreate) -> list[LandScan]:
    """Land rows for the uploads at the positions ``meta`` asks for, given the lands the bullet already has."""
    taken = set(session.execute(select(LandScan.land_index).where(LandScan.exhibit_id == ex.id)).scalars())
    positions = _land_positions(meta, len(uploads), taken)
    rows = []
    for u, i in zip(uploads, positions):
        land = LandScan(exhibit_id=ex.id, land_index=i, original_sha256=u.staged.sha256,
                        original_filename=u.filename, original_size=u.staged.size, created_by=who.actor)
        session.add(land)
        rows.append(land)
    session.flush()
    return rows


def _lands_detail(lands: list[LandScan]) -> list[dict]:
    """What the audit row records of each land added."""
    return [{"land_index": x.land_index, "sha256": x.original_sha256, "size": x.original_size,
             "filename": x.original_filename} for x in lands]


def _enqueue(rt, job: Job | None, new: bool) -> None:
    if job is not None and new:
        try:
            rt.enqueue(job.id)
        except Exception:  # committed and queued in the DB: the sweeper delivers it
            log.exception("enqueue of job %s failed; the sweeper will deliver it", job.id)


def _duplicate_after_race(rt, uploads: list[_Upload]) -> None:
    for u in uploads:
        dup = _existing_exhibit_for(rt, u.staged.sha256)
        if dup is not None:
            raise _duplicate(dup) from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExhibitPublic,
             responses={401: _ERR, 403: _ERR, 409: _ERR, 413: _ERR, 415: _ERR, 422: _ERR},
             summary="Submit a scan (x3p, PNG or TIFF) or a bullet's land scans with metadata; queues a correlation job")
def create_exhibit(rt: RuntimeDep, session: SessionDep, who: ExaminerWrite,
                   file: Annotated[list[UploadFile], File(description=(
                       "x3p topography, or PNG / TIFF image; for a bullet one or more land scans (x3p), one "
                       "land engraved area per file"))],
                   meta: Annotated[ExhibitCreate, Form()]) -> ExhibitPublic:
    """A cartridge case is one file. A **bullet** is a set of land scans: send them all at once (several
    ``file`` parts, positions in ``land_indexes`` or consecutive from ``land_index``), or one by one with
    the same agency / case_number / exhibit_ref and each land's ``land_index``: lands are added to the
    bullet already recorded under that reference and its correlation job runs again."""
    bullet = meta.exhibit_type == "bullet"
    if not bullet and len(file) != 1:
        raise HTTPException(422, f"a cartridge case is one scan; {len(file)} files were sent")
    uploads = _stage_all(rt, file, meta.spacing_um, bullet=bullet)
    try:
        for u in uploads:
            rt.store.commit_original(u.staged)  # durable and read-only before the DB says it exists
    finally:
        for u in uploads:
            u.staged.discard()

    first = uploads[0]
    region = BULLET_REGION if bullet else region_for_media(first.media_type)
    created = True
    try:
        case = _get_or_create_case(session, meta.agency, meta.case_number)
        ex = None
        if bullet:
            audit.serialize(session)  # PostgreSQL: two lands of a new bullet must not create two bullets
            ex = _find_bullet(session, case.id, meta.exhibit_ref)
            if ex is not None:
                for field in ("calibre", "land_count", "twist", "role"):
                    new, old = getattr(meta, field), getattr(ex, field)
                    if new is not None and old is not None and new != old and not (field == "role" and
                                                                                     new == "evidence"):
                        raise HTTPException(status.HTTP_409_CONFLICT, {
                            "reason": f"bullet {meta.exhibit_ref!r} of case {meta.case_number!r} is recorded with "
                                      f"{field}={old!r}; this upload says {new!r}", "existing_exhibit_id": ex.id})
                created = False
        if ex is None:
            ex = Exhibit(case_id=case.id, exhibit_ref=meta.exhibit_ref, exhibit_type=meta.exhibit_type, role=meta.role,
                         calibre=meta.calibre, firing_pin_shape=None if bullet else meta.firing_pin_shape,
                         land_count=meta.land_count, twist=meta.twist, recovery_date=meta.recovery_date,
                         place_text=meta.place_text, lat=meta.lat, lon=meta.lon, firearm_serial=meta.firearm_serial,
                         spacing_um=meta.spacing_um, original_sha256=first.staged.sha256,
                         original_filename=first.filename, original_size=first.staged.size,
                         media_type=first.media_type, region=region,
                         partition=partition_for(meta.calibre, meta.firing_pin_shape, region), created_by=who.actor)
            session.add(ex)
            session.flush()
        lands = []
        if bullet:
            lands = _add_lands(session, who, ex, uploads, meta)
        job, new_job = _queue_job(rt, session, ex.id)
        detail = {"sha256": first.staged.sha256, "size": first.staged.size, "media_type": first.media_type,
                  "filename": first.filename, "case_id": case.id, "case_number": case.case_number,
                  "agency": case.agency, "exhibit_ref": ex.exhibit_ref, "role": ex.role, "job_id": job.id}
        if lands:
            detail["lands"] = _lands_detail(lands)
        audit.append(session, actor=who.actor, action="exhibit.create" if created else "exhibit.add_lands",
                     resource_type="exhibit", resource_id=ex.id, detail=detail)
        session.commit()
    except IntegrityError:
        session.rollback()
        _duplicate_after_race(rt, uploads)
        raise
    except HTTPException:
        session.rollback()
        raise
    _enqueue(rt, job, new_job)
    return exhibit_public(session, ex)


@router.post("/{exhibit_id}/lands", status_code=status.HTTP_201_CREATED, response_model=ExhibitPublic,
             responses={401: _ERR, 403: _ERR, 404: _ERR, 409: _ERR, 413: _ERR, 415: _ERR, 422: _ERR},
             summary="Add land scans to a bullet exhibit; its correlation job runs again")
def add_lands(exhibit_id: IdPath, rt: RuntimeDep, session: SessionDep, who: ExaminerWrite,
              file: Annotated[list[UploadFile], File(description="land scans (x3p), one land per file")],
              land_index: Annotated[Optional[int], Form(ge=1, le=64)] = None,
              land_indexes: Annotated[Optional[str], Form(max_length=200, pattern=r"^\d{1,2}(\s*,\s*\d{1,2})*$")]
              = None) -> ExhibitPublic:
    with rt.read_factory() as rs:
        e = rs.get(Exhibit, exhibit_id)
        if e is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
        if e.exhibit_type != "bullet":
            raise HTTPException(422, "lands are added to bullet exhibits only")
        meta = ExhibitCreate(case_number=e.case.case_number, exhibit_ref=e.exhibit_ref, agency=e.case.agency,
                             exhibit_type="bullet", land_index=land_index, land_indexes=land_indexes,
                             land_count=e.land_count)
    uploads = _stage_all(rt, file, None, bullet=True)
    try:
        for u in uploads:
            rt.store.commit_original(u.staged)
    finally:
        for u in uploads:
            u.staged.discard()
    try:
        audit.serialize(session)
        ex = session.get(Exhibit, exhibit_id)
        lands = _add_lands(session, who, ex, uploads, meta)
        job, new_job = _queue_job(rt, session, ex.id)
        audit.append(session, actor=who.actor, action="exhibit.add_lands", resource_type="exhibit", resource_id=ex.id,
                     detail={"job_id": job.id, "lands": _lands_detail(lands)})
        session.commit()
    except IntegrityError:
        session.rollback()
        _duplicate_after_race(rt, uploads)
        raise
    except HTTPException:
        session.rollback()
        raise
    _enqueue(rt, job, new_job)
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


@router.get("/{exhibit_id}/lands/{land_index}/original", response_class=FileResponse, responses={404: _ERR, 200: {
    "content": {"application/octet-stream": {}}, "description": "the land scan, byte for byte"}},
    summary="Download one land scan of a bullet (audited)")
def get_land_original(exhibit_id: IdPath, land_index: Annotated[int, Path(ge=1, le=64)], rt: RuntimeDep,
                      session: SessionDep, who: EvidenceReader) -> FileResponse:
    land = session.execute(select(LandScan).where(LandScan.exhibit_id == exhibit_id,
                                                  LandScan.land_index == land_index)).scalar_one_or_none()
    if land is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} has no land {land_index}")
    path = rt.store.original_path(land.original_sha256)
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "the original file is missing from the evidence store")
    audit.append(session, actor=who.actor, action="evidence.read_original", resource_type="exhibit",
                 resource_id=exhibit_id, detail={"sha256": land.original_sha256, "land_index": land_index})
    session.commit()
    return FileResponse(path, media_type="application/octet-stream", filename=land.original_filename,
                        headers={"X-Content-SHA256": land.original_sha256})


def _render_png(rt, surface, *, azimuth_deg: float, altitude_deg: float, z_factor: float, max_size: int) -> bytes:
    from ballistic.preprocess.filters import resample
    from ballistic.viz.render import shade, to_png_bytes

    big = max(surface.shape)
    if big > max_size:
        surface = resample(surface, spacing_um=surface.spacing_um * big / max_size)
    return to_png_bytes(shade(surface, azimuth_deg=azimuth_deg, altitude_deg=altitude_deg, z_factor=z_factor),
                        missing="white")


@router.get("/{exhibit_id}/render.png", response_class=Response, responses={404: _ERR, 409: _ERR, 422: _ERR, 200: {
    "content": {"image/png": {}}, "description": "8-bit grey PNG, missing points white"}},
    summary="Shaded relief of a 3D scan (audited as an evidence read)")
def render_exhibit(exhibit_id: IdPath, rt: RuntimeDep, session: SessionDep, who: EvidenceReader,
                   view: Annotated[Optional[Literal["preprocessed", "original"]], Query(
                       description="cartridge cases: the preprocessed breech face (default once processed) or the "
                                   "original scan; bullets: always the original land scan")] = None,
                   land_index: Annotated[Optional[int], Query(ge=1, le=64, description="bullets: which land "
                                                                                       "(default: the first)")] = None,
                   azimuth_deg: Annotated[float, Query(ge=0, le=360, description="light from, clockwise from up")]
                   = 315.0,
                   altitude_deg: Annotated[float, Query(gt=0, le=90)] = 45.0,
                   z_factor: Annotated[Optional[float], Query(gt=0, le=1000, description=(
                       "vertical exaggeration; default 5 for preprocessed breech faces, 1 otherwise"))] = None,
                   max_size: Annotated[int, Query(ge=64, le=8192, description="longest side, pixels")] = 2048
                   ) -> Response:
    """Lambertian hillshade (``ballistic.viz.render.shade``) of the exhibit's topography. 2D images have no relief
    (download the original instead)."""
    from ballistic.io.x3p import read_x3p

    with rt.read_factory() as rs:
        e = rs.get(Exhibit, exhibit_id)
        if e is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} not found")
        if e.media_type != "x3p":
            raise HTTPException(422, "this exhibit is a 2D image: it has no relief to shade; GET .../original")
        if e.exhibit_type == "bullet":
            if view == "preprocessed":
                raise HTTPException(422, "bullets are rendered from their original land scans (view=original)")
            q = select(LandScan).where(LandScan.exhibit_id == e.id)
            q = q.where(LandScan.land_index == land_index) if land_index else q.order_by(LandScan.land_index).limit(1)
            land = rs.execute(q).scalar_one_or_none()
            if land is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"exhibit {exhibit_id} has no land {land_index}")
            view, src, source_id, land_index = "original", rt.store.original_path(land.original_sha256), \
                land.original_sha256, land.land_index
        else:
            if land_index is not None:
                raise HTTPException(422, "land_index is for bullets only")
            view = view or ("preprocessed" if e.derived_path else "original")
            if view == "preprocessed":
                if not e.derived_path:
                    raise HTTPException(status.HTTP_409_CONFLICT, "not preprocessed yet (its job has not finished)")
                src, source_id = rt.store.resolve(e.derived_path), e.derived_path
            else:
                src, source_id = rt.store.original_path(e.original_sha256), e.original_sha256
    z = z_factor if z_factor is not None else (5.0 if view == "preprocessed" else 1.0)
    params = {"view": view, "land_index": land_index, "azimuth_deg": azimuth_deg, "altitude_deg": altitude_deg,
              "z_factor": z, "max_size": max_size}
    tag = hashlib.sha256(f"{source_id}|{sorted(params.items())}".encode()).hexdigest()[:20]
    path = rt.store.root / "derived" / "renders" / f"exhibit-{exhibit_id}-{tag}.png"
    if path.is_file():
        data = path.read_bytes()
    else:
        if not src.is_file():
            raise HTTPException(status.HTTP_410_GONE, "the scan is missing from the evidence store")
        data = _render_png(rt, read_x3p(src, max_points=rt.settings.max_pixels), azimuth_deg=azimuth_deg,
                           altitude_deg=altitude_deg, z_factor=z, max_size=max_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    audit.append(session, actor=who.actor, action="evidence.read_render", resource_type="exhibit",
                 resource_id=exhibit_id, detail=params)
    session.commit()
    return Response(content=data, media_type="image/png")
