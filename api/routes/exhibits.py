"""``/v1/exhibits``: submission (write-once originals; bullets as sets of land scans), listing, metadata,
original download and the shaded-relief view of 3D scans. HTTP only: the work is :mod:`api.services.exhibits`."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, File, Form, Path, Query, UploadFile, status
from fastapi.responses import FileResponse, Response

from api.deps import EvidenceReader, ExaminerWrite, IdPath, ReadSessionDep, RuntimeDep, SessionDep
from api.schemas import ErrorPublic, ExhibitCreate, ExhibitPage, ExhibitPublic
from api.services import exhibits as svc

router = APIRouter(prefix="/v1/exhibits", tags=["exhibits"])
_ERR = {"model": ErrorPublic}


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
    return svc.create_exhibit(rt, session, who, file, meta)


@router.post("/{exhibit_id}/lands", status_code=status.HTTP_201_CREATED, response_model=ExhibitPublic,
             responses={401: _ERR, 403: _ERR, 404: _ERR, 409: _ERR, 413: _ERR, 415: _ERR, 422: _ERR},
             summary="Add land scans to a bullet exhibit; its correlation job runs again")
def add_lands(exhibit_id: IdPath, rt: RuntimeDep, session: SessionDep, who: ExaminerWrite,
              file: Annotated[list[UploadFile], File(description="land scans (x3p), one land per file")],
              land_index: Annotated[Optional[int], Form(ge=1, le=64)] = None,
              land_indexes: Annotated[Optional[str], Form(max_length=200, pattern=r"^\d{1,2}(\s*,\s*\d{1,2})*$")]
              = None) -> ExhibitPublic:
    return svc.add_lands(rt, session, who, exhibit_id, file, land_index, land_indexes)


@router.get("", response_model=ExhibitPage, summary="List exhibits")
def list_exhibits(session: ReadSessionDep, who: EvidenceReader,
                  case_number: Annotated[Optional[str], Query(max_length=200)] = None,
                  agency: Annotated[Optional[str], Query(max_length=200)] = None,
                  calibre: Annotated[Optional[str], Query(max_length=50)] = None,
                  role: Annotated[Optional[str], Query(pattern="^(evidence|test_fire)$")] = None,
                  sha256: Annotated[Optional[str], Query(pattern="^[0-9a-f]{64}$")] = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> ExhibitPage:
    return svc.list_exhibits(session, case_number=case_number, agency=agency, calibre=calibre, role=role,
                             sha256=sha256, limit=limit, offset=offset)


@router.get("/{exhibit_id}", response_model=ExhibitPublic, responses={404: _ERR}, summary="Exhibit metadata")
def get_exhibit(exhibit_id: IdPath, session: ReadSessionDep, who: EvidenceReader) -> ExhibitPublic:
    return svc.get_exhibit(session, exhibit_id)


@router.get("/{exhibit_id}/original", response_class=FileResponse, responses={404: _ERR, 200: {
    "content": {"application/octet-stream": {}}, "description": "the original file, byte for byte"}},
    summary="Download the original scan (audited)")
def get_original(exhibit_id: IdPath, rt: RuntimeDep, session: SessionDep, who: EvidenceReader) -> FileResponse:
    path, filename, sha = svc.original_file(rt, session, who, exhibit_id)
    return FileResponse(path, media_type="application/octet-stream", filename=filename,
                        headers={"X-Content-SHA256": sha})


@router.get("/{exhibit_id}/lands/{land_index}/original", response_class=FileResponse, responses={404: _ERR, 200: {
    "content": {"application/octet-stream": {}}, "description": "the land scan, byte for byte"}},
    summary="Download one land scan of a bullet (audited)")
def get_land_original(exhibit_id: IdPath, land_index: Annotated[int, Path(ge=1, le=64)], rt: RuntimeDep,
                      session: SessionDep, who: EvidenceReader) -> FileResponse:
    path, filename, sha = svc.land_original_file(rt, session, who, exhibit_id, land_index)
    return FileResponse(path, media_type="application/octet-stream", filename=filename,
                        headers={"X-Content-SHA256": sha})


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
    data = svc.render_relief(rt, session, who, exhibit_id, view=view, land_index=land_index,
                             azimuth_deg=azimuth_deg, altitude_deg=altitude_deg, z_factor=z_factor,
                             max_size=max_size)
    return Response(content=data, media_type="image/png")
