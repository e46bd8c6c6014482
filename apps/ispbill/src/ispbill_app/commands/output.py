"""How commands show what the server answered: JSON for scripts, Rich tables for people."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


#: `--format json` (or `--output json`): the server's JSON, unchanged, for scripts.
FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", "--output", help="table for people, json for scripts"),
]


def stdout_console() -> Console:
    """Made per call, on the sys.stdout of the moment (tests capture it). Piped output is not
    wrapped at 80 columns: a script reads whole lines; a terminal wraps cells to its width."""
    terminal = sys.stdout.isatty()
    width = None if terminal else int(os.environ.get("ISPBILL_TABLE_WIDTH", "100000"))
    return Console(file=sys.stdout, width=width, highlight=False, soft_wrap=not terminal)


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def dig(row: Any, key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


def cell(value: Any) -> Text:
    """Data as text, never as Rich markup (a name may hold "[bold]")."""
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    elif value is None:
        value = ""
    elif isinstance(value, bool):
        value = "true" if value else "false"
    return Text(str(value))


def new_table(headers: list[str], *, right: frozenset[str] = frozenset()) -> Table:
    """A plain table: columns two spaces apart, no borders (greppable when piped); a cell
    that does not fit wraps onto more lines, it is never cut short with an ellipsis."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(
            header, overflow="fold", no_wrap=False, justify="right" if header in right else "left"
        )
    return table


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    table = new_table([h for h, _ in columns])
    for row in rows:
        table.add_row(*(cell(dig(row, key)) for _, key in columns))
    stdout_console().print(table)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def print_data(data: Any, fmt: OutputFormat, columns: list[tuple[str, str]] | None = None) -> None:
    if fmt is OutputFormat.json or columns is None:
        print_json(data)
        return
    print_table(data if isinstance(data, list) else [data], columns)


def print_record(data: dict[str, Any], fmt: OutputFormat, fields: list[tuple[str, str]]) -> None:
    """One record, a field per line (`show`)."""
    if fmt is OutputFormat.json:
        print_json(data)
        return
    table = new_table(["FIELD", "VALUE"])
    table.show_header = False
    for label, key in fields:
        table.add_row(Text(label, style="bold"), cell(dig(data, key)))
    stdout_console().print(table)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say why on stderr and give the exit code to raise: `raise fail(...)`."""
    print(f"ispbill: {message}", file=sys.stderr)
    return typer.Exit(code)
