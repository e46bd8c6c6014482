"""The event store contract: one abstract suite, subclassed for every adapter."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.events import (
    AnyNewEvent,
    EncodedEvent,
    EventMetadata,
    NewEvent,
    RecordedEvent,
    ordered_deterministic_id,
)
from ispbill_core.eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    CheckpointStore,
    EventIdConflict,
    EventStore,
    WrongExpectedVersion,
)
from ispbill_core.eventstore.sqlite import SQLiteEventStore

pytestmark = pytest.mark.contract

OCCURRED = datetime(2025, 3, 30, 0, 59, 59, tzinfo=UTC)

StoreFactory = Callable[[], Awaitable[EventStore]]


def event(type_: str = "UsageRated", **data: Any) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type=type_,
        version=1,
        data=data or {"amount": "1.10"},
        metadata=EventMetadata(occurred_at=OCCURRED, actor="contract-test"),
    )


def in_form(events: list[NewEvent], encode: list[bool]) -> list[AnyNewEvent]:
    """Each event as it is (a NewEvent) or serialised (its EncodedEvent), as `encode` says."""
    return [e.encoded() if flag else e for e, flag in zip(events, encode, strict=True)]


def as_appended(recorded: RecordedEvent) -> NewEvent:
    """What was appended, as far as a read can tell: the envelope without positions and
    without the recorded_at the ledger stamped."""
    return NewEvent(
        id=recorded.id,
        type=recorded.type,
        version=recorded.version,
        data=recorded.data,
        metadata=recorded.metadata.model_copy(update={"recorded_at": None}),
    )


#: JSON every adapter stores as it is given (PostgreSQL's jsonb refuses "\u0000").
json_text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=8,
)
#: Hypothesis examples share the test's store (each example uses streams of its own), and
#: one test method runs for every adapter's subclass (the "executors" hypothesis sees).
store_examples = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


def checkpoints_of(store: EventStore) -> CheckpointStore:
    assert isinstance(store, CheckpointStore)
    return store


async def collect(
    store: EventStore,
    into: list[RecordedEvent],
    *,
    after: int = 0,
    types: set[str] | None = None,
    idle_timeout: float = 0.2,
) -> None:
    async for recorded in store.subscribe(after=after, types=types, idle_timeout=idle_timeout):
        into.append(recorded)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls a list another task fills
            await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class EventStoreContract:
    """What every adapter must do. Subclasses provide `store_factory`: opens a new instance
    over the same storage each call (a second instance stands for a second process)."""

    #: EventStoreDB/KurrentDB only knows ids per stream; see the adapter's docstring.
    detects_id_reuse_across_streams = True
    #: SQLite and PostgreSQL append several streams in one transaction.
    append_many_is_atomic = True

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError

    @pytest.fixture
    async def open_store(self, store_factory: StoreFactory) -> AsyncIterator[StoreFactory]:
        opened: list[EventStore] = []

        async def open_() -> EventStore:
            store = await store_factory()
            opened.append(store)
            return store

        yield open_
        for store in reversed(opened):
            await store.close()

    @pytest.fixture
    async def store(self, open_store: StoreFactory) -> EventStore:
        return await open_store()

    @staticmethod
    def stream(kind: str = "customer") -> str:
        return f"{kind}-{uuid.uuid4().hex[:10]}"

    # -- append and read ---------------------------------------------------------------
    async def test_append_then_read_stream_in_order_with_positions(self, store: EventStore) -> None:
        name = self.stream()
        batch = [event(n=i) for i in range(3)]
        assert await store.append(name, batch, NO_STREAM) == 2
        assert await store.append(name, [event(n=3)], 2) == 3

        recorded = await store.read_stream(name)
        assert [r.stream_position for r in recorded] == [0, 1, 2, 3]
        assert [r.data["n"] for r in recorded] == [0, 1, 2, 3]
        assert [r.id for r in recorded[:3]] == [e.id for e in batch]
        assert all(r.stream == name for r in recorded)
        globals_ = [r.global_position for r in recorded]
        assert globals_[0] >= 1
        assert globals_ == sorted(set(globals_))
        assert await store.stream_version(name) == 3

    async def test_read_stream_from_position_and_limit(self, store: EventStore) -> None:
        name = self.stream()
        await store.append(name, [event(n=i) for i in range(5)], NO_STREAM)
        assert [r.data["n"] for r in await store.read_stream(name, from_position=2)] == [2, 3, 4]
        assert [r.data["n"] for r in await store.read_stream(name, limit=2)] == [0, 1]
        assert [r.data["n"] for r in await store.read_stream(name, from_position=1, limit=2)] == [
            1,
            2,
        ]

    async def test_missing_stream_reads_empty_and_has_no_version(self, store: EventStore) -> None:
        name = self.stream()
        assert await store.read_stream(name) == []
        assert await store.stream_version(name) is None

    async def test_envelope_round_trips(self, store: EventStore) -> None:
        name = self.stream()
        correlation = uuid.uuid4()
        new = NewEvent(
            id=uuid.uuid4(),
            type="InvoiceIssued",
            version=2,
            data={"total": "12.30", "lines": [{"name": "Fibre 100 — März", "qty": 1}], "n": None},
            metadata=EventMetadata(
                occurred_at=OCCURRED,
                actor="clerk@isp.example",
                correlation_id=correlation,
                causation_id=correlation,
                traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        )
        await store.append(name, [new], NO_STREAM)
        (recorded,) = await store.read_stream(name)
        assert recorded.id == new.id
        assert (recorded.type, recorded.version, recorded.data) == (new.type, 2, new.data)
        assert recorded.metadata.occurred_at == OCCURRED
        assert recorded.metadata.actor == "clerk@isp.example"
        assert recorded.metadata.correlation_id == correlation
        assert recorded.metadata.traceparent == new.metadata.traceparent
        assert recorded.metadata.recorded_at is not None
        assert recorded.metadata.recorded_at.utcoffset() is not None

    async def test_empty_batch_is_refused(self, store: EventStore) -> None:
        with pytest.raises(ValueError):
            await store.append(self.stream(), [], ANY)

    # -- already serialised events (EncodedEvent) --------------------------------------
    async def test_an_encoded_event_reads_back_as_the_new_event_it_came_from(
        self, store: EventStore
    ) -> None:
        correlation = uuid.uuid4()
        original = NewEvent(
            id=uuid.uuid4(),
            type="InvoiceIssued",
            version=2,
            data={
                "total": "12.30",
                "lines": [{"name": "Fibre 100 — März", "qty": 1}],
                "n": None,
                "octets": 2**70,
                "quoted": 'a "b" \\ \u2028 😀',
            },
            metadata=EventMetadata(
                occurred_at=OCCURRED,
                actor="clerk@isp.example",
                correlation_id=correlation,
                causation_id=uuid.uuid4(),
                traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        )
        twin = original.model_copy(update={"id": uuid.uuid4()})
        via_model, via_encoded = self.stream(), self.stream()
        await store.append(via_model, [twin], NO_STREAM)
        await store.append(via_encoded, [original.encoded()], NO_STREAM)

        (from_model,) = await store.read_stream(via_model)
        (from_encoded,) = await store.read_stream(via_encoded)
        assert as_appended(from_encoded) == original
        assert as_appended(from_model) == twin
        # Every field but the id, where it went and when: as the NewEvent's twin reads back.
        ignored: dict[str, Any] = dict.fromkeys(
            ("id", "stream", "stream_position", "global_position"), True
        )
        ignored["metadata"] = {"recorded_at"}
        assert from_encoded.model_dump(exclude=ignored) == from_model.model_dump(exclude=ignored)
        assert from_encoded.metadata.recorded_at is not None
        assert from_encoded.metadata.recorded_at.utcoffset() is not None
        assert (from_encoded.stream, from_encoded.stream_position) == (via_encoded, 0)

    @store_examples
    @given(
        data=st.dictionaries(json_text, json_values, max_size=5),
        actor=json_text,
        traceparent=st.none() | st.from_regex(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z"),
    )
    async def test_any_encoded_envelope_reads_back_unchanged(
        self, store: EventStore, data: dict[str, Any], actor: str, traceparent: str | None
    ) -> None:
        original = NewEvent(
            id=uuid.uuid4(),
            type="UsageRated",
            version=1,
            data=data,
            metadata=EventMetadata(
                occurred_at=OCCURRED,
                actor=actor,
                correlation_id=uuid.uuid4(),
                traceparent=traceparent,
            ),
        )
        name = self.stream()
        await store.append(name, [original.encoded()], NO_STREAM)
        (recorded,) = await store.read_stream(name)
        assert as_appended(recorded) == original

    async def test_a_hand_built_encoded_event_is_stored_as_its_json_says(
        self, store: EventStore
    ) -> None:
        """As the usage collector builds them: an ordered id, JSON written by hand (spacing
        and key order of its own), metadata with only the fields it sets."""
        hand = EncodedEvent(
            id=ordered_deterministic_id(1_743_296_399, "nas-1", "sess-7", 3),
            type="AccountingRecordReceived",
            version=1,
            data_json='{ "session": "sess-7", "octets_in": 1200, "nas": "nas-1" }',
            metadata_json='{"occurred_at":"2025-03-30T00:59:59Z","actor":"usage-collector"}',
        )
        name = self.stream("nas")
        assert await store.append(name, [hand], NO_STREAM) == 0
        (recorded,) = await store.read_stream(name)
        assert str(recorded.id) == hand.id
        assert as_appended(recorded) == hand.decoded()
        assert recorded.data == {"session": "sess-7", "octets_in": 1200, "nas": "nas-1"}
        assert recorded.metadata.occurred_at == OCCURRED
        assert recorded.metadata.recorded_at is not None
        # The same fact again as a model (a retry after a restart) is the same event.
        assert await store.append(name, [hand.decoded()], NO_STREAM) == 0
        assert len(await store.read_stream(name)) == 1

    async def test_a_new_event_retried_as_its_encoded_event_is_a_no_op(
        self, store: EventStore
    ) -> None:
        name = self.stream("payment")
        first, second = event("PaymentReceived", n=1), event("PaymentReceived", n=2)
        assert await store.append(name, [first, second], NO_STREAM) == 1
        head = await self._head(store)
        # The retry of a write whose reply was lost, by a caller that serialises its events.
        assert await store.append(name, [first.encoded(), second.encoded()], NO_STREAM) == 1
        assert await store.append(name, [first.encoded(), second.encoded()], ANY) == 1
        # And the other way round.
        other = self.stream("payment")
        third = event("PaymentReceived", n=3)
        assert await store.append(other, [third.encoded()], NO_STREAM) == 0
        assert await store.append(other, [third], NO_STREAM) == 0
        assert await store.append(other, [third], ANY) == 0

        assert [r.id for r in await store.read_stream(name)] == [first.id, second.id]
        assert [r.id for r in await store.read_stream(other)] == [third.id]
        later = await store.read_all(after=head)
        assert [r.id for r in later if r.stream in (name, other)] == [third.id]

    @store_examples
    @given(
        encode=st.lists(st.booleans(), min_size=1, max_size=8),
        retry_data=st.data(),
    )
    async def test_a_mixed_batch_keeps_its_order_and_a_retry_in_any_form_is_a_no_op(
        self, store: EventStore, encode: list[bool], retry_data: st.DataObject
    ) -> None:
        name = self.stream("nas")
        # Metadata of their own: a batch's metadata is not necessarily shared.
        events = [
            NewEvent(
                id=uuid.uuid4(),
                type="UsageRated",
                version=1,
                data={"n": i, "encoded": flag},
                metadata=EventMetadata(
                    occurred_at=OCCURRED, actor=f"writer-{i}", correlation_id=uuid.uuid4()
                ),
            )
            for i, flag in enumerate(encode)
        ]
        assert await store.append(name, in_form(events, encode), NO_STREAM) == len(events) - 1

        retry = retry_data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
        assert await store.append(name, in_form(events, retry), NO_STREAM) == len(events) - 1
        assert await store.append(name, in_form(events, retry), ANY) == len(events) - 1

        recorded = await store.read_stream(name)
        assert [as_appended(r) for r in recorded] == events
        assert [r.stream_position for r in recorded] == list(range(len(events)))
        positions = [r.global_position for r in recorded]
        assert positions == sorted(set(positions))

        # A later batch that repeats one of these ids in either form conflicts.
        repeated = retry_data.draw(st.sampled_from(events))
        as_encoded = retry_data.draw(st.booleans())
        with pytest.raises(EventIdConflict):
            await store.append(
                name,
                [repeated.encoded() if as_encoded else repeated, event().encoded()],
                len(events) - 1,
            )
        assert len(await store.read_stream(name)) == len(events)

    async def test_append_many_with_mixed_events_and_its_retry_in_the_other_form(
        self, store: EventStore
    ) -> None:
        first, second = self.stream("nas"), self.stream("nas")
        one, two, three = event(n=1), event(n=2), event(n=3)
        assert await store.append_many(
            [(first, [one, two.encoded()], NO_STREAM), (second, [three.encoded()], ANY)]
        ) == [1, 0]
        assert await store.append_many(
            [(first, [one.encoded(), two], NO_STREAM), (second, [three], ANY)]
        ) == [1, 0]
        assert [as_appended(r) for r in await store.read_stream(first)] == [one, two]
        assert [as_appended(r) for r in await store.read_stream(second)] == [three]

    # -- expected version --------------------------------------------------------------
    async def test_no_stream_conflicts_once_the_stream_exists(self, store: EventStore) -> None:
        name = self.stream("invoice")
        await store.append(name, [event()], NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(name, [event()], NO_STREAM)
        assert info.value.stream == name
        assert await store.stream_version(name) == 0

    async def test_exists_conflicts_on_a_missing_stream(self, store: EventStore) -> None:
        name = self.stream()
        with pytest.raises(WrongExpectedVersion):
            await store.append(name, [event()], STREAM_EXISTS)
        await store.append(name, [event()], ANY)
        assert await store.append(name, [event()], STREAM_EXISTS) == 1

    async def test_exact_version_must_match(self, store: EventStore) -> None:
        name = self.stream()
        with pytest.raises(WrongExpectedVersion):
            await store.append(name, [event()], 0)
        await store.append(name, [event(), event()], NO_STREAM)
        for wrong in (0, 2, 5):
            with pytest.raises(WrongExpectedVersion) as info:
                await store.append(name, [event()], wrong)
            assert info.value.actual == 1
        assert await store.append(name, [event()], 1) == 2
        assert len(await store.read_stream(name)) == 3

    async def test_any_always_appends(self, store: EventStore) -> None:
        name = self.stream()
        assert await store.append(name, [event()], ANY) == 0
        assert await store.append(name, [event(), event()], ANY) == 2

    # -- idempotence -------------------------------------------------------------------
    async def test_retried_batch_is_a_no_op(self, store: EventStore) -> None:
        name = self.stream("payment")
        batch = [event("PaymentReceived", n=1), event("PaymentReceived", n=2)]
        assert await store.append(name, batch, NO_STREAM) == 1
        # The retry of a write whose reply was lost: same ids, same expected version.
        assert await store.append(name, batch, NO_STREAM) == 1
        assert await store.append(name, batch, ANY) == 1
        assert len(await store.read_stream(name)) == 2

    async def test_partial_overlap_with_a_recorded_batch_is_a_conflict(
        self, store: EventStore
    ) -> None:
        name = self.stream()
        first, second = event(), event()
        await store.append(name, [first, second], NO_STREAM)
        with pytest.raises(EventIdConflict):
            await store.append(name, [second, event()], 1)
        assert len(await store.read_stream(name)) == 2

    async def test_id_reused_in_another_stream_is_a_conflict(self, store: EventStore) -> None:
        if not self.detects_id_reuse_across_streams:
            pytest.skip("this store keeps event ids unique per stream only")
        shared = event()
        await store.append(self.stream(), [shared], NO_STREAM)
        other = self.stream()
        with pytest.raises(EventIdConflict):
            await store.append(other, [shared], NO_STREAM)
        assert await store.stream_version(other) is None

    # -- concurrency -------------------------------------------------------------------
    async def test_concurrent_writers_with_retry_get_contiguous_positions(
        self, store: EventStore
    ) -> None:
        name = self.stream("subscription")
        writers, per_writer = 8, 6
        conflicts = 0

        async def writer(w: int) -> None:
            nonlocal conflicts
            for i in range(per_writer):
                new = event(writer=w, i=i)
                while True:
                    version = await store.stream_version(name)
                    expected = NO_STREAM if version is None else version
                    try:
                        await store.append(name, [new], expected)
                        break
                    except WrongExpectedVersion:
                        conflicts += 1
                        await asyncio.sleep(0)

        await asyncio.gather(*(writer(w) for w in range(writers)))
        recorded = await store.read_stream(name)
        assert len(recorded) == writers * per_writer
        assert [r.stream_position for r in recorded] == list(range(writers * per_writer))
        assert len({r.id for r in recorded}) == writers * per_writer
        for w in range(writers):
            mine = [r.data["i"] for r in recorded if r.data["writer"] == w]
            assert mine == list(range(per_writer))

    # -- the global log ----------------------------------------------------------------
    async def test_read_all_is_global_order_across_streams(self, store: EventStore) -> None:
        start = await self._head(store)
        a, b = self.stream("a"), self.stream("b")
        await store.append(a, [event("A", n=1)], NO_STREAM)
        await store.append(b, [event("B", n=2), event("B", n=3)], NO_STREAM)
        await store.append(a, [event("A", n=4)], 0)

        recorded = await store.read_all(after=start)
        assert [(r.stream, r.data["n"]) for r in recorded] == [(a, 1), (b, 2), (b, 3), (a, 4)]
        positions = [r.global_position for r in recorded]
        assert positions == sorted(set(positions))
        assert all(p > start for p in positions)

        assert [r.data["n"] for r in await store.read_all(after=positions[1])] == [3, 4]
        assert [r.data["n"] for r in await store.read_all(after=start, limit=2)] == [1, 2]
        assert await store.read_all(after=positions[-1]) == []

    async def test_read_all_filters_by_type(self, store: EventStore) -> None:
        start = await self._head(store)
        name = self.stream()
        kinds = ["UsageRated", "InvoiceIssued", "UsageRated", "PaymentReceived", "UsageRated"]
        await store.append(name, [event(k, n=i) for i, k in enumerate(kinds)], NO_STREAM)

        rated = await store.read_all(after=start, types={"UsageRated"})
        assert [r.data["n"] for r in rated] == [0, 2, 4]
        two = await store.read_all(after=start, types={"InvoiceIssued", "PaymentReceived"})
        assert [r.type for r in two] == ["InvoiceIssued", "PaymentReceived"]
        assert [
            r.data["n"]
            for r in await store.read_all(
                after=rated[0].global_position, types={"UsageRated"}, limit=1
            )
        ] == [2]
        assert await store.read_all(after=start, types={"NothingLikeThis"}) == []

    # -- subscriptions -----------------------------------------------------------------
    async def test_subscribe_catches_up_then_follows_live_appends(self, store: EventStore) -> None:
        start = await self._head(store)
        name = self.stream()
        await store.append(name, [event(n=i) for i in range(3)], NO_STREAM)
        seen: list[RecordedEvent] = []
        task = asyncio.create_task(collect(store, seen, after=start))
        try:
            await eventually(lambda: len(seen) == 3)
            await store.append(name, [event(n=3), event(n=4)], 2)
            await eventually(lambda: len(seen) == 5)
            await store.append(self.stream(), [event(n=5)], NO_STREAM)
            await eventually(lambda: len(seen) == 6)
        finally:
            await stop(task)
        assert [r.data["n"] for r in seen] == [0, 1, 2, 3, 4, 5]

    async def test_subscribe_with_type_filter(self, store: EventStore) -> None:
        start = await self._head(store)
        name = self.stream()
        seen: list[RecordedEvent] = []
        task = asyncio.create_task(collect(store, seen, after=start, types={"PaymentReceived"}))
        try:
            await store.append(name, [event("UsageRated"), event("PaymentReceived", n=1)], ANY)
            await store.append(name, [event("UsageRated"), event("PaymentReceived", n=2)], ANY)
            await eventually(lambda: len(seen) == 2)
        finally:
            await stop(task)
        assert [r.data["n"] for r in seen] == [1, 2]

    async def test_append_many_writes_every_stream_and_a_retry_is_a_no_op(
        self, store: EventStore
    ) -> None:
        first, second = self.stream("nas"), self.stream("nas")
        batches = [
            (first, [event(n=1), event(n=2)], NO_STREAM),
            (second, [event(n=3)], ANY),
        ]
        assert await store.append_many(batches) == [1, 0]
        assert await store.append_many(batches) == [1, 0]
        assert [r.data["n"] for r in await store.read_stream(first)] == [1, 2]
        assert [r.data["n"] for r in await store.read_stream(second)] == [3]

    async def test_a_batch_part_recorded_is_a_conflict_even_with_an_id_repeated(
        self, store: EventStore
    ) -> None:
        """A batch whose recorded ids are all there, in its stream, is a retry; one that also
        holds a new event is not, however often the recorded id is repeated in it: the new
        event is never dropped silently."""
        name = self.stream("dup")
        x = event(n=1)
        await store.append_many([(name, [x], NO_STREAM)])
        with pytest.raises(EventIdConflict):
            await store.append_many([(name, [x, x, event(n=2)], ANY)])
        assert [r.data["n"] for r in await store.read_stream(name)] == [1]

    async def test_read_streams_gives_each_stream_in_order_and_empty_ones(
        self, store: EventStore
    ) -> None:
        names = [self.stream("rs") for _ in range(3)]
        await store.append_many(
            [(names[0], [event(n=1), event(n=2)], NO_STREAM), (names[1], [event(n=3)], NO_STREAM)]
        )
        await store.append(names[0], [event(n=4)], 1)
        missing = self.stream("rs")
        found = await store.read_streams([names[1], names[0], missing, names[0]])
        assert list(found) == [names[1], names[0], missing]
        assert [e.data["n"] for e in found[names[0]]] == [1, 2, 4]
        assert [e.stream_position for e in found[names[0]]] == [0, 1, 2]
        assert [e.data["n"] for e in found[names[1]]] == [3]
        assert found[missing] == []
        assert await store.read_streams([]) == {}

    async def test_append_many_naming_a_stream_twice_appends_in_the_order_given(
        self, store: EventStore
    ) -> None:
        """The second batch of a stream sees the first (its expected version, its ids), and
        positions in the ledger follow the order given, across streams."""
        name, other = self.stream("sess"), self.stream("sess")
        one, two = event(n=1), event(n=2)
        versions = await store.append_many(
            [
                (name, [one], NO_STREAM),
                (other, [event(n=9)], NO_STREAM),
                (name, [two, event(n=3)], 0),
                (name, [one], 0),  # already in this call: an idempotent no-op
            ]
        )
        assert versions == [0, 0, 2, 2]
        recorded = await store.read_stream(name)
        assert [r.data["n"] for r in recorded] == [1, 2, 3]
        assert [r.stream_position for r in recorded] == [0, 1, 2]
        [nine] = await store.read_stream(other)
        assert recorded[0].global_position < nine.global_position < recorded[1].global_position
        with pytest.raises(WrongExpectedVersion):
            await store.append_many([(name, [event(n=4)], 2), (name, [event(n=5)], 2)])
        assert len(await store.read_stream(name)) == 3 or not self.append_many_is_atomic

    async def test_append_many_is_all_or_nothing(self, store: EventStore) -> None:
        if not self.append_many_is_atomic:
            pytest.skip("this adapter appends stream by stream (no multi-stream transaction)")
        existing = self.stream("nas")
        await store.append(existing, [event(n=0)], NO_STREAM)
        fresh = self.stream("nas")
        with pytest.raises(WrongExpectedVersion):
            await store.append_many(
                [(fresh, [event(n=1)], NO_STREAM), (existing, [event(n=2)], NO_STREAM)]
            )
        assert await store.read_stream(fresh) == []
        assert [r.data["n"] for r in await store.read_stream(existing)] == [0]

    async def test_head_position_is_the_last_global_position(self, store: EventStore) -> None:
        before = await store.head_position()
        assert before == await self._head(store)
        await store.append(self.stream(), [event(n=1), event(n=2)], NO_STREAM)
        after = await store.head_position()
        assert after > before
        assert after == await self._head(store)

    async def test_an_idle_filtered_subscription_waits_instead_of_polling(
        self, store: EventStore
    ) -> None:
        """Events of other types past the last match must not wake the subscriber in a loop
        (it once spun at 100 % CPU in an idle all-in-one)."""
        await store.append(self.stream(), [event("UsageRated", n=1)], NO_STREAM)
        start = await self._head(store) - 1
        reads = 0
        read_all = store.read_all

        async def counting_read_all(**kwargs: Any) -> list[RecordedEvent]:
            nonlocal reads
            reads += 1
            return await read_all(**kwargs)

        store.read_all = counting_read_all  # type: ignore[method-assign]
        seen: list[RecordedEvent] = []
        task = asyncio.create_task(
            collect(store, seen, after=start, types={"PaymentReceived"}, idle_timeout=0.5)
        )
        try:
            await asyncio.sleep(1.2)
        finally:
            await stop(task)
            del store.read_all
        assert seen == []
        assert reads <= 4, f"{reads} reads in 1.2 s with a 0.5 s idle timeout: it polls"

    async def test_killed_subscriber_resumes_from_checkpoint_exactly_once(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        name = self.stream()
        start = await self._head(store)
        batch = [event(n=i) for i in range(20)]
        await store.append(name, batch, NO_STREAM)
        checkpoint = f"projection-{uuid.uuid4().hex[:8]}"
        processed: list[uuid.UUID] = []
        stuck = asyncio.Event()

        async def consumer(instance: EventStore, *, die_at: int | None) -> None:
            checkpoints = checkpoints_of(instance)
            after = max(start, await checkpoints.load_checkpoint(checkpoint))
            async for recorded in instance.subscribe(after=after, idle_timeout=0.2):
                if recorded.stream != name:
                    continue
                if die_at is not None and recorded.data["n"] == die_at:
                    stuck.set()
                    await asyncio.Event().wait()  # killed here, mid-way through the stream
                # The effect and the checkpoint together, as a projection does in one txn.
                await checkpoints.save_checkpoint(checkpoint, recorded.global_position)
                processed.append(recorded.id)

        first = asyncio.create_task(consumer(store, die_at=7))
        await asyncio.wait_for(stuck.wait(), 10)
        await stop(first)
        assert len(processed) == 7

        # A new process: a new store instance over the same ledger.
        restarted = await open_store()
        second = asyncio.create_task(consumer(restarted, die_at=None))
        try:
            await eventually(lambda: len(processed) == 20)
            late = event(n=20)
            await store.append(name, [late], 19)
            await eventually(lambda: len(processed) == 21)
            await asyncio.sleep(0.3)
        finally:
            await stop(second)
        assert processed == [e.id for e in batch] + [late.id]

    async def test_second_instance_sees_appends_through_subscribe(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        other = await open_store()
        start = await self._head(store)
        seen: list[RecordedEvent] = []
        task = asyncio.create_task(collect(other, seen, after=start))
        try:
            await store.append(self.stream(), [event(n=1)], NO_STREAM)
            await eventually(lambda: len(seen) == 1)
            await store.append(self.stream(), [event(n=2)], NO_STREAM)
            await eventually(lambda: len(seen) == 2)
        finally:
            await stop(task)
        assert [r.data["n"] for r in seen] == [1, 2]

    # -- checkpoints -------------------------------------------------------------------
    async def test_checkpoint_starts_at_zero_and_never_moves_backwards(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        checkpoints = checkpoints_of(store)
        name = f"reactor-{uuid.uuid4().hex[:8]}"
        assert await checkpoints.load_checkpoint(name) == 0
        await checkpoints.save_checkpoint(name, 10)
        assert await checkpoints.load_checkpoint(name) == 10
        await checkpoints.save_checkpoint(name, 5)
        assert await checkpoints.load_checkpoint(name) == 10
        await checkpoints.save_checkpoint(name, 12)
        assert await checkpoints.load_checkpoint(name) == 12
        assert await checkpoints.load_checkpoint(f"{name}-other") == 0
        reopened = checkpoints_of(await open_store())
        assert await reopened.load_checkpoint(name) == 12

    async def test_append_many_moves_a_checkpoint_in_the_same_transaction(
        self, store: EventStore
    ) -> None:
        checkpoints = checkpoints_of(store)
        name = f"consumer-{uuid.uuid4().hex[:8]}"
        first = self.stream("ck")
        one = event(n=1)
        await store.append_many([(first, [one], NO_STREAM)], checkpoint=(name, 40))
        assert await checkpoints.load_checkpoint(name) == 40
        assert len(await store.read_stream(first)) == 1
        # only the checkpoint, and never backwards
        assert await store.append_many([], checkpoint=(name, 45)) == []
        await store.append_many([], checkpoint=(name, 41))
        assert await checkpoints.load_checkpoint(name) == 45
        # a retry whose events are all recorded still moves the checkpoint
        await store.append_many([(first, [one], ANY)], checkpoint=(name, 50))
        assert await checkpoints.load_checkpoint(name) == 50
        assert len(await store.read_stream(first)) == 1
        if self.append_many_is_atomic:
            # the batch refused: the checkpoint does not move either
            with pytest.raises(WrongExpectedVersion):
                await store.append_many(
                    [(self.stream("ck"), [event(n=2)], NO_STREAM), (first, [event(n=3)], 7)],
                    checkpoint=(name, 60),
                )
            assert await checkpoints.load_checkpoint(name) == 50

    @staticmethod
    async def _head(store: EventStore) -> int:
        """The last global position so far (stores such as KurrentDB are shared by tests)."""
        head = 0
        while batch := await store.read_all(after=head, limit=1000):
            head = batch[-1].global_position
        return head

    async def test_stream_versions_answer_for_many_streams_at_once(self, store: EventStore) -> None:
        a, b, missing = self.stream(), self.stream(), self.stream()
        await store.append(a, [event(), event(), event()], NO_STREAM)
        await store.append(b, [event()], NO_STREAM)
        many = [self.stream() for _ in range(1200)]  # past one query's worth
        assert await store.stream_versions([a, b, missing, a, *many]) == {
            a: 2,
            b: 0,
            missing: None,
            **dict.fromkeys(many),
        }

    # -- the hash chain (ADR 0031) -------------------------------------------------------
    #: SQLite and PostgreSQL keep a hash chain over their rows; KurrentDB's log is the server's.
    keeps_chain = True

    async def tamper(self, sql: str, *params: Any) -> None:
        """Run SQL on the ledger's storage behind the adapter's back ({events}: its table)."""
        raise NotImplementedError

    async def _chained(self, store: EventStore) -> list[RecordedEvent]:
        if not self.keeps_chain:
            pytest.skip("this ledger keeps no hash chain")
        name = self.stream()
        await store.append(name, [event(n=1), event(n=2).encoded()], NO_STREAM)
        await store.append_many(
            [(self.stream(), [event(n=3)], NO_STREAM), (name, [event(n="ü 中 \u0001")], 1)]
        )
        await store.append(self.stream(), [event(n=5), event(n=6)], NO_STREAM)
        return await store.read_all(limit=100)

    async def test_an_untouched_ledger_verifies_and_reports_its_head(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        recorded = await self._chained(store)
        other = await open_store()  # a second writer continues the same chain
        await other.append(self.stream(), [event(n=7)], NO_STREAM)
        report = await store.verify_chain()
        assert report.ok, report.reason
        assert report.checked == len(recorded) + 1
        assert report.head_position == await store.head_position()
        assert report.unchained == 0
        again = await other.verify_chain(
            anchors={report.head_position: bytes.fromhex(report.head_hash)}
        )
        assert again.ok and again.anchors_checked == [report.head_position]

    async def test_an_edited_row_is_named(self, store: EventStore) -> None:
        recorded = await self._chained(store)
        edited = recorded[2]
        await self.tamper(
            'UPDATE {events} SET data = \'{"amount":"0.01"}\' WHERE global_position = $1',
            edited.global_position,
        )
        report = await store.verify_chain()
        assert not report.ok
        assert report.broken_at == edited.global_position
        assert "edited" in report.reason

    async def test_an_edited_metadata_or_type_is_named(self, store: EventStore) -> None:
        recorded = await self._chained(store)
        await self.tamper(
            "UPDATE {events} SET type = 'InvoicePaid' WHERE global_position = $1",
            recorded[4].global_position,
        )
        report = await store.verify_chain()
        assert report.broken_at == recorded[4].global_position

    async def test_a_deleted_row_breaks_the_next_link(self, store: EventStore) -> None:
        recorded = await self._chained(store)
        await self.tamper(
            "DELETE FROM {events} WHERE global_position = $1", recorded[1].global_position
        )
        report = await store.verify_chain()
        assert report.broken_at == recorded[2].global_position
        assert report.checked == 1

    async def test_the_newest_rows_deleted_or_the_chain_rewritten_fail_an_anchor(
        self, store: EventStore
    ) -> None:
        recorded = await self._chained(store)
        head = await store.verify_chain()
        anchor = {head.head_position: bytes.fromhex(head.head_hash)}
        await self.tamper(
            "DELETE FROM {events} WHERE global_position = $1", recorded[-1].global_position
        )
        assert (await store.verify_chain()).ok  # the chain alone cannot tell
        report = await store.verify_chain(anchors=anchor)
        assert report.broken_at == recorded[-1].global_position
        assert "deleted" in report.reason

    async def test_appends_after_a_legacy_ledger_is_chained_on_open(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        """A ledger written before the chain: its rows get their hashes when first opened."""
        recorded = await self._chained(store)
        await store.close()
        await self.tamper("ALTER TABLE {events} DROP COLUMN chain_hash")
        reopened = await open_store()
        await reopened.append(self.stream(), [event(n=8)], NO_STREAM)
        report = await reopened.verify_chain()
        assert report.ok, report.reason
        assert report.checked == len(recorded) + 1
        assert report.first_chained == recorded[0].global_position


class _CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting what asyncio.to_thread hands it."""

    submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


