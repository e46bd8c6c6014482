"""`ispbill invoices`: list, show or download invoices."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    cell,
    new_table,
    print_data,
    print_json,
    stdout_console,
)
from ispbill_app.commands.state import client

app = typer.Typer(help="list, show or download invoices", no_args_is_help=True)

INVOICE_COLUMNS = [
    ("NUMBER", "number"),
    ("CUSTOMER", "customer_id"),
    ("PERIOD", "period"),
    ("TOTAL", "total.amount"),
    ("CUR", "currency"),
    ("DUE", "due_on"),
    ("STATUS", "status"),
]


@app.command("list")
def list_invoices(
    ctx: typer.Context,
    customer: Annotated[str | None, typer.Option(help="one customer's invoices")] = None,
    period: Annotated[str | None, typer.Option(help="YYYY-MM")] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Issued invoices."""
    found = client(ctx).get("/api/v1/invoices", customer_id=customer, period=period)
    print_data(found, fmt, INVOICE_COLUMNS)


@app.command("show")
def show(
    ctx: typer.Context,
    invoice: Annotated[str, typer.Argument(help="invoice number or id")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """One invoice with its lines and taxes."""
    show_invoice(client(ctx).get(f"/api/v1/invoices/{invoice}"), fmt)


@app.command("pdf")
def pdf(
    ctx: typer.Context,
    invoice: Annotated[str, typer.Argument(help="invoice number or id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write the PDF to")],
) -> None:
    """Download an invoice's PDF."""
    output.write_bytes(client(ctx).get_bytes(f"/api/v1/invoices/{invoice}/pdf"))
    print(f"wrote {output}")


def show_invoice(invoice: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        print_json(invoice)
        return
    console = stdout_console()
    console.print(Text(f"Invoice {invoice['number']}  ({invoice['status']})", style="bold"))
    console.print(
        Text(
            f"  customer  {invoice['customer_id']}  {invoice['customer_name']}"
            f" <{invoice['customer_email']}>\n"
            f"  period    {invoice['period']}   issued {invoice['issued_at']}"
            f"   due {invoice['due_on']}"
        )
    )
    # A line's description wraps onto more lines rather than being cut short.
    table = new_table(
        ["DESCRIPTION", "QUANTITY", "UNIT", "AMOUNT"], right=frozenset({"QUANTITY", "AMOUNT"})
    )
    for line in invoice["lines"]:
        table.add_row(
            cell(line["description"]),
            cell(line["quantity"]),
            cell(line["unit"]),
            cell(line["amount"]["amount"]),
        )
    table.add_section()
    table.add_row(Text("subtotal"), Text(""), Text(""), cell(invoice["subtotal"]["amount"]))
    for tax in invoice["taxes"]:
        # The rate is a decimal string: shown as a percentage without float rounding.
        percent = (Decimal(str(tax["rate"])) * 100).normalize()
        label = f"{tax['tax_name']} {percent:f}% on {tax['taxable']['amount']}"
        if tax.get("exemption_certificate"):
            label = f"{tax['tax_name']} exempt (certificate {tax['exemption_certificate']})"
        table.add_row(Text(label), Text(""), Text(""), cell(tax["amount"]["amount"]))
    table.add_row(
        Text(f"TOTAL {invoice['currency']}", style="bold"),
        Text(""),
        Text(""),
        Text(str(invoice["total"]["amount"]), style="bold"),
    )
    console.print(table)
