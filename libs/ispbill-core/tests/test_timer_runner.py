"""TimerRunner on the real SQLite ledger file: fires what is due by its clock, completes,
postpones, backs off on transient failures, parks what fails for good and fires it again when
someone asks to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.eventstore import StoreUnavailable
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections import ParkedStatus
from ispbill_core.projections.sqlite import SQLiteReadModels
from ispbill_core.timers import DueTimer, FireAgain
from ispbill_core.timers.runner import TimerRunner, parked_consumer, timer_from_parked
from ispbill_core.timers.sqlite import SQLiteTimers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@dataclass
class Handler:
    """Keeps what it fired, at what time; answers with `again`, or raises what it is told."""

    fired: list[tuple[str, datetime]] = field(default_factory=list)
    again: datetime | None = None
    raises: list[Exception] = field(default_factory=list)
    fired_one: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, timer: DueTimer, now: datetime) -> datetime | None:
        if self.raises:
            raise self.raises.pop(0)
        self.fired.append((timer.timer_id, now))
        self.fired_one.set()
        return self.again


@dataclass
class Rig:
    store: SQLiteEventStore
    timers: SQLiteTimers
    parking: SQLiteReadModels
    clock: FixedClock
    handler: Handler

    def runner(self, **kwargs: object) -> TimerRunner:
        return TimerRunner(
            self.timers,
            {"test.kind": self.handler},
            self.clock,
            parking=self.parking,
            **kwargs,  # type: ignore[arg-type]
        )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    try:
        yield Rig(store, SQLiteTimers(store), SQLiteReadModels(store), FixedClock(T0), Handler())
    finally:
        await store.close()


async def test_a_due_timer_is_fired_at_the_clocks_now_and_completed(rig: Rig) -> None:
    await rig.timers.schedule("t-1", T0 + MINUTE, "test.kind", {"v": 1})
    runner = rig.runner()
    assert await runner.run_once() == 0
    rig.clock.advance(MINUTE + timedelta(seconds=5))
    assert await runner.run_once() == 1
    assert rig.handler.fired == [("t-1", T0 + MINUTE + timedelta(seconds=5))]
    assert await rig.timers.get("t-1") is None
    assert await runner.run_once() == 0


async def test_only_the_kinds_it_has_handlers_for_are_fired(rig: Rig) -> None:
    await rig.timers.schedule("mine", T0, "test.kind", {})
    await rig.timers.schedule("theirs", T0, "invoicing.bill-run", {})
    assert await rig.runner().run_once() == 1
    assert [t for t, _ in rig.handler.fired] == ["mine"]
    theirs = await rig.timers.get("theirs")
    assert theirs is not None and theirs.claim == ""


async def test_a_handler_that_names_a_time_postpones_its_timer_there(rig: Rig) -> None:
    await rig.timers.schedule("t-1", T0, "test.kind", {})
    rig.handler.again = T0 + 10 * MINUTE
    runner = rig.runner()
    await runner.run_once()
    stored = await rig.timers.get("t-1")
    assert stored is not None and stored.due_at == T0 + 10 * MINUTE and stored.claim == ""
    rig.handler.again = None
    rig.clock.set(T0 + 10 * MINUTE)
    await runner.run_once()
    assert [t for t, _ in rig.handler.fired] == ["t-1", "t-1"]
    assert await rig.timers.get("t-1") is None


async def test_a_handler_can_fire_again_with_a_new_payload(rig: Rig) -> None:
    await rig.timers.schedule("t-1", T0, "test.kind", {"v": 1})
    rig.handler.again = FireAgain(T0 + MINUTE, {"v": 2})  # type: ignore[assignment]
    await rig.runner().run_once()
    stored = await rig.timers.get("t-1")
    assert stored is not None and (stored.due_at, dict(stored.payload)) == (T0 + MINUTE, {"v": 2})


async def test_a_transient_failure_fires_again_after_a_backoff_that_grows(rig: Rig) -> None:
    await rig.timers.schedule("t-1", T0, "test.kind", {})
    rig.handler.raises = [StoreUnavailable("down"), StoreUnavailable("still down")]
    runner = rig.runner()
    await runner.run_once()
    first = await rig.timers.get("t-1")
    assert first is not None and first.due_at == T0 + timedelta(seconds=2)  # 2 ** attempts
    rig.clock.set(first.due_at)
    await runner.run_once()
    second = await rig.timers.get("t-1")
    assert second is not None and second.due_at == first.due_at + timedelta(seconds=4)
    rig.clock.set(second.due_at)
    await runner.run_once()
    assert [t for t, _ in rig.handler.fired] == ["t-1"]
    assert await rig.timers.get("t-1") is None
    assert runner.failures == 2 and runner.parked == 0


async def test_a_timer_that_fails_for_good_is_parked_listed_and_fired_again_on_retry(
    rig: Rig,
) -> None:
    await rig.timers.schedule("t-1", T0, "test.kind", {"session": "s-1"})
    await rig.timers.schedule("t-2", T0, "test.kind", {})
    rig.handler.raises = [ValueError("bad payload")]
    runner = rig.runner()
    assert await runner.run_once() == 2
    # parked with its reason, removed from the timers; the next timer still fired
    assert await rig.timers.get("t-1") is None
    assert [t for t, _ in rig.handler.fired] == ["t-2"]
    [parked] = await rig.parking.parked(consumer=parked_consumer("test.kind"))
    assert parked.reason.startswith("ValueError: bad payload")
    assert parked.stream == "timer-t-1"
    kept = timer_from_parked(parked.event())
    assert (kept.timer_id, kept.kind, kept.due_at, dict(kept.payload)) == (
        "t-1",
        "test.kind",
        T0,
        {"session": "s-1"},
    )
    # `ispbill parked retry`: the runner fires it again and resolves it
    await rig.parking.set_parked_status(parked.id, ParkedStatus.RETRY)
    rig.handler.again = T0 + 5 * MINUTE  # and its handler asks to look again later
    await runner._retry_requested()
    assert [t for t, _ in rig.handler.fired] == ["t-2", "t-1"]
    assert [p.status for p in await rig.parking.parked(status=None)] == [ParkedStatus.RESOLVED]
    again = await rig.timers.get("t-1")
    assert again is not None and again.due_at == T0 + 5 * MINUTE


async def test_without_parking_a_failure_for_good_backs_off_instead(rig: Rig) -> None:
    await rig.timers.schedule("t-1", T0, "test.kind", {})
    rig.handler.raises = [ValueError("bad")]
    runner = TimerRunner(rig.timers, {"test.kind": rig.handler}, rig.clock)
    await runner.run_once()
    stored = await rig.timers.get("t-1")
    assert stored is not None and stored.due_at > T0


async def test_the_running_loop_fires_what_the_clock_makes_due_without_waiting_for_it(
    rig: Rig,
) -> None:
    """A controllable clock: the runner polls every 10 ms of real time, and a deadline an
    hour away fires as soon as the clock is moved past it."""
    await rig.timers.schedule("t-1", T0 + timedelta(hours=1), "test.kind", {})
    task = asyncio.create_task(rig.runner(poll_interval=0.01).run())
    try:
        await asyncio.sleep(0.1)
        assert rig.handler.fired == []
        rig.clock.advance(timedelta(hours=1))
        await asyncio.wait_for(rig.handler.fired_one.wait(), 5)
        assert rig.handler.fired == [("t-1", T0 + timedelta(hours=1))]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_runner_whose_database_fails_keeps_trying(rig: Rig) -> None:
    class Flaky(SQLiteTimers):
        failures = 2

        async def claim_due(self, now, **kwargs):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("the ledger is restarting")
            return await super().claim_due(now, **kwargs)

    flaky = Flaky(rig.store)
    await flaky.schedule("t-1", T0, "test.kind", {})
    runner = TimerRunner(flaky, {"test.kind": rig.handler}, rig.clock, poll_interval=0.01)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(rig.handler.fired_one.wait(), 5)
        assert runner.failures == 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
