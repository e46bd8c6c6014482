"""How far behind a consumer group is on a topic, measured in the time of its records.

A deadline derived from when records were received (a silent session: `silent_after` past its
newest record) may only fire once every record received before it has been consumed: while
older records still wait on the topic, one of them may be the session's. Lag in messages does
not say that; the receive time of the oldest record the group has not committed does.

`KafkaBacklog(at)` is True while some partition of the topic holds a record past the group's
committed offset that was received before `at`. It reads the group's committed offsets, the
partitions' end offsets and, for each partition that lags, the one record at the committed
offset (its envelope's `data.received_at`, else the event's `occurred_at`); at most once per
`refresh` seconds. It never joins the group and never commits. When the broker cannot be
asked, it answers True: a deadline waits rather than fires on records not yet seen.

The committed offsets trail what the group has processed by up to its commit interval (faust:
`broker_commit_interval`), and a measure is reused for `refresh` seconds; a deadline held back
is asked about again after `BACKLOG_RECHECK` (rating: 10 s), about its first time.

Only the record at each committed offset is read: records on a partition are taken to be in
receive order. Two paths publish older records behind newer ones: a collector draining its
spool after a Kafka outage while another collector publishes live, and `ispbill import
detail`. A deadline can then fire before such an older record is rated; the session is closed
at its last totals, and the older record's bytes still count when it is rated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ispbill_core.bus import UndecodableMessage, decode_message
from ispbill_core.bus.kafka_compat import install_kafka_compat
from ispbill_core.events import NewEvent

__all__ = ["KafkaBacklog", "received_at"]

#: a partition that has yielded no record at its position this long after the fetch began is
#: caught up (the broker answers an empty fetch after `fetch_max_wait_ms`, 100 ms here)
_CAUGHT_UP_WAIT = 0.3
#: how long one fetch waits for a partition known to lag
_FETCH_STEP = 1.0

log = logging.getLogger(__name__)


def received_at(event: NewEvent) -> datetime:
    """When a record was received: its `received_at`, else when its event occurred."""
    value = event.data.get("received_at")
    when = event.metadata.occurred_at
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(value)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class KafkaBacklog:
    """The oldest receive time among the records of `topic` that `group_id` has not committed
    (module docstring). An awaitable predicate: `await backlog(at)`."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        group_id: str,
        topic: str,
        *,
        refresh: float = 1.0,
        request_timeout: float = 10.0,
        record_time: Callable[[NewEvent], datetime] = received_at,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bootstrap = (
            bootstrap_servers if isinstance(bootstrap_servers, str) else list(bootstrap_servers)
        )
        self._group = group_id
        self._topic = topic
        self._refresh = refresh
        self._timeout = request_timeout
        self._record_time = record_time
        self._clock = clock
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._measured: tuple[float, datetime | None] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self, at: datetime) -> bool:
        try:
            oldest = await self.oldest_waiting()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("cannot measure the backlog of %s (%r): holding back", self._topic, exc)
            await self.close()  # a new connection next time
            # Held for `refresh` seconds like a measure: every due timer asking again, each
            # waiting out the request timeout, would stall the timer runner past its lease.
            self._measured = (self._clock(), datetime.min.replace(tzinfo=UTC))
            return True
        return oldest is not None and oldest < at

    async def oldest_waiting(self) -> datetime | None:
        """The receive time of the oldest record not committed yet; None when caught up."""
        async with self._lock:
            now = self._clock()
            if self._measured is not None and now - self._measured[0] < self._refresh:
                return self._measured[1]
            oldest = await asyncio.wait_for(self._measure(), self._timeout)
            self._measured = (self._clock(), oldest)
            return oldest

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        self._measured = None
        await _close(admin, consumer)

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            install_kafka_compat()
            timeout_ms = int(self._timeout * 1000)
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self._group}-backlog",
                request_timeout_ms=timeout_ms,
            )
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=f"{self._group}-backlog",
                group_id=None,  # never joins the group, never commits
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                request_timeout_ms=timeout_ms,
                max_partition_fetch_bytes=256 * 1024,
                fetch_max_wait_ms=100,
            )
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _close(admin, consumer)
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _measure(self) -> datetime | None:
        admin, consumer = await self._clients()
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            await consumer.topics()  # metadata refreshed
            partitions = consumer.partitions_for_topic(self._topic) or set()
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        if not tps:
            return None
        committed = await admin.list_consumer_group_offsets(self._group, partitions=tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        positions: dict[TopicPartition, int] = {}
        for tp in tps:
            meta = committed.get(tp)
            position = meta.offset if meta is not None and meta.offset >= 0 else begins[tp]
            positions[tp] = max(position, begins[tp])
        # What the fetch returns decides: a partition that yields a record at its position
        # lags; one that yields none within `_CAUGHT_UP_WAIT` is caught up. The end offsets
        # only say which partitions certainly lag (and are worth waiting for): Tansu reports
        # a partition's end as its last record batch's base offset + 1, short of the records
        # after that batch's first.
        consumer.assign(list(positions))
        for tp, position in positions.items():
            consumer.seek(tp, position)
        loop = asyncio.get_running_loop()
        settle = loop.time() + _CAUGHT_UP_WAIT
        oldest: datetime | None = None
        left = set(positions)
        while left:
            lagging = {tp for tp in left if positions[tp] < ends[tp]}
            wait = settle - loop.time()
            if not lagging and wait <= 0:
                break  # the rest are caught up
            fetched = await consumer.getmany(
                *left, timeout_ms=int(max(wait, _FETCH_STEP if lagging else 0) * 1000)
            )
            if not fetched and lagging and loop.time() > settle:
                raise TimeoutError(
                    f"partitions {sorted(t.partition for t in lagging)} lag, but"
                    " no record was fetched"
                )
            for tp, messages in fetched.items():
                if not messages or tp not in left:
                    continue
                left.discard(tp)
                when = self._time_of(messages[0].value)
                oldest = when if oldest is None else min(oldest, when)
        consumer.pause(*positions)  # no fetching in the background until the next measure
        return oldest

    def _time_of(self, value: bytes | None) -> datetime:
        """The record's receive time; one that cannot be read counts as the oldest there is
        (it will be dead-lettered soon, and then the next one counts)."""
        try:
            return self._record_time(decode_message(value or b""))
        except UndecodableMessage:
            return datetime.min.replace(tzinfo=UTC)


async def _close(admin: AIOKafkaAdminClient | None, consumer: AIOKafkaConsumer | None) -> None:
    """Both clients closed, whatever state their connections are in."""
    if admin is not None:
        try:
            await admin.close()
        except Exception as exc:
            log.debug("closing the backlog's admin client: %r", exc)
    if consumer is not None:
        try:
            await consumer.stop()
        except Exception as exc:
            log.debug("closing the backlog's consumer: %r", exc)
