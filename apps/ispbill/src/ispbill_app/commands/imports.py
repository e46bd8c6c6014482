"""`ispbill import`: another system's history (FreeRADIUS detail files) and records (a
spreadsheet of customers and subscriptions)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ispbill_app.client import ApiClient
from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    cell,
    count,
    fail,
    new_table,
    print_json,
    stdout_console,
)
from ispbill_app.commands.state import client, state

app = typer.Typer(help="import another system's history and records", no_args_is_help=True)

DETAIL_IMPORT_PATH = "/api/v1/collector/imports/radius-detail"
CUSTOMER_IMPORT_PATH = "/api/v1/imports/customers"
#: Per reason, how many skipped records are named on stderr (all of them with --verbose).
SHOWN_PER_REASON = 20
#: The agreed spreadsheet columns (docs: apps/ispbill/README.md).
CUSTOMER_COLUMNS = (
    "customer_id",
    "name",
    "email",
    "phone",
    "tax_region",
    "billing_address",
    "service_address",
    "account_type",
    "tags",
    "subscription_id",
    "plan_id",
    "radius_username",
    "started_on",
)
REQUIRED_COLUMNS = ("customer_id", "name", "email", "tax_region")


def _progress() -> Progress:
    """A bar on stderr, shown on a terminal only: piped output stays the report alone."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not sys.stderr.isatty(),
        transient=False,
    )


# --- FreeRADIUS detail files -------------------------------------------------------------


def _detail_files(paths: list[Path]) -> list[Path]:
    """The files named, and under each directory every detail* file (FreeRADIUS's radacct
    layout: <client address>/detail-YYYYMMDD), in name order, so rotated files go oldest first.
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("detail*") if p.is_file())
        else:
            found.append(path)
    return found


class _DetailTotals:
    def __init__(self, verbose: bool, dry_run: bool) -> None:
        self.verbose = verbose
        self.summary: dict[str, Any] = {
            "files": 0,
            "records": 0,
            "malformed": 0,
            "imported": 0,
            "repeated": 0,
            "skipped": {},
            "unknown_nas": {},
            "dry_run": dry_run,
        }
        self._shown: dict[str, int] = {}

    def skipped(self, reason: str, where: str, why: str) -> None:
        shown = self._shown.get(reason, 0)
        self._shown[reason] = shown + 1
        if self.verbose or shown < SHOWN_PER_REASON:
            print(f"{where}: skipped ({reason}): {why}", file=sys.stderr)
        elif shown == SHOWN_PER_REASON:
            print(f"(more {reason} not shown; --verbose shows them all)", file=sys.stderr)

    def add(self, result: dict[str, Any]) -> None:
        s = self.summary
        s["imported"] += result["imported"]
        s["repeated"] += result["repeated"]
        for reason, n in result["skipped"].items():
            s["skipped"][reason] = s["skipped"].get(reason, 0) + n
        for address, n in result["unknown_nas"].items():
            s["unknown_nas"][address] = s["unknown_nas"].get(address, 0) + n
        for record in result["skipped_records"]:
            self.skipped(record["reason"], record["ref"], record["detail"])


@app.command("radius-detail")
def radius_detail(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", show_default=False)],
    nas: Annotated[
        str | None,
        typer.Option(help="attribute every record to this NAS (id or address), whatever it says"),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            help="IANA zone the FreeRADIUS server ran in; needed when its dates are not UTC"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="screen only, record nothing")] = False,
    batch_size: Annotated[int, typer.Option(help="records per request")] = 1000,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """FreeRADIUS detail files (plain or gzip; a directory: every detail* file under it).

    The files are read here and the records sent in batches; the server screens and records
    them. Every batch is one idempotent publish, so an import that stops half-way (Ctrl-C, a
    lost connection, a bus that was down) is finished by running the same command again.
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from usage_collector.adapters.detail_file import (
        LocalTimeWithoutZone,
        MalformedDetailRecord,
        read_detail_file,
    )
    from usage_collector.entrypoints.http import encode_imported_request

    if batch_size < 1:
        raise fail("--batch-size must be at least 1")
    try:
        zone = ZoneInfo(timezone) if timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"unknown time zone {timezone!r}") from None
    api = client(ctx)
    totals = _DetailTotals(state(ctx).verbose, dry_run)
    verb = "would import" if dry_run else "imported"

    def send(batch: list[dict[str, Any]]) -> None:
        body = {"records": batch, "nas": nas, "dry_run": dry_run}
        totals.add(api.post(DETAIL_IMPORT_PATH, body))
        batch.clear()

    paths = _detail_files(files)
    with _progress() as progress:
        task = progress.add_task("files", total=len(paths))
        for path in paths:
            totals.summary["files"] += 1
            batch: list[dict[str, Any]] = []
            read = 0
            try:
                for item in read_detail_file(path, timezone=zone):
                    read += 1
                    if isinstance(item, MalformedDetailRecord):
                        totals.summary["malformed"] += 1
                        totals.skipped("malformed", item.ref, item.reason)
                        continue
                    batch.append(
                        encode_imported_request(
                            item.ref, item.attributes, item.nas_addresses, item.received_at
                        )
                    )
                    if len(batch) >= batch_size:
                        send(batch)
                        print(f"{path}: {read} records read so far", file=sys.stderr)
                if batch:
                    send(batch)
            except LocalTimeWithoutZone as exc:
                raise fail(str(exc)) from None
            except OSError as exc:
                raise fail(f"cannot read {path}: {exc}") from None
            except KeyboardInterrupt:
                raise fail(
                    f"interrupted in {path}; the same command finishes the import"
                    " (what is already recorded is not counted again)",
                    130,
                ) from None
            totals.summary["records"] += read
            print(f"{path}: {count(read, 'record')} read", file=sys.stderr)
            progress.advance(task)

    summary = totals.summary
    if fmt is OutputFormat.json:
        print_json(summary)
        return
    skipped = sum(summary["skipped"].values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["skipped"].items()))
    print(
        f"{count(summary['records'], 'record')} in {count(summary['files'], 'file')}: "
        f"{verb} {summary['imported']}, repeated {summary['repeated']}, "
        f"malformed {summary['malformed']}, skipped {skipped}"
        + (f" ({reasons})" if reasons else "")
    )
    for address, n in sorted(summary["unknown_nas"].items()):
        print(
            f"  no NAS registered at {address}: {count(n, 'record')}"
            " (register the NAS, or name it with --nas)"
        )


