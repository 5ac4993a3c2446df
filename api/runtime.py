"""The API process's resources, created once in the lifespan: :class:`Runtime`.

``Runtime.start()`` migrates the DB, bootstraps the admin key, clears staging files and quarantines orphan
originals, opens each descriptor space's index (snapshots + the descriptor log, checked against the
database, rebuilt on any difference) and snapshots it, brings the stored likelihood ratios in line with the
calibration, clears the job queue, queues a job for every exhibit whose descriptor (or bullet algorithm)
is of another version, re-enqueues every DB job left 'queued' or 'running' by a crash (the start-up sweep)
and starts the worker processes (:class:`api.jobs.supervisor.WorkerPool`). The API process itself only
serves requests: it enqueues job ids, and its indexes (always in-process, never Ray) answer the status
page's consistency check. The DB is the only durable record of jobs; the queue is a transport rebuilt from
it at each start, so one server process owns it (run one ``ballistic serve`` per database).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select, update

from api import audit
from api.db import make_engine, make_sessionmaker, session_scope, upgrade, utcnow
from api.db.models import ApiKey, Candidate, Exhibit, Job, LandScan, Setting
from api.index import DescriptorSpace
from api.jobs.queue import JobQueue
from api.security import hash_key, new_key
from api.settings import Settings
from api.storage import EvidenceStore

__all__ = ["Runtime"]

log = logging.getLogger("ballistic.api")


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.ensure_dirs()
        self.engine = make_engine(settings.database_url)
        self.session_factory = make_sessionmaker(self.engine)
        # read-only requests: deferred transactions on SQLite (same engine elsewhere)
        self.read_engine = make_engine(settings.database_url, immediate=False) if settings.is_sqlite else self.engine
        self.read_factory = make_sessionmaker(self.read_engine)
        self.store = EvidenceStore(settings.evidence_dir)
        self.stopping = threading.Event()
        # uploads opened and checked at once (each may hold a grid of up to api.limits.max_scan_points)
        self.scan_check_slots = threading.BoundedSemaphore(settings.max_concurrent_scan_checks)
        self.spaces: dict[str, DescriptorSpace] = {}
        self.calibration = None
        self.pool = None
        self._jobs = None
        self.startup_report: dict[str, Any] = {}
        self.bootstrap_key: str | None = None
        self.queue = JobQueue(settings)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "Runtime":
        if self.settings.auto_migrate:
            upgrade(self.engine)
        self.bootstrap_key = self._bootstrap_admin()
        self.startup_report["staging_files_removed"] = self.store.clean_staging()
        self.startup_report["orphan_originals"] = self.reconcile_originals()
        for name, key in (("breech_face", "index"), ("bullet", "bullet_index")):
            self.spaces[name] = DescriptorSpace(self.settings, name)     # in this process (never Ray)
            self.startup_report[key] = self.spaces[name].open()
        self.startup_report["calibration"] = self.load_calibration()
        self.queue.flush()
        self.startup_report["redescribe_jobs"] = self.queue_stale_descriptors()
        self.startup_report["requeued_jobs"] = self.sweep()
        if self.settings.run_worker:
            self.start_workers()
        return self

    def start_workers(self) -> None:
        """The worker processes and the sweeper that re-delivers jobs whose message was lost."""
        if self.pool is not None:
            return
        from api.jobs.supervisor import WorkerPool

        self._sweeper = threading.Thread(target=self._sweep_loop, name="ballistic-job-sweeper", daemon=True)
        self._sweeper.start()
        self.pool = WorkerPool(self.settings, self.session_factory, self.enqueue).start()

    def worker_status(self) -> dict:
        if self.pool is None:
            return {"mode": "none" if not self.settings.run_worker else "starting", "workers": []}
        return self.pool.status()

    def stop(self) -> None:
        self.stopping.set()
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        if self._jobs is not None:
            self._jobs.close()
        for sp in self.spaces.values():
            try:
                sp.save()
            except Exception:  # replayed from the log at the next start
                log.exception("final %s index snapshot failed", sp.space)
            sp.close()
        self.queue.close()
        self.engine.dispose()
        self.read_engine.dispose()

    # ------------------------------------------------------------------ evidence
    def reconcile_originals(self, batch: int = 500) -> dict[str, Any]:
        """Quarantine originals that no exhibit or land row names (a crash between writing the file and the
        database commit of its upload: the upload was never acknowledged). Run at start-up, before serving;
        one server process per database (as for the job queue). Each quarantined file is in the audit log."""
        found: list[tuple[str, int]] = []
        pending: list[tuple[str, Any]] = []

        def check() -> None:
            shas = [sha for sha, _ in pending]
            with self.read_factory() as s:
                known = set(s.execute(select(Exhibit.original_sha256).where(Exhibit.original_sha256.in_(shas)))
                            .scalars())
                known |= set(s.execute(select(LandScan.original_sha256).where(LandScan.original_sha256.in_(shas)))
                             .scalars())
            for sha, path in pending:
                if sha not in known:
                    found.append((sha, path.stat().st_size))
            pending.clear()

        for sha, path in self.store.iter_originals():
            pending.append((sha, path))
            if len(pending) >= batch:
                check()
        if pending:
            check()
        if not found:
            return {"quarantined": 0}
        moved = []
        for sha, size in found:
            dst = self.store.quarantine_original(sha)
            moved.append({"sha256": sha, "size": size, "quarantined_as": dst.name})
        reason = ("original on disk that no exhibit or land row names: an upload interrupted between writing the "
                  "file and its database commit (never acknowledged); moved to the quarantine folder, not deleted")
        with session_scope(self.session_factory) as s:
            for m in moved:
                audit.append(s, actor="system:startup", action="evidence.quarantine", resource_type="original",
                             resource_id=m["sha256"], detail={**m, "reason": reason})
        log.warning("%d orphan original(s) moved to %s (see the audit log, action evidence.quarantine)",
                    len(moved), self.store.quarantine)
        return {"quarantined": len(moved), "folder": str(self.store.quarantine), "files": moved[:100]}

    # ------------------------------------------------------------------ jobs
    def enqueue(self, job_id: int, *, delay: float = 0.0) -> None:
        self.queue.enqueue(job_id, delay=delay)

    def _sweep_loop(self) -> None:
        """Re-deliver jobs that sit 'queued' without a message (e.g. the enqueue after a commit failed).
        Harmless when a message exists too: a job is claimed once."""
        while not self.stopping.wait(self.settings.sweep_interval_s):
            try:
                cutoff = utcnow() - dt.timedelta(seconds=self.settings.sweep_interval_s)
                with self.read_factory() as s:
                    ids = list(s.execute(select(Job.id).where(Job.status == "queued", Job.updated_at < cutoff)
                                         .order_by(Job.id).limit(1000)).scalars())
                for i in ids:
                    self.enqueue(i)
            except Exception:  # never let the sweeper die
                log.exception("job sweep failed")

    def sweep(self) -> int:
        """Re-enqueue jobs a crash left 'running' or 'queued'; returns how many."""
        with session_scope(self.session_factory) as s:
            s.execute(update(Job).where(Job.status == "running").values(
                status="queued", updated_at=utcnow(), error="interrupted (server stopped while running); resumed"))
            ids = list(s.execute(select(Job.id).where(Job.status == "queued").order_by(Job.id)).scalars())
        for i in ids:
            self.enqueue(i)
        return len(ids)

    def queue_stale_descriptors(self) -> int:
        """After a descriptor upgrade (new DESCRIPTOR_VERSION, or a new bullet descriptor version) the index
        holds only current-version vectors: queue a correlation job for every exhibit whose stored descriptor
        is of another version, so that it is described again, re-indexed and searched (pairs already
        compared are kept, not redone). Likewise after a bullet algorithm upgrade (a new
        ``api.bullets.BULLET_ALGORITHM_VERSION``): every bullet whose land signatures were extracted by another
        version gets a job, which extracts them again, re-indexes the bullet and scores its unreviewed pairs
        again (their ``lands_key`` names the algorithm)."""
        from api.bullets import BULLET_ALGORITHM_VERSION

        n = 0
        for kind, version in (("cartridge_case", self.spaces["breech_face"].descriptor_version),
                              ("bullet", self.spaces["bullet"].descriptor_version)):
            with session_scope(self.session_factory) as s:
                pending = select(Job.exhibit_id).where(Job.status.in_(("queued", "running")))
                stale = list(s.execute(select(Exhibit.id).where(
                    Exhibit.descriptor_version.is_not(None), Exhibit.descriptor_version != version,
                    Exhibit.exhibit_type == kind, Exhibit.id.not_in(pending)).order_by(Exhibit.id)).scalars())
                reasons = {eid: f"descriptor version is now {version}" for eid in stale}
                if kind == "bullet":  # land signatures of another bullet algorithm: extract them again
                    for eid, info in s.execute(select(LandScan.exhibit_id, LandScan.signature_info).where(
                            LandScan.signature_path.is_not(None), LandScan.exhibit_id.not_in(pending))):
                        if (info or {}).get("algorithm") != BULLET_ALGORITHM_VERSION:
                            reasons.setdefault(eid, f"bullet algorithm is now {BULLET_ALGORITHM_VERSION}")
                stale = sorted(reasons)
                for eid in stale:
                    j = Job(exhibit_id=eid, kind="correlate", status="queued",
                            max_attempts=self.settings.job_max_attempts)
                    s.add(j)
                    s.flush()
                    audit.append(s, actor="system:upgrade", action="job.create", resource_type="job",
                                 resource_id=j.id, detail={"exhibit_id": eid, "reason": reasons[eid]})
            n += len(stale)
        return n

    # ------------------------------------------------------------------ likelihood ratios
    def load_calibration(self) -> dict:
        """Load the configured calibration and bring the stored likelihood ratios in line with it: candidates
        of its region scored under another calibration (or none) get their log10 LR and interval again
        (a pure function of the stored score); with calibration switched off they are cleared."""
        from api.lr import Calibration

        path = self.settings.calibration_path
        self.calibration = Calibration.load(path) if path else None
        cal = self.calibration
        updated = 0
        with session_scope(self.session_factory) as s:
            if cal is None:
                res = s.execute(update(Candidate).where(Candidate.calibration_id.is_not(None)).values(
                    log10_lr=None, log10_lr_low=None, log10_lr_high=None, calibration_id=None))
                updated = res.rowcount
            else:
                stale = s.execute(select(Candidate.id, Candidate.similarity).where(
                    Candidate.region == cal.region,
                    or_(Candidate.calibration_id.is_(None), Candidate.calibration_id != cal.id))).all()
                for cid, sim in stale:
                    v, lo, hi = cal.lr(sim)
                    s.execute(update(Candidate).where(Candidate.id == cid).values(
                        log10_lr=v, log10_lr_low=lo, log10_lr_high=hi, calibration_id=cal.id))
                updated = len(stale)
                other = s.execute(update(Candidate).where(Candidate.region != cal.region,
                                                          Candidate.calibration_id.is_not(None)).values(
                    log10_lr=None, log10_lr_low=None, log10_lr_high=None, calibration_id=None))
                updated += other.rowcount
        return {"id": cal.id if cal else None, "path": cal.path if cal else None,
                "region": cal.region if cal else None, "candidates_updated": updated}

    def job_context(self):
        """A :class:`~api.jobs.context.JobContext` in this process on the runtime's own resources (its
        in-process indexes; with ``BACKEND=ray`` the spaces of a context of its own on the cluster)."""
        if self._jobs is None:
            from api.jobs.context import JobContext

            if self.settings.backend == "local":
                self._jobs = JobContext(settings=self.settings, session_factory=self.session_factory,
                                        read_factory=self.read_factory, store=self.store, spaces=self.spaces,
                                        calibration=self.calibration, enqueue=self.enqueue, stop=self.stopping)
            else:
                self._jobs = JobContext.open(self.settings, enqueue=self.enqueue)
        return self._jobs

    def run_pending_inline(self) -> int:
        """Run every queued job in the calling thread (tests and tools without worker processes)."""
        from api.jobs.correlate import run_correlation_job

        ctx = self.job_context()
        n = 0
        while True:
            with self.session_factory() as s:
                ids = list(s.execute(select(Job.id).where(Job.status == "queued").order_by(Job.id)).scalars())
            if not ids:
                return n
            for i in ids:
                run_correlation_job(ctx, i)
                n += 1

    # ------------------------------------------------------------------ admin key
    def _bootstrap_admin(self) -> str | None:
        """First start: store the hash of BALLISTIC_ADMIN_KEY, or of a new key returned to be printed once."""
        env_key = self.settings.admin_key.get_secret_value() if self.settings.admin_key else None
        with session_scope(self.session_factory) as s:
            if env_key:
                h = hash_key(env_key)
                if s.execute(select(ApiKey.id).where(ApiKey.key_hash == h)).first() is None:
                    k = ApiKey(name="admin (BALLISTIC_ADMIN_KEY)", scope="admin", key_hash=h,
                               prefix=env_key[:10], created_by="bootstrap")
                    s.add(k)
                    s.flush()
                    audit.append(s, actor="system:bootstrap", action="key.create", resource_type="api_key",
                                 resource_id=k.id, detail={"scope": "admin", "source": "env"})
                return None
            if s.get(Setting, "bootstrap_admin_issued") is not None:
                return None
            raw = new_key()
            k = ApiKey(name="admin (bootstrap)", scope="admin", key_hash=hash_key(raw), prefix=raw[:10],
                       created_by="bootstrap")
            s.add(k)
            s.flush()
            s.add(Setting(key="bootstrap_admin_issued", value=str(k.id)))
            audit.append(s, actor="system:bootstrap", action="key.create", resource_type="api_key",
                         resource_id=k.id, detail={"scope": "admin", "source": "generated"})
        path = self.write_bootstrap_key_file(raw)
        if self.settings.print_admin_key:
            print(bootstrap_banner(raw, path), flush=True)
        return raw

    def write_bootstrap_key_file(self, raw: str) -> Path:
        """The generated bootstrap key in ``<data_dir>/bootstrap-admin-key.txt``, readable by its owner only
        (0600 from creation on; written atomically)."""
        from ballistic.io.atomic import atomic_write_bytes

        return atomic_write_bytes(self.settings.data_dir / BOOTSTRAP_KEY_FILE, (raw + "\n").encode(), mode=0o600)


#: where a generated bootstrap admin key is kept (under the data folder, mode 0600)
BOOTSTRAP_KEY_FILE = "bootstrap-admin-key.txt"


def bootstrap_banner(raw: str, path: Path) -> str:
    """The framed notice ``ballistic serve`` prints once when it generates the bootstrap admin key."""
    lines = ["ballistic: BOOTSTRAP ADMIN API KEY (printed once; store it now)", "",
             f"    {raw}", "",
             f"also written to {path} (readable by you only, mode 0600)", "",
             "Create the keys people use with it (same data folder as serve):",
             '    ballistic keys create --scope examiner --name "Examiner Alice"',
             '    ballistic keys create --scope intelligence --name "Analyst Bob"']
    width = max(len(x) for x in lines) + 4
    bar = "=" * width
    return "\n".join(["", bar, *(f"  {x}" for x in lines), bar, ""])

