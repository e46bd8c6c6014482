"""Rating killed with SIGKILL at random points of a replay: the ledger still holds every byte
once (issue 9).

`ispbill serve rating` runs as a real process on a PostgreSQL ledger (a schema of this test's
own, in the run's database) and a Tansu broker of its own. The accounting records of many
sessions are on the topic; the worker is SIGKILLed when the ledger has rated a random share of
them, several times, and started again each time; after the last start it rates the rest.
Then, for every session, the ledger's rated usage equals the session's Stop counters to the
byte, every record was applied to its session once (one SessionCountersRecorded per record id)
and rated once (one UsageRated per record id), and nothing went to the dead-letter topic.

Sizes: ISPBILL_FAULT_RECORDS (default 20,000: about a minute and a half here, kills included),
ISPBILL_FAULT_KILLS (default 5), ISPBILL_FAULT_SEED (default: random, printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
from ispbill_core.bus.kafka_dead_letters import dead_letter_topic, read_dead_letters
from ispbill_core.contracts.accounts import (
    RadiusUsernameAssigned,
    SubscriptionStarted,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    AccountingRecordReceived,
    AcctStatus,
    accounting_key,
)
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.postgresql import PostgresEventStore
from tests.e2e.harness import ISPBILL, Process
from tests.fixtures.kafka import TansuBroker, TansuNotFound

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(1200)]

RECORDS = int(os.environ.get("ISPBILL_FAULT_RECORDS", "20000"))
KILLS = int(os.environ.get("ISPBILL_FAULT_KILLS", "5"))
SEED = int(os.environ.get("ISPBILL_FAULT_SEED", str(random.SystemRandom().randrange(10**6))))
STEPS = 10  # records per session: a Start, 8 Interim-Updates, a Stop
NASES = 20
USERNAMES = 1000
START = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def sessions(records: int) -> list[list[AccountingRecordReceived]]:
    """records // 10 sessions on 20 NASes; counters past 2^32 (the collector has added the
    Gigawords), different in every session."""
    out = []
    for s in range(max(1, records // STEPS)):
        nas, sid = f"nas-{s % NASES:02d}", f"{s:08x}"
        started = START + timedelta(seconds=s % 900)
        in_step, out_step = 600_000_000 + 7 * s, 90_000_000 + 11 * s
        session = []
        for step in range(STEPS):
            status = (
                AcctStatus.START
                if step == 0
                else AcctStatus.STOP
                if step == STEPS - 1
                else AcctStatus.INTERIM_UPDATE
            )
            at = started + timedelta(seconds=300 * step)
            session.append(
                AccountingRecordReceived(
                    record_id=deterministic_id("fault-record", s, step),
                    nas_id=nas,
                    nas_ip="192.0.2.1",
                    status=status,
                    acct_session_id=sid,
                    username=f"user{s % USERNAMES:05d}",
                    event_time=at,
                    received_at=at,
                    session_time=300 * step,
                    input_octets=step * in_step,
                    output_octets=step * out_step,
                )
            )
        out.append(session)
    return out


def as_a_nas_sends_them(all_sessions: list[list[AccountingRecordReceived]]) -> list:
    """Every session's records, interleaved by time across sessions."""
    flat = [(r.event_time, s, r) for s, session in enumerate(all_sessions) for r in session]
    flat.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in flat]


async def subscribe_every_username(store: PostgresEventStore) -> None:
    """A subscription for every username, started before the usage: all of it is rated."""
    batches = []
    for u in range(USERNAMES):
        username = f"user{u:05d}"
        started = SubscriptionStarted(
            subscription_id=f"sub-{u:05d}",
            customer_id=f"c-{u:05d}",
            plan_id="home",
            radius_username=username,
            started_on=date(2026, 1, 1),
        )
        claim = RadiusUsernameAssigned(
            username=username,
            customer_id=started.customer_id,
            subscription_id=started.subscription_id,
        )
        at = START - timedelta(days=30)
        batches.append(
            (
                radius_user_stream(username),
                [new_event(claim, id=deterministic_id("claim", u), occurred_at=at)],
                NO_STREAM,
            )
        )
        batches.append(
            (
                subscription_stream(started.subscription_id),
                [new_event(started, id=deterministic_id("sub", u), occurred_at=at)],
                NO_STREAM,
            )
        )
    for at in range(0, len(batches), 1000):
        await store.append_many(batches[at : at + 1000])


async def publish(bootstrap: str, records: list[AccountingRecordReceived]) -> None:
    """As the collector publishes them: keyed by NAS and session, 3 partitions."""
    await ensure_topics(bootstrap, [ACCOUNTING_TOPIC], partitions=3)
    async with KafkaPublisher(bootstrap) as publisher:
        for at in range(0, len(records), 2000):
            await publisher.publish(
                ACCOUNTING_TOPIC,
                [
                    (
                        accounting_key(r.nas_id, r.acct_session_id),
                        new_event(r, id=r.record_id, occurred_at=r.received_at),
                    )
                    for r in records[at : at + 2000]
                ],
            )


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker of this test's own: `serve rating` uses the real topic and group."""
    try:
        tansu = TansuBroker()
    except TansuNotFound as exc:
        pytest.skip(str(exc))
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


