"""`ispbill reports`: figures for the accountant and the tax authority."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated
from urllib.parse import urlencode

import typer

from ispbill_app.commands.output import print_json, print_table
from ispbill_app.commands.state import client

app = typer.Typer(help="figures for the accountant and the tax authority", no_args_is_help=True)


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


TAX_COLUMNS = [
    ("CURRENCY", "currency"),
    ("REGION", "customer_region"),
    ("JURISDICTION", "jurisdiction"),
    ("TAX", "tax_code"),
    ("NAME", "tax_name"),
    ("RATE", "rate"),
    ("INVOICES", "invoices"),
    ("TAXABLE", "taxable"),
    ("TAX-AMOUNT", "tax"),
    ("EXEMPT", "exempt_taxable"),
]


@app.command("tax")
def tax(
    ctx: typer.Context,
    period: Annotated[str, typer.Option(help="billing period YYYY-MM")],
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", "--output", help="table for people, json or csv for tools"),
    ] = ReportFormat.table,
) -> None:
    """Tax charged in a period per customer region, tax and rate (from the issued invoices)."""
    if fmt is ReportFormat.csv:
        query = urlencode({"period": period, "format": "csv"})
        data = client(ctx).get_bytes(f"/api/v1/reports/tax?{query}")
        sys.stdout.write(data.decode("utf-8"))
        return
    rows = client(ctx).get("/api/v1/reports/tax", period=period)
    if fmt is ReportFormat.json:
        print_json(rows)
        return
    print_table(rows, TAX_COLUMNS)


RECEIVABLE_COLUMNS = [
    ("CUSTOMER", "customer_id"),
    ("CURRENCY", "currency"),
    ("INVOICED", "invoiced"),
    ("CREDITED", "credited"),
    ("PAID", "paid"),
    ("BALANCE", "balance"),
    ("INVOICES", "invoices"),
]


@app.command("receivables")
def receivables(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="YYYY-MM-DD, the day whose end is reported")
    ] = None,
    customer: Annotated[str | None, typer.Option(help="one customer")] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", "--output", help="table for people, json or csv for tools"),
    ] = ReportFormat.table,
) -> None:
    """Each customer's balance at the end of a day: invoices less credit notes less payments,
    by the dates the documents bear (a negative balance is credit)."""
    params = {k: v for k, v in {"as_of": as_of, "customer_id": customer}.items() if v}
    if fmt is ReportFormat.csv:
        query = urlencode({**params, "format": "csv"})
        data = client(ctx).get_bytes(f"/api/v1/reports/receivables?{query}")
        sys.stdout.write(data.decode("utf-8"))
        return
    rows = client(ctx).get("/api/v1/reports/receivables", wait=3600, **params)
    if fmt is ReportFormat.json:
        print_json(rows)
        return
    print_table(rows, RECEIVABLE_COLUMNS)
