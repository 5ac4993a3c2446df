"""ORM models (SQLAlchemy 2 typed declarative). The schema itself is created by Alembic
(``api/db/migrations``); these classes are its single source of truth for autogenerate."""
from __future__ import annotations

import datetime as dt
from typing import Any, Optional

from sqlalchemy import (JSON, BigInteger, Boolean, Date, Float, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint, event)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from api.db import Base, UTCDateTime, utcnow

# BigInteger primary keys that stay INTEGER on SQLite (rowid alias, autoincrement).
BigID = BigInteger().with_variant(Integer(), "sqlite")

EXHIBIT_TYPES = ("cartridge_case", "bullet")
ROLES = ("evidence", "test_fire")
JOB_STATUSES = ("queued", "running", "done", "failed")
DECISIONS = ("confirmed", "rejected", "inconclusive")
SCOPES = ("examiner", "intelligence", "admin")


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("agency", "case_number", name="uq_cases_agency_number"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    agency: Mapped[str] = mapped_column(String(200))
    case_number: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    exhibits: Mapped[list["Exhibit"]] = relationship(back_populates="case")


class Exhibit(Base):
    __tablename__ = "exhibits"
    __table_args__ = (
        Index("ix_exhibits_partition", "partition"),
        Index("ix_exhibits_case", "case_id"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    exhibit_ref: Mapped[str] = mapped_column(String(200))
    exhibit_type: Mapped[str] = mapped_column(String(20))
    role: Mapped[str] = mapped_column(String(20))
    calibre: Mapped[Optional[str]] = mapped_column(String(50))
    firing_pin_shape: Mapped[Optional[str]] = mapped_column(String(50))
    land_count: Mapped[Optional[int]] = mapped_column(Integer)
    twist: Mapped[Optional[str]] = mapped_column(String(10))
    recovery_date: Mapped[Optional[dt.date]] = mapped_column(Date)
    place_text: Mapped[Optional[str]] = mapped_column(String(500))
    lat: Mapped[Optional[float]] = mapped_column(Float)
    lon: Mapped[Optional[float]] = mapped_column(Float)
    firearm_serial: Mapped[Optional[str]] = mapped_column(String(100))
    spacing_um: Mapped[Optional[float]] = mapped_column(Float)  # given for uncalibrated 2D images

    # the original, write-once and content-addressed
    original_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    original_filename: Mapped[str] = mapped_column(String(300))
    original_size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(10))      # x3p | png | tiff

    # derived by the correlation job
    region: Mapped[str] = mapped_column(String(50))
    partition: Mapped[str] = mapped_column(String(200))
    derived_path: Mapped[Optional[str]] = mapped_column(String(300))
    preprocess_info: Mapped[Optional[str]] = mapped_column(Text)
    descriptor: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    descriptor_version: Mapped[Optional[str]] = mapped_column(String(100))
    descriptor_dim: Mapped[Optional[int]] = mapped_column(Integer)
    # firing-pin impression of a raw cartridge scan (derived x3p) and what was found, or why not
    firing_pin_path: Mapped[Optional[str]] = mapped_column(String(300))
    firing_pin_info: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[Optional[str]] = mapped_column(String(200))

    case: Mapped[Case] = relationship(back_populates="exhibits", lazy="joined")
    lands: Mapped[list["LandScan"]] = relationship(back_populates="exhibit", order_by="LandScan.land_index")


class LandScan(Base):
    """One land engraved area scan of a bullet exhibit (x3p), write-once like every original.

    The bullet's exhibit row also names the file it was created with (``original_sha256``); that file is
    one of its lands here too. ``land_index`` is the land's position around the bullet (1..n)."""

    __tablename__ = "land_scans"
    __table_args__ = (UniqueConstraint("exhibit_id", "land_index", name="uq_land_scans_exhibit_land"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    exhibit_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    land_index: Mapped[int] = mapped_column(Integer)
    original_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    original_filename: Mapped[str] = mapped_column(String(300))
    original_size: Mapped[int] = mapped_column(BigInteger)
    # derived by the correlation job: land signatures at many heights (npz) and their summary or error
    signature_path: Mapped[Optional[str]] = mapped_column(String(300))
    signature_info: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[Optional[str]] = mapped_column(String(200))

    exhibit: Mapped[Exhibit] = relationship(back_populates="lands")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"), Index("ix_jobs_exhibit", "exhibit_id"))

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    exhibit_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    kind: Mapped[str] = mapped_column(String(30), default="correlate")
    status: Mapped[str] = mapped_column(String(20), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[Optional[str]] = mapped_column(Text)
    candidates_found: Mapped[Optional[int]] = mapped_column(Integer)
    # the replayable record of the database search this job ran (ballistic.retrieval.record, canonical JSON)
    search_record_json: Mapped[Optional[str]] = mapped_column("search_record", Text)
    search_record_hash: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime())


class Candidate(Base):
    """One compared pair of exhibits in one region; it appears in both exhibits' candidate lists.
    ``exhibit_a`` is the reference of the stored comparison (the exhibit whose job found the pair).

    Regions: ``breech_face`` (3D, CMC), ``breech_face_2d`` (images, CMC), ``firing_pin`` (registered
    correlation of the firing-pin impressions), ``bullet_lea`` (SAM of land scores). ``cmc_count`` is
    only set where the score is a CMC count; ``log10_lr`` and its interval only where a calibration of
    that region's score is configured (``calibration_id`` names it)."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("pair_lo", "pair_hi", "region", name="uq_candidates_pair_region"),
        Index("ix_candidates_a", "exhibit_a_id"),
        Index("ix_candidates_b", "exhibit_b_id"),
        # series, exports and the dashboard select the confirmed links
        Index("ix_candidates_review_status", "review_status"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    exhibit_a_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    exhibit_b_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    pair_lo: Mapped[int] = mapped_column(BigInteger)
    pair_hi: Mapped[int] = mapped_column(BigInteger)
    region: Mapped[str] = mapped_column(String(50))
    vector_score: Mapped[Optional[float]] = mapped_column(Float)
    similarity: Mapped[float] = mapped_column(Float)
    cmc_count: Mapped[Optional[int]] = mapped_column(Integer)
    identification: Mapped[bool] = mapped_column(Boolean)
    registration: Mapped[dict[str, Any]] = mapped_column(JSON)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSON)
    algorithm_version: Mapped[str] = mapped_column(String(100))
    descriptor_version: Mapped[Optional[str]] = mapped_column(String(100))
    review_status: Mapped[str] = mapped_column(String(20), default="unreviewed")
    log10_lr: Mapped[Optional[float]] = mapped_column(Float)
    log10_lr_low: Mapped[Optional[float]] = mapped_column(Float)
    log10_lr_high: Mapped[Optional[float]] = mapped_column(Float)
    calibration_id: Mapped[Optional[str]] = mapped_column(String(100))
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    exhibit_a: Mapped[Exhibit] = relationship(foreign_keys=[exhibit_a_id], lazy="joined")
    exhibit_b: Mapped[Exhibit] = relationship(foreign_keys=[exhibit_b_id], lazy="joined")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_candidate", "candidate_id"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    decision: Mapped[str] = mapped_column(String(20))
    comment: Mapped[Optional[str]] = mapped_column(Text)
    examiner: Mapped[str] = mapped_column(String(200))
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class HitEvent(Base):
    """The intelligence feed: one row per confirmation (kind 'hit') or withdrawal of one
    (kind 'retraction'); ``seq`` is the monotonically increasing cursor."""

    __tablename__ = "hit_events"
    __table_args__ = {"sqlite_autoincrement": True}  # a cursor value is never reused

    seq: Mapped[int] = mapped_column(BigID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id"))
    region: Mapped[Optional[str]] = mapped_column(String(50))
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id"))
    exhibit_a_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    exhibit_b_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    score: Mapped[float] = mapped_column(Float)
    cmc_count: Mapped[Optional[int]] = mapped_column(Integer)
    confirmed_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    exhibit_a: Mapped[Exhibit] = relationship(foreign_keys=[exhibit_a_id], lazy="joined")
    exhibit_b: Mapped[Exhibit] = relationship(foreign_keys=[exhibit_b_id], lazy="joined")


class DescriptorRow(Base):
    """The descriptor log: one row each time a job stores an exhibit's descriptor (``vector`` float32 bytes,
    raw, before any whitening), in commit order. The vector index of every service process (and every shard
    on a Ray cluster) is derived state kept current from this log (:class:`api.index.DescriptorLog`, the
    library's row source): it loads a snapshot and applies the rows after the ``seq`` it holds. A later row
    of the same exhibit, space and version replaces the earlier one."""

    __tablename__ = "descriptor_rows"
    __table_args__ = (Index("ix_descriptor_rows_space_version_seq", "space", "version", "seq"),
                      {"sqlite_autoincrement": True})  # a seq is never reused

    seq: Mapped[int] = mapped_column(BigID, primary_key=True)
    exhibit_id: Mapped[int] = mapped_column(ForeignKey("exhibits.id"))
    space: Mapped[str] = mapped_column(String(20))
    version: Mapped[str] = mapped_column(String(100))
    partition: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[Optional[bytes]] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(20))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[Optional[str]] = mapped_column(String(200))
    revoked_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime())


class AuditLog(Base):
    """Append-only, hash-chained: ``hash = sha256(prev_hash + canonical JSON of the row)``.
    Timestamps and details are stored as the exact strings that were hashed."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    resource_type: Mapped[str] = mapped_column(String(50))
    resource_id: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Setting(Base):
    """Small key/value facts of the service (e.g. that the bootstrap key was issued)."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@event.listens_for(AuditLog, "before_update")
def _no_audit_update(mapper, connection, target):  # pragma: no cover - guarded path
    raise RuntimeError("audit_log is append-only: rows are never updated")


@event.listens_for(AuditLog, "before_delete")
def _no_audit_delete(mapper, connection, target):  # pragma: no cover - guarded path
    raise RuntimeError("audit_log is append-only: rows are never deleted")
