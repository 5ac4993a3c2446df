"""Bulk ingest through the HTTP API (what ``ballistic ingest DIR`` runs).

Metadata comes from an optional CSV matched to files by ``path`` / ``file`` (file name) or
``scan`` (file stem). Recognised columns: case_number, exhibit_ref (or exhibit_id), agency,
exhibit_type, role, calibre, firing_pin_shape, land_count, twist, recovery_date, place_text
(or place), lat, lon, firearm_serial, spacing_um, land_index (or land, e.g. ``L3``). Without
case_number / exhibit_ref both are the scan name - except for bullets (``exhibit_type`` bullet, in
the CSV or ``--exhibit-type bullet``), whose files are single lands: they are grouped into one
bullet exhibit named after the set (first folder of ``path``), ``barrel`` and ``bullet`` columns
(e.g. ``hamby252-Br1-B1``), each file uploaded with its ``land_index``. ``role`` accepts evidence / test_fire and the reference-set words
known (-> test_fire) / questioned (-> evidence); a known scan's ``slide`` or ``firearm_id``
column becomes its firearm serial (Fadul labels.csv). Questioned scans never get one.

Cases: by default each scan is its own case (named after the scan), unless the CSV has ``case_number``.
``case_by="folder"`` takes the files of DIR and its sub-folders and makes each folder one case (named
by its path under DIR; files directly in DIR: DIR's name); ``case_column="NAME"`` names the case by that
CSV column. Before the first upload :func:`check_service` makes sure the server answers and the key may
submit, so a wrong URL or key stops with one message instead of one error per file.
"""
from __future__ import annotations

import csv
import re
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ingest_directory", "metadata_for", "read_labels", "upload_file", "wait_for_jobs", "check_service",
           "IngestError", "case_for"]

SUFFIXES = {".x3p", ".png", ".tif", ".tiff"}
FIELDS = ("case_number", "exhibit_ref", "agency", "exhibit_type", "role", "calibre", "firing_pin_shape", "land_count",
          "twist", "recovery_date", "place_text", "lat", "lon", "firearm_serial", "spacing_um", "land_index")
_ROLE = {"known": "test_fire", "test_fire": "test_fire", "test-fire": "test_fire", "testfire": "test_fire",
         "questioned": "evidence", "unknown": "evidence", "evidence": "evidence"}


class IngestError(RuntimeError):
    """The ingest cannot start: the service is unreachable, the key is refused, the options contradict."""


def check_service(client: httpx.Client, api_url: str) -> None:
    """Raise :class:`IngestError` unless the service answers at ``api_url`` and the client's key may submit
    exhibits (examiner or admin scope)."""
    try:
        r = client.get("/v1/health", timeout=10)
    except httpx.HTTPError as e:
        raise IngestError(f"cannot reach the service at {api_url} ({type(e).__name__}: {e}); is `ballistic serve` "
                          "running there? Pass --api-url (or set BALLISTIC_API_URL) if it runs elsewhere") from None
    if r.status_code != 200:
        raise IngestError(f"{api_url} answered {r.status_code} to /v1/health: is it a ballistic service?")
    try:
        r = client.get("/v1/exhibits", params={"limit": 1}, timeout=30)
    except httpx.HTTPError as e:
        raise IngestError(f"the service at {api_url} stopped answering ({type(e).__name__}: {e})") from None
    if r.status_code == 401:
        raise IngestError(f"the API key was refused by {api_url} (unknown or revoked). Create one with "
                          "`ballistic keys create --scope examiner --name \"...\"` and pass it as --api-key "
                          "(or BALLISTIC_API_KEY)")
    if r.status_code == 403:
        raise IngestError("this API key may not submit exhibits (an intelligence key?): use an examiner or admin "
                          "key")
    if r.status_code != 200:
        raise IngestError(f"{api_url} answered {r.status_code} to a test request: {r.text[:300]}")


def case_for(file: Path, directory: Path, row: dict[str, str], *, case_by: str, case_column: str | None) -> str | None:
    """The case a file belongs to under the grouping asked for; None when the grouping gives none (the
    scan's own name is used then, as before)."""
    if case_column:
        v = row.get(case_column.strip().lower(), "").strip()
        if not v:
            raise IngestError(f"the labels CSV has no {case_column!r} value for {file.name}")
        return v
    if case_by == "folder":
        rel = file.parent.resolve().relative_to(Path(directory).resolve())
        return rel.as_posix() if rel.parts else Path(directory).resolve().name
    return None


def read_labels(path: Path | None) -> dict[str, dict[str, str]]:
    """Rows keyed by file name and by stem (both lower-case)."""
    if path is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            for key in ("path", "file", "filename"):
                if row.get(key):
                    name = Path(row[key]).name.lower()
                    out[name] = row
                    out[Path(name).stem] = row
            if row.get("scan"):
                out[row["scan"].lower()] = row
    return out


def _bullet_name(row: dict[str, str], file: Path) -> str:
    parts = Path(row.get("path") or "").parts
    head = parts[0] if len(parts) > 1 else (row.get("study") or "")
    name = "-".join(x for x in (head, row.get("barrel"), row.get("bullet")) if x)
    return name or re.sub(r"[_-]?(land|l)\s*\d+$", "", file.stem, flags=re.I) or file.stem


