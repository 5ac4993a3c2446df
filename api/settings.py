"""The one configuration object of the service (environment prefix ``BALLISTIC_``).

Every path defaults to a folder under ``data_dir`` so that ``ballistic serve`` with
no configuration at all runs on the embedded default: a SQLite file, a local
evidence folder, a vector-index snapshot folder and huey's SQLite queue.
PostgreSQL is selected by ``BALLISTIC_DATABASE_URL=postgresql+psycopg://...``.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "DEFAULT_CALIBRATION"]

#: Shipped calibration: fitted on the real Fadul all-pairs bench by benchmarks/fit_calibration.py
#: (coefficients, bounds and population summary only; no scan data).
DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "calibration" / "breech_face_fadul.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BALLISTIC_", env_file=None, extra="ignore")

    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "ballistic-data",
                           description="root of the embedded default (DB file, evidence, index, queue)")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/ballistic.db")
    evidence_dir: Path | None = Field(None, description="write-once originals and derived surfaces")
    index_dir: Path | None = Field(None, description="vector-index snapshots")
    queue_path: Path | None = Field(None, description="huey SqliteHuey file (the job queue)")
    auto_migrate: bool = Field(True, description="run 'alembic upgrade head' at start-up")

    # retrieval / comparison
    descriptor: str | None = Field(None, description=(
        "breech-face descriptor by registry name ('phase', 'polar', 'learned'); unset: "
        "ballistic.default_descriptor() (phase). One that cannot load (torch, weights) falls back to polar with a "
        "logged warning. A change "
        "(or new weights) re-describes and re-indexes every exhibit at start-up, keeping stored comparisons"))
    index_factory: str = Field("Flat", description=(
        "FAISS index_factory string of every shard: 'Flat' (exact), 'SQfp16' (vectors in half precision: half "
        "the memory; the phase descriptor's rotation scan reads Flat and SQfp16 in place), 'IVF1024,Flat', "
        "'IVF1024,SQ8', 'HNSW32' (approximate, searched row by row) ..."))
    index_metric: str = "ip"
    index_nprobe: int = Field(32, ge=1, le=65536, description=(
        "IVF factories: inverted lists searched per query row (more: closer to exact, slower); ignored otherwise"))
    index_ef_search: int = Field(128, ge=1, le=65536, description=(
        "HNSW factories: efSearch, the search's breadth (more: closer to exact, slower); ignored otherwise"))
    whitener_path: Path | None = Field(None, description="fitted PCAWhitener (.npz); raw descriptor when unset")
    rerank_k: int = Field(20, ge=1, le=1000, description="candidates re-ranked with the CMC comparison")
    shortlist_k: int = Field(200, ge=1, le=100000, description=(
        "descriptor nearest neighbours screened by the coarse registration (50 um) before the "
        "best rerank_k go to the CMC comparison; <= rerank_k switches the screen off"))
    pose_window_deg: float = Field(8.0, ge=0, lt=180, description=(
        "with a descriptor that searches rotations (phase), the coarse registration screens each candidate only "
        "within this many degrees of the rotation and parity the descriptor found for it, not over the full "
        "circle again; 0: the full circle. The stored CMC comparisons always search the full circle (they "
        "carry the calibrated likelihood ratio)"))
    preprocess_kind: str = Field("auto", pattern="^(auto|raw|processed)$")
    index_save_interval_s: float = Field(0.0, ge=0, description="snapshot the index at most this often")
    index_shards: int = Field(1, ge=1, le=256, description=(
        "shards of each descriptor space's index (by a stable hash of the exhibit id); on Ray, one actor each"))

    # where the search runs (ballistic.retrieval.executor)
    backend: str = Field("local", pattern="^(local|ray)$", description=(
        "local: index shards and re-ranking inside each worker process (no Ray import); ray: on the Ray cluster "
        "at ray_address (token auth, loopback or private address, no dashboard)"))
    ray_address: str | None = Field(None, description="host:port of the Ray cluster (GCS) for backend=ray")
    ray_token_path: Path | None = Field(None, description=(
        "file holding the cluster's auth token (else RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH in the environment)"))
    ray_namespace: str = "ballistic"
    ray_call_timeout_s: float = Field(60.0, gt=0, description="one shard call on Ray before it is retried")
    prepared_cache_size: int = Field(256, ge=0, description="prepared surfaces kept in memory for re-ranking")
    firing_pin: bool = Field(True, description="find and compare firing-pin impressions on raw cartridge scans")
    bullet_step_um: float = Field(50.0, gt=0, le=1000, description="land signatures every this many um")

    # likelihood ratios (breech face, 3D): a ScoreLRCalibrator JSON, or the composite file written by
    # benchmarks/fit_calibration.py; "" or "none" switches likelihood ratios off
    calibration_path: str | None = Field(str(DEFAULT_CALIBRATION),
                                         description="breech-face score-to-LR calibration (JSON)")

    # jobs: worker processes started and watched by the API process (api.jobs.supervisor)
    run_worker: bool = Field(True, description="start the correlation worker processes with the service")
    workers: int = Field(1, ge=1, le=64, description="correlation worker processes (one job at a time each)")
    worker_nice: int = Field(10, ge=0, le=19, description="CPU priority of the worker processes (nice increment)")
    worker_memory_limit_mb: int = Field(0, ge=0, description=(
        "memory one worker may use while it runs a job, above what it holds idle; 0: job_memory_budget_mb. A job "
        "over it fails with a reason (MemoryError under the address-space limit, or the worker is stopped by "
        "the supervisor's watchdog), the API stays up"))
    worker_restart_delay_s: float = Field(1.0, ge=0, description="pause before a dead worker is started again")
    job_max_attempts: int = Field(3, ge=1, le=100)
    job_retry_delay_s: float = Field(2.0, ge=0)
    sweep_interval_s: float = Field(60.0, gt=0, description="re-deliver jobs left 'queued' this long")

    # limits
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(64_000_000, ge=1, description="largest x3p point count / image pixel count")
    job_memory_budget_mb: int = Field(4096, ge=64, description=(
        "memory one correlation job may need; an upload whose job would need more is refused (413) from its "
        "header, before it is decompressed (api.limits)"))
    job_working_copies: float = Field(16.0, ge=1, le=1000, description=(
        "float64 copies of the scan grid a job may hold at its peak (benchmarks/bench_fine_scan_job.py, address "
        "space above the idle worker: 5.5 on a raw 24 M-point scan, 7.5 at 6 M; 15-17 before the fine-scan fixes)"))
    min_measured_points: int = Field(1000, ge=1, description="fewer measured points than this: refused (422)")
    min_spacing_um: float = Field(0.05, gt=0, description="finer pixel spacing: refused as implausible (422)")
    max_spacing_um: float = Field(100.0, gt=0, description="coarser pixel spacing: refused as implausible (422)")
    max_concurrent_scan_checks: int = Field(2, ge=1, le=64, description="uploads opened and checked at once")

    # security
    admin_key: SecretStr | None = Field(None, description="bootstrap admin key (BALLISTIC_ADMIN_KEY)")
    print_admin_key: bool = Field(True, description="print a generated bootstrap key once on first start")

    @model_validator(mode="after")
    def _defaults(self) -> "Settings":
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'ballistic.db'}"
        self.evidence_dir = Path(self.evidence_dir or self.data_dir / "evidence").expanduser().resolve()
        self.index_dir = Path(self.index_dir or self.data_dir / "index").expanduser().resolve()
        self.queue_path = Path(self.queue_path or self.data_dir / "queue.db").expanduser().resolve()
        if self.calibration_path is not None and self.calibration_path.strip().lower() in ("", "none", "off"):
            self.calibration_path = None
        if self.backend == "ray" and not self.ray_address:
            raise ValueError("backend=ray needs ray_address (BALLISTIC_RAY_ADDRESS=host:port of the cluster)")
        return self

    @property
    def run_dir(self) -> Path:
        """Where the worker processes say which job they run (``<data_dir>/run``)."""
        return self.data_dir / "run"

    @property
    def memory_limit_bytes(self) -> int:
        return int(self.worker_memory_limit_mb or self.job_memory_budget_mb) * 2**20

    @property
    def is_sqlite(self) -> bool:
        return str(self.database_url).startswith("sqlite")

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.evidence_dir, self.index_dir, self.queue_path.parent):
            d.mkdir(parents=True, exist_ok=True)
