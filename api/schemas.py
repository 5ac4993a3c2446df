"""Request (``*Create``) and response (``*Public``) models."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Text fields: trimmed, bounded, no NUL (PostgreSQL text cannot hold it), no control characters.
_NO_CTRL = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=_NO_CTRL)]
Short = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=_NO_CTRL)]
Serial = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=_NO_CTRL)]
Place = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=_NO_CTRL)]
Comment = Annotated[str, StringConstraints(max_length=5000, pattern=r"^[^\x00]*$")]

ExhibitType = Literal["cartridge_case", "bullet"]
Role = Literal["evidence", "test_fire"]
Decision = Literal["confirmed", "rejected", "inconclusive"]
Scope = Literal["examiner", "intelligence", "admin"]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --------------------------------------------------------------------------- exhibits
class ExhibitCreate(BaseModel):
    """Metadata sent with an uploaded scan (multipart form fields beside ``file``)."""

    case_number: Name = Field(description="the submitting agency's case number")
    exhibit_ref: Name = Field(description="the agency's exhibit identifier within the case")
    agency: Name
    exhibit_type: ExhibitType = "cartridge_case"
    role: Role = Field("evidence", description="evidence (recovered) or test_fire (from a known firearm)")
    calibre: Optional[Short] = None
    firing_pin_shape: Optional[Short] = Field(None, description="class characteristic, e.g. hemispherical")
    land_count: Optional[int] = Field(None, ge=0, le=64)
    twist: Optional[Literal["left", "right"]] = None
    recovery_date: Optional[dt.date] = None
    place_text: Optional[Place] = None
    lat: Optional[float] = Field(None, ge=-90, le=90)
    lon: Optional[float] = Field(None, ge=-180, le=180)
    firearm_serial: Optional[Serial] = Field(None, description="only for test fires")
    spacing_um: Optional[float] = Field(None, gt=0, le=1000, description="pixel spacing of a 2D image, um")
    land_index: Optional[int] = Field(None, ge=1, le=64, description=(
        "bullets: position (1..n) of the uploaded land around the bullet; with several files, the first "
        "file's position (the others follow in order) unless land_indexes is given. Default: the next free one"))
    land_indexes: Optional[Annotated[str, StringConstraints(strip_whitespace=True, max_length=200,
                                                            pattern=r"^\d{1,2}(\s*,\s*\d{1,2})*$")]] = Field(
        None, description="bullets, several files in one request: their land positions, comma separated")

    @model_validator(mode="after")
    def _check(self) -> "ExhibitCreate":
        if self.firearm_serial and self.role != "test_fire":
            raise ValueError("firearm_serial is only recorded for role=test_fire")
        if self.exhibit_type != "bullet" and (self.land_index is not None or self.land_indexes):
            raise ValueError("land_index / land_indexes are only given for exhibit_type=bullet")
        if (self.lat is None) != (self.lon is None):
            raise ValueError("give both lat and lon, or neither")
        return self


class CasePublic(ORM):
    id: int
    agency: str
    case_number: str


class ExhibitSummary(ORM):
    id: int
    exhibit_ref: str
    case: CasePublic
    exhibit_type: str
    role: str
    calibre: Optional[str] = None
    firing_pin_shape: Optional[str] = None
    land_count: Optional[int] = None
    twist: Optional[str] = None
    recovery_date: Optional[dt.date] = None
    place_text: Optional[str] = None
    lat: Optional[float] = None
    lon: Optional[float] = None
    firearm_serial: Optional[str] = None


class JobPublic(ORM):
    id: int
    exhibit_id: int
    kind: str
    status: str
    attempts: int
    max_attempts: int
    error: Optional[str] = None
    candidates_found: Optional[int] = None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: Optional[dt.datetime] = None
    finished_at: Optional[dt.datetime] = None
    search_record_hash: Optional[str] = Field(None, description="content hash of the job's search record")
    search_record: Optional[dict[str, Any]] = Field(
        None, description="the replayable record of the job's database search (GET /v1/jobs/{id} only)")


class LandPublic(ORM):
    land_index: int
    original_sha256: str
    original_filename: str
    original_size: int
    created_at: dt.datetime
    signature_info: Optional[dict[str, Any]] = Field(None, description="signatures extracted, or why not")


class ExhibitPublic(ExhibitSummary):
    original_sha256: str
    original_filename: str
    original_size: int
    media_type: str
    spacing_um: Optional[float] = None
    region: str
    partition: str
    preprocess_info: Optional[str] = None
    descriptor_version: Optional[str] = None
    created_at: dt.datetime
    created_by: Optional[str] = None
    job: Optional[JobPublic] = None
    lands: list[LandPublic] = Field(default_factory=list, description="bullets: the land scans, by position")
    firing_pin_info: Optional[dict[str, Any]] = Field(
        None, description="raw 3D cartridge scans: the firing-pin impression found (centre, radius...) or why not")


class ExhibitPage(BaseModel):
    items: list[ExhibitPublic]
    total: int


class JobCreate(BaseModel):
    exhibit_id: int = Field(ge=1, le=2**62)


# --------------------------------------------------------------------------- candidates and reviews
class CandidatePublic(BaseModel):
    id: int
    rank: int
    region: str = Field(description="breech_face, breech_face_2d, firing_pin or bullet_lea")
    exhibit_id: int = Field(description="the exhibit whose list this is")
    candidate: ExhibitSummary = Field(description="the other exhibit of the pair")
    score: float = Field(description=("breech faces: CMC similarity (count plus mean congruent-cell correlation); "
                                      "firing pin: registered correlation; bullets: SAM of the land scores"))
    cmc_count: Optional[int] = Field(None, description="breech faces only")
    log10_lr: Optional[float] = Field(None, description="log10 likelihood ratio (calibrated regions only)")
    log10_lr_interval: Optional[list[Optional[float]]] = Field(
        None, description="bootstrap 95% interval of log10_lr [low, high]")
    calibration_id: Optional[str] = None
    fused_score: Optional[float] = Field(None, description="region=fused lists: fuse_scores(breech face, firing pin)")
    firing_pin_score: Optional[float] = Field(None, description="region=fused lists: the pair's firing-pin score")
    identification: bool
    vector_score: Optional[float] = None
    reference_exhibit_id: int = Field(description="reference side of the stored comparison and explanation")
    target_exhibit_id: int
    registration: dict[str, Any]
    review_status: str
    algorithm_version: str
    descriptor_version: Optional[str] = None
    created_at: dt.datetime
    figure_url: str
    explanation_url: str = Field(description="GET it for this pair with its explanation (lists omit it by default)")
    explanation: Optional[dict[str, Any]] = Field(None, description=(
        "cells of both directions, registration details; in lists only with include_explanation=true"))


class SecondLookPublic(BaseModel):
    """A candidate's breech faces compared again with the thorough registration search (nothing stored changes)."""
    candidate_id: int
    reference_exhibit_id: int
    target_exhibit_id: int
    search: str = Field(description="thorough: the whole circle searched at the coarse spacing")
    algorithm_version: str
    cmc_count: int
    cmc_forward: int
    cmc_backward: int
    identification: bool = Field(description="C >= 6 under the thorough registration")
    similarity: float
    registration: dict[str, Any] = Field(description="angle_deg, dy_um, dx_um, ncc (comparison spacing), mirrored")
    model_score: Optional[float] = Field(None, description="pair model's log-odds; no calibrated LR (see note)")
    seconds: float
    pose_changed: bool = Field(description="the thorough pose is another one than the stored comparison's "
                                           "(more than 3 degrees apart, or the other mirror parity)")
    stored: dict[str, Any] = Field(description="the stored (standard search) comparison, unchanged")
    note: str
    figure_url: str = Field(description="explanation figure of the second look (audited)")


