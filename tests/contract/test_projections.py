"""The projection contract: one abstract suite, subclassed for each read-model database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ispbill_core.events import EventMetadata, NewEvent, RecordedEvent
from ispbill_core.eventstore import ANY, EventStore
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections import (
    ParkedStatus,
    Projection,
    ReadModelDatabase,
    StaleCheckpoint,
    Statement,
)
from ispbill_core.projections.projector import Projector
from ispbill_core.projections.sqlite import SQLiteReadModels

pytestmark = pytest.mark.contract

OCCURRED = datetime(2026, 3, 1, tzinfo=UTC)


def deposit(account: str, amount: int, *, type_: str = "Deposited") -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type=type_,
        version=1,
        data={"account": account, "amount": amount},
        metadata=EventMetadata(occurred_at=OCCURRED, actor="staff:test"),
    )


class Balances(Projection):
    """Sums deposits per account; an amount that is not an int is bad data (parked); an
    amount over 10**15 makes the database refuse the row (a CHECK constraint)."""

    name = "test.balances"
    version = 1
    tables = ("rm_test_balances",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_test_balances (account TEXT PRIMARY KEY,"
        " balance BIGINT NOT NULL CHECK (balance < 1000000000000000), deposits BIGINT NOT NULL)",
    )
    types = frozenset({"Deposited"})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        amount = event.data["amount"]
        if not isinstance(amount, int):
            raise ValueError(f"amount {amount!r} is not a whole number")
        return [
            (
                "INSERT INTO rm_test_balances (account, balance, deposits) VALUES (?, ?, 1)"
                " ON CONFLICT (account) DO UPDATE SET balance = rm_test_balances.balance"
                " + excluded.balance, deposits = rm_test_balances.deposits + 1",
                (event.data["account"], amount),
            )
        ]


class Withdrawals(Projection):
    """A second projection, with a secondary (unique) index, for the one-pass rebuild."""

    name = "test.withdrawals"
    version = 1
    tables = ("rm_test_withdrawals",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_test_withdrawals (account TEXT NOT NULL,"
        " amount BIGINT NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS rm_test_withdrawals_by_account"
        " ON rm_test_withdrawals (account)",
    )
    types = frozenset({"Withdrawn"})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        return [
            (
                "INSERT INTO rm_test_withdrawals (account, amount) VALUES (?, ?)",
                (event.data["account"], event.data["amount"]),
            )
        ]


class ProjectionContract:
    """Subclasses provide `store_and_db`: an event store and the read-model database beside it."""

    @pytest.fixture
    async def store_and_db(self) -> AsyncIterator[tuple[EventStore, ReadModelDatabase]]:
        raise NotImplementedError
        yield  # pragma: no cover

    @staticmethod
    async def balances(db: ReadModelDatabase) -> dict[str, tuple[int, int]]:
        rows = await db.fetch("SELECT account, balance, deposits FROM rm_test_balances")
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    @staticmethod
    @contextlib.asynccontextmanager
    async def running(projector: Projector) -> AsyncIterator[None]:
        task = asyncio.create_task(projector.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def test_folds_events_and_follows_live_appends(self, store_and_db: Any) -> None:
        store, db = store_and_db
        await store.append("acct-a", [deposit("a", 5), deposit("a", 7)], ANY)
        projector = Projector(store, db, [Balances()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=10)
            assert await self.balances(db) == {"a": (12, 2)}
            await store.append("acct-b", [deposit("b", 1)], ANY)
            assert await projector.catch_up(timeout=10)
            assert await self.balances(db) == {"a": (12, 2), "b": (1, 1)}

    async def test_other_types_are_not_folded_and_the_checkpoint_moves_past_them(
        self, store_and_db: Any
    ) -> None:
        store, db = store_and_db
        await store.append("acct-a", [deposit("a", 5), deposit("a", 9, type_="Other")], ANY)
        projector = Projector(store, db, [Balances()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=10)
        assert await self.balances(db) == {"a": (5, 1)}
        assert projector.runners["test.balances"].seen == await store.head_position()

    async def test_a_restart_goes_on_from_the_checkpoint_counting_nothing_twice(
        self, store_and_db: Any
    ) -> None:
        store, db = store_and_db
        await store.append("acct-a", [deposit("a", 5)], ANY)
        first = Projector(store, db, [Balances()])
        async with self.running(first):
            assert await first.catch_up(timeout=10)
        await store.append("acct-a", [deposit("a", 6)], ANY)
        second = Projector(store, db, [Balances()])
        async with self.running(second):
            assert await second.catch_up(timeout=10)
        assert await self.balances(db) == {"a": (11, 2)}

    async def test_rows_and_checkpoint_commit_together_or_not_at_all(
        self, store_and_db: Any
    ) -> None:
        _store, db = store_and_db
        projection = Balances()
        assert await db.prepare(projection) == 0
        await db.commit(
            projection,
            [(projection.apply(_recorded("a", 3, 1))[0])],
            from_position=0,
            to_position=1,
        )
        # a second runner that read the same checkpoint commits nothing
        with pytest.raises(StaleCheckpoint):
            await db.commit(
                projection,
                [(projection.apply(_recorded("a", 3, 1))[0])],
                from_position=0,
                to_position=1,
            )
        assert await self.balances(db) == {"a": (3, 1)}
        assert [s.position for s in await db.states() if s.name == projection.name] == [1]

    async def test_a_poison_event_is_parked_and_the_rest_goes_on(self, store_and_db: Any) -> None:
        store, db = store_and_db
        await store.append(
            "acct-a",
            [deposit("a", 5), deposit("a", "1e26"), deposit("a", 10**16), deposit("a", 2)],  # type: ignore[arg-type]
            ANY,
        )
        projector = Projector(store, db, [Balances()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=10)
        assert await self.balances(db) == {"a": (7, 2)}
        parked = await db.parked(consumer="test.balances")
        assert [p.type for p in parked] == ["Deposited", "Deposited"]
        assert "not a whole number" in parked[0].reason
        assert parked[1].event().data["amount"] == 10**16
        assert projector.runners["test.balances"].parked == 2

    async def test_parked_events_can_be_marked_for_retry_or_discarded(
        self, store_and_db: Any
    ) -> None:
        store, db = store_and_db
        [recorded] = await _append_and_read(store, deposit("a", "x"))  # type: ignore[arg-type]
        parked_id = await db.park("some-consumer", recorded, "bad amount")
        assert await db.park("some-consumer", recorded, "still bad") == parked_id
        [entry] = await db.parked(consumer="some-consumer")
        assert (entry.attempts, entry.reason, entry.status) == (2, "still bad", "parked")
        assert await db.set_parked_status(parked_id, ParkedStatus.RETRY)
        assert await db.parked(consumer="some-consumer") == []
        assert [p.id for p in await db.parked(status=ParkedStatus.RETRY)] == [parked_id]
        assert await db.set_parked_status(parked_id, ParkedStatus.DISCARDED, "not ours")
        found = await db.parked_event(parked_id)
        assert found is not None and found.status == "discarded" and found.reason == "not ours"
        assert not await db.set_parked_status(parked_id + 1000, ParkedStatus.RETRY)

    async def test_rebuild_from_zero_equals_the_live_projection(self, store_and_db: Any) -> None:
        store, db = store_and_db
        for n in range(30):
            await store.append(f"acct-{n % 4}", [deposit(str(n % 4), n)], ANY)
        projector = Projector(store, db, [Balances()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=10)
            live = await self.balances(db)
        folded = await projector.rebuild_now("test.balances")
        assert folded == {"test.balances": 30}
        assert await self.balances(db) == live
        expected: dict[str, tuple[int, int]] = {}
        for n in range(30):
            balance, deposits = expected.get(str(n % 4), (0, 0))
            expected[str(n % 4)] = (balance + n, deposits + 1)
        assert live == expected

    async def test_one_pass_rebuild_of_several_projections_equals_their_live_rows(
        self, store_and_db: Any
    ) -> None:
        """`rebuild_now()` reads the ledger once for every projection, commits them together and
        pipelines the commits: still every row as live, a bad event parked, a row the database
        refuses parked with its event, and the secondary indexes back at the end."""
        store, db = store_and_db
        for n in range(2500):  # more than one bulk batch
            await store.append(f"acct-{n % 7}", [deposit(str(n % 7), n % 11)], ANY)
        await store.append("acct-x", [deposit("x", "bad")], ANY)  # type: ignore[arg-type]
        await store.append("acct-y", [deposit("y", 10**16)], ANY)  # over the CHECK
        await store.append("acct-w", [deposit("w", 4, type_="Withdrawn")], ANY)
        projector = Projector(store, db, [Balances(), Withdrawals()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=30)
        live = await self.balances(db)
        live_withdrawals = await db.fetch("SELECT account, amount FROM rm_test_withdrawals")
        folded = await projector.rebuild_now()
        assert folded == {"test.balances": 2502, "test.withdrawals": 1}
        assert await self.balances(db) == live
        assert "x" not in live and "y" not in live and len(live) == 7
        assert await db.fetch("SELECT account, amount FROM rm_test_withdrawals") == live_withdrawals
        parked = await db.parked(consumer="test.balances")
        assert sorted(p.stream for p in parked) == ["acct-x", "acct-y"]
        head = await store.head_position()
        assert {s.name: s.position for s in await db.states()} == {
            "test.balances": head,
            "test.withdrawals": head,
        }
        # the index left out during the bulk load exists again
        await db.commit(
            Withdrawals(),
            [("INSERT INTO rm_test_withdrawals (account, amount) VALUES (?, ?)", ("z", 1))],
            from_position=head,
            to_position=head,
        )
        with pytest.raises(Exception, match=r"(?i)unique"):
            await db.commit(
                Withdrawals(),
                [("INSERT INTO rm_test_withdrawals (account, amount) VALUES (?, ?)", ("z", 2))],
                from_position=head,
                to_position=head,
            )

    async def test_a_new_version_of_a_projection_rebuilds_it(self, store_and_db: Any) -> None:
        store, db = store_and_db
        await store.append("acct-a", [deposit("a", 5)], ANY)
        projector = Projector(store, db, [Balances()])
        async with self.running(projector):
            assert await projector.catch_up(timeout=10)

        class BalancesV2(Balances):
            version = 2

        assert await db.prepare(BalancesV2()) == 0
        assert await self.balances(db) == {}
        again = Projector(store, db, [BalancesV2()])
        async with self.running(again):
            assert await again.catch_up(timeout=10)
        assert await self.balances(db) == {"a": (5, 1)}


def _recorded(account: str, amount: int, position: int) -> RecordedEvent:
    event = deposit(account, amount)
    return RecordedEvent(
        **event.model_dump(), stream=f"acct-{account}", stream_position=0, global_position=position
    )


async def _append_and_read(store: EventStore, event: NewEvent) -> list[RecordedEvent]:
    await store.append(f"s-{uuid.uuid4()}", [event], ANY)
    return [e for e in await store.read_all(after=0, limit=10_000) if e.id == event.id]


class TestSQLiteReadModels(ProjectionContract):
    @pytest.fixture
    async def store_and_db(
        self, tmp_path: Path
    ) -> AsyncIterator[tuple[EventStore, ReadModelDatabase]]:
        store = SQLiteEventStore(tmp_path / "ledger.db")
        try:
            yield store, SQLiteReadModels(store)
        finally:
            await store.close()


@pytest.mark.integration
class TestPostgresReadModels(ProjectionContract):
    @pytest.fixture
    async def store_and_db(
        self, postgres_dsn: str, postgres_schema: str
    ) -> AsyncIterator[tuple[EventStore, ReadModelDatabase]]:
        from ispbill_core.eventstore.postgresql import PostgresEventStore
        from ispbill_core.projections.postgresql import PostgresReadModels

        store = await PostgresEventStore.connect(postgres_dsn, schema=postgres_schema)
        db = await PostgresReadModels.connect(postgres_dsn, schema=postgres_schema)
        try:
            yield store, db
        finally:
            await db.close()
            await store.close()

    async def test_postgresql_only_ddl_runs_and_a_failing_statement_is_skipped(
        self, store_and_db: Any
    ) -> None:
        """`ddl_postgresql` (the customers' trigram index): applied after the rows on a bulk
        rebuild; one statement that fails leaves the projection working without it."""
        store, db = store_and_db

        class Indexed(Balances):
            ddl_postgresql = (
                "CREATE EXTENSION IF NOT EXISTS no_such_extension_here",
                # its schema looked up for an extension that is not installed: skipped too
                "CREATE INDEX IF NOT EXISTS rm_test_balances_missing"
                " ON rm_test_balances USING gin (account {ext:no_such_extension_here}.x_ops)",
                "CREATE EXTENSION IF NOT EXISTS pg_trgm",
                "CREATE INDEX IF NOT EXISTS rm_test_balances_trgm"
                " ON rm_test_balances USING gin (account {ext:pg_trgm}.gin_trgm_ops)",
            )

        await store.append("acct-a", [deposit("a", 5)], ANY)
        projector = Projector(store, db, [Indexed()])
        assert await projector.rebuild_now() == {"test.balances": 1}
        assert await self.balances(db) == {"a": (5, 1)}
        found = await db.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = ?", ("rm_test_balances",)
        )
        assert "rm_test_balances_trgm" in {r[0] for r in found}


class TestRetryOfAParkedProjectionEvent:
    async def test_a_parked_event_marked_for_retry_is_folded_once_fixed(
        self, tmp_path: Path
    ) -> None:
        store = SQLiteEventStore(tmp_path / "ledger.db")
        db = SQLiteReadModels(store)
        try:
            await store.append("acct-a", [deposit("a", 5), deposit("a", "7")], ANY)  # type: ignore[arg-type]
            lenient = {"on": False}

            class Fixable(Balances):
                def apply(self, event: RecordedEvent) -> Sequence[Statement]:
                    if lenient["on"] and isinstance(event.data["amount"], str):
                        event = event.model_copy(
                            update={"data": {**event.data, "amount": int(event.data["amount"])}}
                        )
                    return super().apply(event)

            projector = Projector(store, db, [Fixable()])
            async with ProjectionContract.running(projector):
                assert await projector.catch_up(timeout=10)
                [parked] = await db.parked()
                lenient["on"] = True  # the bug is fixed
                await db.set_parked_status(parked.id, ParkedStatus.RETRY)
                for _ in range(100):
                    entry = await db.parked_event(parked.id)
                    if entry is not None and entry.status == ParkedStatus.RESOLVED:
                        break
                    await asyncio.sleep(0.05)
            assert entry is not None and entry.status == ParkedStatus.RESOLVED
            assert await ProjectionContract.balances(db) == {"a": (12, 2)}
        finally:
            await store.close()
