"""`ispbill usage`: usage as rating sees it."""

from __future__ import annotations

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_data
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
