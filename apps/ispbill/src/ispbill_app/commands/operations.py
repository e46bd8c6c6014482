"""`ispbill projections`, `ispbill parked`, `ispbill audit`: the read side for operators."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ispbill_app.commands import runtime
from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    count,
    fail,
    print_data,
    print_json,
    print_record,
    print_table,
    stderr_console,
)
from ispbill_app.commands.state import client

projections = typer.Typer(help="read models: their lag, and rebuilding one", no_args_is_help=True)
parked = typer.Typer(help="events a consumer could not handle", no_args_is_help=True)
audit = typer.Typer(help="who recorded what, and when", no_args_is_help=True)

PROJECTION_COLUMNS = [
    ("NAME", "name"),
    ("VERSION", "version"),
    ("POSITION", "position"),
    ("HEAD", "head"),
    ("BEHIND", "behind"),
    ("PARKED", "parked"),
    ("UPDATED", "updated_at"),
]


@projections.command("list")
def list_projections(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Every read model with its version and position."""
    found = client(ctx).get("/api/v1/projections")
    print_data(found, fmt, [*PROJECTION_COLUMNS[:3], ("UPDATED", "updated_at")])


@projections.command("status")
def projection_status(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Each read model's lag: events of its types not folded yet (counted up to 10,000), the
    events it parked, and its last error."""
    found = client(ctx).get("/api/v1/projections")
    for row in found:
        if row.get("behind_at_least"):
            row["behind"] = f"{row['behind']}+"
    print_data(found, fmt, [*PROJECTION_COLUMNS, ("LAST ERROR", "last_error")])


@projections.command("rebuild")
def rebuild(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            help="the projection, as `ispbill projections list`; with --offline, every one"
            " when omitted (the ledger is read once for all of them)"
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="follow the rebuild until it has caught up")] = True,
    offline: Annotated[
        bool,
        typer.Option(
            help="rebuild in this process on the ledger of --data-dir / --ledger, with no"
            " server running (after a restore, or before a start)"
        ),
    ] = False,
    data_dir: runtime.DataDir = None,
    ledger: runtime.Ledger = None,
) -> None:
    """Drop one read model and refill it from position 0 (reads go on meanwhile)."""
    if offline:
        folded = _rebuild_offline(name, runtime.settings_from(data_dir=data_dir, ledger=ledger))
        for rebuilt, events in folded.items():
            print(f"{rebuilt}: rebuilt from position 0, {count(events, 'event')} folded")
        return
    if name is None:
        raise fail("name the projection to rebuild (every one at once needs --offline)", 2)
    api = client(ctx)
    api.post(f"/api/v1/projections/{name}/rebuild", {})
    if not wait:
        print(f"{name}: rebuilding (follow it with `ispbill projections status`)")
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f} / {task.total:,.0f}"),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as progress:
        task = progress.add_task(f"rebuilding {name}", total=None)
        time.sleep(0.5)  # the rebuild starts at the projection's next step
        while True:
            row = next(p for p in api.get("/api/v1/projections") if p["name"] == name)
            progress.update(task, total=row["head"], completed=row["position"])
            if row["behind"] == 0:
                break
            time.sleep(0.5)
    print(f"{name}: rebuilt, at position {row['position']}")


def _rebuild_offline(name: str | None, settings: Any) -> dict[str, int]:
    import asyncio

    from ispbill_app.bootstrap import Services, open_ledger

    async def run() -> dict[str, int]:
        services = Services(settings, None)
        services.store = await open_ledger(settings)
        try:
            await services.open_read_models(run_projections=True)
            assert services.projector is not None
            if name is not None and name not in services.projector.runners:
                known = ", ".join(sorted(services.projector.runners))
                raise fail(f"no projection {name!r}; there are: {known}", 2)
            return await services.projector.rebuild_now(*([name] if name else []))
        finally:
            if services.read_models is not None:
                await services.read_models.close()
            await services.store.close()

    return asyncio.run(run())


PARKED_COLUMNS = [
    ("ID", "id"),
    ("CONSUMER", "consumer"),
    ("TYPE", "type"),
    ("STREAM", "stream"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("PARKED", "parked_at"),
    ("REASON", "reason"),
]


@parked.command("list")
def list_parked(
    ctx: typer.Context,
    consumer: Annotated[str | None, typer.Option(help="one consumer's only")] = None,
    status: Annotated[
        str, typer.Option(help="parked (default), retry, resolved, discarded or all")
    ] = "parked",
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Parked events, oldest first, with why."""
    found = client(ctx).get("/api/v1/parked", consumer=consumer, status=status)
    print_data(found, fmt, PARKED_COLUMNS)


@parked.command("show")
def show_parked(ctx: typer.Context, parked_id: int, fmt: FormatOption = OutputFormat.table) -> None:
    """One parked event, with the event as recorded."""
    found = client(ctx).get(f"/api/v1/parked/{parked_id}")
    print_record(found, fmt, [(label, key) for label, key in PARKED_COLUMNS] + [("EVENT", "event")])


@parked.command("retry")
def retry_parked(ctx: typer.Context, parked_id: int) -> None:
    """Hand it to its consumer again (once the cause is fixed); it is parked again if it
    fails again."""
    done = client(ctx).post(f"/api/v1/parked/{parked_id}/retry", {})
    print(f"parked event {parked_id}: {done['status']} (its consumer takes it within seconds)")


@parked.command("discard")
def discard_parked(
    ctx: typer.Context,
    parked_id: int,
    reason: Annotated[str, typer.Option(help="why it is given up (kept with it)")] = "",
) -> None:
    """Give up on it: kept, listed with --status discarded."""
    done = client(ctx).post(f"/api/v1/parked/{parked_id}/discard", {"reason": reason})
    print(f"parked event {parked_id}: {done['status']}")


AUDIT_COLUMNS = [
    ("POSITION", "position"),
    ("RECORDED", "recorded_at"),
    ("ACTOR", "actor"),
    ("TYPE", "type"),
    ("CUSTOMER", "customer_id"),
    ("STREAM", "stream"),
]


@audit.command("log")
def audit_log(
    ctx: typer.Context,
    actor: Annotated[
        str | None, typer.Option(help="staff:<username>, or a system component")
    ] = None,
    customer: Annotated[str | None, typer.Option(help="a customer id")] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            help="recorded at or after (UTC unless the time says otherwise)",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"],
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Who changed what, newest first."""
    if since is not None and since.tzinfo is None:
        from datetime import UTC

        since = since.replace(tzinfo=UTC)
    found = client(ctx).get(
        "/api/v1/audit",
        actor=actor,
        customer_id=customer,
        since=since.isoformat() if since else None,
        limit=limit,
    )
    columns = AUDIT_COLUMNS if fmt is OutputFormat.json else [*AUDIT_COLUMNS, ("DATA", "data")]
    print_data(found, fmt, columns)


chain = typer.Typer(help="the ledger's hash chain", no_args_is_help=True)
audit.add_typer(chain, name="chain")

FINDING_COLUMNS = [
    ("POSITION", "position"),
    ("DOCUMENT", "document"),
    ("CUSTOMER", "customer_id"),
    ("PERIOD", "period"),
    ("FIELD", "field"),
    ("RECORDED", "recorded"),
    ("DERIVED", "derived"),
]


@audit.command("verify")
def audit_verify(
    ctx: typer.Context,
    period: Annotated[
        str | None, typer.Option(help="only invoices of this period, YYYY-MM")
    ] = None,
    customer: Annotated[str | None, typer.Option(help="only this customer's invoices")] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Re-derive every invoice from the log and the plan, usage and tax versions it was
    computed with; name every difference, to the minor unit. Exit status 1 when any."""
    with stderr_console().status("replaying the ledger..."):
        report = client(ctx).get(
            "/api/v1/audit/invoices", wait=3600, period=period, customer_id=customer
        )
    if fmt is OutputFormat.json:
        print_json(report)
    else:
        verdict = "ok" if report["ok"] else f"{len(report['findings'])} DIFFERENCES"
        print(
            f"{verdict}: {report['invoices_checked']} invoices and"
            f" {report['credit_notes_checked']} credit notes checked, {report['events_read']}"
            f" events read through position {report['through_position']}"
        )
        if report["findings"]:
            print_table(report["findings"], FINDING_COLUMNS)
    if not report["ok"]:
        raise typer.Exit(1)


@chain.command("verify")
def chain_verify(
    ctx: typer.Context,
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="POSITION:SHA256HEX printed by an earlier run; repeatable"),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Check the hash chain over every ledger row: the first position edited, deleted or
    moved. Keep the head it prints somewhere else, and pass it as --anchor next time: that
    also finds the newest rows deleted or the whole chain recomputed. Exit status 1 when
    broken."""
    with stderr_console().status("walking the chain..."):
        report = client(ctx).get("/api/v1/audit/chain", wait=3600, anchor=anchor or None)
    if fmt is OutputFormat.json:
        print_json(report)
    elif report["ok"]:
        print(
            f"ok: {report['checked']} rows chained"
            + (
                f" ({report['unchained']} older rows before the chain)"
                if report["unchained"]
                else ""
            )
            + f"; anchors checked {len(report['anchors_checked'])}"
        )
        print(f"head {report['head_position']}:{report['head_hash']}")
    else:
        print(f"BROKEN at position {report['broken_at']}: {report['reason']}")
        print(f"last good row {report['head_position']}:{report['head_hash']}")
    if not report["ok"]:
        raise typer.Exit(1)
