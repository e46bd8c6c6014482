"""Silent sessions in the embedded runtime: records published on the ledger bus, rated by the
`rating` subscriber, the session closed by the process's timer runner once its clock passes the
deadline (a controllable clock: nothing sleeps for minutes); and its parked timers listed and
retried like parked events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from ispbill_app.bootstrap import Services, open_ledger
from ispbill_app.collector_runtime import embedded_stream_for
from ispbill_app.settings import Settings
from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import SubscriptionStarted
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    AccountingRecordReceived,
    AcctStatus,
    accounting_key,
)
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.projections import ParkedStatus
from ispbill_core.timers.runner import parked_consumer
from rating.application.rate_accounting_record import session_index_stream
from rating.application.silent_sessions import SILENT_SESSION_TIMER, silence_timer_id
from tests.fixtures.radius import START, claim, message, record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

INTERVAL = 300
SILENT_AFTER = timedelta(seconds=3 * INTERVAL)


class Running:
    def __init__(self, services: Services, clock: FixedClock) -> None:
        self.services = services
        self.clock = clock
        self.publisher = LedgerPublisher(services.store, embedded_stream_for)

    async def publish(self, *records: AccountingRecordReceived) -> None:
        """As the embedded collector publishes what it acknowledged."""
        await self.publisher.publish(
            ACCOUNTING_TOPIC,
            [(accounting_key(r.nas_id, r.acct_session_id), message(r)) for r in records],
        )

    async def statuses(self) -> list[str]:
        store = self.services.store
        [opened] = await store.read_stream(session_index_stream("nas-1", "s-1"))
        stream = f"session-{opened.data['session_key']}"
        return [e.data["status"] for e in await store.read_stream(stream)]


async def eventually(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    settings = Settings(
        data_dir=tmp_path / "data",
        ledger="sqlite",
        rating_interim_interval=INTERVAL,
        rating_silent_session_intervals=3,
        timer_poll_interval=0.02,
    )
    settings.data_dir.mkdir()
    clock = FixedClock(START)
    services = Services(settings, None, clock=clock)
    services.store = await open_ledger(settings)
    await services.open_read_models(run_projections=False)
    await services.open_timers()
    await claim(
        services.store,
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 1, 1),
        ),
    )
    # what run_embedded starts for rating: the subscriber and the timer runner
    runner = services.timer_runner(services.embedded_rating().timer_handlers())
    tasks = [
        asyncio.create_task(services.rating_subscriber().run()),
        asyncio.create_task(runner.run()),
    ]
    try:
        yield Running(services, clock)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await services.require_timers().close()
        await services.require_read_models().close()
        await services.store.close()


async def test_the_embedded_runtime_closes_a_silent_session_when_its_clock_passes_the_deadline(
    running: Running,
) -> None:
    store = running.services.store
    timers = running.services.require_timers()
    timer_id = silence_timer_id("nas-1", "s-1")
    await running.publish(
        record(AcctStatus.START, 0, 0, 0), record(AcctStatus.INTERIM_UPDATE, 300, 1000, 2000)
    )
    timer = await eventually(lambda: timers.get(timer_id), "the session's deadline")
    deadline = START + timedelta(seconds=300) + SILENT_AFTER
    assert (timer.kind, timer.due_at) == (SILENT_SESSION_TIMER, deadline)
    await eventually(lambda: all_events_of(store, UsageRated), "the interim rated")

    running.clock.set(deadline - timedelta(seconds=1))
    await asyncio.sleep(0.2)  # ten polls of the runner: not silent yet
    assert await running.statuses() == ["start", "interim-update"]

    running.clock.set(deadline)
    await eventually(lambda: _closed(running), "the session closed by the runner at its deadline")
    assert await running.statuses() == ["start", "interim-update", "silent-timeout"]
    assert await timers.get(timer_id) is None

    # the NAS was only cut off: its next interim still counts, once
    late = record(AcctStatus.INTERIM_UPDATE, 1500, 1500, 2100)
    await running.publish(late, late)

    async def all_counted() -> bool:
        usage = await all_events_of(store, UsageRated)
        return sum(u.input_octets for u in usage) == 1500

    await eventually(all_counted, "the late interim rated")
    usage = await all_events_of(store, UsageRated)
    assert (sum(u.input_octets for u in usage), sum(u.output_octets for u in usage)) == (
        1500,
        2100,
    )
    assert await running.statuses() == [
        "start",
        "interim-update",
        "silent-timeout",
        "interim-update",
    ]


async def _closed(running: Running) -> bool:
    return "silent-timeout" in await running.statuses()


async def test_a_timer_whose_handler_fails_for_good_is_parked_and_retried_by_hand(
    running: Running,
) -> None:
    timers = running.services.require_timers()
    parking = running.services.require_read_models()
    # a deadline whose payload names no session id (an older version's, a bug): it cannot fire
    await timers.schedule("silent-session/broken", START, SILENT_SESSION_TIMER, {"nas_id": "x"})
    consumer = parked_consumer(SILENT_SESSION_TIMER)
    [parked] = await eventually(lambda: parking.parked(consumer=consumer), "the timer parked")
    assert parked.reason.startswith("KeyError")
    assert await timers.get("silent-session/broken") is None
    # `ispbill parked retry`: it fails again, and is parked again with its attempts counted
    await parking.set_parked_status(parked.id, ParkedStatus.RETRY)

    async def parked_twice() -> bool:
        [entry] = await parking.parked(consumer=consumer, status=None)
        return entry.status == ParkedStatus.PARKED and entry.attempts == 2

    await eventually(parked_twice, "the retried timer parked again")