# --- customers spreadsheet ---------------------------------------------------------------


def read_customer_rows(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of a CSV file as the import endpoint takes them (row: its number as a
    spreadsheet shows it, the header being row 1), and the rows refused here already: a
    subscription id or RADIUS username twice in the file, a customer id twice with other
    details. The server checks everything else (and duplicates again, within a request)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} in the header line")
        unknown = [h for h in header if h not in CUSTOMER_COLUMNS]
        if unknown:
            raise ValueError(
                f"{path}: unknown column {', '.join(unknown)}; the columns are"
                f" {','.join(CUSTOMER_COLUMNS)}"
            )
        reader.fieldnames = header
        rows: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        customers: dict[str, tuple[int, tuple[str, ...]]] = {}
        firsts: dict[tuple[str, str], int] = {}
        # Numbered as a spreadsheet shows them: the header is row 1.
        for line, record in enumerate(reader, start=2):
            extra = record.pop(None, None)  # type: ignore[call-overload]
            row = {k: (v or "") for k, v in record.items() if k in CUSTOMER_COLUMNS}
            errors = [f"{len(extra)} values more than the header has"] if extra else []
            details = tuple(row.get(c, "") for c in CUSTOMER_COLUMNS[:9])
            first = customers.setdefault(row.get("customer_id", ""), (line, details))
            if row.get("customer_id") and first[1] != details:
                errors.append(
                    f"duplicate customer_id {row['customer_id']!r}: row {first[0]} has it with"
                    " other details"
                )
            for column in ("subscription_id", "radius_username"):
                value = (row.get(column) or "").strip()
                if value:
                    seen = firsts.setdefault((column, value), line)
                    if seen != line:
                        errors.append(f"duplicate {column} {value!r}: row {seen} has it too")
            if errors:
                refused.append(
                    {
                        "row": line,
                        "status": "invalid",
                        "customer_id": row.get("customer_id", ""),
                        "errors": errors,
                        "warnings": [],
                    }
                )
            else:
                rows.append({"row": line, **row})
    return rows, refused


@app.command("customers")
def customers(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="UTF-8 CSV with a header")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check every row, record nothing")
    ] = False,
    chunk_size: Annotated[int, typer.Option(help="rows per request (1-1000)")] = 500,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A spreadsheet of customers and their subscriptions, one row each.

    Columns: customer_id,name,email,phone,tax_region,billing_address,service_address,
    account_type,tags (";"-separated),subscription_id,plan_id,radius_username,started_on
    (YYYY-MM-DD); the subscription columns may be empty. Every row is checked and reported
    (row number and reason); the valid ones are recorded. Running the same file again records
    nothing: every row is "unchanged". Exit code 1 when some row is invalid.
    """
    if not 1 <= chunk_size <= 1000:
        raise fail("--chunk-size must be 1 to 1000")
    try:
        rows, results = read_customer_rows(file)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise fail(f"cannot read {file}: {exc}") from None
    results += send_customer_rows(client(ctx), rows, dry_run=dry_run, chunk_size=chunk_size)
    results.sort(key=lambda r: r["row"])
    totals = {
        s: sum(r["status"] == s for r in results) for s in ("created", "unchanged", "invalid")
    }
    if fmt is OutputFormat.json:
        print_json({"file": str(file), "dry_run": dry_run, **totals, "results": results})
    else:
        _report_customer_import(results, totals, dry_run)
    if totals["invalid"]:
        raise typer.Exit(1)


def send_customer_rows(
    api: ApiClient, rows: list[dict[str, Any]], *, dry_run: bool, chunk_size: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with _progress() as progress:
        task = progress.add_task("rows", total=len(rows))
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start : start + chunk_size]
            answer = api.post(CUSTOMER_IMPORT_PATH, chunk, dry_run="true" if dry_run else "false")
            results += answer["results"]
            progress.advance(task, len(chunk))
    return results


def _report_customer_import(
    results: list[dict[str, Any]], totals: dict[str, int], dry_run: bool
) -> None:
    """Every invalid row with its reasons; warnings (columns this server cannot record yet)
    once each with the number of rows, not once per row."""
    invalid = [r for r in results if r["errors"]]
    if invalid:
        table = new_table(["ROW", "CUSTOMER", "REASON"], right=frozenset({"ROW"}))
        for r in invalid:
            table.add_row(cell(r["row"]), cell(r["customer_id"]), cell("; ".join(r["errors"])))
        stdout_console().print(table)
    warnings: dict[str, int] = {}
    for r in results:
        for warning in r["warnings"]:
            warnings[warning] = warnings.get(warning, 0) + 1
    for warning, n in sorted(warnings.items()):
        print(f"warning: {warning} ({count(n, 'row')})", file=sys.stderr)
    created = "would create" if dry_run else "created"
    print(
        f"{count(len(results), 'row')}: {created} {totals['created']},"
        f" unchanged {totals['unchanged']}, invalid {totals['invalid']}"
    )
