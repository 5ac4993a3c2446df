"""Reading and writing surfaces: files in, :class:`~ballistic.surface.Surface` out.

Modules
-------
x3p
    ``read_x3p`` / ``write_x3p``: ISO 25178-72 ``.x3p`` topographies (size limits before
    allocation, MD5, metre/um units, R's NA).
image
    ``read_image``: 8/16-bit PNG or TIFF photographs as intensity surfaces.
source
    What the readers accept (a path, bytes, a binary file object).
atomic
    ``atomic_write_bytes``: the one atomic, durable file writer of the library.
grid
    ``resample_grid``: heights moved to another grid, mask-aware (the one masked resize: square
    pixels for the x3p reader, new spacings for ``preprocess.filters.resample``).
csv
    ``write_rows_csv`` / ``csv_text``: the one CSV writer of the project (benchmark tables, the
    service's i2 export), formula-safe (OWASP CSV injection), numbers kept numeric.

:func:`read_surface` (here) chooses the reader from the file suffix; the readers are
imported when first used, so ``import ballistic.io`` stays light.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ballistic.errors import InputError
from ballistic.io.source import PathLike
from ballistic.surface import Surface

__all__ = ["read_surface"]

_SUFFIX_READERS = {".x3p": "x3p", ".png": "image", ".tif": "image", ".tiff": "image"}


def read_surface(path: PathLike, **kwargs: Any) -> Surface:
    """Read a topography or image, choosing the reader from the file suffix.

    Parameters
    ----------
    path : str or os.PathLike
        ``.x3p`` -> :func:`~ballistic.io.x3p.read_x3p`; ``.png``, ``.tif``, ``.tiff`` ->
        :func:`~ballistic.io.image.read_image` (case-insensitive).
    **kwargs
        Keyword arguments passed to the chosen reader.

    Returns
    -------
    Surface

    Raises
    ------
    InputError
        Unsupported suffix (plus whatever the chosen reader raises).
    """
    p = Path(path)
    kind = _SUFFIX_READERS.get(p.suffix.lower())
    if kind == "x3p":
        from ballistic.io.x3p import read_x3p
        return read_x3p(p, **kwargs)
    if kind == "image":
        from ballistic.io.image import read_image
        return read_image(p, **kwargs)
    raise InputError(
        f"cannot read {p.name!r}: unsupported suffix {p.suffix or '(none)'!r}; supported are "
        f"{', '.join(sorted(_SUFFIX_READERS))} - convert the file or call read_x3p/read_image directly"
    )
