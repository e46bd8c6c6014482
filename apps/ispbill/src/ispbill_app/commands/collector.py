"""`ispbill collector`: the RADIUS accounting collector."""

from __future__ import annotations

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_data
from ispbill_app.commands.state import client

app = typer.Typer(help="the RADIUS accounting collector", no_args_is_help=True)


@app.command("drops")
def drops(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Dropped accounting per source address: unregistered routers, bad secrets."""
    found = client(ctx).get("/api/v1/collector/drops")
    if fmt is OutputFormat.json:
        print_data(found, fmt)
        return
    rows = [
        {
            "source": source,
            "nas_id": entry["nas_id"] or "(not registered)",
            "reasons": ", ".join(
                f"{r.removeprefix('dropped_')} {n}" for r, n in entry["reasons"].items()
            ),
            "last_seen": entry["last_seen"],
        }
        for source, entry in found.items()
    ]
    print_data(
        rows,
        fmt,
        [("SOURCE", "source"), ("NAS", "nas_id"), ("DROPPED", "reasons"), ("LAST", "last_seen")],
    )
