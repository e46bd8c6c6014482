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
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="show what would be issued; issue nothing")
        ] = False,
        fmt: FormatOption = OutputFormat.table,
    ) -> None:
        """Issue the invoices of a billing period."""
        with stderr_console().status(f"bill run for {period}..."):
            # A bill run over 100,000 customers takes minutes.
            report = client(ctx).post(
                "/api/v1/bill-runs", {"period": period, "dry_run": dry_run}, wait=3600
            )
        if fmt is OutputFormat.json:
            print_json(report)
            return
        failed = report.get("failed", {})
        if report.get("dry_run"):
            print(
                f"period {report['period']} (dry run, nothing issued): would issue"
                f" {len(report['previews'])}, skipped {len(report['skipped'])},"
                f" failed {len(failed)}"
            )
            for preview in report["previews"]:
                print(
                    f"  would issue {preview['customer_id']}: {preview['total']}"
                    f" {preview['currency']} ({preview['lines']} lines,"
                    f" tax {preview['tax_total']})"
                )
        else:
            print(
                f"period {report['period']}: issued {len(report['issued'])}, "
                f"already issued {len(report['already_issued'])}, "
                f"skipped {len(report['skipped'])}, failed {len(failed)}"
            )
            for number in report["issued"]:
                print(f"  issued {number}")
        for customer, why in report["skipped"].items():
            print(f"  skipped {customer}: {why}")
        for customer, why in failed.items():
            print(f"  FAILED {customer}: {why}")
