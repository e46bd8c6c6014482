"""`ispbill bill-run`: issue the invoices of a billing period."""

from __future__ import annotations

from typing import Annotated

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_json, stderr_console
from ispbill_app.commands.state import client


def register(app: typer.Typer) -> None:
    @app.command("bill-run")
    def bill_run(
        ctx: typer.Context,
        period: Annotated[str, typer.Option(help="YYYY-MM")],
        fmt: FormatOption = OutputFormat.table,
    ) -> None:
        """Issue the invoices of a billing period."""
        with stderr_console().status(f"bill run for {period}..."):
            report = client(ctx).post("/api/v1/bill-runs", {"period": period})
        if fmt is OutputFormat.json:
            print_json(report)
            return
        print(
            f"period {report['period']}: issued {len(report['issued'])}, "
            f"already issued {len(report['already_issued'])}, "
            f"skipped {len(report['skipped'])}"
        )
        for number in report["issued"]:
            print(f"  issued {number}")
        for customer, why in report["skipped"].items():
            print(f"  skipped {customer}: {why}")
