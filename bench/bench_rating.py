"""Rating throughput: accounting records rated per second, against the raw batched append rate
of the same store measured in the same run.

Run: `uv run --frozen python bench/bench_rating.py` (or `make bench-rating`).

For each store (SQLite in a temp dir; PostgreSQL in a database created on
ISPBILL_BENCH_PG_ADMIN_DSN and dropped afterwards; ISPBILL_BENCH_STORES picks) it:

1. measures the raw batched append rate: `append_many` of 500 events (one per stream, the
   shape rating appends) for a few seconds (events/s);
2. records 100,000 accounting records (ISPBILL_BENCH_RECORDS) as the embedded collector does:
   10,000 sessions on 20 NASes, each a Start, interims and a Stop, 4,000 of the usernames with
   a subscription (the rest rated as unmatched usage), interleaved across sessions as a BNG
   sends them;
3. runs the embedded runtime's rating subscriber (batches of 500, `rate_accounting_batch`) from
   position 0 until every record is rated, and reports records/s and the ratio against (1).

Then the distributed runtime's half, on PostgreSQL: the same records published to a topic of
two partitions on a Tansu broker (loopback), rated by `serve rating`'s faust worker with its
batch handler, first one worker process, then two (a fresh database and topic each), timed from
the first record rated to the last (the consumer group's join is not counted).

Last lines: RESULT rating records_per_s=<n> ratio=<rated/raw append> store=<store>, and for
Kafka: RESULT rating records_per_s=<one worker> ratio=<..> two_workers_x=<two/one>
store=postgresql
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from machine_info import machine  # bench/, beside this script

from ispbill_core import gc_tuning
from ispbill_core.contracts.accounts import (
    PlanDefined,
    RadiusUsernameAssigned,
    SubscriptionStarted,
    TimeBand,
    plan_stream,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.usage_collector import (
    AccountingRecordReceived,
    AcctStatus,
    accounting_stream,
)
from ispbill_core.events import EventMetadata, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, NO_STREAM, EventStore
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from ispbill_core.timers import Timers

PG_ADMIN_DSN = os.environ.get(
    "ISPBILL_BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RECORDS = int(os.environ.get("ISPBILL_BENCH_RECORDS", "100000"))
STORES = os.environ.get("ISPBILL_BENCH_STORES", "sqlite,postgresql").split(",")
SESSIONS = max(1, RECORDS // 10)
NASES = 20
SUBSCRIBED = 0.4
#: sessions start from 21:45 and cross the plan's night band at 22:00: their deltas are split
START = datetime(2026, 3, 10, 21, 45, tzinfo=UTC)
RAW_SECONDS = float(os.environ.get("ISPBILL_BENCH_SECONDS", "5"))


def accounting_records() -> list[AccountingRecordReceived]:
    """SESSIONS sessions of 10 records (Start, 8 interims, Stop), interleaved by time."""
    out: list[tuple[datetime, int, AccountingRecordReceived]] = []
    for s in range(SESSIONS):
        nas = f"nas-{s % NASES:02d}"
        started = START + timedelta(seconds=s % 600)
        for step in range(10):
            seconds = step * 300
            status = (
                AcctStatus.START
                if step == 0
                else AcctStatus.STOP
                if step == 9
                else AcctStatus.INTERIM_UPDATE
            )
            at = started + timedelta(seconds=seconds)
            record = AccountingRecordReceived(
                record_id=deterministic_id("bench-record", s, step),
                nas_id=nas,
                nas_ip="192.0.2.1",
                status=status,
                acct_session_id=f"{s:08x}",
                username=f"user{s:06d}",
                event_time=at,
                received_at=at,
                session_time=seconds,
                input_octets=step * 7_000_000 + s,
                output_octets=step * 90_000_000 + s,
            )
            out.append((at, s, record))
    out.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in out[:RECORDS]]


async def subscriptions(store: EventStore) -> None:
    """A subscription for 40 % of the usernames (the rest is usage nobody has claimed)."""
    meta_at = START - timedelta(days=30)
    batches = []
    for s in range(int(SESSIONS * SUBSCRIBED)):
        username = f"user{s:06d}"
        started = SubscriptionStarted(
            subscription_id=f"sub-{s:06d}",
            customer_id=f"c-{s:06d}",
            plan_id="home",
            radius_username=username,
            started_on=date(2026, 1, 1),
        )
        claim = RadiusUsernameAssigned(
            username=username,
            customer_id=started.customer_id,
            subscription_id=started.subscription_id,
        )
        batches.append(
            (
                radius_user_stream(username),
                [new_event(claim, id=deterministic_id("claim", s), occurred_at=meta_at)],
                NO_STREAM,
            )
        )
        batches.append(
            (
                subscription_stream(started.subscription_id),
                [new_event(started, id=deterministic_id("sub", s), occurred_at=meta_at)],
                NO_STREAM,
            )
        )
    # the plan, with a free night band: each delta is split into buckets (period, band)
    night = TimeBand(name="night", start="22:00", end="06:00", multiplier="free")
    home = PlanDefined(
        plan_id="home",
        name="Home",
        monthly_fee=Money.of("10.00", "USD"),
        included_bytes=50 * 10**9,
        overage_price=Money.of("1.00", "USD"),
        time_bands=(night,),
    )
    batches.append(
        (
            plan_stream("home"),
            [new_event(home, id=deterministic_id("plan", "home"), occurred_at=meta_at)],
            NO_STREAM,
        )
    )
    for at in range(0, len(batches), 1000):
        await store.append_many(batches[at : at + 1000])


async def record_accounting(store: EventStore, records: list[AccountingRecordReceived]) -> None:
    """As the embedded collector appends them: one stream per NAS, batches of 500."""
    for at in range(0, len(records), 500):
        chunk = records[at : at + 500]
        by_nas: dict[str, list[NewEvent]] = {}
        for r in chunk:
            by_nas.setdefault(accounting_stream(r.nas_id), []).append(
                new_event(r, id=r.record_id, occurred_at=r.received_at, actor="system:collector")
            )
        await store.append_many([(stream, events, ANY) for stream, events in by_nas.items()])


async def raw_append_rate(store: EventStore) -> float:
    """append_many of 500 single-event streams, as rating appends, for RAW_SECONDS."""
    meta = EventMetadata(occurred_at=START, actor="bench")
    appended, spent = 0, 0.0
    n = 0
    while spent < RAW_SECONDS:
        batch = [
            (
                f"raw-{n}-{i}",
                [
                    NewEvent(
                        id=uuid.uuid4(),
                        type="UsageRated",
                        version=1,
                        data={"session_key": f"nas-1-{n}-{i}", "input_octets": i, "n": n},
                        metadata=meta,
                    )
                ],
                NO_STREAM,
            )
            for i in range(500)
        ]
        started = time.perf_counter()
        await store.append_many(batch)
        spent += time.perf_counter() - started
        appended += len(batch)
        n += 1
    return appended / spent


async def rate_everything(store: EventStore, records: int) -> float:
    from ispbill_app.bootstrap import Services
    from ispbill_app.settings import Settings

    settings = Settings(timezone=ZoneInfo("UTC"))
    services = Services(settings, None)
    services.store = store
    # As `serve`: each batch moves its sessions' silence deadlines too (durable timers).
    services.timers = await bench_timers(store)
    subscriber = services.rating_subscriber()
    started = time.perf_counter()
    task = asyncio.create_task(subscriber.run())
    try:
        while subscriber.handled + subscriber.parked < records:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await services.timers.close()
    seconds = time.perf_counter() - started
    if subscriber.parked:
        print(f"    {subscriber.parked} records parked", flush=True)
    return seconds


async def bench_timers(store: EventStore) -> Timers:
    """The timers `serve` keeps beside this ledger (its SQLite file, its PostgreSQL schema)."""
    if isinstance(store, SQLiteEventStore):
        from ispbill_core.timers.sqlite import SQLiteTimers

        return SQLiteTimers(store)
    from ispbill_core.timers.postgresql import PostgresTimers

    return await PostgresTimers.connect(store.bench_dsn, schema="ispbill")  # type: ignore[attr-defined]


@asynccontextmanager
async def sqlite_store() -> AsyncIterator[EventStore]:
    with tempfile.TemporaryDirectory(prefix="ispbill-bench-rating-") as tmp:
        store = SQLiteEventStore(Path(tmp) / "ledger.db")
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def postgres_store() -> AsyncIterator[EventStore]:
    import asyncpg

    from ispbill_core.eventstore.postgresql import PostgresEventStore

    database = f"ispbill_bench_rating_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    store = await PostgresEventStore.connect(f"{base}/{database}", schema="ispbill")
    store.bench_dsn = f"{base}/{database}"  # type: ignore[attr-defined]
    try:
        yield store
    finally:
        await store.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


async def kafka_worker(bootstrap: str, topic: str, dsn: str, app_id: str) -> None:
    """One `serve rating`-like worker process: the faust app with the batch handler."""
    from ispbill_core.eventstore.postgresql import PostgresEventStore
    from rating.application.rate_accounting_record import RatingSettings
    from rating.application.rate_batch import RatingCache
    from rating.bootstrap import Rating
    from rating.domain.silent_sessions import SilentSessionSettings
    from rating.entrypoints.faust_app import create_rating_app, run_rating_worker

    store = await PostgresEventStore.connect(dsn, schema="ispbill", listen=False)
    store.bench_dsn = dsn  # type: ignore[attr-defined]
    timers = await bench_timers(store)
    # As `serve rating`: each batch moves its sessions' silence deadlines while it is rated.
    rating = Rating(
        store, RatingSettings(timezone=ZoneInfo("UTC")), SilentSessionSettings(), timers
    )
    cache = RatingCache()

    async def one(message: NewEvent) -> None:
        await rating.rate_batch([message], cache)

    async def batch(messages: Sequence[NewEvent]) -> None:
        await rating.rate_batch(messages, cache)

    app = create_rating_app(
        broker=bootstrap,
        handler=one,
        batch_handler=batch,
        app_id=app_id,
        fast_join=True,
        topic=topic,
        data_dir=tempfile.mkdtemp(prefix="bench-rating-faust-"),
    )
    try:
        await run_rating_worker(app)
    finally:
        await timers.close()
        await store.close()


async def kafka_run(bootstrap: str, records: list[AccountingRecordReceived], workers: int) -> float:
    """Seconds from the first record rated to the last, with `workers` worker processes."""
    from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
    from ispbill_core.contracts.usage_collector import accounting_key

    topic = f"bench.rating.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], partitions=2)
    async with postgres_store() as store:
        await subscriptions(store)
        async with KafkaPublisher(bootstrap) as publisher:
            for at in range(0, len(records), 1000):
                await publisher.publish(
                    topic,
                    [
                        (
                            accounting_key(r.nas_id, r.acct_session_id),
                            new_event(r, id=r.record_id, occurred_at=r.received_at),
                        )
                        for r in records[at : at + 1000]
                    ],
                )
        dsn = store.bench_dsn  # type: ignore[attr-defined]
        app_id = f"bench-rating-{uuid.uuid4().hex[:6]}"
        procs = spawn_workers(workers, bootstrap, topic, dsn, app_id)
        try:
            first: float | None = None
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                done = await rated_count(store)
                now = time.perf_counter()
                if done and first is None:
                    first = now
                if done >= len(records):
                    assert first is not None
                    return now - first
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a rating worker stopped")
                await asyncio.sleep(0.2)
            raise TimeoutError("the workers did not rate every record in 15 minutes")
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


REPO_ROOT = str(Path(__file__).resolve().parents[1])


def spawn_workers(
    workers: int, bootstrap: str, topic: str, dsn: str, app_id: str
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, __file__, "kafka-worker", bootstrap, topic, dsn, app_id],
            env={**os.environ, "PYTHONPATH": REPO_ROOT},
        )
        for _ in range(workers)
    ]


async def rated_count(store: EventStore) -> int:
    """Records rated so far: SessionCountersRecorded events (one per record here)."""
    pool = store._pool  # type: ignore[attr-defined]
    async with pool.acquire() as conn:
        value = await conn.fetchval(
            "SELECT count(*) FROM ispbill.events WHERE type = 'SessionCountersRecorded'"
        )
    return int(value)


async def main() -> int:
    # As `ispbill run` and `ispbill serve` set the collector (ADR 0028), here and in each
    # Kafka worker process.
    gc_tuning.tune()
    if len(sys.argv) > 1 and sys.argv[1] == "kafka-worker":
        await kafka_worker(*sys.argv[2:6])
        return 0
    print(f"bench-rating on {machine()}; {RECORDS} records, {SESSIONS} sessions", flush=True)
    records = accounting_records()
    results = []
    for name in STORES:
        opener = sqlite_store if name == "sqlite" else postgres_store
        async with opener() as store:
            raw = await raw_append_rate(store)
            print(f"[{name}] raw append_many (500 streams a batch): {raw:.0f} events/s", flush=True)
            await subscriptions(store)
            await record_accounting(store, records)
            seconds = await rate_everything(store, len(records))
            per_s = len(records) / seconds
            print(
                f"[{name}] rated {len(records)} records in {seconds:.1f}s: {per_s:.0f}/s,"
                f" {per_s / raw:.2f} of the raw append rate",
                flush=True,
            )
            results.append((name, per_s, per_s / raw))
    kafka = None
    if "kafka" in STORES or os.environ.get("ISPBILL_BENCH_KAFKA", "1") == "1":
        sys.path.insert(0, REPO_ROOT)
        from tests.fixtures.kafka import TansuBroker

        with tempfile.TemporaryDirectory(prefix="bench-rating-tansu-") as tmp:
            broker = TansuBroker(log_path=Path(tmp) / "tansu.log")
            broker.start()
            try:
                async with postgres_store() as store:
                    raw = await raw_append_rate(store)
                one = len(records) / await kafka_run(broker.bootstrap, records, 1)
                print(
                    f"[kafka] one worker: {one:.0f} records/s ({one / raw:.2f} of raw)", flush=True
                )
                two = len(records) / await kafka_run(broker.bootstrap, records, 2)
                print(f"[kafka] two workers: {two:.0f} records/s ({two / one:.2f}x)", flush=True)
                kafka = (one, one / raw, two / one)
            finally:
                broker.stop()
    for name, per_s, ratio in results:
        print(f"RESULT rating records_per_s={per_s:.0f} ratio={ratio:.2f} store={name}")
    if kafka is not None:
        one, ratio, x = kafka
        print(
            f"RESULT rating records_per_s={one:.0f} ratio={ratio:.2f} two_workers_x={x:.2f}"
            " store=postgresql"
        )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