class Ledger:
    """What the test reads from the ledger's tables."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn, self.schema = dsn, schema

    async def fetch(self, sql: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql.replace("{events}", f'"{self.schema}".events')))
        finally:
            await conn.close()

    def applied(self) -> int:
        """Records applied to their session so far."""
        rows = asyncio.run(
            self.fetch("SELECT count(*) FROM {events} WHERE type = 'SessionCountersRecorded'")
        )
        return int(rows[0][0])


class Rating:
    """`ispbill serve rating` processes, one after the other."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.runs: list[Process] = []

    def start(self) -> Process:
        process = Process(
            f"rating-{len(self.runs) + 1}", [*ISPBILL, "serve", "rating"], self.tmp, self.env
        )
        self.runs.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log_text()[-3000:]}" for p in self.runs)


def wait_until_applied(ledger: Ledger, rating: Process, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rating.assert_running()
        done = ledger.applied()
        if done >= count:
            return done
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} records applied after {timeout} s")


def test_rating_killed_at_random_points_rates_every_byte_once(
    tmp_path: Path, postgres_dsn: str, broker: TansuBroker
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    print(f"rating fault test: {RECORDS} records, {KILLS} kills, ISPBILL_FAULT_SEED={SEED}")
    all_sessions = sessions(RECORDS)
    records = as_a_nas_sends_them(all_sessions)
    schema = f"faults_{uuid.uuid4().hex[:8]}"

    async def prepare() -> None:
        store = await PostgresEventStore.connect(postgres_dsn, schema=schema, listen=False)
        try:
            await subscribe_every_username(store)
        finally:
            await store.close()
        await publish(broker.bootstrap, records)

    asyncio.run(prepare())
    ledger = Ledger(postgres_dsn, schema)
    rating = Rating(
        tmp_path,
        {
            "ISPBILL_LEDGER": postgres_dsn,
            "ISPBILL_LEDGER_SCHEMA": schema,
            "ISPBILL_KAFKA": broker.bootstrap,
            "ISPBILL_DATA_DIR": str(tmp_path / "data"),
            "ISPBILL_TIMEZONE": "UTC",
            "ISPBILL_SECRETS_KEY": "",
        },
    )
    prepared = time.monotonic()
    kill_points = sorted(rng.sample(range(len(records) // 20, len(records) * 19 // 20), KILLS))
    killed_at = []
    try:
        for point in kill_points:
            process = rating.start()
            before = ledger.applied()
            # Past the point, and past what the previous process left: each kill lands while
            # this process is rating (its batch's transaction open, or its offsets not
            # committed yet), not while it is still joining the group.
            wait_until_applied(ledger, process, max(point, before + 1), timeout=300)
            # A batch commits hundreds of records at once: a random instant of the next one.
            time.sleep(rng.uniform(0, 0.4))
            os.kill(process.proc.pid, signal.SIGKILL)
            process.proc.wait(10)
            assert process.stop() == -signal.SIGKILL
            done = ledger.applied()
            killed_at.append(done)
        last = rating.start()
        wait_until_applied(ledger, last, len(records), timeout=600)
        time.sleep(2)  # anything rated twice after the last record would show up now
        assert last.stop() == 0, rating.logs()
    except BaseException:
        print(rating.logs())
        raise
    rated = time.monotonic()

    applied = asyncio.run(
        ledger.fetch(
            "SELECT data->>'record_id' AS id, count(*) AS n FROM {events}"
            " WHERE type = 'SessionCountersRecorded' GROUP BY 1"
        )
    )
    usage = asyncio.run(
        ledger.fetch(
            "SELECT data->>'record_id' AS id, data->>'session_key' AS session,"
            " (data->>'input_octets')::bigint AS input, (data->>'output_octets')::bigint AS output"
            " FROM {events} WHERE type = 'UsageRated'"
        )
    )
    sent = {str(r.record_id) for r in records}
    assert {row["id"] for row in applied} == sent, "every record applied"
    assert [row for row in applied if row["n"] != 1] == [], "each record applied once"
    twice = [i for i, n in Counter(row["id"] for row in usage).items() if n > 1]
    assert twice == [], "each record rated once"
    assert {row["id"] for row in usage} <= sent

    per_session: dict[str, list[int]] = {}
    for row in usage:
        octets = per_session.setdefault(row["session"], [0, 0])
        octets[0] += row["input"]
        octets[1] += row["output"]
    stops = sorted((s[-1].input_octets, s[-1].output_octets) for s in all_sessions)
    assert sorted(tuple(o) for o in per_session.values()) == stops, "every session to the byte"
    total = sum(i + o for i, o in stops)
    assert sum(row["input"] + row["output"] for row in usage) == total
    dead = asyncio.run(read_dead_letters(broker.bootstrap, dead_letter_topic(ACCOUNTING_TOPIC)))
    assert dead == []

    print(
        f"rating fault test: {len(records)} records ({total:,} bytes) rated once through"
        f" {KILLS} SIGKILLs at {killed_at} records; prepare {prepared - began:.1f} s,"
        f" kills and rating {rated - prepared:.1f} s, total {time.monotonic() - began:.1f} s"
    )
