"""Reading 2D images (ring-light photographs of cartridge cases) as intensity surfaces.

The reader treats its input as untrusted: the pixel count declared in the header is
checked against an explicit limit before anything is decoded, and each kind of
failure raises a typed exception (:mod:`ballistic.errors`) whose message says what is
wrong and how to fix it.
"""
from __future__ import annotations

import threading
import warnings
from typing import IO, Any, Union

import numpy as np

from ballistic.errors import ImageFormatError, ImageLimitError
from ballistic.io.source import PathLike, open_source
from ballistic.surface import Surface

__all__ = ["read_image"]

_PIL_LOCK = threading.Lock()


def read_image(
    source: Union[PathLike, bytes, bytearray, memoryview, IO[bytes]],
    *,
    max_pixels: int = 40_000_000,
    spacing_um: float | None = None,
) -> Surface:
    """Read a 2D grayscale (or colour) PNG or TIFF image as an intensity Surface.

    Parameters
    ----------
    source : str, os.PathLike, bytes or binary file object
        The image file.
    max_pixels : int, optional
        Largest accepted width * height, checked from the header before decoding.
    spacing_um : float, optional
        Pixel spacing in micrometres if known. When omitted the spacing is 1.0 and
        ``meta["spacing_calibrated"]`` is False (a photo has no calibrated scale).

    Returns
    -------
    Surface
        ``heights`` : float64, shape (height, width), intensities scaled to [0, 1]
        (8-bit divided by 255, 16-bit by 65535; colour converted to luminance with
        ITU-R 601 weights 0.299, 0.587, 0.114).
        ``meta`` : ``kind`` ("image2d"), ``source``, ``format``, ``mode``,
        ``bit_depth``, ``spacing_calibrated``.

    Raises
    ------
    ImageLimitError
        The image has more than ``max_pixels`` pixels (nothing is decoded).
    ImageFormatError
        Not a decodable PNG/TIFF, truncated, or a pixel format that is not an 8/16-bit
        intensity (e.g. a float TIFF height map).
    FileNotFoundError
        ``source`` is a path that does not exist.
    """
    from PIL import Image

    if spacing_um is not None and not (np.isfinite(spacing_um) and spacing_um > 0):
        raise ValueError(f"spacing_um must be a positive number of micrometres, got {spacing_um!r}")
    name, fileobj, owned = open_source(source)
    label = repr(name) if name else "the image data"
    try:
        # Pillow refuses images above 2 * MAX_IMAGE_PIXELS at open(); lift that only when the
        # caller explicitly allows more, and restore it straight after.
        need_lift = Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                if need_lift:
                    with _PIL_LOCK:
                        old = Image.MAX_IMAGE_PIXELS
                        Image.MAX_IMAGE_PIXELS = int(max_pixels)
                        try:
                            im = Image.open(fileobj, formats=("PNG", "TIFF"))
                        finally:
                            Image.MAX_IMAGE_PIXELS = old
                else:
                    im = Image.open(fileobj, formats=("PNG", "TIFF"))
        except Image.DecompressionBombError as exc:
            raise ImageLimitError(
                f"{label} is too large to decode safely ({exc}); pass max_pixels=... above its pixel count if "
                "the image is genuine",
                limit="max_pixels", maximum=max_pixels,
            ) from exc
        except Exception as exc:  # Pillow raises many types on hostile input; all mean "unreadable"
            raise ImageFormatError(
                f"{label} is not a readable PNG or TIFF image ({type(exc).__name__}: {exc}); convert it to an "
                "8/16-bit grayscale PNG or TIFF"
            ) from exc

        with im:
            w, h = im.size
            npx = int(w) * int(h)
            if npx > max_pixels:
                raise ImageLimitError(
                    f"{label} is {w}x{h} = {npx:.3g} pixels, more than max_pixels={max_pixels:.3g}; pass "
                    f"max_pixels={npx} if the image is genuine, or downsample it first",
                    limit="max_pixels", value=npx, maximum=max_pixels, shape=(h, w),
                )
            if npx == 0:
                raise ImageFormatError(f"{label} has an empty size {w}x{h}; it holds no image")
            try:
                arr, bit_depth = _image_to_intensity(im, label)
                n_frames = int(getattr(im, "n_frames", 1) or 1)
            except (ImageFormatError, ImageLimitError):
                raise
            except Exception as exc:  # Pillow raises many types on hostile input; all mean "corrupt"
                raise ImageFormatError(
                    f"{label} cannot be decoded ({type(exc).__name__}: {exc}); the file is truncated or "
                    "corrupt - copy or export it again"
                ) from exc
            meta: dict[str, Any] = {
                "kind": "image2d",
                "source": name,
                "format": im.format,
                "mode": im.mode,
                "bit_depth": bit_depth,
                "spacing_calibrated": spacing_um is not None,
            }
            if n_frames > 1:
                meta["n_frames"] = n_frames  # only the first frame is read
    finally:
        if owned:
            fileobj.close()
    return Surface(heights=arr, spacing_um=1.0 if spacing_um is None else float(spacing_um), meta=meta)


def _image_to_intensity(im: Any, label: str) -> tuple[np.ndarray, int]:
    """Decode a Pillow image to float64 intensities in [0, 1]; return (array, bit depth)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float64) / 65535.0, 16
    if mode == "I":
        bits = 16 if im.format == "PNG" else _tiff_bits(im)
        if bits not in (16, 32):
            bits = 32
        arr = np.asarray(im).astype(np.float64)
        if bits == 32:
            raise ImageFormatError(
                f"{label} is a 32-bit integer image; only 8- and 16-bit intensity images are supported - "
                "convert it to 16-bit"
            )
        return arr / 65535.0, 16
    if mode == "L":
        return np.asarray(im).astype(np.float64) / 255.0, 8
    if mode == "1":
        return np.asarray(im).astype(np.float64), 1
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0)).astype(np.float64) / 255.0, 8
    if mode in ("F",):
        raise ImageFormatError(
            f"{label} is a floating-point image, not an 8/16-bit intensity image; if it is a height map, "
            "load it with tifffile and build a Surface(heights, spacing_um) directly"
        )
    # P, RGB, RGBA, CMYK, YCbCr, LAB, HSV, ...: luminance from 8-bit RGB.
    try:
        rgb = np.asarray(im.convert("RGB")).astype(np.float64)
    except ValueError as exc:
        raise ImageFormatError(
            f"{label} has pixel mode {mode!r}, which cannot be converted to grayscale; convert it to an "
            "8/16-bit grayscale PNG or TIFF"
        ) from exc
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    return np.clip(lum / 255.0, 0.0, 1.0), 8


def _tiff_bits(im: Any) -> int:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return 0
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else 0
    try:
        return int(bits or 0)
    except (TypeError, ValueError):
        return 0
