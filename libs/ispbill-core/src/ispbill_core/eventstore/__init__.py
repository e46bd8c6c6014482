"""The event store port: append with an expected version, read a stream, read all, subscribe."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from enum import Enum

from ispbill_core.events import AnyNewEvent, RecordedEvent
from ispbill_core.eventstore.chain import ChainReport


class StreamState(Enum):
    """Expected states other than an exact version (an exact version is an int >= 0)."""

    ANY = "any"
    NO_STREAM = "no_stream"
    EXISTS = "exists"


ExpectedVersion = int | StreamState
ANY = StreamState.ANY
NO_STREAM = StreamState.NO_STREAM
STREAM_EXISTS = StreamState.EXISTS


class EventStoreError(Exception):
    """Base of the errors an adapter raises; driver errors are translated into these."""


class WrongExpectedVersion(EventStoreError):
    def __init__(self, stream: str, expected: ExpectedVersion, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        shown = expected.value if isinstance(expected, StreamState) else expected
        super().__init__(f"stream {stream!r}: expected version {shown}, actual {actual}")


class EventIdConflict(EventStoreError):
    """Some ids of a batch are already recorded, but not as exactly this batch in this stream."""


class ChainNotKept(EventStoreError):
    """This ledger keeps no hash chain to verify."""


class StoreUnavailable(EventStoreError):
    """The store could not be reached; the append may be retried with the same event ids."""


def check_expected(stream: str, expected: ExpectedVersion, actual: int | None) -> None:
    """Raise WrongExpectedVersion unless `actual` (None: no stream) satisfies `expected`."""
    if expected is ANY:
        return
    if expected is NO_STREAM:
        ok = actual is None
    elif expected is STREAM_EXISTS:
        ok = actual is not None
    else:
        ok = actual == expected
    if not ok:
        raise WrongExpectedVersion(stream, expected, actual)


class EventStore(abc.ABC):
    """The ledger. Stream positions start at 0; global positions start at 1 and only grow.

    Appending a batch whose event ids are all already recorded in that stream is an idempotent
    no-op that returns the stream's version, whatever the expected version said.
    """

    @abc.abstractmethod
    async def append(
        self, stream: str, events: Sequence[AnyNewEvent], expected_version: ExpectedVersion
    ) -> int:
        """Append atomically; return the stream's version (position of its last event)."""

    async def append_many(
        self,
        batches: Sequence[tuple[str, Sequence[AnyNewEvent], ExpectedVersion]],
        *,
        checkpoint: tuple[str, int] | None = None,
    ) -> list[int]:
        """Append to several streams; return each stream's version, in the order given.

        Adapters with transactions (SQLite, PostgreSQL) make it one transaction: all or
        nothing, one commit (one fsync) for the lot, which is what lets a collector batch from
        many NASes cost one commit instead of one per NAS. Each stream's batch follows the
        rules of `append` (expected version, idempotent when all its ids are recorded there).
        `checkpoint` (name, position): a consumer's checkpoint moved forward (never back) in
        the same transaction, so that its effects and its progress commit together; with no
        batches, only the checkpoint. This default appends one stream after another, is not
        atomic, and saves the checkpoint after them when the store keeps checkpoints.
        """
        versions = [
            await self.append(stream, events, expected) for stream, events, expected in batches
        ]
        if checkpoint is not None and isinstance(self, CheckpointStore):
            await self.save_checkpoint(*checkpoint)
        return versions

    @abc.abstractmethod
    async def read_stream(
        self, stream: str, *, from_position: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of one stream in order, from a stream position; [] when it does not exist."""

    async def read_streams(self, streams: Collection[str]) -> dict[str, list[RecordedEvent]]:
        """Every event of each stream named, each in order; [] for a stream that does not
        exist. Adapters read them in one query per few hundred streams (rating reads the
        sessions of a whole batch at once); this default reads one stream after another."""
        return {stream: await self.read_stream(stream) for stream in dict.fromkeys(streams)}

    @abc.abstractmethod
    async def stream_version(self, stream: str) -> int | None:
        """Position of the stream's last event, or None when the stream does not exist."""

    async def stream_versions(self, streams: Collection[str]) -> dict[str, int | None]:
        """`stream_version` of each stream named (a bill run asks for thousands at once:
        adapters answer in one query per few hundred); this default asks one by one."""
        return {stream: await self.stream_version(stream) for stream in dict.fromkeys(streams)}

    @abc.abstractmethod
    async def read_all(
        self, *, after: int = 0, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[RecordedEvent]:
        """Events of every stream with global position > after, in global order."""

    @abc.abstractmethod
    async def head_position(self) -> int:
        """Global position of the last recorded event; 0 when the ledger is empty.

        Every event at or below it is readable, so a reader that asked for the head before a
        read (filtered by type or not) has seen everything up to it once the read came back
        short, and can wait for appends past the head rather than past its own last event.
        """

    @abc.abstractmethod
    async def wait_for_append(self, after: int, timeout: float) -> None:
        """Return once an event past `after` may exist, or after `timeout` seconds."""

    async def subscribe(
        self,
        *,
        after: int = 0,
        types: Collection[str] | None = None,
        batch_size: int = 500,
        idle_timeout: float = 1.0,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from `after`, then follow live appends, forever.

        Idle, it waits past the ledger's head, not past its own last event: with a type filter,
        other types' events beyond that would otherwise wake it at once, again and again.
        """
        position = after
        while True:
            head = await self.head_position()
            batch = await self.read_all(after=position, limit=batch_size, types=types)
            for event in batch:
                yield event
                position = event.global_position
            if len(batch) < batch_size:
                await self.wait_for_append(max(position, head), idle_timeout)

    async def verify_chain(self, *, anchors: dict[int, bytes] | None = None) -> ChainReport:
        """Walk the ledger's hash chain in global order (ADR 0031): the first row that does
        not follow the one before it, or an `anchors` position (global position: hash, a head
        an auditor kept) whose hash differs or is gone. Ledgers that keep no chain raise
        ChainNotKept."""
        raise ChainNotKept(
            f"{type(self).__name__} keeps no hash chain: the SQLite and PostgreSQL ledgers do;"
            " EventStoreDB/KurrentDB's own log is append-only on the server"
        )

    async def close(self) -> None:  # noqa: B027 - adapters without resources need not override
        pass


class CheckpointStore(abc.ABC):
    """Where a subscriber keeps the global position it has processed, by name."""

    @abc.abstractmethod
    async def load_checkpoint(self, name: str) -> int:
        """The saved position, 0 if none."""

    @abc.abstractmethod
    async def save_checkpoint(self, name: str, position: int) -> None:
        """Save the position; never moves a checkpoint backwards. The SQLite and PostgreSQL
        adapters do not wait for a checkpoint saved alone (here, or by `append_many` with no
        batches) to reach the disk: the next durable commit takes it there, and a crash before
        then finds it at an earlier position, so its consumer handles those events again.
        Consumers are idempotent; a checkpoint saved with events is as durable as they are."""


class AppendSignal:
    """Wakes in-process subscribers when this process appends.

    No lock and no asyncio.wait_for: on Python 3.11 wait_for can swallow a cancellation that
    races its inner future, which left subscribers running after shutdown.
    """

    def __init__(self) -> None:
        self._head = 0
        self._event: asyncio.Event | None = None

    async def notify(self, head: int) -> None:
        self._head = max(self._head, head)
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self, after: int, timeout: float) -> None:
        if self._head > after:
            return
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass
