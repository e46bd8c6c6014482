"""EventStoreDB/KurrentDB adapter of the event store, through kurrentdbclient's asyncio client.

Mapping onto the server's model:
- expected version -> `current_version` (an int, or StreamState NO_STREAM / ANY / EXISTS);
- global position -> the event's `commit_position` in `$all` (grows, but is not contiguous);
- read_all with types -> a server-side event-type regex filter; without types the default
  filter, which leaves out system events (type `$...`) and so also our checkpoint events;
- checkpoints -> one small stream per subscriber, `ispbill-checkpoint-<name>`, capped with
  `$maxCount` so old positions are scavenged.

The server knows event ids only per stream and only for a retry at the same expected
version. To keep the port's promise (a retried batch is a no-op whatever the expected version
said), every append first reads the stream's tail: ids already there make it a no-op or an
EventIdConflict. That works while the batch is among the last `idempotence_window` events of
its stream. Reusing an id in another stream is not detected: there is no id index to ask.

Needs EventStoreDB 22.10+ or KurrentDB: older servers give no commit position on stream reads,
and every event of a batch must have its own commit position.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from kurrentdbclient import (
    DEFAULT_EXCLUDE_FILTER,
    AsyncKurrentDBClient,
)
from kurrentdbclient import (
    NewEvent as KurrentNewEvent,
)
from kurrentdbclient import (
    RecordedEvent as KurrentRecordedEvent,
)
from kurrentdbclient import (
    StreamState as KurrentStreamState,
)
from kurrentdbclient.exceptions import (
    DeadlineExceededError,
    DiscoveryFailedError,
    KurrentDBClientError,
    NotFoundError,
    ProgrammingError,
    ServiceUnavailableError,
    WrongCurrentVersionError,
)

from ispbill_core.events import (
    AnyNewEvent,
    EncodedEvent,
    EventMetadata,
    RecordedEvent,
    encoded,
    timestamp_json,
)
from ispbill_core.eventstore import (
    AppendSignal,
    CheckpointStore,
    EventIdConflict,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    StoreUnavailable,
    WrongExpectedVersion,
    check_expected,
)

log = logging.getLogger(__name__)

CHECKPOINT_STREAM_PREFIX = "ispbill-checkpoint-"
#: Starts with "$" so the server's default filter keeps it out of read_all and subscriptions.
CHECKPOINT_EVENT_TYPE = "$ispbill-checkpoint"
#: Key of the envelope's type version inside the stored metadata JSON.
_VERSION_KEY = "ispbill_type_version"
#: ANY/EXISTS appends are turned into exact-version appends; this bounds the retries when
#: other writers keep winning the race.
_MAX_ATTEMPTS = 50

_UNAVAILABLE = (ServiceUnavailableError, DeadlineExceededError, DiscoveryFailedError)


def _translate(exc: KurrentDBClientError, what: str) -> EventStoreError:
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable(f"kurrentdb {what}: {exc}")
    return EventStoreError(f"kurrentdb {what} failed: {exc}")


def _type_filter(types: Collection[str]) -> tuple[str, ...]:
    # kurrentdbclient wraps patterns as "^" + "|".join(p) + "$": one group keeps both anchors.
    return ("(?:" + "|".join(re.escape(t) for t in sorted(types)) + ")",)


def _encode(serialised: EncodedEvent, recorded_at: datetime) -> KurrentNewEvent:
    metadata = json.loads(serialised.stamped_metadata(timestamp_json(recorded_at)))
    stored = {_VERSION_KEY: serialised.version, **metadata}
    return KurrentNewEvent(
        id=uuid.UUID(serialised.id),
        type=serialised.type,
        data=serialised.data_json.encode(),
        metadata=json.dumps(stored, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _decode(recorded: KurrentRecordedEvent) -> RecordedEvent:
    try:
        stored: dict[str, Any] = json.loads(recorded.metadata) if recorded.metadata else {}
    except ValueError:
        stored = {}
    version = int(stored.pop(_VERSION_KEY, 1))
    if "occurred_at" not in stored:
        # Written by another tool: the server's own timestamp is the best we know.
        stored = {"occurred_at": recorded.recorded_at or datetime.now(UTC)}
    return RecordedEvent(
        id=recorded.id,
        stream=recorded.stream_name,
        stream_position=recorded.stream_position,
        global_position=recorded.commit_position,
        type=recorded.type,
        version=version,
        data=json.loads(recorded.data) if recorded.data else {},
        metadata=EventMetadata.model_validate(stored),
    )


class KurrentDBEventStore(EventStore, CheckpointStore):
    """The ledger in an EventStoreDB/KurrentDB server (esdb://, kurrentdb://, kdb:// URIs)."""

    def __init__(
        self,
        uri: str,
        *,
        root_certificates: str | bytes | None = None,
        idempotence_window: int = 100,
        checkpoint_max_count: int = 10,
    ) -> None:
        self.uri = uri
        self._client = AsyncKurrentDBClient(uri, root_certificates=root_certificates)
        self._idempotence_window = idempotence_window
        self._checkpoint_max_count = checkpoint_max_count
        self._signal = AppendSignal()

    @classmethod
    async def connect(cls, uri: str, **options: Any) -> KurrentDBEventStore:
        """Create the store and connect now (otherwise the first call connects)."""
        store = cls(uri, **options)
        await store.open()
        return store

    async def open(self) -> None:
        try:
            await self._client.connect()
        except KurrentDBClientError as exc:
            raise _translate(exc, "connect") from exc

    # -- writes --------------------------------------------------------------------------
    async def append(
        self, stream: str, events: Sequence[AnyNewEvent], expected_version: ExpectedVersion
    ) -> int:
        if not events:
            raise ValueError("append needs at least one event")
        batch = [encoded(e) for e in events]
        ids = {uuid.UUID(e.id) for e in batch}
        try:
            for _ in range(_MAX_ATTEMPTS):
                current, found = await self._tail(stream, ids, len(events))
                if found:
                    if found == ids:
                        return 0 if current is None else current
                    raise EventIdConflict(
                        f"stream {stream!r}: ids {sorted(map(str, found))} already recorded"
                        " in a different batch"
                    )
                check_expected(stream, expected_version, current)
                # Always an exact version, even for ANY: the tail we checked ids against must
                # still be the tail we append after.
                exact: int | KurrentStreamState = (
                    KurrentStreamState.NO_STREAM if current is None else current
                )
                now = datetime.now(UTC)
                try:
                    head = await self._client.append_to_stream(
                        stream,
                        events=[_encode(e, now) for e in batch],
                        current_version=exact,
                    )
                except WrongCurrentVersionError:
                    # Another writer got in first; the next pass re-reads the tail and either
                    # finds our ids (a retry that raced itself), a failed expectation, or (ANY,
                    # EXISTS) simply appends after it.
                    continue
                await self._signal.notify(head)
                return (-1 if current is None else current) + len(events)
        except KurrentDBClientError as exc:
            raise _translate(exc, f"append to {stream!r}") from exc
        current = await self.stream_version(stream)
        raise WrongExpectedVersion(stream, expected_version, current)

    async def _tail(
        self, stream: str, ids: set[uuid.UUID], batch: int
    ) -> tuple[int | None, set[uuid.UUID]]:
        """The stream's version and which of `ids` are among its last events."""
        try:
            tail = await self._client.get_stream(
                stream, backwards=True, limit=self._idempotence_window + batch
            )
        except NotFoundError:
            return None, set()
        if not tail:
            return None, set()
        return tail[0].stream_position, {e.id for e in tail} & ids

    # -- reads ---------------------------------------------------------------------------
    async def read_stream(
        self, stream: str, *, from_position: int = 0, limit: int | None = None
    ) -> list[RecordedEvent]:
        try:
            recorded = await self._client.get_stream(
                stream,
                stream_position=from_position,
                limit=sys.maxsize if limit is None else limit,
            )
        except NotFoundError:
            return []
        except KurrentDBClientError as exc:
            raise _translate(exc, f"read {stream!r}") from exc
        return [_decode(r) for r in recorded]

    async def stream_version(self, stream: str) -> int | None:
        try:
            version = await self._client.get_current_version(stream)
        except KurrentDBClientError as exc:
            raise _translate(exc, f"version of {stream!r}") from exc
        return None if version is KurrentStreamState.NO_STREAM else int(version)

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[RecordedEvent]:
        if types is not None and not types:
            return []
        filters: dict[str, Any] = (
            {"filter_include": _type_filter(types)}
            if types is not None
            else {"filter_exclude": DEFAULT_EXCLUDE_FILTER}
        )
        found: list[RecordedEvent] = []
        try:
            # Reading forwards from a commit position may include the event at it: ask one more.
            response = await self._client.read_all(
                commit_position=after or None, limit=limit + 1, **filters
            )
            async with response:
                async for recorded in response:
                    if recorded.commit_position > after:
                        found.append(_decode(recorded))
        except KurrentDBClientError as exc:
            raise _translate(exc, "read all") from exc
        return found[:limit]

    async def head_position(self) -> int:
        try:
            position: int = await self._client.get_commit_position(
                filter_exclude=DEFAULT_EXCLUDE_FILTER
            )
        except KurrentDBClientError as exc:
            raise _translate(exc, "read the head position") from exc
        return position

    async def wait_for_append(self, after: int, timeout: float) -> None:
        """A short-lived subscription from `after`: returns on its first event, else times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                subscription = await self._client.subscribe_to_all(
                    commit_position=after or None, filter_exclude=DEFAULT_EXCLUDE_FILTER
                )
                async with subscription:
                    async for recorded in subscription:
                        if recorded.commit_position > after:
                            return
        except TimeoutError:
            return
        except KurrentDBClientError as exc:
            # Unreachable server: behave like a poll interval and let the caller read again.
            log.warning("kurrentdb wait_for_append failed, polling: %s", exc)
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    async def subscribe(
        self,
        *,
        after: int = 0,
        types: Collection[str] | None = None,
        batch_size: int = 500,
        idle_timeout: float = 1.0,
    ) -> AsyncIterator[RecordedEvent]:
        """The server's catch-up subscription on `$all`; resubscribes from the last position
        delivered when the connection drops."""
        position = after
        filters: dict[str, Any] = (
            {"filter_include": _type_filter(types)}
            if types is not None
            else {"filter_exclude": DEFAULT_EXCLUDE_FILTER}
        )
        while True:
            try:
                subscription = await self._client.subscribe_to_all(
                    commit_position=position or None, window_size=batch_size, **filters
                )
                async with subscription:
                    async for recorded in subscription:
                        if recorded.commit_position <= position:
                            continue
                        yield _decode(recorded)
                        position = recorded.commit_position
            except _UNAVAILABLE as exc:
                log.warning(
                    "kurrentdb subscription dropped at %d, resubscribing: %s", position, exc
                )
                await asyncio.sleep(idle_timeout)
            except KurrentDBClientError as exc:
                raise _translate(exc, "subscribe") from exc

    # -- checkpoints ---------------------------------------------------------------------
    async def _last_checkpoint(self, name: str) -> tuple[int, int | None]:
        """(position, stream version) of a subscriber's checkpoint stream."""
        try:
            recorded = await self._client.get_stream(
                CHECKPOINT_STREAM_PREFIX + name, backwards=True, limit=1
            )
        except NotFoundError:
            return 0, None
        if not recorded:
            return 0, None
        return int(json.loads(recorded[0].data)["position"]), recorded[0].stream_position

    async def load_checkpoint(self, name: str) -> int:
        try:
            position, _ = await self._last_checkpoint(name)
        except KurrentDBClientError as exc:
            raise _translate(exc, f"load checkpoint {name!r}") from exc
        return position

    async def save_checkpoint(self, name: str, position: int) -> None:
        stream = CHECKPOINT_STREAM_PREFIX + name
        try:
            for _ in range(_MAX_ATTEMPTS):
                saved, version = await self._last_checkpoint(name)
                if saved >= position:
                    return  # never backwards
                try:
                    await self._client.append_to_stream(
                        stream,
                        events=[
                            KurrentNewEvent(
                                type=CHECKPOINT_EVENT_TYPE,
                                data=json.dumps({"position": position}).encode(),
                            )
                        ],
                        current_version=(
                            KurrentStreamState.NO_STREAM if version is None else version
                        ),
                    )
                except WrongCurrentVersionError:
                    continue  # another instance of the subscriber saved; compare again
                if version is None:
                    await self._client.set_stream_metadata(
                        stream, metadata={"$maxCount": self._checkpoint_max_count}
                    )
                return
        except KurrentDBClientError as exc:
            raise _translate(exc, f"save checkpoint {name!r}") from exc
        raise EventStoreError(f"checkpoint {name!r}: gave up after {_MAX_ATTEMPTS} races")

    async def close(self) -> None:
        # ProgrammingError: the client never connected, so there is nothing to close.
        with contextlib.suppress(KurrentDBClientError, ProgrammingError):
            await self._client.close()