class ReviewDepthTarget(BaseModel):
    recall: float
    score_threshold: float = Field(description="same-source score reached by this fraction of reference mates")
    p_different_source_at_or_above: float
    p_different_source_upper95: float
    expected_different_source_above: float
    depth: int = Field(description="ranks to review: ceil(n_eligible * p) + 1, capped at n_eligible")
    depth_upper: int = Field(description="the same with the 95% upper bound of p")
    within_rerank_k: bool = Field(description="depth_upper <= RERANK_K (deeper ranks were never re-ranked)")


class ReviewDepth(BaseModel):
    n_eligible: int = Field(description="exhibits in the partition the query can be compared with, now")
    rerank_k: int
    calibration_id: str
    same_source_pairs: int
    different_source_pairs: int
    targets: list[ReviewDepthTarget]
    method: str


class CandidateList(BaseModel):
    exhibit_id: int
    region: str
    items: list[CandidatePublic]
    review_depth: Optional[ReviewDepth] = Field(
        None, description="breech-face lists with a calibration: ranks to review for recall 0.95 / 0.99")
    calibration: Optional[dict[str, Any]] = Field(None, description="the calibration behind log10_lr")
    search_record: Optional[dict[str, Any]] = Field(
        None, description="the search record of this exhibit's latest finished job (its own database search)")
    search_record_verified: Optional[bool] = Field(None, description="its content hash matches its content")


