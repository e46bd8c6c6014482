"""Appends per second to each event store adapter, in batches of 1 and of 500.

Run: `uv run --frozen python bench/bench_store.py` (or `make bench-store`).
SQLite uses a file in a temporary directory (synchronous=FULL, as shipped). PostgreSQL uses a
database created on ISPBILL_BENCH_PG_ADMIN_DSN (default postgresql://postgres@127.0.0.1:5432/postgres)
and dropped afterwards. KurrentDB runs only when ESDB_URL is set. Each case runs for a fixed
time budget, so the whole run stays around a minute.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from machine_info import machine  # bench/, beside this script

from ispbill_core.events import EventMetadata, NewEvent
from ispbill_core.eventstore import NO_STREAM, EventStore, ExpectedVersion
from ispbill_core.eventstore.sqlite import SQLiteEventStore

PG_ADMIN_DSN = os.environ.get(
    "ISPBILL_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SECONDS_PER_CASE = float(os.environ.get("ISPBILL_BENCH_SECONDS", "6"))
METADATA = EventMetadata(occurred_at=datetime(2025, 1, 1, tzinfo=UTC), actor="bench")


@dataclass
class Result:
    store: str
    batch: int
    events: int
    seconds: float

    @property
    def per_second(self) -> int:
        return int(self.events / self.seconds) if self.seconds else 0


def usage_event(n: int) -> NewEvent:
    """About the size of a real UsageRated event."""
    return NewEvent(
        id=uuid.uuid4(),
        type="UsageRated",
        version=1,
        data={
            "session": f"nas-1-{n:08d}-1735689600",
            "subscription_id": str(uuid.uuid4()),
            "input_octets": 123_456_789 + n,
            "output_octets": 987_654_321 + n,
            "amount": "0.42",
            "currency": "USD",
            "period": "2025-01",
        },
        metadata=METADATA,
    )


async def run_case(store: EventStore, name: str, batch: int, budget: float) -> Result:
    """Appends batches to fresh streams (one aggregate per batch) until the budget is spent."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    # Build events outside the timed loop: this measures the store, not pydantic.
    pool = [[usage_event(i * batch + j) for j in range(batch)] for i in range(64)]
    appended = 0
    n = 0
    spent = 0.0
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline:
        events = pool[n % len(pool)]
        if n >= len(pool):
            # Fresh ids (a reused id would be an idempotent no-op); not part of the timing.
            events = [e.model_copy(update={"id": uuid.uuid4()}) for e in events]
        expected: ExpectedVersion = NO_STREAM
        started = time.perf_counter()
        await store.append(f"{prefix}-{n}", events, expected)
        spent += time.perf_counter() - started
        appended += len(events)
        n += 1
    return Result(name, batch, appended, spent)


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[EventStore]:
    with tempfile.TemporaryDirectory(prefix="ispbill-bench-") as tmp:
        store = SQLiteEventStore(Path(tmp) / "ledger.sqlite")
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[EventStore]:
    import asyncpg

    from ispbill_core.eventstore.postgresql import PostgresEventStore

    database = f"ispbill_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    store = await PostgresEventStore.connect(f"{base}/{database}", schema="ispbill")
    try:
        yield store
    finally:
        await store.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def kurrentdb_store(url: str) -> AsyncIterator[EventStore]:
    from ispbill_core.eventstore.kurrentdb import KurrentDBEventStore

    store = await KurrentDBEventStore.connect(url)
    try:
        yield store
    finally:
        await store.close()


async def main() -> None:
    stores: list[tuple[str, Callable[[], AbstractAsyncContextManager[EventStore]]]] = [
        ("sqlite", sqlite_store),
        ("postgresql", postgres_store),
    ]
    url = os.environ.get("ESDB_URL")
    if url:
        stores.append(("kurrentdb", lambda: kurrentdb_store(url)))
    print(f"bench-store on {machine()}; {SECONDS_PER_CASE:g}s per case")
    if not url:
        print("kurrentdb: skipped (ESDB_URL not set)")

    results: list[Result] = []
    for name, open_store in stores:
        try:
            async with open_store() as store:
                # Warm up connections, statement caches and the file.
                await run_case(store, name, 1, 0.3)
                for batch in (1, 500):
                    results.append(await run_case(store, name, batch, SECONDS_PER_CASE))
        except OSError as exc:
            print(f"{name}: skipped ({exc})")

    print()
    print(f"{'store':<12} {'batch':>6} {'events':>9} {'seconds':>8} {'events/s':>10}")
    for r in results:
        print(f"{r.store:<12} {r.batch:>6} {r.events:>9} {r.seconds:>8.2f} {r.per_second:>10}")
    by_key = {(r.store, r.batch): r.per_second for r in results}
    print(
        "RESULT store"
        f" postgresql_batch500_per_s={by_key.get(('postgresql', 500), 0)}"
        f" sqlite_batch500_per_s={by_key.get(('sqlite', 500), 0)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
