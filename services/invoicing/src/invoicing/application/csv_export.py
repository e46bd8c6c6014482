"""CSV for accountants and spreadsheets: RFC 4180 (CRLF line ends), a header row first, and
no cell a spreadsheet would run as a formula."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: What a spreadsheet reads as the start of a formula (CSV injection): such a text is quoted
#: with a leading "'".
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


#: A plain decimal number (an amount, possibly negative): never quoted.
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def safe_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text; numbers (and amounts written as text, "-6.00"
    included) and other values unchanged."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_STARTS)
        and not _NUMBER.fullmatch(value)
    ):
        return f"'{value}"
    return value


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([safe_cell(row.get(column, "")) for column in columns])
    return out.getvalue()
