"""Tests for ballistic.io: x3p and 2D image reading/writing, including hostile inputs."""
from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ballistic.errors import (ImageFormatError, ImageLimitError, X3PChecksumError, X3PError, X3PFormatError,
                              X3PLimitError)
from ballistic.io import read_surface
from ballistic.io.image import read_image
from ballistic.io.x3p import read_x3p, write_x3p
from ballistic.surface import Surface

R_NA_BITS = 0x7FF00000000007A2  # R's NA_real_: a signalling NaN


# --------------------------------------------------------------------------- helpers
def _main_xml(
    sx: int,
    sy: int,
    *,
    letter: str = "D",
    inc_x: str = "6.25e-06",
    inc_y: str | None = None,
    md5: str = "",
    link: str = "bindata/data.bin",
    z_inc: str = "1",
    z_off: str = "0",
) -> bytes:
    inc_y = inc_x if inc_y is None else inc_y
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<p:ISO5436_2 xmlns:p="http://www.opengps.eu/2008/ISO5436_2">
  <Record1><Revision>ISO5436 - 2000</Revision><FeatureType>SUR</FeatureType>
    <Axes>
      <CX><AxisType>I</AxisType><DataType>D</DataType><Increment>{inc_x}</Increment><Offset>0</Offset></CX>
      <CY><AxisType>I</AxisType><DataType>D</DataType><Increment>{inc_y}</Increment><Offset>0</Offset></CY>
      <CZ><AxisType>A</AxisType><DataType>{letter}</DataType><Increment>{z_inc}</Increment><Offset>{z_off}</Offset></CZ>
    </Axes></Record1>
  <Record2><Date>2020-01-01T00:00:00</Date><Creator>test</Creator>
    <Instrument><Manufacturer>Acme</Manufacturer><Model>Scope 1</Model><Serial>1</Serial><Version>1</Version></Instrument>
    <CalibrationDate>2020-01-01T00:00:00</CalibrationDate>
    <ProbingSystem><Type>NonContacting</Type><Identification>10x</Identification></ProbingSystem>
    <Comment>hand made</Comment></Record2>
  <Record3><MatrixDimension><SizeX>{sx}</SizeX><SizeY>{sy}</SizeY><SizeZ>1</SizeZ></MatrixDimension>
    <DataLink><PointDataLink>{link}</PointDataLink><MD5ChecksumPointData>{md5}</MD5ChecksumPointData></DataLink></Record3>
  <Record4><ChecksumFile>md5checksum.hex</ChecksumFile></Record4>
