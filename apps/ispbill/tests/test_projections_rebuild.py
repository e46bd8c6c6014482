"""Every projection rebuilt from position 0 equals the one kept live while the API was used:
customers and their changes, plans, subscriptions through their lifecycle, NASes, invoices,
payments, unmatched and rated usage, sessions and the audit trail; on SQLite and on
PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger, projections_running
from ispbill_app.settings import Settings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.projections import ReadModelDatabase
from ispbill_core.sealing import KEY_ENV
from tests.fixtures.staff import staff_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NOW = datetime(2026, 3, 10, 9, tzinfo=UTC)


async def table_contents(db: ReadModelDatabase, tables: tuple[str, ...]) -> dict[str, Any]:
    contents = {}
    for table in tables:
        rows = await db.fetch(f"SELECT * FROM {table}")
        contents[table] = sorted(tuple(str(v) for v in row) for row in rows)
    return contents


async def use_the_api(client: httpx.AsyncClient, services: Services) -> None:
    async def ok(method: str, path: str, body: Any = None) -> Any:
        response = await client.request(method, f"/api/v1{path}", json=body)
        assert response.status_code < 300, response.text
        return response.json()

    await ok("POST", "/tax-rates", {"region": "metro", "tax_name": "VAT", "rate": "0.15"})
    for plan_id, fee in (("home", "30.00"), ("fast", "50.00")):
        await ok(
            "POST",
            "/plans",
            {
                "plan_id": plan_id,
                "name": plan_id.title(),
                "currency": "USD",
                "monthly_fee": fee,
                "included_gb": 100,
                "overage_per_gb": "1.00",
            },
        )
    for n in range(6):
        await ok(
            "POST",
            "/customers",
            {
                "customer_id": f"c-{n}",
                "name": f"Customer {n}",
                "email": f"c{n}@example.com",
                "tax_region": "metro",
            },
        )
        await ok(
            "POST",
            "/subscriptions",
            {
                "subscription_id": f"s-{n}",
                "customer_id": f"c-{n}",
                "plan_id": "home",
                "radius_username": f"user{n}",
                "started_on": "2026-01-01",
            },
        )
    await ok("PATCH", "/customers/c-1", {"name": "Customer One", "tags": ["vip"]})
    # tax rules of several levels, one ended, and an exemption (the billing catalogue's)
    for region, code, rate in (("metro", "SD", "0.05"), ("metro.north", "SD", "0.02")):
        rule = {"region": region, "tax_code": code, "name": code, "rate": rate}
        await ok("POST", "/tax-rules", {**rule, "effective_from": "2026-03-01"})
    await ok(
        "POST",
        "/tax-rules/end",
        {"region": "metro", "tax_code": "SD", "effective_from": "2026-04-01"},
    )
    await ok(
        "POST",
        "/customers/c-1/tax-exemptions",
        {"certificate": "EX/1", "tax_codes": ["VAT"], "valid_from": "2026-01-01"},
    )
    await ok("POST", "/subscriptions/s-2/plan-change", {"plan_id": "fast", "effective": "now"})
    await ok("POST", "/subscriptions/s-3/suspend", {"reason": "asked to"})
    await ok(
        "POST", "/subscriptions/s-4/terminate", {"effective_on": "2026-03-31", "reason": "moved"}
    )
    await ok(
        "POST",
        "/nas",
        {"nas_id": "bng-1", "name": "BNG", "ip_address": "192.0.2.1", "secret": "s3cret-bng"},
    )
    await ok("POST", "/bill-runs", {"period": "2026-02"})
    invoices = await ok("GET", "/invoices", None)
    assert len(invoices) == 6
    await ok(
        "POST",
        "/payments/manual",
        {
            "invoice": invoices[0]["number"],
            "amount": invoices[0]["total"]["amount"],
            "reference": "bank-1",
            "method": "bank",
        },
    )
    # usage of a username nobody has: kept unmatched
    record = AccountingRecordReceived(
        record_id=uuid.uuid4(),
        nas_id="bng-1",
        nas_ip="192.0.2.1",
        status="interim-update",
        acct_session_id="sess-1",
        username="stranger",
        event_time=NOW,
        received_at=NOW,
        session_time=60,
        input_octets=1000,
        output_octets=2000,
    )
    from ispbill_core.events import new_event
    from rating.application.rate_accounting_record import RatingSettings, rate_accounting_record

    rating = RatingSettings(timezone=services.settings.timezone)
    await rate_accounting_record(
        services.store, rating, new_event(record, id=record.record_id, occurred_at=NOW)
    )
    # usage of user0 (s-0): one session stopped, one still open
    for session, status, seconds, octets in (
        ("sess-2", AcctStatus.START, 0, 0),
        ("sess-2", AcctStatus.INTERIM_UPDATE, 600, 5000),
        ("sess-2", AcctStatus.STOP, 900, 8000),
        ("sess-3", AcctStatus.INTERIM_UPDATE, 300, 700),
    ):
        rated = record.model_copy(
            update={
                "record_id": uuid.uuid4(),
                "acct_session_id": session,
                "status": status,
                "username": "user0",
                "session_time": seconds,
                "event_time": NOW + timedelta(seconds=seconds),
                "received_at": NOW + timedelta(seconds=seconds),
                "input_octets": octets,
                "output_octets": octets,
                "framed_ip_address": "100.64.0.1",
                "terminate_cause": "User-Request" if status is AcctStatus.STOP else None,
            }
        )
        await rate_accounting_record(
            services.store, rating, new_event(rated, id=rated.record_id, occurred_at=NOW)
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(ledger setting, schema): the SQLite file, or a fresh schema in the run's PostgreSQL
    database (dropped with the database at the end of the run)."""
    if request.param == "sqlite":
        return "sqlite", "ispbill"
    return request.getfixturevalue("postgres_dsn"), f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def services(
    ledger: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Services]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    url, schema = ledger
    settings = Settings(data_dir=tmp_path / "data", ledger=url, ledger_schema=schema)
    settings.data_dir.mkdir()
    services = Services(settings, None, clock=FixedClock(NOW))
    if url != "sqlite":
        from ispbill_core.sealing import Keyring

        services.keyring = Keyring([uuid.uuid4().bytes * 4])
    services.require_keyring()
    services.store = await open_ledger(settings)
    try:
        yield services
    finally:
        await services.store.close()


