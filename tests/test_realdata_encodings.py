"""One real scan in the other encodings ISO 5436-2 allows - points inline in main.xml (DataList), and
integer heights whose missing points only a valid-points bit map marks - reads as the same surface and
compares with its mate as the binary float file does (../shared/data; skipped when absent)."""
from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest

from ballistic.cartridge.breech_face import preprocess_cartridge
from ballistic.cartridge.cmc.pair import compare_pair
from ballistic.io.x3p import read_x3p, write_x3p

pytestmark = pytest.mark.realdata

Z_STEP_M = 1e-9          # integer encoding: 1 nm a count


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return buf.getvalue()


def _as_datalist(binary_x3p) -> bytes:
    """The same file with its float64 points inline (one <Datum> a point, empty where missing)."""
    m = _members(binary_x3p)
    z = np.frombuffer(m["bindata/data.bin"], "<f8")
    datums = "".join("<Datum/>" if not np.isfinite(v) else f"<Datum>{v!r}</Datum>" for v in z.tolist())
    xml = m["main.xml"].decode()
    a, b = xml.index("<DataLink>"), xml.index("</DataLink>") + len("</DataLink>")
    xml = (xml[:a] + "<DataList>" + datums + "</DataList>" + xml[b:]).encode()
    return _zip({"main.xml": xml, "md5checksum.hex": hashlib.md5(xml).hexdigest().encode() + b" *main.xml\n"})


def _as_int32_with_valid_map(binary_x3p) -> bytes:
    """The same file as int32 counts of 1 nm, missing points 0 and marked only by ValidPointsLink."""
    m = _members(binary_x3p)
    z = np.frombuffer(m["bindata/data.bin"], "<f8")
    ok = np.isfinite(z)
    counts = np.where(ok, np.rint(np.where(ok, z, 0.0) / Z_STEP_M), 0).astype("<i4")
    data, valid = counts.tobytes(), np.packbits(ok, bitorder="little").tobytes()
    xml = m["main.xml"].decode()
    head, cz = xml.split("<CZ>", 1)
    cz_body, tail = cz.split("</CZ>", 1)
    cz_body = (cz_body.replace("<DataType>D</DataType>", "<DataType>L</DataType>")
               .replace("<Increment>1</Increment>", f"<Increment>{Z_STEP_M!r}</Increment>"))
    xml = head + "<CZ>" + cz_body + "</CZ>" + tail
    a, b = xml.index("<DataLink>"), xml.index("</DataLink>") + len("</DataLink>")
    xml = (xml[:a] + "<DataLink><PointDataLink>bindata/data.bin</PointDataLink><MD5ChecksumPointData>"
           f"{hashlib.md5(data).hexdigest()}</MD5ChecksumPointData><ValidPointsLink>bindata/valid.bin"
           f"</ValidPointsLink><MD5ChecksumValidPoints>{hashlib.md5(valid).hexdigest()}</MD5ChecksumValidPoints>"
           "</DataLink>" + xml[b:]).encode()
    return _zip({"main.xml": xml, "bindata/data.bin": data, "bindata/valid.bin": valid})


def test_other_encodings_of_a_real_scan_read_and_compare_the_same(shared_data, tmp_path):
    fadul = shared_data / "cartridge" / "fadul"
    scan, mate = read_x3p(fadul / "Fadul 1-1.x3p"), read_x3p(fadul / "Fadul 1-2.x3p")
    write_x3p(scan, tmp_path / "binary.x3p", dtype="float64")
    binary = read_x3p(tmp_path / "binary.x3p")
    inline = read_x3p(_as_datalist(tmp_path / "binary.x3p"))
    counts = read_x3p(_as_int32_with_valid_map(tmp_path / "binary.x3p"))
    assert inline.meta["point_storage"] == "xml-datalist" and counts.meta["valid_points_map"]
    assert counts.meta["dtype_in_file"] == "int32" and counts.meta["invalid_points"] == int(np.isnan(binary.heights).sum())
    np.testing.assert_array_equal(inline.heights, binary.heights)
    assert np.array_equal(np.isnan(counts.heights), np.isnan(binary.heights))
    assert np.nanmax(np.abs(counts.heights - binary.heights)) <= Z_STEP_M * 1e6 / 2 + 1e-9
    ref = compare_pair(preprocess_cartridge(binary), preprocess_cartridge(mate))
    assert ref.cmc_count >= 6                                      # a same-slide pair, identified
    for other in (inline, counts):
        got = compare_pair(preprocess_cartridge(other), preprocess_cartridge(mate))
        assert abs(got.cmc_count - ref.cmc_count) <= 1 and got.identification == ref.identification
    assert compare_pair(preprocess_cartridge(inline), preprocess_cartridge(mate)).cmc_count == ref.cmc_count
