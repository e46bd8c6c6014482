"""`ispbill usage`: usage as rating sees it."""

from __future__ import annotations

from typing import Annotated

import typer

from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    print_data,
    print_json,
    print_table,
    stderr_console,
)
from ispbill_app.commands.state import client

app = typer.Typer(help="usage as rating sees it", no_args_is_help=True)

UNMATCHED_COLUMNS = [
    ("USERNAME", "username"),
    ("RECORDS", "records"),
    ("OCTETS", "total_octets"),
    ("FIRST", "first_seen"),
    ("LAST", "last_seen"),
    ("NAS", "nas_ids"),
    ("BEFORE-SUBSCRIPTION", "subscription_id"),
]


@app.command("unmatched")
def unmatched(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Usage of RADIUS usernames that no subscription has, largest first."""
    print_data(client(ctx).get("/api/v1/usage/unmatched"), fmt, UNMATCHED_COLUMNS)


DISCREPANCY_COLUMNS = [
    ("SUBSCRIPTION", "subscription_id"),
    ("CUSTOMER", "customer_id"),
    ("PERIOD", "period"),
    ("RADIUS-OCTETS", "radius_octets"),
    ("ROUTER-OCTETS", "router_octets"),
    ("DIFFERENCE", "difference_octets"),
    ("DIFF-%", "difference_pct"),
    ("FLAGGED", "flagged"),
    ("BILLED-BY", "billed_by"),
]


@app.command("discrepancies")
def discrepancies(
    ctx: typer.Context,
    period: Annotated[
        str | None, typer.Option(help="billing period YYYY-MM (default: every period)")
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="flag differences above this percentage of the RADIUS figure (default: the"
            " server's, 5)",
            min=0,
            max=1000,
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="every subscriber both sources measured, not only flagged")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Subscribers measured by both RADIUS accounting and router counters: each source's
    bytes per period, the difference (router minus RADIUS) and its percentage of the RADIUS
    figure, flagged above the threshold."""
    report = client(ctx).get(
        "/api/v1/usage/discrepancies",
        period=period,
        threshold=threshold,
        all="true" if show_all else None,
    )
    if as_json or fmt is OutputFormat.json:
        print_json(report)
        return
    print_table(report["discrepancies"], DISCREPANCY_COLUMNS)
    stderr_console().print(
        f"{report['flagged']} of {report['compared']} compared flagged above"
        f" {report['threshold_pct']:g} %"
        + ("" if report["period"] is None else f" in {report['period']}")
    )
