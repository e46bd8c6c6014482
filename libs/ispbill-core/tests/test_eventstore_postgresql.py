"""The PostgreSQL event store beyond the contract: how its statements are planned and stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ispbill_core.events import EventMetadata, NewEvent
from ispbill_core.eventstore import NO_STREAM

pytestmark = pytest.mark.integration

METADATA = EventMetadata(occurred_at=datetime(2025, 1, 1, tzinfo=UTC), actor="test")


def usage(n: int) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="UsageRated",
        version=1,
        data={"session": f"nas-1-{n:08d}", "input_octets": n, "amount": "0.42"},
        metadata=METADATA,
    )


@pytest.fixture
async def store(postgres_dsn: str, postgres_schema: str) -> AsyncIterator[object]:
    from ispbill_core.eventstore.postgresql import PostgresEventStore

    # One connection, so that its prepared statements are the ones every append used.
    opened = await PostgresEventStore.connect(
        postgres_dsn, schema=postgres_schema, pool_min=1, pool_max=1, listen=False
    )
    try:
        yield opened
    finally:
        await opened.close()


async def test_the_append_check_is_planned_for_its_actual_arrays(store: object) -> None:
    """Single appends on a near-empty ledger, then batches: the check of versions and ids
    never runs a generic plan, which PostgreSQL would otherwise pick once the batches' custom
    plans cost more than one cached while the table held a few rows (a full scan per append)."""
    from ispbill_core.eventstore.postgresql import PostgresEventStore

    assert isinstance(store, PostgresEventStore)
    for n in range(10):
        await store.append(f"single-{n}", [usage(n)], NO_STREAM)
    for n in range(30):
        await store.append(f"batch-{n}", [usage(j) for j in range(200)], NO_STREAM)

    async with store._require_pool().acquire() as conn:
        statements = await conn.fetch(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        )
    plans = [s for s in statements if "unnest($1::text[]) AS s(stream)" in s["statement"]]
    assert len(plans) == 1
    assert plans[0]["generic_plans"] == 0
    assert plans[0]["custom_plans"] == 40
