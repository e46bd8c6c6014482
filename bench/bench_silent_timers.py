"""What watching sessions for silence costs rating: the timer write per batch of 500 records.

Run: `uv run --frozen python bench/bench_silent_timers.py`.

For each store (SQLite in a temp dir, synchronous=FULL as `ispbill run` opens it; PostgreSQL in
a database created on ISPBILL_BENCH_PG_ADMIN_DSN and dropped afterwards; ISPBILL_BENCH_STORES
picks) it:

1. times `watch_for_silence` alone on batches of 500 records (10,000 sessions on 20 NASes,
   interleaved as a BNG sends them, a tenth of them Stops): the first pass inserts the timers,
   the later ones move them (the steady state: every session has one);
2. rates ISPBILL_BENCH_RECORDS records (default 20,000) in batches of 500 with
   `Rating.rate_batch` on fresh ledgers: without timers; with the deadlines written before
   each batch (the embedded subscriber's way); and with the two writes overlapping (the Kafka
   worker's). ISPBILL_BENCH_ROUNDS rounds (default 3), interleaved; the best median of each
   is reported (the machine may be shared).

Last lines: RESULT silent_timers store=<s> watch_ms_per_batch=<median> p95=<..>
rate_ms_per_batch=<without> timers_first=<..> overlapped=<..> overhead_pct=<first>/<overlapped>
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.timers import Timers
from ispbill_core.timers.sqlite import SQLiteTimers
from rating.application.rate_accounting_record import RatingSettings
from rating.application.rate_batch import RatingCache
from rating.application.silent_sessions import watch_for_silence
from rating.bootstrap import Rating
from rating.domain.silent_sessions import SilentSessionSettings

PG_ADMIN_DSN = os.environ.get(
    "ISPBILL_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
STORES = os.environ.get("ISPBILL_BENCH_STORES", "sqlite,postgresql").split(",")
RECORDS = int(os.environ.get("ISPBILL_BENCH_RECORDS", "20000"))
SESSIONS = 10_000
START = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
SILENT = SilentSessionSettings()
BATCH = 500
ROUNDS = int(os.environ.get("ISPBILL_BENCH_ROUNDS", "3"))


def messages(count: int) -> list[NewEvent]:
    """Records of SESSIONS sessions, 10 each (Start, 8 interims, Stop), in time order."""
    out = []
    for n in range(count):
        s, step = n % SESSIONS, n // SESSIONS
        status = (
            AcctStatus.START
            if step == 0
            else AcctStatus.STOP
            if step % 10 == 9
            else AcctStatus.INTERIM_UPDATE
        )
        at = START + timedelta(seconds=step * 300 + s % 300)
        record = AccountingRecordReceived(
            record_id=deterministic_id("bench-silent", s, step),
            nas_id=f"nas-{s % 20:02d}",
            nas_ip="192.0.2.1",
            status=status,
            acct_session_id=f"{s:08x}",
            username=f"user{s:06d}",
            event_time=at,
            received_at=at,
            session_time=step * 300,
            input_octets=step * 7_000_000 + s,
            output_octets=step * 90_000_000 + s,
        )
        out.append(new_event(record, id=record.record_id, occurred_at=at))
    return out


def batches(items: list[NewEvent]) -> list[list[NewEvent]]:
    return [items[at : at + BATCH] for at in range(0, len(items), BATCH)]


@asynccontextmanager
async def opened(kind: str) -> AsyncIterator[tuple[EventStore, Timers]]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = SQLiteEventStore(Path(tmp) / "ledger.db")
            try:
                yield store, SQLiteTimers(store)
            finally:
                await store.close()
        return
    from ispbill_core.eventstore.postgresql import PostgresEventStore
    from ispbill_core.timers.postgresql import PostgresTimers

    name = f"ispbill_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_ADMIN_DSN.rpartition('/')[0]}/{name}"
    try:
        store = await PostgresEventStore.connect(dsn)
        timers = await PostgresTimers.connect(dsn)
        try:
            yield store, timers
        finally:
            await timers.close()
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def watch_cost(kind: str) -> tuple[float, float, float]:
    """(first pass median ms, steady median ms, steady p95 ms) per batch of 500."""
    records = batches(messages(SESSIONS * 4))
    async with opened(kind) as (_, timers):
        spent = []
        for batch in records:
            started = time.perf_counter()
            await watch_for_silence(timers, SILENT, batch)
            spent.append((time.perf_counter() - started) * 1000)
    first = spent[: SESSIONS // BATCH]
    steady = sorted(spent[SESSIONS // BATCH :])
    return statistics.median(first), statistics.median(steady), steady[int(len(steady) * 0.95)]


async def rate_cost(kind: str, with_timers: bool, *, checkpoint: bool = False) -> float:
    """Median ms per batch of 500 rated (no subscriptions: all usage unmatched, which costs
    rating the most appends per record). `checkpoint`: as the embedded subscriber rates (the
    deadlines written first), else as the Kafka worker (the two writes overlap)."""
    records = batches(messages(RECORDS))
    async with opened(kind) as (store, timers):
        rating = Rating(
            store,
            RatingSettings(timezone=ZoneInfo("UTC")),
            SILENT,
            timers if with_timers else None,
        )
        cache = RatingCache()
        spent = []
        for n, batch in enumerate(records):
            started = time.perf_counter()
            await rating.rate_batch(
                batch, cache, checkpoint=("bench", n + 1) if checkpoint else None
            )
            spent.append((time.perf_counter() - started) * 1000)
    return statistics.median(spent)


async def main() -> None:
    for kind in STORES:
        first, steady, p95 = await watch_cost(kind)
        print(f"{kind}: watch_for_silence per batch of {BATCH}: first pass {first:.2f} ms,")
        print(f"  steady state {steady:.2f} ms (p95 {p95:.2f} ms)")
        # interleaved rounds, the best median of each: the machine is shared, and what is
        # compared is the work, not the neighbours' load
        runs: dict[str, list[float]] = {"without": [], "first": [], "overlapped": []}
        for _ in range(ROUNDS):
            runs["without"].append(await rate_cost(kind, with_timers=False, checkpoint=True))
            runs["first"].append(await rate_cost(kind, with_timers=True, checkpoint=True))
            runs["overlapped"].append(await rate_cost(kind, with_timers=True))
        without, first, overlapped = (min(runs[k]) for k in ("without", "first", "overlapped"))
        print(f"  rounds (median ms per batch): {runs}")
        print(
            f"  rate_accounting_batch per batch: {without:.1f} ms; with timers written first"
            f" {first:.1f} ms; overlapped {overlapped:.1f} ms"
        )
        print(
            f"RESULT silent_timers store={kind} watch_ms_per_batch={steady:.2f} p95={p95:.2f}"
            f" rate_ms_per_batch={without:.1f} timers_first={first:.1f}"
            f" overlapped={overlapped:.1f} overhead_pct={(first - without) / without * 100:.1f}"
            f"/{(overlapped - without) / without * 100:.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
