"""LedgerPublisher: the embedded runtime's bus, on the SQLite event store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_core.bus import BusError, BusUnavailable
from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    accounting_key,
    accounting_stream,
)
from ispbill_core.events import EventMetadata, NewEvent, deterministic_id
from ispbill_core.eventstore import EventStore, ExpectedVersion, StoreUnavailable
from ispbill_core.eventstore.sqlite import SQLiteEventStore

pytestmark = pytest.mark.unit


def _event(n: int, nas: str = "nas-1") -> NewEvent:
    return NewEvent(
        id=deterministic_id("test-record", nas, n),
        type="Tested",
        version=1,
        data={"n": n, "nas": nas},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


def _stream_for(topic: str, key: str) -> str:
    assert topic == ACCOUNTING_TOPIC
    return accounting_stream(key.split("/", 1)[0])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    yield store
    await store.close()


async def test_events_land_in_the_stream_chosen_per_key_in_order(
    store: SQLiteEventStore,
) -> None:
    batch = [
        (accounting_key(nas, f"s{n}"), _event(n, nas))
        for n in range(6)
        for nas in ("nas-1", "nas-2")
    ]
    async with LedgerPublisher(store, _stream_for) as publisher:
        await publisher.publish(ACCOUNTING_TOPIC, batch)

    for nas in ("nas-1", "nas-2"):
        recorded = await store.read_stream(accounting_stream(nas))
        assert [e.id for e in recorded] == [e.id for k, e in batch if k.startswith(nas + "/")]
    assert len(await store.read_all()) == len(batch)


async def test_republishing_a_batch_records_nothing_twice(store: SQLiteEventStore) -> None:
    publisher = LedgerPublisher(store, _stream_for)
    batch = [(accounting_key("nas-1", "s"), _event(n)) for n in range(3)]
    await publisher.publish(ACCOUNTING_TOPIC, batch)
    await publisher.publish(ACCOUNTING_TOPIC, batch)
    # A retry that overlaps what was recorded and adds more: the recorded part is a no-op.
    bigger = [*batch, (accounting_key("nas-1", "s"), _event(3))]
    await publisher.publish(ACCOUNTING_TOPIC, bigger)

    recorded = await store.read_stream(accounting_stream("nas-1"))
    assert [e.data["n"] for e in recorded] == [0, 1, 2, 3]


async def test_an_id_recorded_in_another_stream_is_a_bus_error(store: SQLiteEventStore) -> None:
    publisher = LedgerPublisher(store, _stream_for)
    event = _event(1)
    await publisher.publish(ACCOUNTING_TOPIC, [(accounting_key("nas-1", "s"), event)])
    with pytest.raises(BusError) as raised:
        await publisher.publish(ACCOUNTING_TOPIC, [(accounting_key("nas-2", "s"), event)])
    assert not isinstance(raised.value, BusUnavailable)


class _UnreachableStore(SQLiteEventStore):
    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> int:
        raise StoreUnavailable("connection refused")

    async def append_many(
        self, batches: Sequence[tuple[str, Sequence[NewEvent], ExpectedVersion]]
    ) -> list[int]:
        raise StoreUnavailable("connection refused")


async def test_an_unreachable_ledger_is_bus_unavailable(tmp_path: Path) -> None:
    store: EventStore = _UnreachableStore(tmp_path / "ledger.db")
    publisher = LedgerPublisher(store, _stream_for)
    with pytest.raises(BusUnavailable):
        await publisher.publish(ACCOUNTING_TOPIC, [(accounting_key("nas-1", "s"), _event(1))])
    await store.close()


async def test_a_batch_from_many_nases_is_one_commit(store: SQLiteEventStore) -> None:
    commits = 0
    original = store._append_many_sync

    def counting(batches, checkpoint=None):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return original(batches, checkpoint)

    store._append_many_sync = counting  # type: ignore[method-assign]
    nas = [f"nas-{n % 16}" for n in range(64)]
    messages = [(accounting_key(nas[n], f"s{n}"), _event(n, nas[n])) for n in range(64)]
    await LedgerPublisher(store, _stream_for).publish(ACCOUNTING_TOPIC, messages)
    assert commits == 1
    assert len({e.stream for e in await store.read_all()}) == 16
    assert len(await store.read_all()) == 64


async def test_an_empty_batch_is_a_no_op(store: SQLiteEventStore) -> None:
    await LedgerPublisher(store, _stream_for).publish(ACCOUNTING_TOPIC, [])
    assert await store.read_all() == []
