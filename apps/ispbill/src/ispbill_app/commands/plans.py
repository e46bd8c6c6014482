"""`ispbill plans`: list, show and create plans."""

from __future__ import annotations

from typing import Annotated

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_data, print_record
from ispbill_app.commands.state import client

app = typer.Typer(help="the ISP's plans (the catalogue)", no_args_is_help=True)

PLAN_COLUMNS = [
    ("PLAN", "plan_id"),
    ("NAME", "name"),
    ("FEE", "monthly_fee.amount"),
    ("CUR", "monthly_fee.currency"),
    ("INCLUDED-BYTES", "included_bytes"),
    ("OVERAGE", "overage_price.amount"),
]
PLAN_FIELDS = [
    ("plan", "plan_id"),
    ("name", "name"),
    ("monthly fee", "monthly_fee.amount"),
    ("currency", "monthly_fee.currency"),
    ("included bytes", "included_bytes"),
    ("overage price", "overage_price.amount"),
    ("overage unit bytes", "overage_unit_bytes"),
    ("version", "version"),
    ("versions", "versions"),
]


@app.command("list")
def list_plans(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Every plan."""
    print_data(client(ctx).get("/api/v1/plans"), fmt, PLAN_COLUMNS)


@app.command("show")
def show(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument()],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """One plan and its versions."""
    print_record(client(ctx).get(f"/api/v1/plans/{plan_id}"), fmt, PLAN_FIELDS)


@app.command("create")
def create(
    ctx: typer.Context,
    plan_id: Annotated[str, typer.Argument()],
    name: Annotated[str, typer.Option()],
    currency: Annotated[str, typer.Option(help="ISO 4217, e.g. BDT")],
    monthly_fee: Annotated[str, typer.Option(help="a plain decimal, e.g. 29.99")],
    included_gb: Annotated[int, typer.Option(help="data included per month, GB (10^9 bytes)")],
    overage_per_gb: Annotated[str, typer.Option(help="price of each started GB beyond it")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Define a plan (the same command twice records one plan)."""
    body = {
        "plan_id": plan_id,
        "name": name,
        "currency": currency,
        "monthly_fee": monthly_fee,
        "included_gb": included_gb,
        "overage_per_gb": overage_per_gb,
    }
    print_data(client(ctx).post("/api/v1/plans", body), fmt, PLAN_COLUMNS)
