"""One upload and its correlation job, run in a child process, with the child's own time and peak memory.

Used by ``bench_hostile_upload.py`` (a hostile zero grid) and ``bench_fine_scan_job.py`` (genuine scans at fine
spacings): the child starts the service in-process (TestClient, real SQLite file under ``workdir``), uploads
``file``, runs its job inline under an address-space limit (so that a runaway job fails with MemoryError instead of
taking the shared machine down) and reports its peak RSS (``resource.getrusage``) after the upload and after the job.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {helpers!r})
from pathlib import Path
from fastapi.testclient import TestClient
from api.main import create_app
from api_helpers import make_settings, new_key, upload

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def vm_mib(field):
    # address space (what the worker's RLIMIT_AS counts): VmSize now, VmPeak the most so far (Linux)
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None

out = {{}}
tmp = Path({tmp!r})
with TestClient(create_app(make_settings(tmp))) as c:
    ex = new_key(c, "examiner")
    data = Path({file!r}).read_bytes()
    out["rss_before_mib"] = rss_mib()
    out["vm_before_mib"] = vm_mib("VmSize")
    t = time.perf_counter()
    r = upload(c, ex, data, name={name!r})
    out["upload_s"] = time.perf_counter() - t
    out["upload_status"] = r.status_code
    out["upload_detail"] = str(r.json().get("detail", ""))[:300] if r.status_code != 201 else ""
    out["upload_peak_rss_mib"] = rss_mib()
    del data
    if r.status_code == 201:
        limit = int({job_limit_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        t = time.perf_counter()
        try:
            c.app.state.runtime.run_pending_inline()
            job = c.get(f"/v1/jobs/{{r.json()['job']['id']}}", headers=ex).json()
            out["job_status"], out["job_error"] = job["status"], (job.get("error") or "")[:300]
        except MemoryError:
            out["job_status"], out["job_error"] = "MemoryError", "address space limit of {job_limit_gib} GiB hit"
        out["job_s"] = time.perf_counter() - t
        out["job_peak_rss_mib"] = rss_mib()
        out["job_peak_vm_mib"] = vm_mib("VmPeak")
print("RESULT " + json.dumps(out))
"""


def upload_and_job(file: str | Path, workdir: str | Path, *, name: str = "scan.x3p",
                   job_limit_gib: float = 6.0) -> dict:
    """Upload ``file`` to a fresh in-process service under ``workdir`` and run its job, in a child process.

    Returns the child's figures: ``upload_status``, ``upload_s``, ``upload_peak_rss_mib``, ``rss_before_mib``
    and, when the upload was accepted, ``job_status``, ``job_error``, ``job_s``, ``job_peak_rss_mib``; plus
    ``child_wall_s``. Raises SystemExit with the child's output when it fails.
    """
    code = _CHILD.format(helpers=str(ROOT / "tests" / "api"), tmp=str(Path(workdir) / "svc"), file=str(file),
                         name=name, job_limit_gib=float(job_limit_gib))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"child failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    res = json.loads(line[7:])
    res["child_wall_s"] = wall
    return res