async def test_every_projection_rebuilt_from_zero_equals_the_live_one(services: Services) -> None:
    token = await staff_token(services.store)
    async with projections_running(services) as projector:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=services.http_app()),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token}"},
        )
        async with client:
            await use_the_api(client, services)
        assert await projector.catch_up(timeout=20)
        db = services.require_read_models()
        live = {
            name: await table_contents(db, runner.projection.tables)
            for name, runner in projector.runners.items()
        }
        assert await db.parked() == []
    # nothing runs now: rebuild each one from 0 and compare
    await services.open_read_models(run_projections=True)
    assert services.projector is not None
    db = services.require_read_models()
    try:
        # every projection in one pass over the ledger (what `rebuild --offline` does)...
        folded = await services.projector.rebuild_now()
        assert set(folded) == set(live) and all(n > 0 for n in folded.values() if n)
        for name, runner in services.projector.runners.items():
            rebuilt = await table_contents(db, runner.projection.tables)
            assert rebuilt == live[name], name
        # ...and each one alone
        for name, runner in services.projector.runners.items():
            assert list(await services.projector.rebuild_now(name)) == [name]
            rebuilt = await table_contents(db, runner.projection.tables)
            assert rebuilt == live[name], name
    finally:
        await db.close()
    # and the live ones were not empty: the comparison compared something
    assert len(live["accounts.customers"]["rm_customers"]) == 6
    assert len(live["invoicing.invoices"]["rm_invoices"]) == 6
    assert len(live["accounts.subscriptions"]["rm_subscription_events"]) == 9
    assert len(live["payments.payments"]["rm_payments"]) == 1
    assert len(live["rating.unmatched-usage"]["rm_unmatched_usage"]) == 1
    assert len(live["accounts.nas"]["rm_nas"]) == 1
    assert len(live["rating.usage-daily"]["rm_usage_daily"]) == 1
    assert len(live["rating.usage-top"]["rm_usage_top"]) == 1
    assert len(live["rating.session-log"]["rm_session_log"]) == 3  # stranger's too
    assert len(live["rating.live-sessions"]["rm_live_sessions"]) == 2
    assert any(
        row[3] == "staff:admin" and row[4] == "CustomerDetailsChanged"
        for row in live["core.audit-trail"]["rm_audit"]
    )
