"""What the readers accept as a source: a path, bytes or a seekable binary file object."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Union

__all__ = ["PathLike", "Source", "open_source"]

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, bytes, bytearray, memoryview, IO[bytes]]


def open_source(source: Source) -> tuple[str | None, IO[bytes], bool]:
    """Return (display name, binary file object, whether we must close it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return None, io.BytesIO(bytes(source)), True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.name, open(path, "rb"), True  # FileNotFoundError propagates as is
    if hasattr(source, "read") and hasattr(source, "seek"):
        raw_name = getattr(source, "name", None)
        name = os.path.basename(raw_name) if isinstance(raw_name, str) else None
        return name, source, False  # type: ignore[return-value]
    raise TypeError(
        f"expected a path, bytes or a seekable binary file object, got {type(source).__name__}"
    )