class ReviewCreate(BaseModel):
    decision: Decision
    comment: Optional[Comment] = None


class ReviewPublic(ORM):
    id: int
    candidate_id: int
    decision: str
    comment: Optional[str] = None
    examiner: str
    created_at: dt.datetime
    feed_seq: Optional[int] = Field(None, description="sequence of the feed event this review produced")


# --------------------------------------------------------------------------- intelligence
class HitPublic(BaseModel):
    seq: int
    kind: Literal["hit", "retraction"]
    candidate_id: int
    region: Optional[str] = None
    score: float
    cmc_count: Optional[int] = None
    log10_lr: Optional[float] = Field(None, description=(
        "log10 likelihood ratio of the pair (calibrated regions: 3D breech faces), as stored on its candidate"))
    log10_lr_interval: Optional[list[Optional[float]]] = Field(None, description="bootstrap 95% interval [low, high]")
    calibration_id: Optional[str] = Field(None, description="the calibration behind log10_lr (GET "
                                                            "/v1/exhibits/{id}/candidates shows it in full)")
    confirmed_by: str
    confirmed_at: dt.datetime
    exhibits: list[ExhibitSummary]
    cases: list[CasePublic]


class HitFeed(BaseModel):
    items: list[HitPublic]
    next_cursor: Optional[str] = Field(description="pass as ?after= to get what follows; stable when idle")
    has_more: bool


class TimelineEntry(BaseModel):
    date: Optional[dt.date] = None
    exhibit_id: int
    exhibit_ref: str
    case_number: str
    agency: str
    role: str
    place_text: Optional[str] = None


class PlacePublic(BaseModel):
    exhibit_id: int
    place_text: Optional[str] = None
    lat: Optional[float] = None
    lon: Optional[float] = None


class SeriesPublic(BaseModel):
    id: str
    exhibits: list[ExhibitSummary]
    cases: list[CasePublic]
    hits: list[int] = Field(description="candidate ids of the confirmed links")
    firearm_serials: list[str]
    first_date: Optional[dt.date] = None
    last_date: Optional[dt.date] = None
    timeline: list[TimelineEntry]
    places: list[PlacePublic]


class SeriesList(BaseModel):
    items: list[SeriesPublic]


# --------------------------------------------------------------------------- keys and audit
class KeyCreate(BaseModel):
    name: Name
    scope: Scope


class KeyPublic(ORM):
    id: int
    name: str
    scope: str
    prefix: str
    created_at: dt.datetime
    created_by: Optional[str] = None
    revoked_at: Optional[dt.datetime] = None


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret; shown once, only its SHA-256 is stored")


class AuditEntryPublic(ORM):
    seq: int
    ts: str
    actor: str
    action: str
    resource_type: str
    resource_id: str
    detail: str
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEntryPublic]


class AuditVerifyPublic(BaseModel):
    ok: bool
    rows: int
    head_seq: Optional[int] = None
    head_hash: Optional[str] = None
    first_bad_seq: Optional[int] = None
    reason: Optional[str] = None


class StatusPublic(BaseModel):
    jobs: dict[str, int]
    exhibits: int
    index: dict[str, Any]
    startup: dict[str, Any]
    workers: dict[str, Any] = Field(default_factory=dict, description=(
        "the correlation worker processes: mode, each one's pid, whether it is alive, the job it runs, restarts"))


class ErrorPublic(BaseModel):
    detail: Any
