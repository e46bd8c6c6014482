"""`ispbill customers`: list, show, create and change customers."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ispbill_app.commands.output import FormatOption, OutputFormat, print_data, print_record
from ispbill_app.commands.state import client

app = typer.Typer(help="the ISP's customers", no_args_is_help=True)

CUSTOMER_COLUMNS = [
    ("CUSTOMER", "customer_id"),
    ("NAME", "name"),
    ("EMAIL", "email"),
    ("PHONE", "phone"),
    ("REGION", "tax_region"),
    ("TYPE", "account_type"),
    ("TAGS", "tags"),
]
CUSTOMER_FIELDS = [
    ("customer", "customer_id"),
    ("name", "name"),
    ("e-mail", "email"),
    ("phone", "phone"),
    ("tax region", "tax_region"),
    ("billing address", "billing_address"),
    ("service address", "service_address"),
    ("account type", "account_type"),
    ("tags", "tags"),
    ("invoice language", "language"),
    ("version", "version"),
]

Name = Annotated[str | None, typer.Option(help="full name or company name")]
Email = Annotated[str | None, typer.Option(help="where invoices are sent")]
Phone = Annotated[str | None, typer.Option(help='E.164-like, e.g. "+8801712345678"')]
TaxRegion = Annotated[str | None, typer.Option(help="a region with a tax rule")]
BillingAddress = Annotated[str | None, typer.Option()]
ServiceAddress = Annotated[str | None, typer.Option(help="where the line is installed")]
AccountType = Annotated[str | None, typer.Option(help="home, business or corporate")]
Language = Annotated[
    str | None,
    typer.Option(help='invoice language: "en", "bn" (any the invoice template has); "" default'),
]
Tags = Annotated[
    list[str] | None, typer.Option("--tag", help="a segment tag (lowercase slug); repeatable")
]


def customer_fields(**given: Any) -> dict[str, Any]:
    """The fields given on the command line, and only them: a server that does not know a
    field yet is not sent it."""
    return {name: value for name, value in given.items() if value is not None}


@app.command("list")
def list_customers(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Every customer."""
    print_data(client(ctx).get("/api/v1/customers"), fmt, CUSTOMER_COLUMNS)


@app.command("show")
def show(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument()],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """One customer, with the version a change is based on."""
    print_record(client(ctx).get(f"/api/v1/customers/{customer_id}"), fmt, CUSTOMER_FIELDS)


@app.command("create")
def create(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument()],
    name: Annotated[str, typer.Option(help="full name or company name")],
    email: Annotated[str, typer.Option(help="where invoices are sent")],
    tax_region: Annotated[str, typer.Option(help="a region with a tax rule")],
    billing_address: BillingAddress = None,
    phone: Phone = None,
    service_address: ServiceAddress = None,
    account_type: AccountType = None,
    tag: Tags = None,
    language: Language = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Register a customer (the same command twice records one customer)."""
    body = customer_fields(
        customer_id=customer_id,
        name=name,
        email=email,
        tax_region=tax_region,
        billing_address=billing_address,
        phone=phone,
        service_address=service_address,
        account_type=account_type,
        tags=tag or None,
        language=language,
    )
    print_data(client(ctx).post("/api/v1/customers", body), fmt, CUSTOMER_COLUMNS)


@app.command("change")
def change(
    ctx: typer.Context,
    customer_id: Annotated[str, typer.Argument()],
    name: Name = None,
    email: Email = None,
    phone: Phone = None,
    tax_region: TaxRegion = None,
    billing_address: BillingAddress = None,
    service_address: ServiceAddress = None,
    account_type: AccountType = None,
    tag: Tags = None,
    language: Language = None,
    no_tags: Annotated[bool, typer.Option("--no-tags", help="remove every tag")] = False,
    expected_version: Annotated[
        int | None,
        typer.Option(help="the version the change is based on (default: the current one)"),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Change a customer's details; what is not given stays as it is. Refused (409) when
    someone changed the customer since the version it is based on."""
    api = client(ctx)
    body = customer_fields(
        name=name,
        email=email,
        phone=phone,
        tax_region=tax_region,
        billing_address=billing_address,
        service_address=service_address,
        account_type=account_type,
        tags=[] if no_tags else (tag or None),
        language=language,
    )
    if not body:
        raise typer.BadParameter("give at least one detail to change")
    if expected_version is None:
        expected_version = api.get(f"/api/v1/customers/{customer_id}")["version"]
    body["expected_version"] = expected_version
    changed = api.patch(f"/api/v1/customers/{customer_id}", body)
    print_record(changed, fmt, CUSTOMER_FIELDS)
