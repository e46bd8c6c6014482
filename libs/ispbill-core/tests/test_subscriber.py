"""LedgerSubscriber on the real SQLite ledger: order, checkpoints, retries, live follow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ispbill_core.events import EventMetadata, NewEvent, RecordedEvent, deterministic_id
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.subscriber import LedgerSubscriber

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def event(n: int, type_: str = "Tick") -> NewEvent:
    return NewEvent(
        id=deterministic_id("subscriber-test", n),
        type=type_,
        version=1,
        data={"n": n},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


async def append(store: SQLiteEventStore, numbers: range, type_: str = "Tick") -> None:
    for n in numbers:
        # Several streams, so that global order is not just one stream's order.
        await store.append(f"ticks-{n % 3}", [event(n, type_)], ANY)


class Seen:
    """A handler that keeps what it was given and can be told to fail or to hold."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.positions: list[int] = []
        self.fail_times: dict[int, int] = {}
        self.hold_on: int | None = None
        self.holding = asyncio.Event()
        self.changed = asyncio.Event()
        self.failures = 0

    async def __call__(self, recorded: RecordedEvent) -> None:
        n = recorded.data["n"]
        if self.fail_times.get(n, 0) > 0:
            self.fail_times[n] -= 1
            self.failures += 1
            self.changed.set()
            raise RuntimeError(f"handler failed on {n}")
        if n == self.hold_on:
            self.holding.set()
            await asyncio.Event().wait()  # until cancelled
        self.numbers.append(n)
        self.positions.append(recorded.global_position)
        self.changed.set()

    async def wait_for(self, count: int, *, failures: int = 0) -> None:
        async with asyncio.timeout(10):
            while len(self.numbers) < count or self.failures < failures:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[SQLiteEventStore]:
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def running(subscriber: LedgerSubscriber) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(subscriber.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_delivers_every_event_in_global_order_then_follows_live(store) -> None:
    await append(store, range(0, 20))
    seen = Seen()
    subscriber = LedgerSubscriber("projection", store, store, seen)
    async with running(subscriber):
        await subscriber.wait_caught_up()
        assert seen.numbers == list(range(20))
        await append(store, range(20, 25))
        await seen.wait_for(25)
    assert seen.numbers == list(range(25))
    assert seen.positions == sorted(seen.positions)
    assert len(set(seen.positions)) == 25
    # Cancelled between the handler and the checkpoint save, the last event comes again.
    assert await store.load_checkpoint("projection") in seen.positions[-2:]


async def test_more_than_one_batch_is_delivered_in_order(store) -> None:
    events = [event(n) for n in range(1200)]
    for start in range(0, 1200, 300):
        await store.append(f"bulk-{start}", events[start : start + 300], ANY)
    seen = Seen()
    subscriber = LedgerSubscriber("bulk", store, store, seen)
    async with running(subscriber):
        await seen.wait_for(1200)
    assert seen.numbers == list(range(1200))


async def test_only_the_requested_types_are_delivered(store) -> None:
    await append(store, range(0, 5), "Tick")
    await append(store, range(5, 10), "Tock")
    seen = Seen()
    subscriber = LedgerSubscriber("tocks", store, store, seen, types={"Tock"})
    async with running(subscriber):
        await subscriber.wait_caught_up()
    assert seen.numbers == [5, 6, 7, 8, 9]


async def test_idle_with_other_types_after_its_last_event_it_waits_and_still_follows(
    store,
) -> None:
    await append(store, range(0, 2), "Tock")
    await append(store, range(2, 6), "Tick")  # past its last Tock: must not wake it in a loop
    reads = 0
    read_all = store.read_all

    async def counting_read_all(**kwargs):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return await read_all(**kwargs)

    store.read_all = counting_read_all  # type: ignore[method-assign]
    seen = Seen()
    subscriber = LedgerSubscriber("tocks", store, store, seen, types={"Tock"})
    async with running(subscriber):
        await subscriber.wait_caught_up()
        await asyncio.sleep(1.5)
        idle_reads = reads
        await append(store, range(6, 7), "Tock")
        await seen.wait_for(3)
    assert seen.numbers == [0, 1, 6]
    # Woken by its 1 s poll at most twice in 1.5 s, plus the catch-up read.
    assert idle_reads <= 4, f"{idle_reads} reads while idle: the subscriber spins"


async def test_resumes_from_its_checkpoint_after_being_cancelled(store) -> None:
    await append(store, range(0, 10))
    first = Seen()
    subscriber = LedgerSubscriber("mailer", store, store, first)
    async with running(subscriber):
        await subscriber.wait_caught_up()
    assert first.numbers == list(range(10))

    await append(store, range(10, 15))
    second = Seen()
    restarted = LedgerSubscriber("mailer", store, store, second)
    async with running(restarted):
        await restarted.wait_caught_up()
        await second.wait_for(5)
    assert second.numbers == list(range(10, 15))
    # Another subscriber name has its own checkpoint and starts from the beginning.
    other = Seen()
    fresh = LedgerSubscriber("other", store, store, other)
    async with running(fresh):
        await other.wait_for(15)
    assert other.numbers == list(range(15))


async def test_cancelled_inside_the_handler_redelivers_that_event(store) -> None:
    await append(store, range(0, 6))
    seen = Seen()
    seen.hold_on = 3
    subscriber = LedgerSubscriber("held", store, store, seen)
    async with running(subscriber):
        async with asyncio.timeout(10):
            await seen.holding.wait()
    assert seen.numbers == [0, 1, 2]

    again = Seen()
    restarted = LedgerSubscriber("held", store, store, again)
    async with running(restarted):
        await again.wait_for(3)
    assert again.numbers == [3, 4, 5]


async def test_a_failing_handler_is_retried_without_skipping_the_event(store) -> None:
    await append(store, range(0, 6))
    seen = Seen()
    seen.fail_times = {2: 3}
    subscriber = LedgerSubscriber("flaky", store, store, seen, max_backoff=0.2)
    async with running(subscriber):
        await seen.wait_for(6)
    assert seen.numbers == list(range(6))
    assert subscriber.failures == 3
    assert subscriber.handled == 6


async def test_the_checkpoint_does_not_pass_a_failing_event(store) -> None:
    await append(store, range(0, 4))
    seen = Seen()
    seen.fail_times = {1: 10_000}
    subscriber = LedgerSubscriber("stuck", store, store, seen, max_backoff=0.05)
    async with running(subscriber):
        await seen.wait_for(1, failures=3)
    assert seen.numbers == [0]
    assert await store.load_checkpoint("stuck") == seen.positions[0]
    # Once the handler is fixed, a restart delivers the failed event first.
    seen.fail_times = {}
    restarted = LedgerSubscriber("stuck", store, store, seen)
    async with running(restarted):
        await seen.wait_for(4)
    assert seen.numbers == [0, 1, 2, 3]


async def test_a_ledger_that_cannot_be_read_for_a_while_is_tried_again(store) -> None:
    """A database restarting under a reactor: the read fails, then works; nothing is skipped
    and the subscriber does not stop (it used to end its task, silently, in a running process)."""
    await append(store, range(0, 5))
    outages = {"read_all": 2, "load_checkpoint": 1, "head_position": 1}

    class Restarting:
        def __getattr__(self, name: str) -> object:
            method = getattr(store, name)
            if name not in outages:
                return method

            async def flaky(*args: object, **kwargs: object) -> object:
                if outages[name] > 0:
                    outages[name] -= 1
                    raise ConnectionError(f"{name}: the database is restarting")
                return await method(*args, **kwargs)

            return flaky

    seen = Seen()
    flaky_store = Restarting()
    subscriber = LedgerSubscriber(
        "reactor",
        flaky_store,
        flaky_store,
        seen,
        max_backoff=0.2,  # type: ignore[arg-type]
    )
    async with running(subscriber) as task:
        await seen.wait_for(5)
        await append(store, range(5, 8))
        await seen.wait_for(8)
        assert not task.done()
    assert seen.numbers == list(range(8))
    assert subscriber.failures == 4 and outages == {
        "read_all": 0,
        "load_checkpoint": 0,
        "head_position": 0,
    }


async def test_a_poison_event_is_parked_and_the_subscriber_goes_on(store) -> None:
    """Bad data (a RuntimeError here) parks that one event with its reason; the events after
    it are handled; marked for retry once the cause is fixed, it is handled and resolved."""
    from ispbill_core.projections import ParkedStatus
    from ispbill_core.projections.sqlite import SQLiteReadModels

    parking = SQLiteReadModels(store)
    await append(store, range(0, 5))
    seen = Seen()
    seen.fail_times = {2: 10_000}
    subscriber = LedgerSubscriber("mailer", store, store, seen, parking=parking)
    async with running(subscriber):
        await seen.wait_for(4)
        [parked] = await parking.parked(consumer="mailer")
        assert parked.event().data == {"n": 2}
        assert "RuntimeError: handler failed on 2" in parked.reason
        assert subscriber.parked == 1
        await append(store, range(5, 7))
        await seen.wait_for(6)
        assert seen.numbers == [0, 1, 3, 4, 5, 6]
        # fixed: a retry handles it, once
        seen.fail_times = {}
        await parking.set_parked_status(parked.id, ParkedStatus.RETRY)
        await seen.wait_for(7)
        for _ in range(100):
            found = await parking.parked_event(parked.id)
            if found is not None and found.status == ParkedStatus.RESOLVED:
                break
            await asyncio.sleep(0.05)
    assert seen.numbers == [0, 1, 3, 4, 5, 6, 2]
    assert found is not None and found.status == ParkedStatus.RESOLVED
    assert await parking.parked(consumer="mailer") == []


async def test_a_transient_failure_is_retried_not_parked(store) -> None:
    from ispbill_core.projections.sqlite import SQLiteReadModels
    from ispbill_core.subscriber import TransientError

    parking = SQLiteReadModels(store)
    await append(store, range(0, 3))
    calls: list[int] = []

    async def handler(recorded: RecordedEvent) -> None:
        n = recorded.data["n"]
        calls.append(n)
        if n == 1 and calls.count(1) < 3:
            raise TransientError("read model not there yet")

    subscriber = LedgerSubscriber(
        "waiting", store, store, handler, parking=parking, max_backoff=0.05
    )
    async with running(subscriber):
        for _ in range(200):
            if calls[-1:] == [2]:
                break
            await asyncio.sleep(0.02)
    assert calls == [0, 1, 1, 1, 2]
    assert await parking.parked() == []


async def test_a_batch_handler_gets_whole_batches_and_a_bad_event_falls_back_to_one_by_one(
    store: SQLiteEventStore,
) -> None:
    """With a batch handler, a read batch goes to it at once and the checkpoint moves once per
    batch; a batch that fails for good is handed to the single handler event by event, so
    that only the bad event is parked."""
    from ispbill_core.projections.sqlite import SQLiteReadModels

    await append(store, range(12))
    batches: list[list[int]] = []
    one_by_one = Seen()

    async def batch_handler(events: list[RecordedEvent], checkpoint: tuple[str, int]) -> bool:
        numbers = [e.data["n"] for e in events]
        if 7 in numbers:
            raise ValueError("7 is bad data")
        batches.append(numbers)
        assert checkpoint == ("batched", events[-1].global_position)
        return False  # the subscriber saves it

    async def single(recorded: RecordedEvent) -> None:
        if recorded.data["n"] == 7:
            raise ValueError("7 is bad data")
        await one_by_one(recorded)

    saves: list[int] = []
    save = store.save_checkpoint

    async def counting_save(name: str, position: int) -> None:
        saves.append(position)
        await save(name, position)

    store.save_checkpoint = counting_save  # type: ignore[method-assign]
    parking = SQLiteReadModels(store)
    subscriber = LedgerSubscriber(
        "batched",
        store,
        store,
        single,
        parking=parking,
        batch_handler=batch_handler,  # type: ignore[arg-type]
        batch_size=5,
    )
    async with running(subscriber):
        await subscriber.wait_caught_up()
    # 0-4 in one batch; 5-9 failed for good (7) and went one by one; 10-11 in one batch
    assert batches == [[0, 1, 2, 3, 4], [10, 11]]
    assert one_by_one.numbers == [5, 6, 8, 9]
    [parked] = await parking.parked(consumer="batched")
    assert parked.event().data["n"] == 7 and "bad data" in parked.reason
    assert len(saves) == 3 and saves == sorted(saves)
    assert subscriber.handled == 11 and subscriber.parked == 1