</p:ISO5436_2>
""".encode()


def _make_x3p(
    path: Path,
    data: bytes,
    sx: int,
    sy: int,
    *,
    folder: str = "",
    md5: str | None = None,
    extra: dict[str, bytes] | None = None,
    with_hex: bool = True,
    compression: int = zipfile.ZIP_DEFLATED,
    **xml_kw,
) -> Path:
    md5 = hashlib.md5(data).hexdigest() if md5 is None else md5
    xml = _main_xml(sx, sy, md5=md5, **xml_kw)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(folder + "main.xml", xml)
        zf.writestr(folder + "bindata/data.bin", data)
        if with_hex:
            zf.writestr(folder + "md5checksum.hex", hashlib.md5(xml).hexdigest() + " *main.xml\n")
        for name, blob in (extra or {}).items():
            zf.writestr(name, blob)
    return path


def _surface(ny: int = 7, nx: int = 9, seed: int = 0) -> Surface:
    rng = np.random.default_rng(seed)
    h = rng.normal(0.0, 2.5, (ny, nx))  # micrometres
    h[0, 0] = np.nan
    h[3, 4:7] = np.nan
    return Surface(h, 6.25, {"manufacturer": "Acme", "model": "Scope 1"})


# --------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-6)])
def test_round_trip_keeps_heights_and_nans(tmp_path, dtype, rtol):
    s = _surface()
    p = tmp_path / "rt.x3p"
    write_x3p(s, p, dtype=dtype, comment="round <trip> & co")
    r = read_x3p(p)
    assert r.shape == s.shape
    assert r.spacing_um == 6.25
    np.testing.assert_array_equal(np.isnan(r.heights), np.isnan(s.heights))
    np.testing.assert_allclose(r.heights, s.heights, rtol=rtol, atol=0, equal_nan=True)
    assert r.meta["units_in_file"] == "m"
    assert r.meta["dtype_in_file"] == dtype
    assert r.meta["comment"] == "round <trip> & co"
    assert r.meta["instrument"] == "Acme Scope 1"
    assert r.meta["md5_verified"] is True
    assert r.meta["source"] == "rt.x3p"
    # main.xml at the root, data under bindata/, checksum file consistent
    with zipfile.ZipFile(p) as zf:
        names = set(zf.namelist())
        assert {"main.xml", "bindata/data.bin", "md5checksum.hex"} <= names
        xml = zf.read("main.xml")
        assert zf.read("md5checksum.hex").split()[0].decode() == hashlib.md5(xml).hexdigest()
        assert b"<Increment>6.25e-06</Increment>" in xml  # metres, per ISO


def test_write_is_atomic_and_overwrites(tmp_path):
    p = tmp_path / "a.x3p"
    write_x3p(_surface(seed=1), p)
    write_x3p(_surface(seed=2), p)
    np.testing.assert_allclose(read_x3p(p).heights, _surface(seed=2).heights, equal_nan=True)
    assert [f.name for f in tmp_path.iterdir()] == ["a.x3p"]  # no temp file left behind


def test_write_rejects_bad_dtype_and_huge_spacing(tmp_path):
    with pytest.raises(ValueError, match="float64"):
        write_x3p(_surface(), tmp_path / "x.x3p", dtype="int8")
    with pytest.raises(ValueError, match="resample"):
        write_x3p(Surface(np.zeros((2, 2)), 2000.0), tmp_path / "x.x3p")


def test_read_from_bytes_and_fileobj(tmp_path):
    p = tmp_path / "b.x3p"
    write_x3p(_surface(), p)
    blob = p.read_bytes()
    a = read_x3p(blob)
    b = read_x3p(io.BytesIO(blob))
    assert a.meta["source"] is None
    np.testing.assert_array_equal(a.heights, b.heights)


# --------------------------------------------------------------------------- units, layout, quirks
def test_metre_file_converted_to_micrometres(tmp_path):
    z = np.array([[1e-6, 2e-6, 3e-6], [4e-6, 5e-6, -6e-6]])  # metres, x fastest
    p = _make_x3p(tmp_path / "m.x3p", z.astype("<f8").tobytes(), 3, 2, inc_x="3.125e-06")
    s = read_x3p(p)
    assert s.shape == (2, 3)
    assert s.spacing_um == 3.125
    assert s.meta["units_in_file"] == "m"
    np.testing.assert_allclose(s.heights, z * 1e6, rtol=1e-12)
    assert s.heights[0, 1] == pytest.approx(2.0)  # row-major (SizeY, SizeX): x fastest


def test_micrometre_file_left_alone(tmp_path):
    z = np.arange(12, dtype="<f4").reshape(3, 4) * 1.5  # already micrometres (Cadre style)
    p = _make_x3p(tmp_path / "um.x3p", z.tobytes(), 4, 3, letter="F", inc_x="7.37468")
    s = read_x3p(p)
    assert s.meta["units_in_file"] == "um"
    assert s.meta["dtype_in_file"] == "float32"
    assert s.spacing_um == pytest.approx(7.37468)
    np.testing.assert_array_equal(s.heights, z.astype(np.float64))


def test_integer_data_with_increment_and_offset(tmp_path):
    raw = np.array([[0, 1, 2], [3, 4, 5]], dtype="<i2")
    p = _make_x3p(tmp_path / "i.x3p", raw.tobytes(), 3, 2, letter="I", z_inc="1e-08", z_off="1e-06")
    s = read_x3p(p)
    np.testing.assert_allclose(s.heights, (raw * 1e-8 + 1e-6) * 1e6, rtol=1e-12)
    assert s.meta["dtype_in_file"] == "int16"


def test_nested_main_xml_folder(tmp_path):
    z = np.arange(6, dtype="<f8").reshape(2, 3) * 1e-6
    p = _make_x3p(tmp_path / "n.x3p", z.tobytes(), 3, 2, folder="scan_0001/")
    s = read_x3p(p)
    np.testing.assert_allclose(s.heights, z * 1e6)


def test_signalling_nan_and_inf_normalised(tmp_path):
    bits = np.array([R_NA_BITS, 0x3EB0C6F7A0B5ED8D, 0x7FF0000000000000, 0xFFF0000000000000], dtype="<u8")
    data = bits.tobytes()
    assert np.isnan(np.frombuffer(data, "<f8")[0])
    p = _make_x3p(tmp_path / "na.x3p", data, 2, 2)
    s = read_x3p(p)
    h = s.heights.ravel()
    assert np.isnan(h[0]) and np.isnan(h[2]) and np.isnan(h[3])
    assert h[1] == pytest.approx(1.0)
    # every NaN is now the canonical quiet NaN, not R's payload
    nan_bits = h.view(np.uint64)[np.isnan(h)]
    assert np.all(nan_bits & 0x0008000000000000)  # quiet bit set
    assert not np.any(nan_bits == R_NA_BITS)


def test_mask_png_noted_not_applied(tmp_path):
    z = np.ones((2, 2), "<f8") * 1e-6
    p = _make_x3p(tmp_path / "mk.x3p", z.tobytes(), 2, 2, extra={"bindata/mask.png": b"\x89PNG fake"})
    s = read_x3p(p)
    assert s.meta["has_mask_png"] is True
    assert np.all(np.isfinite(s.heights))


def test_non_square_pixels_are_resampled_to_square_ones(tmp_path):
    # a 3 x 4 grid, x increment 1 um, y increment 2 um: rows every 2 um become rows every 1 um
    z = np.array([[0.0, 1.0, 2.0, 3.0],
                  [10.0, 11.0, np.nan, 13.0],
                  [20.0, 21.0, 22.0, 23.0]])
    raw = (z * 1e-6).astype("<f8")
    p = _make_x3p(tmp_path / "ns.x3p", raw.tobytes(), 4, 3, inc_x="1e-06", inc_y="2e-06")
    s = read_x3p(p)
    assert s.spacing_um == pytest.approx(1.0)
    assert s.shape == (6, 4)                                   # the same 6 x 4 um area on 1 um pixels
    assert s.meta["resampled_to_square"] is True and s.meta["grid_in_file"] == (3, 4)
    assert (s.meta["spacing_x_um"], s.meta["spacing_y_um"]) == (pytest.approx(1.0), pytest.approx(2.0))
    h = s.heights
    # columns are untouched; along y, bilinear between the rows (pixel centres at 0.5, 1.5, ... um vs 1, 3, 5)
    np.testing.assert_allclose(h[:, 0], [0.0, 2.5, 7.5, 12.5, 17.5, 20.0], atol=1e-9)
    np.testing.assert_allclose(h[:, 3], [3.0, 5.5, 10.5, 15.5, 20.5, 23.0], atol=1e-9)
    assert np.isnan(h[2, 2]) and np.isnan(h[3, 2])            # the missing point's neighbours weigh < half
    # x the coarse axis this time, and pixels within 1 % of square are read as they are
    p2 = _make_x3p(tmp_path / "ns2.x3p", raw.tobytes(), 4, 3, inc_x="3e-06", inc_y="1e-06")
    assert read_x3p(p2).shape == (3, 12) and read_x3p(p2).spacing_um == pytest.approx(1.0)
    p3 = _make_x3p(tmp_path / "sq.x3p", raw.tobytes(), 4, 3, inc_x="1e-06", inc_y="1.005e-06")
    s3 = read_x3p(p3)
    assert s3.shape == (3, 4) and s3.meta["resampled_to_square"] is False
    np.testing.assert_array_equal(s3.heights, z)


def test_implausible_or_oversize_non_square_pixels_are_refused(tmp_path):
    raw = np.zeros((3, 4), "<f8")
    p = _make_x3p(tmp_path / "ns.x3p", raw.tobytes(), 4, 3, inc_x="1e-06", inc_y="5e-06")
    with pytest.raises(X3PFormatError, match="increments"):
        read_x3p(p)
    p2 = _make_x3p(tmp_path / "ns2.x3p", raw.tobytes(), 4, 3, inc_x="1e-06", inc_y="3e-06")
    with pytest.raises(X3PLimitError, match="square pixels") as e:
        read_x3p(p2, max_points=20)                           # 12 points in the file, 36 once square
    assert e.value.value == 36


# --------------------------------------------------------------------------- malformed x3p
def test_truncated_zip(tmp_path):
    p = tmp_path / "t.x3p"
    write_x3p(_surface(40, 50), p)
    blob = p.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 30, 10):
        with pytest.raises(X3PFormatError, match="not a readable zip"):
            read_x3p(blob[:cut])


def test_corrupt_member_bytes(tmp_path):
    # intact central directory, damaged compressed stream -> decompression/CRC error, typed
    z = np.random.default_rng(0).normal(size=(30, 30)).astype("<f8")
    p = _make_x3p(tmp_path / "c.x3p", z.tobytes(), 30, 30)
    blob = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("bindata/data.bin")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for k in range(start + 50, start + 150):
        blob[k] ^= 0xFF
    with pytest.raises(X3PFormatError):
        read_x3p(bytes(blob))


def test_wrong_data_md5(tmp_path):
    good = np.zeros((3, 3), "<f8")
    bad = good.copy()
    bad[1, 1] = 1e-6
    p = _make_x3p(tmp_path / "md5.x3p", bad.tobytes(), 3, 3, md5=hashlib.md5(good.tobytes()).hexdigest())
    with pytest.raises(X3PChecksumError, match="verify_md5=False"):
        read_x3p(p)
    s = read_x3p(p, verify_md5=False)
    assert s.heights[1, 1] == pytest.approx(1.0)


def test_wrong_main_xml_md5(tmp_path):
    z = np.zeros((2, 2), "<f8")
    p = tmp_path / "hx.x3p"
    xml = _main_xml(2, 2, md5=hashlib.md5(z.tobytes()).hexdigest())
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("main.xml", xml)
        zf.writestr("bindata/data.bin", z.tobytes())
        zf.writestr("md5checksum.hex", "0" * 32 + " *main.xml\n")
    with pytest.raises(X3PChecksumError, match="main.xml"):
        read_x3p(p)


def test_absurd_declared_size_no_allocation(tmp_path):
    p = _make_x3p(tmp_path / "big.x3p", b"\0" * 64, 10**6, 10**6)
    with pytest.raises(X3PLimitError, match="max_points") as ei:
        read_x3p(p)
    assert "1e+12" in str(ei.value)
    e = ei.value  # the limit as attributes, for callers that word their own message (the service)
    assert (e.limit, e.value, e.maximum, e.shape) == ("max_points", 10**12, 64_000_000, (10**6, 10**6))


def test_data_size_mismatch(tmp_path):
    p = _make_x3p(tmp_path / "short.x3p", b"\0" * 64, 10, 10)  # needs 800 bytes
    with pytest.raises(X3PFormatError, match="truncated or its header is wrong"):
        read_x3p(p)


def test_missing_main_xml(tmp_path):
    p = tmp_path / "nomain.x3p"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("bindata/data.bin", b"\0" * 8)
    with pytest.raises(X3PFormatError, match="no main.xml"):
        read_x3p(p)


def test_missing_data_member(tmp_path):
    p = tmp_path / "nodata.x3p"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("main.xml", _main_xml(1, 1))
    with pytest.raises(X3PFormatError, match="no point data member"):
        read_x3p(p)


def test_bad_xml_and_unsupported_dtype(tmp_path):
    p = tmp_path / "badxml.x3p"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("main.xml", b"<ISO5436_2><Record1>")
        zf.writestr("bindata/data.bin", b"\0" * 8)
    with pytest.raises(X3PFormatError, match="well-formed"):
        read_x3p(p)
    q = _make_x3p(tmp_path / "u8.x3p", b"\0" * 4, 2, 2, letter="B")
    with pytest.raises(X3PFormatError, match="DataType"):
        read_x3p(q)


def test_too_many_members(tmp_path):
    z = np.zeros((2, 2), "<f8")
    extra = {f"junk/{i}.txt": b"x" for i in range(70)}
    p = _make_x3p(tmp_path / "many.x3p", z.tobytes(), 2, 2, extra=extra)
    with pytest.raises(X3PLimitError, match="max_members") as ei:
        read_x3p(p)
    assert (ei.value.limit, ei.value.value, ei.value.maximum) == ("max_members", 73, 64)
    assert read_x3p(p, max_members=100).shape == (2, 2)


def test_uncompressed_size_limit(tmp_path):
    z = np.zeros((100, 100), "<f8")
    p = _make_x3p(tmp_path / "unc.x3p", z.tobytes(), 100, 100)
    with pytest.raises(X3PLimitError, match="max_uncompressed_bytes") as ei:
        read_x3p(p, max_uncompressed_bytes=10_000)
    assert ei.value.limit == "max_uncompressed_bytes" and ei.value.value > 80_000 and ei.value.maximum == 10_000


def test_zip_bomb_ratio(tmp_path):
    z = np.zeros((512, 512), "<f8")  # 2 MiB of zeros: bzip2 squeezes it far beyond deflate's limit
    p = _make_x3p(tmp_path / "bomb.x3p", z.tobytes(), 512, 512, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(X3PLimitError, match="zip bomb") as ei:
        read_x3p(p)
    assert ei.value.limit == "max_compression_ratio" and ei.value.value > ei.value.maximum == 1100.0


def test_not_a_zip(tmp_path):
    p = tmp_path / "junk.x3p"
    p.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(X3PFormatError, match="not a readable zip"):
        read_x3p(p)
    with pytest.raises(X3PError):
        read_x3p(b"")


def test_errors_are_value_errors():
    for cls in (X3PFormatError, X3PChecksumError, X3PLimitError):
        assert issubclass(cls, X3PError) and issubclass(cls, ValueError)
    assert issubclass(ImageLimitError, ValueError) and issubclass(ImageFormatError, ValueError)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_x3p(tmp_path / "nope.x3p")


# --------------------------------------------------------------------------- 2D images
def test_png_16bit(tmp_path):
    a = np.array([[0, 1000, 65535], [30000, 2, 5]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    s = read_image(p)
    assert s.meta["kind"] == "image2d" and s.meta["bit_depth"] == 16
    assert s.meta["spacing_calibrated"] is False and s.spacing_um == 1.0
    np.testing.assert_allclose(s.heights, a / 65535.0)


def test_png_8bit_and_spacing(tmp_path):
    a = np.array([[0, 128, 255]], dtype=np.uint8)
    p = tmp_path / "g8.png"
    Image.fromarray(a).save(p)
    s = read_image(p.read_bytes(), spacing_um=3.2)
    assert s.meta["bit_depth"] == 8
    assert s.meta["spacing_calibrated"] is True and s.spacing_um == 3.2
    np.testing.assert_allclose(s.heights, a / 255.0)


def test_tiff_16bit(tmp_path):
    a = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).astype(np.uint16)
    p = tmp_path / "g16.tif"
    Image.fromarray(a).save(p)
    s = read_surface(p)
    assert s.meta["bit_depth"] == 16
    np.testing.assert_allclose(s.heights, a / 65535.0)


def test_rgb_to_luminance(tmp_path):
    a = np.zeros((2, 2, 3), np.uint8)
    a[0, 0] = (255, 0, 0)
    a[1, 1] = (255, 255, 255)
    p = tmp_path / "rgb.png"
    Image.fromarray(a).save(p)
    s = read_image(p)
    assert s.heights[0, 0] == pytest.approx(0.299)
    assert s.heights[1, 1] == pytest.approx(1.0)
    assert s.heights[0, 1] == 0.0


def test_image_over_max_pixels_not_decoded(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("L", (2000, 1000)).save(p)

    def _no_decode(self, *a, **k):  # pragma: no cover - must not run
        raise AssertionError("image was decoded before the size check")

    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decode)
    with pytest.raises(ImageLimitError, match="max_pixels") as ei:
        read_image(p, max_pixels=1_000_000)
    assert (ei.value.limit, ei.value.value, ei.value.maximum, ei.value.shape) == ("max_pixels", 2_000_000,
                                                                                 1_000_000, (1000, 2000))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_forged_png_header_is_limit_error():
    # IHDR claims 100000 x 100000 but the pixel data is a few bytes: a decompression bomb header
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    blob = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    with pytest.raises(ImageLimitError, match="max_pixels") as ei:
        read_image(blob)
    assert ei.value.limit == "max_pixels" and ei.value.maximum is not None


def test_unreadable_image(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"not an image")
    with pytest.raises(ImageFormatError):
        read_image(p)
    good = tmp_path / "g.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)).save(good)
    with pytest.raises(ImageFormatError):
        read_image(good.read_bytes()[:300])  # truncated


def test_read_surface_dispatch(tmp_path):
    write_x3p(_surface(), tmp_path / "a.X3P")
    assert read_surface(tmp_path / "a.X3P").shape == (7, 9)
    with pytest.raises(ValueError, match="unsupported suffix"):
        read_surface(tmp_path / "a.jpg")


# --------------------------------------------------------------------------- real data
def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return path


@pytest.mark.realdata
def test_real_fadul(shared_data):
    s = read_x3p(_need(shared_data / "cartridge/fadul/Fadul 1-1.x3p"))
    assert s.spacing_um == pytest.approx(6.25)
    assert 500 <= s.shape[0] <= 600 and 500 <= s.shape[1] <= 600
    assert s.meta["units_in_file"] == "m" and s.meta["dtype_in_file"] == "float64"
    assert 0.6 <= 1 - s.valid_fraction <= 0.8
    std = float(np.nanstd(s.heights))
    assert 0.1 <= std <= 50  # micrometres, not metres
    assert s.meta["md5_verified"] is True


@pytest.mark.realdata
def test_real_baldwin_micrometre_file(shared_data):
    s = read_x3p(_need(shared_data / "cartridge/baldwin/K013sA1.x3p"))
    assert s.spacing_um == pytest.approx(7.37, abs=0.01)
    assert s.meta["units_in_file"] == "um"
    assert s.meta["has_mask_png"] is True
    assert np.isfinite(np.nanstd(s.heights)) and np.nanstd(s.heights) > 0.1


@pytest.mark.realdata
def test_real_hamby44_float32(shared_data):
    s = read_x3p(_need(shared_data / "bullet/hamby44/HS44_Barrel1_Bullet1_Land1.x3p"))
    assert s.meta["dtype_in_file"] == "float32"
    assert s.spacing_um == pytest.approx(1.5625)
    assert s.heights.dtype == np.float64
    assert 0.1 <= float(np.nanstd(s.heights)) <= 500


@pytest.mark.realdata
def test_real_nbide_image(shared_data):
    s = read_image(_need(shared_data / "images2d/nbide/NBIDE_R_BF_118.png"))
    assert s.shape == (1944, 2592)
    assert s.meta["kind"] == "image2d" and s.meta["bit_depth"] == 8
    assert 0.0 <= np.nanmin(s.heights) and np.nanmax(s.heights) <= 1.0


# --------------------------------------------------------------------------- valid-points map and inline points
def _with_valid_map(path: Path, raw: np.ndarray, valid: bytes, *, letter: str = "I", valid_md5: str | None = None,
                    link: str = "bindata/valid.bin", member: str = "bindata/valid.bin") -> Path:
    """An integer x3p whose main.xml declares a ValidPointsLink (ISO 5436-2: one bit a point, LSB first)."""
    data = raw.tobytes()
    xml = _main_xml(raw.shape[1], raw.shape[0], letter=letter, md5=hashlib.md5(data).hexdigest(),
                    z_inc="1e-08").replace(
        b"</DataLink>",
        f"<ValidPointsLink>{link}</ValidPointsLink><MD5ChecksumValidPoints>"
        f"{hashlib.md5(valid).hexdigest() if valid_md5 is None else valid_md5}</MD5ChecksumValidPoints></DataLink>".encode())
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("main.xml", xml)
        zf.writestr("bindata/data.bin", data)
        if member:
            zf.writestr(member, valid)
    return path


def test_valid_points_map_turns_invalid_integer_points_into_nan(tmp_path):
    raw = np.arange(9, dtype="<i2").reshape(3, 3) * 100
    # 9 points, 2 bytes; least-significant bit first: byte 0 = 0b11111101 -> point 1 invalid,
    # byte 1 = 0b00000000 -> point 8 invalid (its padding bits are ignored)
    s = read_x3p(_with_valid_map(tmp_path / "v.x3p", raw, bytes([0b11111101, 0b00000000])))
    expect = raw * 1e-8 * 1e6
    bad = np.zeros(9, bool)
    bad[[1, 8]] = True
    assert np.array_equal(np.isnan(s.heights).ravel(), bad)
    np.testing.assert_allclose(s.heights.ravel()[~bad], expect.ravel()[~bad], rtol=1e-12)
    assert s.meta["valid_points_map"] is True and s.meta["invalid_points"] == 2
    assert s.meta["point_storage"] == "binary"
    # without the map the same points would be heights (0 and 800 counts): the map is what makes them missing
    plain = read_x3p(_make_x3p(tmp_path / "p.x3p", raw.tobytes(), 3, 3, letter="I", z_inc="1e-08"))
    assert np.isfinite(plain.heights).all() and plain.meta["invalid_points"] == 0
    assert plain.meta["valid_points_map"] is False


def test_valid_points_map_that_is_missing_short_or_altered_is_refused(tmp_path):
    raw = np.zeros((3, 3), "<i2")
    with pytest.raises(X3PFormatError, match="ValidPointsLink 'bindata/valid.bin', which is not in the archive"):
        read_x3p(_with_valid_map(tmp_path / "a.x3p", raw, b"\xff\xff", member=""))
    with pytest.raises(X3PFormatError, match="holds 1 bytes but 3x3 points need 2"):
        read_x3p(_with_valid_map(tmp_path / "b.x3p", raw, b"\xff"))
    with pytest.raises(X3PChecksumError, match="valid-points map"):
        read_x3p(_with_valid_map(tmp_path / "c.x3p", raw, b"\xff\xff", valid_md5="0" * 32))
    s = read_x3p(_with_valid_map(tmp_path / "c.x3p", raw, b"\xff\xff", valid_md5="0" * 32), verify_md5=False)
    assert np.isfinite(s.heights).all()


def _datalist_x3p(path: Path, values: list[str], sx: int, sy: int, *, prefix: str = "", sep: str = "",
                  **xml_kw) -> Path:
    """An x3p that carries its points inline in main.xml (Record3/DataList), no bindata member."""
    xml = _main_xml(sx, sy, **xml_kw).decode()
    start, end = xml.index("<DataLink>"), xml.index("</DataLink>") + len("</DataLink>")
    datums = sep.join("<Datum/>" if v is None else f"<{prefix}Datum>{v}</{prefix}Datum>" for v in values)
    xml = (xml[:start] + f"<{prefix}DataList>{datums}</{prefix}DataList>" + xml[end:]).encode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("main.xml", xml)
        zf.writestr("md5checksum.hex", hashlib.md5(xml).hexdigest() + " *main.xml\n")
    return path


def test_inline_data_list_reads_like_the_same_points_in_binary(tmp_path):
    z = np.array([[1.5e-6, -2.0e-6, np.nan], [0.25e-6, np.nan, 3.0e-6]])
    vals = [None if np.isnan(v) else repr(float(v)) for v in z.ravel()]
    s = read_x3p(_datalist_x3p(tmp_path / "dl.x3p", vals, 3, 2))
    b = read_x3p(_make_x3p(tmp_path / "bin.x3p", z.astype("<f8").tobytes(), 3, 2))
    np.testing.assert_array_equal(s.heights, b.heights)
    assert s.spacing_um == b.spacing_um == 6.25
    assert s.meta["point_storage"] == "xml-datalist" and s.meta["units_in_file"] == "m"
    assert s.meta["md5_verified"] is False          # no point-data MD5 exists for inline points
    pretty = read_x3p(_datalist_x3p(tmp_path / "pretty.x3p", vals, 3, 2, sep="\n    "))   # one Datum a line
    np.testing.assert_array_equal(pretty.heights, b.heights)
    # integer inline points take the z increment and offset; a namespace prefix on the tags is fine
    t = read_x3p(_datalist_x3p(tmp_path / "di.x3p", ["0", "7", " ", "-3"], 2, 2, letter="L", prefix="p:",
                               z_inc="1e-08", z_off="1e-06"))
    np.testing.assert_allclose(t.heights.ravel()[[0, 1, 3]], (np.array([0, 7, -3]) * 1e-8 + 1e-6) * 1e6)
    assert np.isnan(t.heights.ravel()[2])


def test_inline_data_list_with_wrong_count_or_several_coordinates_is_refused(tmp_path):
    with pytest.raises(X3PFormatError, match="holds 3 points but main.xml declares 2x2 = 4"):
        read_x3p(_datalist_x3p(tmp_path / "a.x3p", ["1e-6"] * 3, 2, 2))
    with pytest.raises(X3PFormatError, match="several coordinates a point"):
        read_x3p(_datalist_x3p(tmp_path / "b.x3p", ["0;0;1e-6"] * 4, 2, 2))
    with pytest.raises(X3PFormatError, match="not a number"):
        read_x3p(_datalist_x3p(tmp_path / "c.x3p", ["1e-6", "abc", "1e-6", "1e-6"], 2, 2))
    # a tiny declared grid over a huge list is refused before the list is split (bounded memory)
    with pytest.raises(X3PFormatError, match="far more than 2x2 points"):
        read_x3p(_datalist_x3p(tmp_path / "e.x3p", ["1e-6"] * 5000, 2, 2))
    with pytest.raises(X3PChecksumError, match="main.xml"):      # md5checksum.hex covers the inline points
        p = _datalist_x3p(tmp_path / "d.x3p", ["1e-6"] * 4, 2, 2)
        with zipfile.ZipFile(p) as zf:
            xml = zf.read("main.xml").replace(b"<Datum>1e-6</Datum>", b"<Datum>2e-6</Datum>", 1)
            hexm = zf.read("md5checksum.hex")
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("main.xml", xml)
            zf.writestr("md5checksum.hex", hexm)
        read_x3p(p)


def test_no_data_sentinels_become_nan(tmp_path):
    # float32 +-FLT_MAX and a 1e38 (metres) are no-data conventions, not heights; a real height stays
    z = np.array([[1e-6, np.finfo(np.float32).max], [-np.finfo(np.float32).max, 1e38]], dtype="<f4")
    s = read_x3p(_make_x3p(tmp_path / "f.x3p", z.tobytes(), 2, 2, letter="F"))
    assert s.heights[0, 0] == pytest.approx(1.0, rel=1e-6)
    assert np.isnan(s.heights.ravel()[1:]).all() and s.meta["sentinel_points"] == 3
    # int16 extremes without a valid-points map: no data / clipped; with a map, the map decides
    raw = np.array([[-32768, 5, 32767]], dtype="<i2")
    t = read_x3p(_make_x3p(tmp_path / "i.x3p", raw.tobytes(), 3, 1, letter="I", z_inc="1e-08"))
    assert np.array_equal(np.isnan(t.heights), [[True, False, True]]) and t.meta["sentinel_points"] == 2
    u = read_x3p(_with_valid_map(tmp_path / "v.x3p", raw, bytes([0b00000111])))
    assert np.isfinite(u.heights).all() and u.meta["sentinel_points"] == 0
    # inline points follow the same rule
    w = read_x3p(_datalist_x3p(tmp_path / "d.x3p", ["1e-6", "-3.4028235e38"], 2, 1))
    assert np.isnan(w.heights[0, 1]) and w.meta["sentinel_points"] == 1
    # an ordinary surface has none
    assert read_x3p(_make_x3p(tmp_path / "o.x3p", (np.ones((2, 2)) * 1e-6).tobytes(), 2, 2)).meta[
        "sentinel_points"] == 0


def test_units_named_by_the_caller_override_the_increment_rule(tmp_path):
    # a file in millimetres: increment 0.00625 (= 6.25 um), heights in mm; "auto" takes it for micrometres
    z = np.array([[0.001, 0.002], [0.003, np.nan]])
    p = _make_x3p(tmp_path / "mm.x3p", z.astype("<f8").tobytes(), 2, 2, inc_x="0.00625")
    auto = read_x3p(p)
    assert auto.spacing_um == 0.00625 and auto.meta["units_in_file"] == "um"
    assert auto.meta["units_decided_by"] == "x increment"
    mm = read_x3p(p, units="mm")
    assert mm.spacing_um == 6.25 and mm.meta["units_in_file"] == "mm" and mm.meta["units_decided_by"] == "caller"
    np.testing.assert_allclose(mm.heights, z * 1000.0)
    assert read_x3p(p, units="um").spacing_um == 0.00625
    with pytest.raises(ValueError, match="units must be 'auto' or one of"):
        read_x3p(p, units="inch")
