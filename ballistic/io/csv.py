"""The one per-row CSV writer of the library (benchmark pair and bullet tables)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

__all__ = ["write_rows_csv"]


def write_rows_csv(rows: list[dict], path: str | Path, *, columns: Sequence[str] | None = None) -> Path:
    """Write rows (dicts) as CSV with a header; returns the path.

    Parameters
    ----------
    rows : list of dict
        One dict per row; without ``columns`` all rows have the keys of the first.
    path : str or os.PathLike
        Destination file (overwritten).
    columns : sequence of str, optional, keyword-only
        The columns, in order; keys of a row that are not listed are left out.
        Default: the keys of the first row.
    """
    path = Path(path)
    with open(path, "w", newline="") as fh:
        if columns is None:
            w = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        else:
            w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path
