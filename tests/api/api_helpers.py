"""Helpers of the service tests (imported by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

ADMIN_KEY = "bk_test-admin-key-0123456789"
ADMIN = {"X-API-Key": ADMIN_KEY}


def synthetic_breech_face(seed: int, *, angle: float = 0.0, noise: float = 0.05, n: int = 160,
                          spacing_um: float = 12.5):
    """A processed-looking breech face: band-limited texture (um) on an annulus, NaN elsewhere.
    Same ``seed`` = same source; ``angle`` rotates it, ``noise`` adds independent detail."""
    from ballistic.preprocess.filters import crop_to_mask, rotate
    from ballistic.surface import Surface

    rng = np.random.default_rng(seed)
    z = ndi.gaussian_filter(rng.normal(size=(n, n)), 2.0) * 4.0
    if noise:
        z = z + ndi.gaussian_filter(np.random.default_rng(seed * 7919 + int(angle * 10) + 1).normal(size=(n, n)),
                                    1.0) * noise * 4.0
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2)
    z[(r > n * 0.47) | (r < n * 0.12)] = np.nan
    s = Surface(z, spacing_um, {"source": f"synthetic-{seed}"})
    if angle:
        s = crop_to_mask(rotate(s, angle))
    return s


def x3p_bytes(surface) -> bytes:
    import tempfile

    from ballistic.io.x3p import write_x3p

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.x3p"
        write_x3p(surface, p)
        return p.read_bytes()


def synthetic_scans() -> dict[str, bytes]:
    """a1/a2/a3 share a source (rotated copies), b1/b2 another, c1 a third."""
    return {
        "a1": x3p_bytes(synthetic_breech_face(1)),
        "a2": x3p_bytes(synthetic_breech_face(1, angle=40.0)),
        "a3": x3p_bytes(synthetic_breech_face(1, angle=-75.0)),
        "b1": x3p_bytes(synthetic_breech_face(2)),
        "b2": x3p_bytes(synthetic_breech_face(2, angle=120.0)),
        "c1": x3p_bytes(synthetic_breech_face(3, angle=10.0)),
    }


def png_bytes(h: int = 64, w: int = 64, seed: int | None = 0) -> bytes:
    from PIL import Image

    if seed is None:  # flat: compresses to almost nothing whatever its size
        a = np.full((h, w), 128, np.uint8)
    else:
        a = (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def malformed_x3p() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "no main.xml in here")
    return buf.getvalue()


def make_settings(tmp_path: Path, **kw):
    from api.settings import Settings

    base = dict(data_dir=tmp_path / "data", admin_key=ADMIN_KEY, print_admin_key=False, run_worker=False,
                rerank_k=10, job_retry_delay_s=0.0)
    base.update(kw)
    return Settings(**base)


def new_key(client, scope: str, name: str | None = None) -> dict[str, str]:
    r = client.post("/v1/keys", json={"name": name or f"{scope}-user", "scope": scope}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


def upload(client, headers, data: bytes, *, name: str = "scan.x3p", **meta):
    form = {"case_number": meta.pop("case_number", "C-1"), "exhibit_ref": meta.pop("exhibit_ref", name),
            "agency": meta.pop("agency", "NFFP-Test"), "calibre": meta.pop("calibre", "9mm")}
    form.update({k: str(v) for k, v in meta.items() if v is not None})
    return client.post("/v1/exhibits", headers=headers, data=form,
                       files={"file": (name, data, "application/octet-stream")})


def wait_job(client, job_id: int, timeout: float = 300) -> dict:
    """Poll ``GET /v1/jobs/{id}`` (a client with a key that reads jobs) until the job is done or failed."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = client.get(f"/v1/jobs/{job_id}").json()
        if j["status"] in ("done", "failed"):
            return j
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {j['status']} after {timeout} s")


def run_jobs(client) -> int:
    """Process every queued job in this thread (the tests' app runs without the worker thread)."""
    return client.app.state.runtime.run_pending_inline()


def constant_grid_x3p(path: Path, nx: int, ny: int, *, value: float = 0.0, increment_m: float = 6.25e-6,
                      level: int = 9) -> Path:
    """An x3p of an ``ny`` x ``nx`` float64 grid holding ``value`` everywhere, streamed to ``path`` without
    ever holding the grid in memory: 7900 x 7900 zeros compress to ~0.5 MB (the hostile upload of issue 12)."""
    import hashlib
    import struct

    row = struct.pack("<d", value / 1e6) * nx
    md5 = hashlib.md5()
    for _ in range(ny):
        md5.update(row)
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<p:ISO5436_2 xmlns:p="http://www.opengps.eu/2008/ISO5436_2">
  <Record1><Revision>ISO5436 - 2000</Revision><FeatureType>SUR</FeatureType><Axes>
    <CX><AxisType>I</AxisType><DataType>D</DataType><Increment>{increment_m!r}</Increment><Offset>0</Offset></CX>
    <CY><AxisType>I</AxisType><DataType>D</DataType><Increment>{increment_m!r}</Increment><Offset>0</Offset></CY>
    <CZ><AxisType>A</AxisType><DataType>D</DataType><Increment>1</Increment><Offset>0</Offset></CZ>
  </Axes></Record1>
  <Record2><Date>2024-01-01T00:00:00</Date><Creator>test</Creator><Comment>constant grid</Comment></Record2>
  <Record3><MatrixDimension><SizeX>{nx}</SizeX><SizeY>{ny}</SizeY><SizeZ>1</SizeZ></MatrixDimension>
    <DataLink><PointDataLink>bindata/data.bin</PointDataLink>
      <MD5ChecksumPointData>{md5.hexdigest()}</MD5ChecksumPointData></DataLink></Record3>
</p:ISO5436_2>
"""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        z.writestr("main.xml", xml)
        with z.open("bindata/data.bin", "w", force_zip64=True) as f:
            for _ in range(ny):
                f.write(row)
    return Path(path)
