"""Reading and writing topographies in ISO 25178-72 / ISO 5436-2 ``.x3p`` files.

Every reader returns a :class:`~ballistic.surface.Surface` whose heights are in
micrometres (um) and whose missing points are quiet ``NaN``; every reader treats
its input as untrusted: sizes declared in headers are checked against explicit
limits *before* anything is decompressed or allocated, and each kind of failure
raises a typed exception (:mod:`ballistic.errors`) whose message says what is
wrong and how to fix it.

Functions
---------
read_x3p
    Read an ``.x3p`` zip (path, bytes or binary file object).
write_x3p
    Write a Surface as an ISO-conformant ``.x3p`` in metres, atomically.

2D images are read by :func:`ballistic.io.image.read_image`; :func:`ballistic.io.read_surface`
chooses the reader from the file suffix.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import lzma
import math
import posixpath
import re
import struct
import xml.etree.ElementTree as ET
import zipfile
import zlib
from typing import IO, Any
from xml.sax.saxutils import escape as _xml_escape

import numpy as np

from ballistic.errors import InputError, X3PChecksumError, X3PFormatError, X3PLimitError
from ballistic.io.atomic import atomic_write_bytes
from ballistic.io.source import PathLike, Source, open_source
from ballistic.surface import Surface

__all__ = [
    "read_x3p",
    "write_x3p",
]


# --------------------------------------------------------------------------- constants
#: x3p z data types: ISO 5436-2 letter -> little-endian numpy dtype.
_X3P_DTYPES: dict[str, np.dtype] = {
    "D": np.dtype("<f8"),
    "F": np.dtype("<f4"),
    "L": np.dtype("<i4"),
    "I": np.dtype("<i2"),
}
_WRITE_DTYPES = {"float64": "D", "float32": "F"}

#: An x-increment below this (in file units) means the file is in metres (ISO); otherwise micrometres.
_METRE_INCREMENT_THRESHOLD = 1e-3
#: ``read_x3p(units=...)``: factor from the file's length unit to micrometres.
_UNIT_TO_UM = {"m": 1e6, "mm": 1e3, "um": 1.0, "nm": 1e-3}

#: main.xml and md5checksum.hex are small; anything bigger is hostile or broken.
_MAX_XML_BYTES = 16 * 1024 * 1024
#: ... unless main.xml carries the points itself (an inline ``Record3/DataList``, ~10-30 bytes a point).
_MAX_DATALIST_XML_BYTES = 256 * 1024 * 1024
_MAX_HEX_BYTES = 4096
#: longest pixel side over shortest that the reader resamples to square; beyond it the header is wrong
_MAX_PIXEL_ASPECT = 4.0
#: The compression-ratio check only applies to members at least this big (declared).
_RATIO_CHECK_MIN_BYTES = 1024 * 1024

_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # unsupported compression method
    struct.error,
    RuntimeError,  # encrypted member
    OSError,  # bz2 "Invalid data stream"; io errors on a corrupt stream
    ValueError,
)


# --------------------------------------------------------------------------- x3p reading
def _check_units(units: str) -> str:
    if units != "auto" and units not in _UNIT_TO_UM:
        raise InputError(f"units must be 'auto' or one of {sorted(_UNIT_TO_UM)}, got {units!r}")
    return units


def read_x3p(
    source: Source,
    *,
    max_points: int = 64_000_000,
    max_members: int = 64,
    max_uncompressed_bytes: int = 1_500_000_000,
    max_compression_ratio: float = 1100.0,
    verify_md5: bool = True,
    units: str = "auto",
) -> Surface:
    """Read an ISO 5436-2 / ISO 25178-72 ``.x3p`` topography.

    Parameters
    ----------
    source : str, os.PathLike, bytes or binary file object
        The ``.x3p`` file (a zip archive). A file object must be seekable.
    max_points : int, optional
        Largest accepted ``SizeX * SizeY * SizeZ`` declared in ``main.xml``; checked
        before any point data is decompressed or allocated.
    max_members : int, optional
        Largest accepted number of members in the zip archive.
    max_uncompressed_bytes : int, optional
        Largest accepted sum of the uncompressed sizes declared in the zip directory.
    max_compression_ratio : float, optional
        Largest accepted ratio of uncompressed to compressed size for any member of
        at least 1 MiB. Deflate cannot exceed about 1032:1, so the default only
        rejects forged headers and bzip2/lzma zip bombs.
    verify_md5 : bool, optional
        Check the MD5 of the point data against ``MD5ChecksumPointData`` and, when an
        ``md5checksum.hex`` member is present, the MD5 of ``main.xml`` against it.
    units : {"auto", "m", "mm", "um", "nm"}, optional
        Length unit of the file's increments and heights. ``"auto"`` (default) follows the
        x increment (see Notes); name the unit when an exporter wrote something else, e.g.
        ``units="mm"`` for a file in millimetres, which ``"auto"`` would take for micrometres.

    Returns
    -------
    Surface
        ``heights`` : float64, shape (SizeY, SizeX), micrometres, ``NaN`` where missing
        (signalling NaN such as R's ``NA`` and +-Inf become quiet NaN).
        ``spacing_um`` : pixel spacing in micrometres.
        ``meta`` : ``kind`` ("topography3d"), ``source`` (file name, if a path),
        ``units_in_file`` ("m" or "um"), ``instrument``, ``manufacturer``, ``model``,
        ``units_decided_by`` ("x increment" or "caller"), ``creator``, ``comment``, ``date``,
        ``dtype_in_file`` (e.g. "float64"),
        ``spacing_x_um``, ``spacing_y_um`` (as in the file), ``resampled_to_square`` and ``grid_in_file``
        (see Notes), ``has_mask_png``, ``md5_verified``, ``origin``,
        ``point_storage`` ("binary" or "xml-datalist"), ``valid_points_map`` (a ValidPointsLink
        was applied), ``invalid_points`` (how many points it marked invalid) and ``sentinel_points``
        (how many stored values were no-data sentinels, see Notes).

    Raises
    ------
    X3PFormatError
        Not a zip, truncated or corrupt zip, malformed XML, no ``main.xml``, no point
        data member, unsupported data type/axis type/layer count, pixels more than 4 times longer
        than wide, or a data member whose size does not match the declared grid.
    X3PChecksumError
        A declared MD5 does not match (only with ``verify_md5=True``).
    X3PLimitError
        Declared grid, member count, uncompressed size or compression ratio exceeds
        the given limits.
    FileNotFoundError
        ``source`` is a path that does not exist.

    Notes
    -----
    Units are inferred from the x increment: below 1e-3 the file is taken to be in
    metres (the ISO convention) and spacing and heights are multiplied by 1e6;
    otherwise (e.g. Cadre TopMatch exports with increment 7.37) both are taken to be
    micrometres already. The point data layout is x fastest, so the grid is read
    row-major with shape (SizeY, SizeX); row 0 is the first line in the file.
    A ``mask.png`` member is noted in ``meta["has_mask_png"]`` but not applied.
    Pixels whose x and y increments differ by more than 1 % (some scanners sample their axes
    differently) are resampled to square pixels of the finer increment, bilinear along the coarser
    axis and mask-aware (:func:`ballistic.io.grid.resample_grid`), so that the rest of
    the library can rely on one spacing; ``meta["resampled_to_square"]`` says so and
    ``meta["grid_in_file"]`` keeps the original (SizeY, SizeX). Within 1 % the x increment is the
    spacing, as before.

    Points may be stored in a binary member (``Record3/DataLink/PointDataLink``) or inline in
    main.xml (``Record3/DataList``, one ``<Datum>`` a point, an empty one = missing; such a
    main.xml may reach 256 MiB). A ``ValidPointsLink`` bit map (ISO 5436-2: one bit a point,
    least-significant bit first, 0 = invalid; the only way integer data can mark a missing
    point) turns the points it marks invalid into ``NaN``; its MD5 is checked like the data's.
    Stored values that are no-data conventions rather than heights also become ``NaN``: a float
    of magnitude 1e30 or more (in the file's units; e.g. +-FLT_MAX) and, in integer data without
    a valid-points map, the type's two extreme values (no data, or a clipped reading).
    """
    name, fileobj, owned = open_source(source)
    try:
        return _read_x3p_fileobj(
            fileobj,
            name=name,
            max_points=int(max_points),
            max_members=int(max_members),
            max_uncompressed_bytes=int(max_uncompressed_bytes),
            max_compression_ratio=float(max_compression_ratio),
            verify_md5=bool(verify_md5),
            units=_check_units(units),
        )
    finally:
        if owned:
            fileobj.close()


def _label(name: str | None) -> str:
    return repr(name) if name else "the x3p data"


def _read_x3p_fileobj(
    fileobj: IO[bytes],
    *,
    name: str | None,
    max_points: int,
    max_members: int,
    max_uncompressed_bytes: int,
    max_compression_ratio: float,
    verify_md5: bool,
    units: str,
) -> Surface:
    label = _label(name)
    try:
        zf = zipfile.ZipFile(fileobj, "r")
    except _ZIP_ERRORS as exc:
        raise X3PFormatError(
            f"{label} is not a readable zip archive ({type(exc).__name__}: {exc}); an .x3p file is a zip "
            "holding main.xml and bindata/data.bin - check that the file was fully downloaded/copied "
            "and is really an .x3p"
        ) from exc

    with zf:
        infos = zf.infolist()
        _check_zip_limits(infos, label, max_members, max_uncompressed_bytes, max_compression_ratio)
        by_name = {i.filename: i for i in infos if i.filename and not i.filename.endswith("/")}

        main_info = _find_main_xml(by_name, label)
        if main_info.file_size > _MAX_DATALIST_XML_BYTES:
            raise X3PLimitError(
                f"main.xml in {label} declares {main_info.file_size} bytes, more than the "
                f"{_MAX_DATALIST_XML_BYTES} bytes even a header with inline points (DataList) may take; the "
                "file is corrupt or hostile - re-export it with binary point data (bindata/data.bin)",
                limit="max_xml_bytes", value=main_info.file_size, maximum=_MAX_DATALIST_XML_BYTES,
            )
        xml_bytes = _read_member(zf, main_info, label)
        header_xml, data_list = _split_data_list(xml_bytes, label)
        if len(header_xml) > _MAX_XML_BYTES:
            raise X3PLimitError(
                f"main.xml in {label} holds {len(header_xml)} bytes besides its points, more than the "
                f"{_MAX_XML_BYTES} bytes any genuine x3p header needs; the file is corrupt or hostile - re-export it",
                limit="max_xml_bytes", value=len(header_xml), maximum=_MAX_XML_BYTES,
            )
        root = _parse_xml(header_xml, label)
        del header_xml

        hdr = _parse_header(root, label)
        sx, sy, sz = hdr["size"]
        npoints = sx * sy * sz
        if npoints > max_points:
            raise X3PLimitError(
                f"{label} declares a grid of {sx}x{sy}x{sz} = {npoints:.3g} points, which exceeds "
                f"max_points={max_points:.3g}; pass max_points={npoints} (or more) if this scan is genuine",
                limit="max_points", value=npoints, maximum=max_points, shape=(sy, sx),
            )
        if sz != 1:
            raise X3PFormatError(
                f"{label} has SizeZ={sz} layers; only single-layer surfaces (SizeZ=1) are supported - "
                "export one layer per file"
            )

        inc_x, inc_y = hdr["inc_x"], hdr["inc_y"]
        in_file = units if units != "auto" else ("m" if inc_x < _METRE_INCREMENT_THRESHOLD else "um")
        scale = _UNIT_TO_UM[in_file]
        spacing_x = _clean(inc_x * scale)
        spacing_y = _clean(inc_y * scale)
        # pixels more than 1 % from square are resampled to square ones of the finer spacing (below)
        square = abs(spacing_x - spacing_y) <= 0.01 * max(spacing_x, spacing_y)
        if not square:
            ratio = max(spacing_x, spacing_y) / min(spacing_x, spacing_y)
            if ratio > _MAX_PIXEL_ASPECT:
                raise X3PFormatError(
                    f"{label} has pixels {ratio:.3g} times longer than wide (x increment {spacing_x:g} um, y "
                    f"increment {spacing_y:g} um); no areal scanner samples so unevenly - check the increments "
                    "in main.xml (one axis in another unit?)"
                )
            from ballistic.io.grid import resampled_shape

            square_points = math.prod(resampled_shape((sy, sx), (spacing_y, spacing_x),
                                                      spacing_um=min(spacing_x, spacing_y)))
            if square_points > max_points:
                raise X3PLimitError(
                    f"{label} has non-square pixels; on square pixels of {min(spacing_x, spacing_y):g} um its "
                    f"grid would hold {square_points:.3g} points, which exceeds max_points={max_points:.3g}; pass "
                    f"max_points={square_points} (or more) if this scan is genuine",
                    limit="max_points", value=square_points, maximum=max_points, shape=(sy, sx),
                )

        has_mask_png = any(posixpath.basename(n).lower() == "mask.png" for n in by_name)
        dtype = hdr["dtype"]
        inline = hdr["data_link"] is None and data_list is not None
        valid_bytes = None
        if inline:
            data_bytes = None
            storage = "xml-datalist"
        else:
            data_info = _find_data_member(by_name, main_info.filename, hdr["data_link"], label)
            expected = npoints * dtype.itemsize
            if data_info.file_size != expected:
                raise X3PFormatError(
                    f"point data member {data_info.filename!r} in {label} holds {data_info.file_size} bytes but "
                    f"main.xml declares {sx}x{sy} points of {dtype.itemsize}-byte {hdr['dtype_letter']} = "
                    f"{expected} bytes; the file is truncated or its header is wrong - re-export it"
                )
            data_bytes = _read_member(zf, data_info, label)
            storage = "binary"
            if hdr["valid_link"]:
                valid_info = _find_link_member(by_name, main_info.filename, hdr["valid_link"])
                if valid_info is None:
                    raise X3PFormatError(
                        f"{label} declares ValidPointsLink {hdr['valid_link']!r}, which is not in the archive "
                        f"(members: {', '.join(sorted(by_name)[:10])}); without it invalid points would be read "
                        "as heights - re-export the file"
                    )
                need = (npoints + 7) // 8
                if valid_info.file_size != need:
                    raise X3PFormatError(
                        f"valid-points member {valid_info.filename!r} in {label} holds {valid_info.file_size} "
                        f"bytes but {sx}x{sy} points need {need} (one bit a point); the file is truncated or its "
                        "header is wrong - re-export it"
                    )
                valid_bytes = _read_member(zf, valid_info, label)
        md5_verified = False
        if verify_md5:
            md5_verified = _verify_checksums(zf, by_name, main_info, xml_bytes, data_bytes, valid_bytes, hdr, label)
        del xml_bytes

    if inline:
        heights, sentinel_points = _decode_data_list(data_list, hdr, sx, sy, label)
        del data_list
    else:
        heights, sentinel_points = _decode_points(data_bytes, dtype, hdr, sx, sy)
        del data_bytes
    invalid_points = 0
    if valid_bytes is not None:
        # ISO 5436-2: one bit a point in the point data's order, least-significant bit first, 1 = valid.
        valid = np.unpackbits(np.frombuffer(valid_bytes, np.uint8), count=npoints, bitorder="little")
        invalid = valid.reshape(sy, sx) == 0
        invalid_points = int(invalid.sum())
        heights[invalid] = np.nan

    if scale != 1.0:
        heights *= scale
    spacing = spacing_x
    if not square:
        from ballistic.io.grid import resample_grid

        spacing = min(spacing_x, spacing_y)
        heights = resample_grid(heights, (spacing_y, spacing_x), spacing_um=spacing)

    meta: dict[str, Any] = {
        "kind": "topography3d",
        "source": name,
        "units_in_file": in_file,
        "units_decided_by": "caller" if units != "auto" else "x increment",
        "instrument": " ".join(p for p in (hdr["manufacturer"], hdr["model"]) if p),
        "manufacturer": hdr["manufacturer"],
        "model": hdr["model"],
        "creator": hdr["creator"],
        "comment": hdr["comment"],
        "date": hdr["date"],
        "dtype_in_file": {"D": "float64", "F": "float32", "L": "int32", "I": "int16"}[hdr["dtype_letter"]],
        "spacing_x_um": spacing_x,
        "spacing_y_um": spacing_y,
        # pixels more than 1 % from square were resampled to square ones of the finer spacing
        # (ballistic.io.grid.resample_grid); the grid in the file was (SizeY, SizeX)
        "resampled_to_square": not square,
        "grid_in_file": (sy, sx),
        "has_mask_png": has_mask_png,
        "md5_verified": md5_verified,
        # how the points were stored: "binary" (bindata/*.bin) or "xml-datalist" (inline in main.xml);
        # invalid_points: points a ValidPointsLink bit map marked invalid (now NaN)
        "point_storage": storage,
        "valid_points_map": valid_bytes is not None,
        "invalid_points": invalid_points,
        # points whose stored value was a no-data sentinel (now NaN): |float| >= 1e30 in file units, or
        # an integer type's extreme value when no valid-points map says otherwise
        "sentinel_points": sentinel_points,
        # Record1/Axes/Origin as written (x3ptools writes "NW"); None when absent. It does not tell
        # whether the rows run top-down or bottom-up: the DFSC sets hold files with and without it
        # in both orientations, so the comparison searches mirror images (CMCParams.mirror).
        "origin": hdr["origin"],
    }
    return Surface(heights=heights, spacing_um=spacing, meta=meta)


def _check_zip_limits(
    infos: list[zipfile.ZipInfo],
    label: str,
    max_members: int,
    max_uncompressed_bytes: int,
    max_compression_ratio: float,
) -> None:
    if len(infos) > max_members:
        raise X3PLimitError(
            f"{label} holds {len(infos)} zip members, more than max_members={max_members}; a genuine x3p "
            f"holds a handful - pass max_members={len(infos)} if this file is genuine",
            limit="max_members", value=len(infos), maximum=max_members,
        )
    total = sum(i.file_size for i in infos)
    if total > max_uncompressed_bytes:
        raise X3PLimitError(
            f"{label} declares {total:.3g} uncompressed bytes, more than max_uncompressed_bytes="
            f"{max_uncompressed_bytes:.3g}; pass max_uncompressed_bytes={total} if this scan is genuine",
            limit="max_uncompressed_bytes", value=total, maximum=max_uncompressed_bytes,
        )
    for i in infos:
        if i.file_size >= _RATIO_CHECK_MIN_BYTES:
            ratio = i.file_size / max(i.compress_size, 1)
            if ratio > max_compression_ratio:
                raise X3PLimitError(
                    f"zip member {i.filename!r} in {label} declares a compression ratio of {ratio:.0f}:1 "
                    f"({i.file_size} bytes from {i.compress_size}), above max_compression_ratio="
                    f"{max_compression_ratio:g}; this looks like a zip bomb - pass "
                    f"max_compression_ratio={ratio:.0f} if the file is genuine",
                    limit="max_compression_ratio", value=ratio, maximum=max_compression_ratio,
                )


def _find_main_xml(by_name: dict[str, zipfile.ZipInfo], label: str) -> zipfile.ZipInfo:
    candidates = [n for n in by_name if posixpath.basename(n).lower() == "main.xml"]
    if not candidates:
        listing = ", ".join(sorted(by_name)[:10]) or "(empty archive)"
        raise X3PFormatError(
            f"{label} has no main.xml member (members: {listing}); it is not an x3p file or was "
            "re-zipped wrongly - re-export it from the instrument software"
        )
    # Prefer the shallowest one (e.g. "main.xml" over "scan/main.xml").
    best = min(candidates, key=lambda n: (n.count("/"), n))
    return by_name[best]


def _find_data_member(
    by_name: dict[str, zipfile.ZipInfo], main_name: str, link: str | None, label: str
) -> zipfile.ZipInfo:
    if link:
        found = _find_link_member(by_name, main_name, link)
        if found is not None:
            return found
        base = posixpath.basename(link.strip().replace("\\", "/")).lower()
    else:
        base = "data.bin"
    matches = [n for n in by_name if posixpath.basename(n).lower() == base]
    if not matches:
        raise X3PFormatError(
            f"{label} has no point data member (PointDataLink {link!r} not found; members: "
            f"{', '.join(sorted(by_name)[:10])}); the archive is incomplete - re-export it"
        )
    return by_name[min(matches, key=lambda n: (n.count("/"), n))]


def _find_link_member(by_name: dict[str, zipfile.ZipInfo], main_name: str, link: str) -> zipfile.ZipInfo | None:
    """The member a link of main.xml names (relative to main.xml's folder, else from the archive root)."""
    folder = posixpath.dirname(main_name)
    link = link.strip().replace("\\", "/")
    rel = posixpath.normpath(posixpath.join(folder, link)) if folder else posixpath.normpath(link)
    for candidate in (rel, link):
        if candidate in by_name:
            return by_name[candidate]
    return None


_NS = rb"(?:[A-Za-z_][\w.-]*:)?"          # an optional namespace prefix on a tag name
_DATALIST_OPEN = re.compile(rb"<(" + _NS + rb"DataList)(\s[^>]*)?(/?)>")
_DATUM_EMPTY = re.compile(rb"<" + _NS + rb"Datum\s*/>|<" + _NS + rb"Datum\s*>\s*</" + _NS + rb"Datum\s*>")
_DATUM_TAG = re.compile(rb"</?" + _NS + rb"Datum\s*>")
_DATUM_NAME = re.compile(rb"<(" + _NS + rb"Datum)[\s/>]")
#: Longest ``<Datum>value</Datum>`` accepted per point on average (a float's repr, tags, pretty-printing).
_MAX_DATUM_BYTES = 128


def _split_data_list(xml_bytes: bytes, label: str) -> tuple[bytes, bytes | None]:
    """Cut an inline ``<DataList>`` out of main.xml: (the header with an empty DataList, the list's body).

    The points are decoded from the body without building an XML tree (millions of elements would
    cost gigabytes); the header, a few kB, is parsed as before."""
    m = _DATALIST_OPEN.search(xml_bytes)
    if m is None:
        return xml_bytes, None
    tag = m.group(1)
    if m.group(3):                          # <DataList/>: no points at all
        return xml_bytes, b""
    close = re.compile(rb"</" + re.escape(tag) + rb"\s*>")
    c = close.search(xml_bytes, m.end())
    if c is None:
        raise X3PFormatError(f"main.xml in {label} opens a DataList that never closes; the header is truncated - "
                             "re-export the file")
    return xml_bytes[:m.start()] + b"<" + tag + b"/>" + xml_bytes[c.end():], xml_bytes[m.end():c.start()]


def _decode_data_list(body: bytes, hdr: dict[str, Any], sx: int, sy: int, label: str) -> tuple[np.ndarray, int]:
    """Heights from an inline DataList: one ``<Datum>`` a point in the binary layout's order (x fastest);
    an empty Datum is a missing point (NaN). The z axis's data type, increment and offset apply as to
    binary points."""
    if len(body) > _MAX_DATUM_BYTES * sx * sy + 4096:      # before any copy or split: a bounded cost
        raise X3PFormatError(
            f"the DataList of {label} holds {len(body)} bytes, far more than {sx}x{sy} points of one value each "
            "need; the header's grid size is wrong or the file is hostile - re-export it")
    first = _DATUM_NAME.search(body)
    text = body
    if first is not None:               # the usual spellings by plain replacement (fast), then any other
        t = first.group(1)
        text = re.sub(b"<" + re.escape(t) + rb">\s+</" + re.escape(t) + b">", b" nan ", text)
        text = (text.replace(b"<" + t + b"/>", b" nan ").replace(b"<" + t + b"></" + t + b">", b" nan ")
                .replace(b"<" + t + b">", b" ").replace(b"</" + t + b">", b" "))
    if b"<" in text:
        text = _DATUM_TAG.sub(b" ", _DATUM_EMPTY.sub(b" nan ", text))
    if b"<" in text:
        raise X3PFormatError(f"the DataList of {label} holds elements other than <Datum>; only one z value a "
                             "point is supported - re-export the file with binary point data")
    if b";" in text:
        raise X3PFormatError(f"the DataList of {label} holds several coordinates a point ('x;y;z'); only a "
                             "z value a point on an incremental x/y grid is supported - resample the scan to a "
                             "regular grid first")
    try:                                    # numbers parsed straight from the text: no object per point
        z = np.fromstring(text, dtype=np.float64, sep=" ") if text.strip() else np.empty(0)
    except ValueError as exc:
        raise X3PFormatError(f"the DataList of {label} holds a value that is not a number ({exc})") from exc
    if z.size != sx * sy:
        raise X3PFormatError(f"the DataList of {label} holds {z.size} points but main.xml declares "
                             f"{sx}x{sy} = {sx * sy}; the file is truncated or its header is wrong - re-export it")
    return _to_heights(z.reshape(sy, sx), hdr["dtype"], hdr)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> bytes:
    try:
        with zf.open(info, "r") as fh:
            data = fh.read(info.file_size + 1)
    except _ZIP_ERRORS as exc:
        raise X3PFormatError(
            f"cannot decompress member {info.filename!r} of {label} ({type(exc).__name__}: {exc}); the "
            "file is truncated or corrupt - copy or download it again"
        ) from exc
    if len(data) != info.file_size:
        raise X3PFormatError(
            f"member {info.filename!r} of {label} decompressed to {len(data)} bytes but the zip directory "
            f"declares {info.file_size}; the file is corrupt - copy or download it again"
        )
    return data


def _parse_xml(xml_bytes: bytes, label: str) -> ET.Element:
    head = xml_bytes[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in xml_bytes.upper():
        raise X3PFormatError(
            f"main.xml in {label} contains a DOCTYPE/ENTITY declaration, which x3p never uses and which "
            "is refused for safety; re-export the file"
        )
    try:
        root = ET.fromstring(xml_bytes)
    except ET.ParseError as exc:
        raise X3PFormatError(
            f"main.xml in {label} is not well-formed XML ({exc}); the header is corrupt - re-export the file"
        ) from exc
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
    return root


def _text(root: ET.Element, path: str) -> str | None:
    el = root.find(path)
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


def _req_number(root: ET.Element, path: str, label: str, kind: type = float) -> Any:
    t = _text(root, path)
    if t is None:
        raise X3PFormatError(f"main.xml in {label} lacks {path}; the header is incomplete - re-export the file")
    try:
        v = float(t)
    except ValueError as exc:
        raise X3PFormatError(f"main.xml in {label} has {path}={t!r}, which is not a number") from exc
    if not np.isfinite(v):
        raise X3PFormatError(f"main.xml in {label} has {path}={t!r}, which is not a finite number")
    if kind is int:
        try:
            return int(t)
        except ValueError:
            if v != int(v):
                raise X3PFormatError(f"main.xml in {label} has {path}={t!r}, which is not an integer") from None
            return int(v)
    return v


def _opt_float(root: ET.Element, path: str, default: float, label: str) -> float:
    if _text(root, path) is None:
        return default
    return _req_number(root, path, label, float)


def _parse_header(root: ET.Element, label: str) -> dict[str, Any]:
    if root.tag != "ISO5436_2" and root.find("Record1") is None:
        raise X3PFormatError(
            f"main.xml in {label} has root <{root.tag}> and no Record1; it is not an ISO 5436-2 header"
        )
    sizes = []
    for axis in ("SizeX", "SizeY", "SizeZ"):
        path = f"Record3/MatrixDimension/{axis}"
        if axis == "SizeZ" and _text(root, path) is None:
            sizes.append(1)
            continue
        v = _req_number(root, path, label, int)
        if v <= 0:
            raise X3PFormatError(f"main.xml in {label} declares {axis}={v}; grid sizes must be positive")
        sizes.append(v)

    for ax in ("CX", "CY"):
        at = _text(root, f"Record1/Axes/{ax}/AxisType")
        if at is not None and at.upper() != "I":
            raise X3PFormatError(
                f"{label} uses AxisType {at!r} for {ax}; only incremental (I) x/y axes are supported - "
                "resample the scan to a regular grid first"
            )
    inc_x = _req_number(root, "Record1/Axes/CX/Increment", label, float)
    inc_y = _opt_float(root, "Record1/Axes/CY/Increment", inc_x, label)
    if inc_x <= 0 or inc_y <= 0:
        raise X3PFormatError(f"main.xml in {label} declares non-positive x/y increments ({inc_x}, {inc_y})")

    letter = (_text(root, "Record1/Axes/CZ/DataType") or "").upper()
    if letter not in _X3P_DTYPES:
        raise X3PFormatError(
            f"{label} declares CZ DataType {letter or '(missing)'!r}; supported are D (float64), F (float32), "
            "L (int32) and I (int16) - convert the file with the instrument software"
        )
    return {
        "size": tuple(sizes),
        "inc_x": float(inc_x),
        "inc_y": float(inc_y),
        "dtype_letter": letter,
        "dtype": _X3P_DTYPES[letter],
        "z_increment": _opt_float(root, "Record1/Axes/CZ/Increment", 1.0, label),
        "z_offset": _opt_float(root, "Record1/Axes/CZ/Offset", 0.0, label),
        "data_link": _text(root, "Record3/DataLink/PointDataLink"),
        "md5_data": _text(root, "Record3/DataLink/MD5ChecksumPointData"),
        "valid_link": _text(root, "Record3/DataLink/ValidPointsLink"),
        "md5_valid": _text(root, "Record3/DataLink/MD5ChecksumValidPoints"),
        "checksum_file": _text(root, "Record4/ChecksumFile"),
        "manufacturer": _text(root, "Record2/Instrument/Manufacturer") or "",
        "model": _text(root, "Record2/Instrument/Model") or "",
        "creator": _text(root, "Record2/Creator") or "",
        "comment": _text(root, "Record2/Comment") or "",
        "date": _text(root, "Record2/Date") or "",
        "origin": _text(root, "Record1/Axes/Origin"),
    }


def _verify_checksums(
    zf: zipfile.ZipFile,
    by_name: dict[str, zipfile.ZipInfo],
    main_info: zipfile.ZipInfo,
    xml_bytes: bytes,
    data_bytes: bytes | None,
    valid_bytes: bytes | None,
    hdr: dict[str, Any],
    label: str,
) -> bool:
    """Check the point data's and the valid-points map's MD5 (and md5checksum.hex when present).
    Return True if the point data's MD5 was checked (inline points have none; main.xml's covers them)."""
    def check(what: str, blob: bytes | None, declared: str | None) -> bool:
        if not declared or blob is None:
            return False
        actual = hashlib.md5(blob).hexdigest()
        if declared.lower() != actual:
            raise X3PChecksumError(
                f"{what} of {label} has MD5 {actual} but main.xml declares {declared.lower()}; the file was "
                "altered or corrupted after export - obtain a fresh copy (or pass verify_md5=False to read it "
                "anyway at your own risk)"
            )
        return True

    check("valid-points map", valid_bytes, hdr["md5_valid"])
    checked = check("point data", data_bytes, hdr["md5_data"])

    folder = posixpath.dirname(main_info.filename)
    hex_name = hdr["checksum_file"] or "md5checksum.hex"
    hex_path = posixpath.normpath(posixpath.join(folder, hex_name)) if folder else hex_name
    hex_info = by_name.get(hex_path) or by_name.get(hex_name)
    if hex_info is not None and 0 < hex_info.file_size <= _MAX_HEX_BYTES:
        text = _read_member(zf, hex_info, label).decode("ascii", "replace")
        m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
        if m:
            actual = hashlib.md5(xml_bytes).hexdigest()
            if m.group(1).lower() != actual:
                raise X3PChecksumError(
                    f"main.xml of {label} has MD5 {actual} but {hex_info.filename} declares "
                    f"{m.group(1).lower()}; the header was edited after export - obtain a fresh copy (or "
                    "pass verify_md5=False to read it anyway at your own risk)"
                )
    return checked


#: A float height of this magnitude or more, in the file's units, is a no-data sentinel (e.g. +-FLT_MAX,
#: 1e38): no surface is 1e30 m or um high.
_FLOAT_SENTINEL = 1e30


def _sentinels(raw: np.ndarray, dtype: np.dtype, use_int_extremes: bool) -> np.ndarray:
    """Points whose stored value is a no-data convention rather than a height: for floats a magnitude
    of at least :data:`_FLOAT_SENTINEL`; for integers without a valid-points map the two extremes of
    the type (-32768 / 32767 for int16; instruments write them for no data or a clipped reading)."""
    if dtype.kind == "i":
        if not use_int_extremes:
            return np.zeros(raw.shape, bool)
        info = np.iinfo(dtype)
        return (raw == info.min) | (raw == info.max)
    with np.errstate(invalid="ignore"):
        return np.abs(raw) >= _FLOAT_SENTINEL


def _decode_points(data: bytes, dtype: np.dtype, hdr: dict[str, Any], sx: int, sy: int) -> tuple[np.ndarray, int]:
    """Heights in file units (NaN = missing) and how many points were no-data sentinels."""
    raw = np.frombuffer(data, dtype=dtype).reshape(sy, sx)
    return _to_heights(raw, dtype, hdr)


def _to_heights(raw: np.ndarray, dtype: np.dtype, hdr: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Stored values (as read, shape (sy, sx)) -> float64 heights in file units, NaN where missing."""
    sentinel = _sentinels(raw, dtype, use_int_extremes=not hdr["valid_link"])
    with np.errstate(invalid="ignore", over="ignore"):
        z = raw.astype(np.float64)  # always a fresh, writable copy
        if dtype.kind == "i":
            inc, off = hdr["z_increment"], hdr["z_offset"]
            if inc != 1.0:
                z *= inc
            if off != 0.0:
                z += off
    z[sentinel] = np.nan
    # Signalling NaN (R's NA), other NaN payloads and +-Inf -> quiet NaN (in place: no extra copy).
    z[~np.isfinite(z)] = np.nan
    return z, int(sentinel.sum())


def _clean(x: float) -> float:
    """Round away floating-point noise from a unit conversion (6.25e-06 * 1e6 -> 6.25)."""
    return float(f"{x:.12g}")


# --------------------------------------------------------------------------- x3p writing
def write_x3p(
    surface: Surface,
    path: PathLike,
    *,
    dtype: str = "float64",
    creator: str = "ballistic",
    comment: str = "",
) -> None:
    """Write a Surface as an ISO 5436-2 ``.x3p`` file in metres.

    Parameters
    ----------
    surface : Surface
        Heights in micrometres, shape (ny, nx); NaN is written as NaN.
    path : str or os.PathLike
        Destination. Written atomically: a temporary file in the same directory is
        written, fsynced and then renamed over ``path``.
    dtype : {"float64", "float32"}, optional
        Storage type of the heights (x3p DataType D or F).
    creator : str, optional
        Text for ``Record2/Creator``.
    comment : str, optional
        Text for ``Record2/Comment``.

    Notes
    -----
    The archive holds ``main.xml`` at its root, ``bindata/data.bin`` (little-endian,
    x fastest) with its MD5 in ``MD5ChecksumPointData``, and ``md5checksum.hex``
    holding the MD5 of ``main.xml``. Spacing and heights are stored in metres, so a
    spacing of 1000 um or more is refused: it would be read back as micrometres.
    Instrument fields come from ``surface.meta`` ("manufacturer", "model") when present.
    """
    try:
        letter = _WRITE_DTYPES.get(np.dtype(dtype).name)
    except TypeError:
        letter = None
    if letter is None:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if not isinstance(surface, Surface):
        raise TypeError(f"write_x3p expects a Surface, got {type(surface).__name__}")
    if surface.spacing_um >= 1e3:
        raise ValueError(
            f"spacing_um={surface.spacing_um} um (>= 1 mm) cannot be written unambiguously: readers take x "
            "increments >= 1e-3 as micrometres; resample to a finer grid first"
        )
    ny, nx = surface.shape
    store = np.dtype("<f8") if letter == "D" else np.dtype("<f4")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.ascontiguousarray(surface.heights / 1e6, dtype=store).tobytes()
    data_md5 = hashlib.md5(data).hexdigest()

    inc = repr(float(surface.spacing_um) / 1e6)  # division by an exact 1e6: 6.25 -> 6.25e-06
    meta = surface.meta or {}
    manufacturer = str(meta.get("manufacturer") or "unknown")
    model = str(meta.get("model") or "unknown")
    now = _dt.datetime.now().replace(microsecond=0).isoformat()
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<p:ISO5436_2 xmlns:p="http://www.opengps.eu/2008/ISO5436_2" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.opengps.eu/2008/ISO5436_2 http://www.opengps.eu/2008/ISO5436_2/ISO5436_2.xsd">
  <Record1>
    <Revision>ISO5436 - 2000</Revision>
    <FeatureType>SUR</FeatureType>
    <Axes>
      <CX>
        <AxisType>I</AxisType>
        <DataType>D</DataType>
        <Increment>{inc}</Increment>
        <Offset>0</Offset>
      </CX>
      <CY>
        <AxisType>I</AxisType>
        <DataType>D</DataType>
        <Increment>{inc}</Increment>
        <Offset>0</Offset>
      </CY>
      <CZ>
        <AxisType>A</AxisType>
        <DataType>{letter}</DataType>
        <Increment>1</Increment>
        <Offset>0</Offset>
      </CZ>
    </Axes>
  </Record1>
  <Record2>
    <Date>{now}</Date>
    <Creator>{_xml_text(creator)}</Creator>
    <Instrument>
      <Manufacturer>{_xml_text(manufacturer)}</Manufacturer>
      <Model>{_xml_text(model)}</Model>
      <Serial>not available</Serial>
      <Version>not available</Version>
    </Instrument>
    <CalibrationDate>{now}</CalibrationDate>
    <ProbingSystem>
      <Type>Software</Type>
      <Identification>ballistic</Identification>
    </ProbingSystem>
    <Comment>{_xml_text(comment)}</Comment>
  </Record2>
  <Record3>
    <MatrixDimension>
      <SizeX>{nx}</SizeX>
      <SizeY>{ny}</SizeY>
      <SizeZ>1</SizeZ>
    </MatrixDimension>
    <DataLink>
      <PointDataLink>bindata/data.bin</PointDataLink>
      <MD5ChecksumPointData>{data_md5}</MD5ChecksumPointData>
    </DataLink>
  </Record3>
  <Record4>
    <ChecksumFile>md5checksum.hex</ChecksumFile>
  </Record4>
</p:ISO5436_2>
""".encode("utf-8")
    hex_text = f"{hashlib.md5(xml).hexdigest()} *main.xml\n".encode("ascii")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("main.xml", xml)
        zf.writestr("bindata/data.bin", data)
        zf.writestr("md5checksum.hex", hex_text)
    atomic_write_bytes(path, buf.getvalue())


def _xml_text(s: str) -> str:
    """Escape text for XML and drop characters XML 1.0 cannot hold."""
    s = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", str(s))
    return _xml_escape(s)
