"""Exhibits: submission (write-once originals; bullets as sets of land scans), listing, metadata, original
download and the shaded-relief view of 3D scans. Called by the JSON routes (``api.routes.exhibits``) and the
web pages alike; refusals are :class:`api.errors.ServiceError` (no HTTP here)."""
from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api import audit
from api.db.models import Case, Exhibit, Job, LandScan
from api.errors import Conflict, Gone, NotFound, ServiceError, Unprocessable, upload_error
from api.index import BULLET_REGION, partition_for, region_for_media
from api.schemas import ExhibitCreate, ExhibitPage, ExhibitPublic
from api.services.serializers import exhibit_public
from api.storage import StagedFile, UploadTooLarge, sniff_media_type
from ballistic.io.atomic import atomic_write_bytes

__all__ = ["create_exhibit", "add_lands", "list_exhibits", "get_exhibit", "original_file", "land_original_file",
           "render_relief"]

log = logging.getLogger("ballistic.api")


class Upload(Protocol):
    """An uploaded file as the services see it (FastAPI's ``UploadFile`` is one)."""

    file: BinaryIO
    filename: str | None


def exhibit_row(session, exhibit_id: int) -> Exhibit:
    """The stored exhibit ``exhibit_id``, or :class:`~api.errors.NotFound` (the one lookup every service and
    web page uses; ids outside the database's integer range are simply not found)."""
    e = session.get(Exhibit, int(exhibit_id)) if 1 <= int(exhibit_id) <= 2**62 else None
    if e is None:
        raise NotFound(f"exhibit {exhibit_id} not found")
    return e


def _duplicate(existing_id: int) -> Conflict:
    return Conflict({"reason": "this file was already submitted (same SHA-256)", "existing_exhibit_id": existing_id})


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
        raise ServiceError(err.reason, err.status) from None
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


def _stage_all(rt, files: list[Upload], meta_spacing: float | None, *, bullet: bool) -> list[_Upload]:
    """Stream, hash, sniff, de-duplicate and open every uploaded file; nothing is stored unless all pass.
    The caller discards the staged files (``staged.discard()``) whatever happens."""
    out: list[_Upload] = []
    try:
        for f in files:
            try:
                staged = rt.store.stage(f.file, rt.settings.max_upload_bytes)
            except UploadTooLarge as e:
                err = upload_error(rt.settings, e, f.filename)
                raise ServiceError(err.reason, err.status) from None
            up = _Upload(staged, "", _safe_name(f.filename))
            out.append(up)
            if staged.size == 0:
                raise Unprocessable(f"the uploaded file {up.filename!r} is empty")
            media_type = sniff_media_type(staged.head)
            if media_type is None:
                raise ServiceError("unsupported file type: send an x3p (ISO 25178-72 zip), PNG or TIFF", 415)
            up.media_type = media_type
            if sum(1 for o in out if o.staged.sha256 == staged.sha256) > 1:
                raise Unprocessable(f"the same file was sent twice in this request ({up.filename!r})")
            dup = _existing_exhibit_for(rt, staged.sha256)
            if dup is not None:
                raise _duplicate(dup)
            if bullet and media_type != "x3p":
                raise Unprocessable("bullet scans must be x3p topographies (one land engraved area per file)")
            _validate_scan(rt, staged.path, media_type, meta_spacing, bullet=bullet, filename=up.filename)
    except BaseException:
        for u in out:
            u.staged.discard()
        raise
    return out


def _store_originals(rt, files: list[Upload], meta_spacing: float | None, *, bullet: bool) -> list[_Upload]:
    """Stage and check every file (:func:`_stage_all`), then store each original: durable and read-only
    before the database says it exists. The staging files are gone afterwards."""
    uploads = _stage_all(rt, files, meta_spacing, bullet=bullet)
    try:
        for u in uploads:
            rt.store.commit_original(u.staged)
    finally:
        for u in uploads:
            u.staged.discard()
    return uploads