def metadata_for(file: Path, labels: dict[str, dict[str, str]], *, agency: str, calibre: str | None,
                 firing_pin_shape: str | None, case_prefix: str = "",
                 exhibit_type: str | None = None, case: str | None = None) -> dict[str, str]:
    row = labels.get(file.name.lower()) or labels.get(file.stem.lower()) or {}
    scan = row.get("scan") or file.stem
    etype = row.get("exhibit_type") or exhibit_type or "cartridge_case"
    if etype == "bullet":
        scan = _bullet_name(row, file)
    meta: dict[str, Any] = {
        "case_number": f"{case_prefix}{case}" if case else (row.get("case_number") or f"{case_prefix}{scan}"),
        "exhibit_ref": row.get("exhibit_ref") or row.get("exhibit_id") or scan,
        "agency": row.get("agency") or agency,
        "exhibit_type": etype,
        "role": _ROLE.get((row.get("role") or "evidence").lower(), "evidence"),
        "calibre": row.get("calibre") or calibre,
        "firing_pin_shape": row.get("firing_pin_shape") or firing_pin_shape,
    }
    for k in ("land_count", "twist", "recovery_date", "lat", "lon", "spacing_um", "firearm_serial"):
        if row.get(k):
            meta[k] = row[k]
    if etype == "bullet":
        m = re.search(r"(\d+)\s*$", row.get("land_index") or row.get("land") or "") or \
            re.search(r"(?:land|l)\s*(\d+)$", file.stem, flags=re.I)
        if m:
            meta["land_index"] = m.group(1)
    if row.get("place_text") or row.get("place"):
        meta["place_text"] = row.get("place_text") or row.get("place")
    if meta["role"] == "test_fire" and not meta.get("firearm_serial"):
        fid = row.get("firearm_id") or (f"slide-{row['slide']}" if row.get("slide") else None)
        if fid:
            meta["firearm_serial"] = fid
    if meta["role"] != "test_fire":
        meta.pop("firearm_serial", None)
    return {k: str(v) for k, v in meta.items() if v not in (None, "")}


def upload_file(client: httpx.Client, file: Path, meta: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {"file": file.name}
    try:
        with open(file, "rb") as fh:
            r = client.post("/v1/exhibits", data=meta, files={"file": (file.name, fh, "application/octet-stream")})
    except httpx.HTTPError as e:
        return {**res, "status": "error", "http_status": None, "error": f"{type(e).__name__}: {e}"}
    res["http_status"] = r.status_code
    if r.status_code == 201:
        body = r.json()
        return {**res, "status": "created", "exhibit_id": body["id"],
                "job_id": (body.get("job") or {}).get("id"), "sha256": body["original_sha256"]}
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = r.text[:500]
    if r.status_code == 409 and isinstance(detail, dict) and "existing_exhibit_id" in detail:
        return {**res, "status": "duplicate", "exhibit_id": detail["existing_exhibit_id"]}
    return {**res, "status": "error", "error": detail}


def wait_for_jobs(client: httpx.Client, job_ids: list[int], *, timeout: float = 3600, poll: float = 1.0,
                  progress: bool = False) -> dict[int, dict]:
    pending, out = set(job_ids), {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="jobs", unit="job")
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for j in sorted(pending):
            try:
                r = client.get(f"/v1/jobs/{j}")
            except httpx.HTTPError:
                break
            if r.status_code == 200 and r.json()["status"] in ("done", "failed"):
                out[j] = r.json()
                pending.discard(j)
                if bar:
                    bar.update(1)
        if pending:
            time.sleep(poll)
    if bar:
        bar.close()
    return out


def ingest_directory(directory: Path, *, api_url: str, api_key: str, labels: Path | None = None,
                     agency: str = "ingest", calibre: str | None = None, firing_pin_shape: str | None = None,
                     case_prefix: str = "", pattern: str = "*", concurrency: int = 2, wait: bool = False,
                     progress: bool = True, files: list[Path] | None = None, timeout: float = 120.0,
                     on_result=None, exhibit_type: str | None = None, case_by: str = "file",
                     case_column: str | None = None, check: bool = True) -> list[dict[str, Any]]:
    """Upload the scans of ``directory`` (and, with ``case_by="folder"``, its sub-folders); see the module
    notes. Raises :class:`IngestError` before any upload when the service or the key is not usable."""
    if case_by not in ("file", "folder"):
        raise IngestError(f"case_by must be 'file' or 'folder', got {case_by!r}")
    if case_column and case_by == "folder":
        raise IngestError("group cases by folder or by a CSV column, not both")
    if case_column and labels is None:
        raise IngestError(f"--case-column {case_column} needs a labels CSV (--labels)")
    lab = read_labels(labels)
    walk = Path(directory).rglob if case_by == "folder" else Path(directory).glob
    todo = files if files is not None else sorted(p for p in walk(pattern)
                                                  if p.is_file() and p.suffix.lower() in SUFFIXES)
    metas = {}
    for f in todo:
        row = lab.get(f.name.lower()) or lab.get(f.stem.lower()) or {}
        metas[f] = metadata_for(f, lab, agency=agency, calibre=calibre, firing_pin_shape=firing_pin_shape,
                                case_prefix=case_prefix, exhibit_type=exhibit_type,
                                case=case_for(f, directory, row, case_by=case_by, case_column=case_column))
    results: list[dict[str, Any]] = []
    bar = None
    with httpx.Client(base_url=api_url, headers={"X-API-Key": api_key}, timeout=timeout) as client:
        if check:
            check_service(client, api_url)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="upload", unit="file")
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futs = {pool.submit(upload_file, client, f, metas[f]): f for f in todo}
            for fut in as_completed(futs):
                r = fut.result()
                results.append(r)
                if on_result is not None:
                    on_result(r)
                if bar:
                    bar.update(1)
                    bar.set_postfix_str(f"{r['file']}: {r['status']}")
        if bar:
            bar.close()
        if wait:
            jobs = wait_for_jobs(client, [r["job_id"] for r in results if r.get("job_id")], progress=progress)
            for r in results:
                if r.get("job_id") in jobs:
                    r["job_status"] = jobs[r["job_id"]]["status"]
    results.sort(key=lambda r: r["file"])
    return results
