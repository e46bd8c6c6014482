"""Importing spreadsheet rows on the real SQLite ledger: the API's event ids, so an import and
the single-record API agree; a dry run writes nothing; a lost race costs one row, not a chunk."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from accounts.application import import_customers as module
from accounts.application.import_customers import CustomerRow, import_customers
from accounts.application.use_cases import define_plan, register_customer, start_subscription
from accounts.domain.commands import DefinePlan, RegisterCustomer, StartSubscription
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import CustomerRegistered, customer_stream
from ispbill_core.contracts.invoicing import TaxRateSet, tax_region_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.sqlite import SQLiteEventStore

pytestmark = pytest.mark.integration

CLOCK = FixedClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))


def row(n: int, **kw: str) -> CustomerRow:
    fields = {
        "customer_id": f"c-{n}",
        "name": f"Customer {n}",
        "email": f"c{n}@example.com",
        "tax_region": "BD",
        "subscription_id": f"s-{n}",
        "plan_id": "home-50",
        "radius_username": f"user{n}",
        "started_on": "2026-01-01",
    }
    return CustomerRow(row=n + 1, **(fields | kw))


async def count(store: SQLiteEventStore) -> int:
    return await store.head_position()


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    plan = DefinePlan(
        plan_id="home-50", name="Home 50", currency="USD", monthly_fee="29.99",
        included_gb=50, overage_per_gb="1.50",
    )  # fmt: skip
    await define_plan(s, CLOCK, plan, "admin")
    tax = TaxRateSet(region="BD", tax_name="VAT", rate="0.15")
    stream = tax_region_stream("BD")
    await s.append(
        stream, [new_event(tax, id=deterministic_id(stream), occurred_at=CLOCK.now())], NO_STREAM
    )
    yield s
    await s.close()


async def test_a_row_entered_through_the_api_is_unchanged_and_the_reverse(store) -> None:
    await register_customer(
        store, CLOCK,
        RegisterCustomer(customer_id="c-1", name="Customer 1", email="c1@example.com",
                         tax_region="BD"),
        "clerk",
    )  # fmt: skip
    await start_subscription(
        store, CLOCK,
        StartSubscription(subscription_id="s-1", customer_id="c-1", plan_id="home-50",
                          radius_username="user1", started_on=date(2026, 1, 1)),
        "clerk",
    )  # fmt: skip
    before = await count(store)
    [result] = await import_customers(store, CLOCK, [row(1, name="  Customer 1 ")], "import")
    assert (result.status, result.errors) == ("unchanged", [])
    assert await count(store) == before

    [created] = await import_customers(store, CLOCK, [row(2)], "import")
    assert created.status == "created"
    after = await count(store)
    # What the import recorded is what the API records for the same command: a no-op.
    await register_customer(
        store, CLOCK,
        RegisterCustomer(customer_id="c-2", name="Customer 2", email="c2@example.com",
                         tax_region="BD"),
        "clerk",
    )  # fmt: skip
    assert await count(store) == after


async def test_a_dry_run_reports_and_writes_nothing(store) -> None:
    before = await count(store)
    results = await import_customers(
        store, CLOCK, [row(1), row(2, plan_id="gold"), row(3, subscription_id="s-1")],
        "import", dry_run=True,
    )  # fmt: skip
    assert [r.status for r in results] == ["created", "invalid", "invalid"]
    assert results[1].errors == ["unknown plan 'gold'"]
    assert "duplicate subscription 's-1': row 2 has it with other details" in results[2].errors
    assert await count(store) == before


async def test_newer_customer_columns_go_to_a_command_that_has_them(store, monkeypatch) -> None:
    made: list[Any] = []

    class NewerRegisterCustomer(RegisterCustomer):
        phone: str = ""
        service_address: str = ""
        account_type: str = "home"
        tags: list[str] = []

        def model_post_init(self, _: Any) -> None:
            made.append(self)

        def to_event(self) -> CustomerRegistered:
            return CustomerRegistered(**self.model_dump(include=set(RegisterCustomer.model_fields)))

    monkeypatch.setattr(module, "RegisterCustomer", NewerRegisterCustomer)
    [result] = await import_customers(
        store, CLOCK, [row(1, phone="+8801712345678", tags="vip; north", account_type="business")],
        "import",
    )  # fmt: skip
    assert (result.status, result.warnings) == ("created", [])
    assert (made[0].phone, made[0].tags, made[0].account_type) == (
        "+8801712345678", ["vip", "north"], "business",
    )  # fmt: skip


async def test_without_those_fields_the_row_is_recorded_with_a_warning(store) -> None:
    if "phone" in RegisterCustomer.model_fields:
        pytest.skip("RegisterCustomer has phone now")
    [result] = await import_customers(store, CLOCK, [row(1, phone="+8801712345678")], "import")
    assert result.status == "created"
    assert result.warnings == ["phone not recorded: this server's customers have no phone"]


class RacedStore(SQLiteEventStore):
    """Someone registers customer c-2 between the import's checks and its transaction."""

    async def append_many(self, batches: Any) -> list[int]:
        if await self.stream_version(customer_stream("c-2")) is None:
            other = CustomerRegistered(
                customer_id="c-2", name="Other", email="o@example.com", tax_region="BD"
            )
            stream = customer_stream("c-2")
            await self.append(
                stream,
                [new_event(other, id=deterministic_id(stream, "x"), occurred_at=CLOCK.now())],
                NO_STREAM,
            )
        return await super().append_many(batches)


async def test_a_lost_race_costs_its_row_not_the_chunk(store, tmp_path) -> None:
    raced = RacedStore(tmp_path / "ledger.db")
    try:
        results = await import_customers(raced, CLOCK, [row(1), row(2), row(3)], "import")
    finally:
        await raced.close()
    assert [r.status for r in results] == ["created", "invalid", "created"]
    assert "written meanwhile" in results[1].errors[0]
    assert len(await store.read_stream(customer_stream("c-3"))) == 1