@contextmanager
def _upload_transaction(rt, session, uploads: list[_Upload]):
    """The database rows of an upload: rolled back on a refusal; a unique-key clash is the same file sent at
    the same moment by someone else (409 naming its exhibit)."""
    try:
        yield
    except IntegrityError:
        session.rollback()
        _duplicate_after_race(rt, uploads)
        raise
    except ServiceError:
        session.rollback()
        raise


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
            raise Unprocessable(f"land_indexes lists {len(idx)} position(s) for {n_files} file(s)")
    else:
        first = meta.land_index if meta.land_index is not None else max(taken, default=0) + 1
        idx = list(range(first, first + n_files))
    if len(set(idx)) != len(idx) or any(not 1 <= i <= 64 for i in idx):
        raise Unprocessable(f"land positions must be distinct and within 1..64, got {idx}")
    if meta.land_count and max(idx) > meta.land_count:
        raise Unprocessable(f"land position {max(idx)} exceeds land_count={meta.land_count}")
    clash = sorted(set(idx) & taken)
    if clash:
        raise Conflict({"reason": f"land position(s) {clash} of this bullet were already uploaded",
                        "land_indexes": clash})
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


def create_exhibit(rt, session, who, file: list[Upload], meta: ExhibitCreate) -> ExhibitPublic:
    """A cartridge case is one file. A **bullet** is a set of land scans: send them all at once (several
    ``file`` parts, positions in ``land_indexes`` or consecutive from ``land_index``), or one by one with
    the same agency / case_number / exhibit_ref and each land's ``land_index``: lands are added to the
    bullet already recorded under that reference and its correlation job runs again."""
    bullet = meta.exhibit_type == "bullet"
    if not bullet and len(file) != 1:
        raise Unprocessable(f"a cartridge case is one scan; {len(file)} files were sent")
    uploads = _store_originals(rt, file, meta.spacing_um, bullet=bullet)

    first = uploads[0]
    region = BULLET_REGION if bullet else region_for_media(first.media_type)
    created = True
    with _upload_transaction(rt, session, uploads):
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
                        raise Conflict({
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
    _enqueue(rt, job, new_job)
    return exhibit_public(session, ex)


def add_lands(rt, session, who, exhibit_id: int, file: list[Upload], land_index: int | None = None,
              land_indexes: str | None = None) -> ExhibitPublic:
    """Add land scans to a bullet exhibit; its correlation job runs again."""
    with rt.read_factory() as rs:
        e = exhibit_row(rs, exhibit_id)
        if e.exhibit_type != "bullet":
            raise Unprocessable("lands are added to bullet exhibits only")
        meta = ExhibitCreate(case_number=e.case.case_number, exhibit_ref=e.exhibit_ref, agency=e.case.agency,
                             exhibit_type="bullet", land_index=land_index, land_indexes=land_indexes,
                             land_count=e.land_count)
    uploads = _store_originals(rt, file, None, bullet=True)
    with _upload_transaction(rt, session, uploads):
        audit.serialize(session)
        ex = session.get(Exhibit, exhibit_id)
        lands = _add_lands(session, who, ex, uploads, meta)
        job, new_job = _queue_job(rt, session, ex.id)
        audit.append(session, actor=who.actor, action="exhibit.add_lands", resource_type="exhibit", resource_id=ex.id,
                     detail={"job_id": job.id, "lands": _lands_detail(lands)})
        session.commit()
    _enqueue(rt, job, new_job)
    return exhibit_public(session, ex)


def list_exhibits(session, *, case_number: str | None = None, agency: str | None = None, calibre: str | None = None,
                  role: str | None = None, sha256: str | None = None, limit: int = 100,
                  offset: int = 0) -> ExhibitPage:
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


def get_exhibit(session, exhibit_id: int) -> ExhibitPublic:
    return exhibit_public(session, exhibit_row(session, exhibit_id))


def original_file(rt, session, who, exhibit_id: int) -> tuple[Path, str, str]:
    """The original file of an exhibit (a bullet's first land): ``(path, filename, sha256)``; the read is
    audited (committed here)."""
    e = exhibit_row(session, exhibit_id)
    path = rt.store.original_path(e.original_sha256)
    if not path.is_file():
        raise Gone("the original file is missing from the evidence store")
    audit.append(session, actor=who.actor, action="evidence.read_original", resource_type="exhibit",
                 resource_id=e.id, detail={"sha256": e.original_sha256})
    session.commit()
    return path, e.original_filename, e.original_sha256


def land_original_file(rt, session, who, exhibit_id: int, land_index: int) -> tuple[Path, str, str]:
    """One land scan of a bullet: ``(path, filename, sha256)``; audited."""
    land = session.execute(select(LandScan).where(LandScan.exhibit_id == exhibit_id,
                                                  LandScan.land_index == land_index)).scalar_one_or_none()
    if land is None:
        raise NotFound(f"exhibit {exhibit_id} has no land {land_index}")
    path = rt.store.original_path(land.original_sha256)
    if not path.is_file():
        raise Gone("the original file is missing from the evidence store")
    audit.append(session, actor=who.actor, action="evidence.read_original", resource_type="exhibit",
                 resource_id=exhibit_id, detail={"sha256": land.original_sha256, "land_index": land_index})
    session.commit()
    return path, land.original_filename, land.original_sha256


def _render_png(rt, surface, *, azimuth_deg: float, altitude_deg: float, z_factor: float, max_size: int) -> bytes:
    from ballistic.preprocess.filters import resample
    from ballistic.viz.render import shade, to_png_bytes

    big = max(surface.shape)
    if big > max_size:
        surface = resample(surface, spacing_um=surface.spacing_um * big / max_size)
    return to_png_bytes(shade(surface, azimuth_deg=azimuth_deg, altitude_deg=altitude_deg, z_factor=z_factor),
                        missing="white")


def render_relief(rt, session, who, exhibit_id: int, *, view: str | None = None, land_index: int | None = None,
                  azimuth_deg: float = 315.0, altitude_deg: float = 45.0, z_factor: float | None = None,
                  max_size: int = 2048) -> bytes:
    """Lambertian hillshade (``ballistic.viz.render.shade``) of the exhibit's topography as PNG bytes, cached
    under ``derived/renders``; audited as ``evidence.read_render``. 2D images have no relief."""
    from ballistic.io.x3p import read_x3p

    with rt.read_factory() as rs:
        e = exhibit_row(rs, exhibit_id)
        if e.media_type != "x3p":
            raise Unprocessable("this exhibit is a 2D image: it has no relief to shade; GET .../original")
        if e.exhibit_type == "bullet":
            if view == "preprocessed":
                raise Unprocessable("bullets are rendered from their original land scans (view=original)")
            q = select(LandScan).where(LandScan.exhibit_id == e.id)
            q = q.where(LandScan.land_index == land_index) if land_index else q.order_by(LandScan.land_index).limit(1)
            land = rs.execute(q).scalar_one_or_none()
            if land is None:
                raise NotFound(f"exhibit {exhibit_id} has no land {land_index}")
            view, src, source_id, land_index = "original", rt.store.original_path(land.original_sha256), \
                land.original_sha256, land.land_index
        else:
            if land_index is not None:
                raise Unprocessable("land_index is for bullets only")
            view = view or ("preprocessed" if e.derived_path else "original")
            if view == "preprocessed":
                if not e.derived_path:
                    raise Conflict("not preprocessed yet (its job has not finished)")
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
            raise Gone("the scan is missing from the evidence store")
        data = _render_png(rt, read_x3p(src, max_points=rt.settings.max_pixels), azimuth_deg=azimuth_deg,
                           altitude_deg=altitude_deg, z_factor=z, max_size=max_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    audit.append(session, actor=who.actor, action="evidence.read_render", resource_type="exhibit",
                 resource_id=exhibit_id, detail=params)
    session.commit()
    return data