class SQLiteContract(EventStoreContract):
    #: SQLiteEventStore(write_on_loop=...): appends on the loop's thread, or in a worker.
    write_on_loop = False

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        path = tmp_path / "ledger.sqlite"

        async def factory() -> EventStore:
            return SQLiteEventStore(path, write_on_loop=self.write_on_loop)

        self._path = path
        return factory

    async def tamper(self, sql: str, *params: Any) -> None:
        import re
        import sqlite3

        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute(re.sub(r"\$\d+", "?", sql.replace("{events}", "events")), params)
        finally:
            conn.close()

    async def test_appends_run_on_the_loop_thread_only_when_asked_to(
        self, store: EventStore
    ) -> None:
        executor = _CountingExecutor(max_workers=2)
        asyncio.get_running_loop().set_default_executor(executor)
        await store.append(self.stream(), [event(), event().encoded()], NO_STREAM)
        await store.append_many([(self.stream(), [event()], NO_STREAM)])
        assert executor.submitted == (0 if self.write_on_loop else 2)


class TestSQLiteEventStore(SQLiteContract):
    pass


class TestSQLiteEventStoreWritingOnTheLoop(SQLiteContract):
    write_on_loop = True


@pytest.mark.integration
class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def store_factory(self, postgres_dsn: str, postgres_schema: str) -> StoreFactory:
        from ispbill_core.eventstore.postgresql import PostgresEventStore

        async def factory() -> EventStore:
            return await PostgresEventStore.connect(postgres_dsn, schema=postgres_schema)

        self._dsn, self._schema = postgres_dsn, postgres_schema
        return factory

    async def tamper(self, sql: str, *params: Any) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(sql.replace("{events}", f'"{self._schema}".events'), *params)
        finally:
            await conn.close()

    async def test_notify_wakes_another_instance_long_before_its_poll(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        other = await open_store()
        start = await self._head(store)
        seen: list[RecordedEvent] = []
        # An idle timeout of a minute: only LISTEN/NOTIFY can deliver within the deadline.
        task = asyncio.create_task(collect(other, seen, after=start, idle_timeout=60))
        try:
            await asyncio.sleep(0.2)  # let it reach the idle wait
            for n in range(1, 4):
                await store.append(self.stream(), [event(n=n)], NO_STREAM)
                await eventually(functools.partial(lambda k: len(seen) >= k, n), timeout=5)
        finally:
            await stop(task)

    async def test_positions_commit_in_order_under_concurrent_appends(
        self, store: EventStore, open_store: StoreFactory
    ) -> None:
        """A reader polling while 4 writers append never sees a position appear behind it."""
        writers = [await open_store() for _ in range(4)]
        start = await self._head(store)
        done = asyncio.Event()
        seen: list[int] = []

        async def reader() -> None:
            after = start
            while True:
                batch = await store.read_all(after=after, limit=50)
                seen.extend(r.global_position for r in batch)
                if batch:
                    after = batch[-1].global_position
                elif done.is_set():
                    return

        async def writer(w: EventStore) -> None:
            for _ in range(25):
                await w.append(self.stream(), [event(), event()], NO_STREAM)

        reading = asyncio.create_task(reader())
        await asyncio.gather(*(writer(w) for w in writers))
        done.set()
        await asyncio.wait_for(reading, 20)
        every = [r.global_position for r in await store.read_all(after=start, limit=10_000)]
        assert seen == every
        assert len(every) == 4 * 25 * 2

    async def test_unreachable_server_is_store_unavailable(self) -> None:
        from ispbill_core.eventstore import StoreUnavailable
        from ispbill_core.eventstore.postgresql import PostgresEventStore

        with pytest.raises(StoreUnavailable):
            await PostgresEventStore.connect("postgresql://postgres@127.0.0.1:1/nowhere")

    async def test_a_closed_store_refuses_work(self, open_store: StoreFactory) -> None:
        from ispbill_core.eventstore import EventStoreError

        store = await open_store()
        await store.close()
        with pytest.raises(EventStoreError):
            await store.append(self.stream(), [event()], NO_STREAM)
        await store.close()  # twice is fine


@pytest.mark.integration
class TestKurrentDBEventStore(EventStoreContract):
    keeps_chain = False
    append_many_is_atomic = False
    detects_id_reuse_across_streams = False

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        url = os.environ.get("ESDB_URL")
        if not url:
            pytest.skip("ESDB_URL not set: no EventStoreDB/KurrentDB server here")
        from ispbill_core.eventstore.kurrentdb import KurrentDBEventStore

        async def factory() -> EventStore:
            return await KurrentDBEventStore.connect(url)

        return factory
