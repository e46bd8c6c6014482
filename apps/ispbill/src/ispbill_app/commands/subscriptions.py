"""`ispbill subscriptions`: start subscriptions and take them through their lifecycle."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Any

import typer

from ispbill_app.client import ApiClient
from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    cell,
    new_table,
    print_data,
    print_json,
    print_record,
    stdout_console,
)
from ispbill_app.commands.state import client

app = typer.Typer(help="subscriptions and their lifecycle", no_args_is_help=True)

SUBSCRIPTION_COLUMNS = [
    ("SUBSCRIPTION", "subscription_id"),
    ("CUSTOMER", "customer_id"),
    ("PLAN", "plan_id"),
    ("USERNAME", "radius_username"),
    ("STARTED", "started_on"),
    ("STATUS", "status"),
]
SUBSCRIPTION_FIELDS = [
    ("subscription", "subscription_id"),
    ("customer", "customer_id"),
    ("plan", "plan_id"),
    ("RADIUS username", "radius_username"),
    ("started on", "started_on"),
    ("usage billed from", "usage_source"),
    ("status", "status"),
    ("version", "version"),
]

SubscriptionId = Annotated[str, typer.Argument(help="the subscription")]


class UsageSourceChoice(StrEnum):
    radius = "radius"
    router = "router"


Reason = Annotated[str, typer.Option(help="why; kept in its history")]
ExpectedVersion = Annotated[
    int | None,
    typer.Option(help="the version the change is based on (default: the current one)"),
]


def _iso(value: str, option: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=option) from None


def _current_version(api: ApiClient, subscription_id: str, given: int | None) -> int:
    if given is not None:
        return given
    return int(api.get(f"/api/v1/subscriptions/{subscription_id}")["version"])


def _show(view: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        print_json(view)
        return
    print_record(view, fmt, SUBSCRIPTION_FIELDS)
    history = view.get("history") or []
    if history:
        keys = sorted({k for entry in history for k in entry})
        table = new_table([k.upper() for k in keys])
        for entry in history:
            table.add_row(*(cell(entry.get(k)) for k in keys))
        stdout_console().print(table)


def _act(
    ctx: typer.Context, subscription_id: str, action: str, body: dict[str, Any], fmt: OutputFormat
) -> None:
    view = client(ctx).post(f"/api/v1/subscriptions/{subscription_id}/{action}", body)
    _show(view, fmt)


@app.command("list")
def list_subscriptions(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Every subscription."""
    print_data(client(ctx).get("/api/v1/subscriptions"), fmt, SUBSCRIPTION_COLUMNS)


@app.command("show")
def show(
    ctx: typer.Context, subscription_id: SubscriptionId, fmt: FormatOption = OutputFormat.table
) -> None:
    """One subscription: its status, plan, version and history with effective dates."""
    _show(client(ctx).get(f"/api/v1/subscriptions/{subscription_id}"), fmt)


@app.command("create")
def create(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    customer: Annotated[str, typer.Option(help="the customer's id")],
    plan: Annotated[str, typer.Option(help="the plan's id")],
    username: Annotated[str, typer.Option(help="its RADIUS username (unique)")],
    started_on: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    usage_source: Annotated[
        UsageSourceChoice,
        typer.Option(
            help="what bills its usage: radius (accounting from a NAS) or router (a router's"
            " byte counters, for static-IP and queue customers)"
        ),
    ] = UsageSourceChoice.radius,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Start a subscription (the same command twice records one subscription)."""
    body = {
        "subscription_id": subscription_id,
        "customer_id": customer,
        "plan_id": plan,
        "radius_username": username,
        "started_on": _iso(started_on, "--started-on"),
    }
    if usage_source is not UsageSourceChoice.radius:  # the default: an older server knows it
        body["usage_source"] = usage_source.value
    print_data(client(ctx).post("/api/v1/subscriptions", body), fmt, SUBSCRIPTION_COLUMNS)


@app.command("change-plan")
def change_plan(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    plan: Annotated[str, typer.Option(help="the new plan's id")],
    effective: Annotated[
        str, typer.Option(help='"now", "next_cycle" or a date YYYY-MM-DD')
    ] = "now",
    expected_version: ExpectedVersion = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Upgrade or downgrade: now, at the next billing cycle, or from a date."""
    if effective not in ("now", "next_cycle"):
        effective = _iso(effective, "--effective")
    api = client(ctx)
    body = {
        "plan_id": plan,
        "effective": effective,
        "expected_version": _current_version(api, subscription_id, expected_version),
    }
    _act(ctx, subscription_id, "plan-change", body, fmt)


@app.command("suspend")
def suspend(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    reason: Reason,
    effective_on: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default today)")] = None,
    expected_version: ExpectedVersion = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Suspend a subscription (staff decision, with a reason)."""
    body: dict[str, Any] = {
        "reason": reason,
        "expected_version": _current_version(client(ctx), subscription_id, expected_version),
    }
    if effective_on is not None:
        body["effective_on"] = _iso(effective_on, "--effective-on")
    _act(ctx, subscription_id, "suspend", body, fmt)


@app.command("resume")
def resume(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    reason: Annotated[str, typer.Option(help="why; kept in its history")] = "",
    effective_on: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default today)")] = None,
    expected_version: ExpectedVersion = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Resume a suspended subscription."""
    body: dict[str, Any] = {
        "reason": reason,
        "expected_version": _current_version(client(ctx), subscription_id, expected_version),
    }
    if effective_on is not None:
        body["effective_on"] = _iso(effective_on, "--effective-on")
    _act(ctx, subscription_id, "resume", body, fmt)


@app.command("hold")
def hold(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    from_: Annotated[str, typer.Option("--from", help="first day of the hold, YYYY-MM-DD")],
    until: Annotated[str, typer.Option(help="last day of the hold, YYYY-MM-DD")],
    reason: Reason,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A vacation hold between two dates."""
    body = {"from": _iso(from_, "--from"), "until": _iso(until, "--until"), "reason": reason}
    _act(ctx, subscription_id, "hold", body, fmt)


@app.command("terminate")
def terminate(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    effective_on: Annotated[str, typer.Option(help="last day of service, YYYY-MM-DD")],
    reason: Reason,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """End a subscription on a date."""
    body = {"effective_on": _iso(effective_on, "--effective-on"), "reason": reason}
    _act(ctx, subscription_id, "terminate", body, fmt)


@app.command("change-username")
def change_username(
    ctx: typer.Context,
    subscription_id: SubscriptionId,
    username: Annotated[str, typer.Option(help="the new RADIUS username (unique)")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Give a subscription another RADIUS username."""
    _act(ctx, subscription_id, "username", {"radius_username": username}, fmt)
