"""`ispbill payments`: record payments."""

from __future__ import annotations

from typing import Annotated

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_data
from ispbill_app.commands.state import client

app = typer.Typer(help="record payments", no_args_is_help=True)


@app.command("record")
def record(
    ctx: typer.Context,
    invoice: Annotated[str, typer.Option(help="invoice number or id")],
    amount: Annotated[str, typer.Option(help="a plain decimal, e.g. 34.65")],
    reference: Annotated[str, typer.Option(help="the receipt's reference; twice is one payment")],
    method: Annotated[str, typer.Option()] = "cash",
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A manual payment against an invoice."""
    body = {"invoice": invoice, "amount": amount, "reference": reference, "method": method}
    payment = client(ctx).post("/api/v1/payments/manual", body)
    print_data(
        payment,
        fmt,
        [
            ("PAYMENT", "payment_id"),
            ("INVOICE", "invoice_id"),
            ("AMOUNT", "amount.amount"),
            ("CUR", "amount.currency"),
            ("REFERENCE", "transaction_ref"),
        ],
    )
