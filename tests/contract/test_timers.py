"""The timer contract: one abstract suite, subclassed for each database timers live in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.timers import DueTimer, Timer, Timers
from ispbill_core.timers.sqlite import SQLiteTimers

pytestmark = pytest.mark.contract

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
LEASE = timedelta(minutes=5)

TimersFactory = Callable[[], Awaitable[Timers]]


class TimersContract:
    """Every adapter of the Timers port passes these."""

    @pytest.fixture
    def timers_factory(self) -> TimersFactory:
        raise NotImplementedError

    @pytest.fixture
    async def open_timers(self, timers_factory: TimersFactory) -> AsyncIterator[TimersFactory]:
        """More handles on the same database (another process's runner)."""
        opened: list[Timers] = []

        async def factory() -> Timers:
            timers = await timers_factory()
            opened.append(timers)
            return timers

        yield factory
        for timers in opened:
            await timers.close()

    @pytest.fixture
    async def timers(self, open_timers: TimersFactory) -> Timers:
        return await open_timers()

    async def claim(self, timers: Timers, now: datetime, **kwargs: object) -> list[DueTimer]:
        return await timers.claim_due(now, lease=LEASE, **kwargs)  # type: ignore[arg-type]

    # -- schedule ------------------------------------------------------------------------
    async def test_a_timer_is_handed_out_once_it_is_due_and_not_before(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0 + MINUTE, "test.kind", {"session": "s-1", "n": 3})
        assert await self.claim(timers, T0) == []
        assert await self.claim(timers, T0 + MINUTE - timedelta(microseconds=1)) == []
        [due] = await self.claim(timers, T0 + MINUTE)
        assert (due.timer_id, due.kind, due.due_at, dict(due.payload), due.attempts) == (
            "t-1",
            "test.kind",
            T0 + MINUTE,
            {"session": "s-1", "n": 3},
            1,
        )
        assert due.claim

    async def test_due_times_come_back_aware_in_utc_to_the_microsecond(
        self, timers: Timers
    ) -> None:
        at = datetime(2026, 3, 29, 3, 30, 1, 123456, tzinfo=UTC).astimezone(
            ZoneInfo("Europe/Berlin")
        )
        await timers.schedule("t-1", at, "test.kind", {})
        stored = await timers.get("t-1")
        assert stored is not None
        assert stored.due_at == at and stored.due_at.utcoffset() == timedelta(0)
        [due] = await self.claim(timers, at)
        assert due.due_at == at

    async def test_scheduling_the_same_id_again_moves_its_deadline(self, timers: Timers) -> None:
        await timers.schedule("t-1", T0 + MINUTE, "test.kind", {"v": 1})
        await timers.schedule("t-1", T0 + 10 * MINUTE, "test.kind", {"v": 2})
        assert await self.claim(timers, T0 + 5 * MINUTE) == []
        await timers.schedule("t-1", T0 + 2 * MINUTE, "test.kind", {"v": 3})
        [due] = await self.claim(timers, T0 + 5 * MINUTE)
        assert (due.due_at, dict(due.payload)) == (T0 + 2 * MINUTE, {"v": 3})
        await timers.complete(due)
        assert await timers.get("t-1") is None
        assert await self.claim(timers, T0 + 100 * MINUTE) == []

    async def test_the_same_schedule_twice_is_one_timer(self, timers: Timers) -> None:
        for _ in range(3):
            await timers.schedule("t-1", T0, "test.kind", {"v": 1})
        due = await self.claim(timers, T0 + MINUTE, limit=10)
        assert [t.timer_id for t in due] == ["t-1"]

    async def test_schedule_many_keeps_the_last_of_an_id_and_cancels_in_the_same_call(
        self, timers: Timers
    ) -> None:
        await timers.schedule("gone", T0, "test.kind", {})
        await timers.schedule_many(
            [
                Timer("a", "test.kind", T0 + MINUTE, {"v": 1}),
                Timer("b", "test.kind", T0 + 2 * MINUTE),
                Timer("a", "test.kind", T0 + 3 * MINUTE, {"v": 2}),
            ],
            cancel=["gone", "never-scheduled"],
        )
        assert await timers.get("gone") is None
        due = await self.claim(timers, T0 + 10 * MINUTE, limit=10)
        assert [(t.timer_id, t.due_at, dict(t.payload)) for t in due] == [
            ("b", T0 + 2 * MINUTE, {}),
            ("a", T0 + 3 * MINUTE, {"v": 2}),
        ]

    async def test_a_large_batch_is_scheduled_and_cancelled_whole(self, timers: Timers) -> None:
        batch = [Timer(f"t-{n:04d}", "test.kind", T0 + timedelta(seconds=n)) for n in range(1200)]
        await timers.schedule_many(batch)
        await timers.schedule_many([], cancel=[t.timer_id for t in batch[:1100]])
        due = await self.claim(timers, T0 + timedelta(hours=1), limit=1000)
        assert [t.timer_id for t in due] == [f"t-{n:04d}" for n in range(1100, 1200)]

    async def test_cancel_removes_the_timer_and_is_a_no_op_when_there_is_none(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {})
        await timers.cancel("t-1")
        await timers.cancel("t-1")
        await timers.cancel("never")
        assert await self.claim(timers, T0 + MINUTE) == []

    # -- claims and leases ---------------------------------------------------------------
    async def test_claims_go_earliest_first_up_to_the_limit(self, timers: Timers) -> None:
        for n in (3, 1, 2, 5, 4):
            await timers.schedule(f"t-{n}", T0 + n * MINUTE, "test.kind", {})
        first = await self.claim(timers, T0 + 10 * MINUTE, limit=2)
        second = await self.claim(timers, T0 + 10 * MINUTE, limit=2)
        third = await self.claim(timers, T0 + 10 * MINUTE, limit=2)
        assert [[t.timer_id for t in c] for c in (first, second, third)] == [
            ["t-1", "t-2"],
            ["t-3", "t-4"],
            ["t-5"],
        ]

    async def test_only_the_kinds_asked_for_are_claimed(self, timers: Timers) -> None:
        await timers.schedule("a", T0, "rating.silent-session", {})
        await timers.schedule("b", T0, "payments.dunning-step", {})
        assert [t.timer_id for t in await self.claim(timers, T0, kinds={"other"})] == []
        assert await self.claim(timers, T0, kinds=set()) == []
        [mine] = await self.claim(timers, T0, kinds={"payments.dunning-step"})
        assert mine.timer_id == "b"
        [rest] = await self.claim(timers, T0)
        assert rest.timer_id == "a"

    async def test_a_claimed_timer_is_not_handed_out_again_while_its_lease_runs(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {})
        [first] = await self.claim(timers, T0)
        assert await self.claim(timers, T0 + LEASE - timedelta(seconds=1)) == []
        stored = await timers.get("t-1")
        assert stored is not None and stored.claim == first.claim and stored.attempts == 1

    async def test_a_runner_that_dies_mid_fire_loses_its_lease_and_the_timer_fires_again(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {"v": 1})
        [dead] = await self.claim(timers, T0)
        # the runner holding it died: nobody completes it; after the lease it is due again
        [again] = await self.claim(timers, T0 + LEASE)
        assert (again.timer_id, again.attempts, dict(again.payload)) == ("t-1", 2, {"v": 1})
        assert again.claim != dead.claim
        # the first runner, come back, completes nothing: the timer is the second's now
        assert await timers.complete(dead) is False
        assert await timers.postpone(dead, T0 + 100 * MINUTE) is False
        assert await timers.complete(again) is True
        assert await timers.get("t-1") is None

    async def test_complete_removes_a_fired_timer(self, timers: Timers) -> None:
        await timers.schedule("t-1", T0, "test.kind", {})
        [due] = await self.claim(timers, T0)
        assert await timers.complete(due) is True
        assert await timers.complete(due) is False
        assert await self.claim(timers, T0 + 10 * LEASE) == []

    async def test_a_timer_rescheduled_while_it_fires_keeps_its_new_deadline(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {"v": 1})
        [firing] = await self.claim(timers, T0)
        await timers.schedule("t-1", T0 + 15 * MINUTE, "test.kind", {"v": 2})
        assert await timers.complete(firing) is False
        assert await timers.postpone(firing, T0 + MINUTE) is False
        stored = await timers.get("t-1")
        assert stored is not None
        assert (stored.due_at, dict(stored.payload), stored.attempts, stored.claim) == (
            T0 + 15 * MINUTE,
            {"v": 2},
            0,
            "",
        )
        assert await self.claim(timers, T0 + 14 * MINUTE) == []
        [fresh] = await self.claim(timers, T0 + 15 * MINUTE)
        assert dict(fresh.payload) == {"v": 2}

    async def test_postpone_moves_a_fired_timer_and_releases_it_keeping_its_attempts(
        self, timers: Timers
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {})
        [first] = await self.claim(timers, T0)
        assert await timers.postpone(first, T0 + 2 * MINUTE) is True
        assert await self.claim(timers, T0 + MINUTE) == []
        [second] = await self.claim(timers, T0 + 2 * MINUTE)
        assert second.attempts == 2
        assert await timers.postpone(first, T0) is False  # an old claim moves nothing

    async def test_postpone_can_give_the_timer_a_new_payload(self, timers: Timers) -> None:
        await timers.schedule("t-1", T0, "test.kind", {"heard": 1, "keep": "x"})
        [first] = await self.claim(timers, T0)
        assert await timers.postpone(first, T0 + MINUTE, payload={"heard": 2}) is True
        [second] = await self.claim(timers, T0 + MINUTE)
        assert dict(second.payload) == {"heard": 2}
        assert await timers.postpone(second, T0 + 2 * MINUTE) is True  # payload kept
        stored = await timers.get("t-1")
        assert stored is not None and dict(stored.payload) == {"heard": 2}

    async def test_timers_outlive_the_handle_that_scheduled_them(
        self, timers: Timers, open_timers: TimersFactory
    ) -> None:
        await timers.schedule("t-1", T0, "test.kind", {"v": 1})
        await timers.close()
        other = await open_timers()
        [due] = await self.claim(other, T0)
        assert dict(due.payload) == {"v": 1}

    async def test_concurrent_claimers_get_disjoint_timers(
        self, timers: Timers, open_timers: TimersFactory
    ) -> None:
        """Four runners (handles of their own: another process each) claim at the same time,
        again and again: every timer is handed to exactly one of them."""
        count = 400
        await timers.schedule_many(
            [Timer(f"t-{n:04d}", "test.kind", T0 + timedelta(seconds=n)) for n in range(count)]
        )
        runners = [await open_timers() for _ in range(4)]
        got: list[list[str]] = [[] for _ in runners]

        async def run(i: int, runner: Timers) -> None:
            while True:
                claimed = await self.claim(runner, T0 + timedelta(hours=1), limit=7)
                if not claimed:
                    return
                got[i] += [t.timer_id for t in claimed]
                await asyncio.sleep(0)

        await asyncio.gather(*(run(i, r) for i, r in enumerate(runners)))
        every = [t for part in got for t in part]
        assert sorted(every) == [f"t-{n:04d}" for n in range(count)]  # each once, none lost
        assert sum(1 for part in got if part) > 1  # they did share the work


class TestSQLiteTimers(TimersContract):
    @pytest.fixture
    async def timers_factory(self, tmp_path: Path) -> AsyncIterator[TimersFactory]:
        """Each handle writes through a ledger handle of its own on one file (as processes
        sharing a ledger do); the ledger handles close after the test."""
        stores: list[SQLiteEventStore] = []

        async def factory() -> Timers:
            stores.append(SQLiteEventStore(tmp_path / "ledger.db"))
            return SQLiteTimers(stores[-1])

        yield factory
        for store in stores:
            await store.close()


@pytest.mark.integration
class TestPostgresTimers(TimersContract):
    @pytest.fixture
    def timers_factory(self, postgres_dsn: str, postgres_schema: str) -> TimersFactory:
        from ispbill_core.timers.postgresql import PostgresTimers

        async def factory() -> Timers:
            return await PostgresTimers.connect(postgres_dsn, schema=postgres_schema)

        return factory

    async def test_unreachable_server_is_store_unavailable(self) -> None:
        from ispbill_core.eventstore import StoreUnavailable
        from ispbill_core.timers.postgresql import PostgresTimers

        with pytest.raises(StoreUnavailable):
            await PostgresTimers.connect("postgresql://postgres@127.0.0.1:1/nowhere")
