"""The rating worker of the distributed runtime: a faust app consuming the accounting topic
(and, when given a handler for them, the router-counters topic).

The app has one agent on ACCOUNTING_TOPIC, and one on ROUTER_COUNTERS_TOPIC when the
composition root passes `counters_handler`. Each message is decoded into its NewEvent envelope
and handed to the injected handler (the rating use case, wired by the composition root); the
handler is idempotent by event id, so at-least-once delivery is enough.

What faust does and what this module does about it (faust-streaming 0.15):

* Commit only after success. Faust acks an event in a ``finally`` after the agent's
  ``yield``, so an event whose handler raised is acked too once the stream's generator is
  closed, and its offset would be committed: a lost record. The agent therefore iterates
  ``stream.noack()`` and acks each event itself, only after the handler returned. Faust
  commits the highest *contiguous* acked offset per partition every ``broker_commit_every`` /
  ``broker_commit_interval`` and on a clean stop, so an un-acked event holds the committed
  offset back and is delivered again to the next worker.
* A record that fails for good goes to the dead-letter topic (ADR 0026). With a
  ``dead_letters`` sink, a value that is not an envelope, and a record whose handler raises an
  error that is not transient (``is_transient``), are published to ``<topic>.dead-letter``
  with the reason, the error type, where they were read and when (headers, see
  ``ispbill_core.bus.kafka_dead_letters``); once that is durable the record is acked and the
  partition goes on. A batch that fails for good is rated record by record first, so that only
  the bad record is dead-lettered. Transient failures (the ledger or the broker down) are
  retried with backoff, up to ``max_backoff`` seconds apart, forever: nothing is skipped.
  Without a sink (tests of the bare app), a handler failure stops the worker (the agent's
  supervisor is ``mode.CrashingSupervisor`` and run_rating_worker raises it) and an
  undecodable value is logged and skipped.
* An event fetched before a rebalance is never acked after it. After every assignment faust
  seeks to the committed offsets and delivers those events again; acking the old copies
  could only commit stale offsets. That matters after a broker lost its state (below): the
  new consumer group has no committed offsets, and acking an event of the lost topic would
  commit its offset into the new group, skipping as many records of the new topic. The old
  copies are still rated (idempotent; and they may exist nowhere else any more).
* A broker that lost its state (Tansu with memory storage restarted; topics deleted by hand)
  leaves faust stuck: the group rejoins, but on partitions of a topic that does not exist yet
  and nothing is fetched once it does. ``run_rating_worker_recovering`` watches the broker's
  metadata; when a topic the worker needs is missing, it stops the app, creates the topics
  again and starts a new app, which joins the new group and reads the topic from its start
  (``consumer_auto_offset_reset=earliest``). The ledger, not Kafka, says what was rated:
  every id is derived from the record, so whatever is read twice is rated once.
* The first consumer-group join takes ~30 s with faust's defaults; ``fast_join`` lowers the
  rebalance and session timeouts for tests and small installations (~4 s against Tansu).
* Faust's internal leader topic and web server are off: nothing here needs them, and Tansu
  does not auto-create topics. The accounting topic must exist (``ensure_topics``).
* A faust App cannot be started twice; build a new one for every run.
* Tansu numbers a group's first generation 0 and aiokafka skips LeaveGroup at generation 0,
  so the next worker's join waited for the old member's session to expire (~13 s instead of
  ~4 s); ``install_kafka_compat()`` (ispbill_core.bus.kafka_compat) fixes that.
* The worker's progress spinner writes terminal escapes to stdout even when quiet: disabled.

Running it: ``run_rating_worker(app)`` starts a ``faust.Worker`` inside the running asyncio
loop (``Worker.start()`` with ``daemon=False``; ``execute_from_commandline()`` would create and
close its own loop) and returns when the worker stops, the app crashes, or the task is
cancelled, stopping the worker cleanly (which commits the acked offsets). It does not install
signal handlers or touch logging: that belongs to the process (``ispbill serve rating``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

import faust
import mode

from ispbill_core.bus import UndecodableMessage, decode_message
from ispbill_core.bus.kafka_compat import install_kafka_compat
from ispbill_core.bus.kafka_dead_letters import DeadLetter
from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC
from ispbill_core.events import NewEvent
from ispbill_core.projections import failure_reason
from ispbill_core.subscriber import is_transient as _is_transient

log = logging.getLogger(__name__)

Handler = Callable[[NewEvent], Awaitable[None]]
BatchHandler = Callable[[Sequence[NewEvent]], Awaitable[None]]
T = TypeVar("T")


class DeadLetterSink(Protocol):
    """Where records that fail for good go (`KafkaDeadLetters`): returns once they are
    durable, raises otherwise."""

    async def publish(self, letters: Sequence[DeadLetter]) -> None: ...


#: Settings that bring the first consumer-group join down from ~30 s to a few seconds.
FAST_JOIN_SETTINGS: dict[str, Any] = {
    "broker_rebalance_timeout": 5,
    "broker_session_timeout": 6,
    "broker_heartbeat_interval": 1,
}


def _broker_urls(broker: str) -> list[str]:
    """ "host:port[,host:port]" or "kafka://..." URLs, as faust wants them."""
    return [b if "://" in b else f"kafka://{b}" for b in broker.replace(";", ",").split(",") if b]


def create_rating_app(
    *,
    broker: str,
    handler: Handler,
    app_id: str = "ispbill-rating",
    data_dir: str | None = None,
    fast_join: bool = False,
    topic: str = ACCOUNTING_TOPIC,
    batch_handler: BatchHandler | None = None,
    batch_size: int = 500,
    dead_letters: DeadLetterSink | None = None,
    is_transient: Callable[[BaseException], bool] = _is_transient,
    max_backoff: float = 30.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    counters_handler: BatchHandler | None = None,
    counters_topic: str = ROUTER_COUNTERS_TOPIC,
) -> faust.App:
    """A faust app whose single agent feeds every accounting record to `handler`, or, with a
    `batch_handler`, the records in batches of up to `batch_size`: those that have arrived
    by the time the previous batch is done, at least one. A batch's records are acked only
    after the batch handler returned. A batch waits at most 50 ms for more records.

    With `dead_letters`, a record that fails for good is published there and acked, and a
    transient failure is retried (module docstring); without, any failure stops the worker and
    the whole batch is delivered again (handlers are idempotent).

    With a `counters_handler`, a second agent feeds the router-counters topic's samples to it
    in batches the same way (it must exist too).

    `topic` and `counters_topic` exist for tests that need topics of their own.
    """
    settings: dict[str, Any] = {
        "broker": _broker_urls(broker),
        "datadir": data_dir or tempfile.mkdtemp(prefix=f"{app_id}-"),
        "store": "memory://",
        "web_enabled": False,
        "topic_disable_leader": True,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "broker_commit_every": 100,
        "broker_commit_interval": 1.0,
    }
    if fast_join:
        settings.update(FAST_JOIN_SETTINGS)
    install_kafka_compat()
    app = faust.App(app_id, **settings)
    records = app.topic(topic, key_type=bytes, value_type=bytes)
    rater = _Rater(
        handler=handler,
        batch_handler=batch_handler,
        dead_letters=dead_letters,
        is_transient=is_transient,
        max_backoff=max_backoff,
        clock=clock,
        consumer=app_id,
    )
    app.on_partitions_assigned.connect(rater.on_partitions_assigned)

    @app.agent(records, name="rate-accounting-records", supervisor_strategy=mode.CrashingSupervisor)
    async def rate_accounting_records(stream: faust.StreamT[bytes]) -> None:
        # StreamT does not declare noack(); the stream faust passes is a Stream.
        plain = cast(faust.Stream[bytes], stream).noack()
        await _in_batches(plain, rater, batch_size if batch_handler is not None else 1)

    app.rating = rater  # type: ignore[attr-defined] # counters, for tests and the process
    if counters_handler is not None:
        samples = app.topic(counters_topic, key_type=bytes, value_type=bytes)
        batches = counters_handler

        async def one_sample(message: NewEvent) -> None:
            await batches([message])

        sampler = _Rater(
            handler=one_sample,
            batch_handler=batches,
            dead_letters=dead_letters,
            is_transient=is_transient,
            max_backoff=max_backoff,
            clock=clock,
            consumer=f"{app_id}.router-counters",
        )
        app.on_partitions_assigned.connect(sampler.on_partitions_assigned)

        @app.agent(
            samples, name="rate-router-counters", supervisor_strategy=mode.CrashingSupervisor
        )
        async def rate_router_counters(stream: faust.StreamT[bytes]) -> None:
            await _in_batches(cast(faust.Stream[bytes], stream).noack(), sampler, batch_size)

    return app


@dataclass
class _Rater:
    """Rates what the agent takes, dead-letters what fails for good, and acks; `epoch` counts
    the partition assignments this app has had."""

    handler: Handler
    batch_handler: BatchHandler | None
    dead_letters: DeadLetterSink | None
    is_transient: Callable[[BaseException], bool]
    max_backoff: float
    clock: Callable[[], datetime]
    consumer: str
    epoch: int = 0
    rated: int = 0
    dead_lettered: int = 0
    retries: int = 0
    #: events not acked because a rebalance came between their fetch and their rating
    stale: int = 0

    async def on_partitions_assigned(self, sender: Any, assigned: Any = None, **_: Any) -> None:
        self.epoch += 1

    async def take(
        self,
        events: Sequence[tuple[int, faust.types.EventT[bytes]]],
        ack: Callable[[faust.types.EventT[bytes]], Awaitable[Any]],
    ) -> None:
        """Rate `events` (each with the epoch it was fetched in), dead-letter what fails for
        good, then ack those fetched since the last assignment."""
        letters: list[DeadLetter] = []
        decoded: list[tuple[faust.types.EventT[bytes], NewEvent]] = []
        for _, event in events:
            try:
                decoded.append((event, decode_message(event.value)))
            except UndecodableMessage as exc:
                if self.dead_letters is None:
                    log.error("skipping %s: %s", _where(event), exc)
                    continue
                letters.append(self._letter(event, exc, str(exc)))
        if decoded:
            for event, exc in await self._rate(decoded):
                letters.append(self._letter(event, exc, failure_reason(exc)))
        if letters:
            await self._dead_letter(letters)
        for epoch, event in events:
            if epoch == self.epoch:
                await ack(event)
            else:
                self.stale += 1

    async def _rate(
        self, decoded: Sequence[tuple[faust.types.EventT[bytes], NewEvent]]
    ) -> list[tuple[faust.types.EventT[bytes], BaseException]]:
        """The records that failed for good, with their errors."""
        envelopes = [envelope for _, envelope in decoded]
        if self.dead_letters is None:  # every failure stops the worker
            if self.batch_handler is not None:
                await self.batch_handler(envelopes)
            else:
                for envelope in envelopes:
                    await self.handler(envelope)
            self.rated += len(envelopes)
            return []
        if self.batch_handler is not None:
            try:
                await self._retrying(self.batch_handler, envelopes)
                self.rated += len(envelopes)
                return []
            except Exception as exc:  # not transient: find the record at fault
                log.warning(
                    "a batch of %d records failed (%s); rating one by one", len(envelopes), exc
                )
        failed: list[tuple[faust.types.EventT[bytes], BaseException]] = []
        for event, envelope in decoded:
            try:
                await self._retrying(self.handler, envelope)
                self.rated += 1
            except Exception as exc:
                failed.append((event, exc))
        return failed

    async def _retrying(self, call: Callable[[T], Awaitable[None]], argument: T) -> None:
        """`call(argument)`, again with backoff while it fails transiently."""
        backoff = 0.1
        while True:
            try:
                await call(argument)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self.is_transient(exc):
                    raise
                self.retries += 1
                log.warning("rating failed transiently (%r); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Publish until it is durable: a record is acked only once it is in one place or
        the other."""
        assert self.dead_letters is not None
        backoff = 0.1
        while True:
            try:
                await self.dead_letters.publish(letters)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.retries += 1
                log.warning(
                    "cannot dead-letter %d records yet (%r); retrying in %.1fs",
                    len(letters),
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self.dead_lettered += len(letters)
        for letter in letters:
            # an alert: operators watch for this line (and `ispbill dead-letters list`)
            log.error(
                "DEAD-LETTERED record %s[%d]@%d of %s: %s",
                letter.topic,
                letter.partition,
                letter.offset,
                self.consumer,
                letter.reason,
            )

    def _letter(
        self, event: faust.types.EventT[bytes], error: BaseException, reason: str
    ) -> DeadLetter:
        message = event.message
        return DeadLetter.of(
            key=message.key,
            value=message.value,
            headers=[(name, bytes(value)) for name, value in _headers(message)],
            error=error,
            reason=reason,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            consumer=self.consumer,
            at=self.clock(),
        )


def _headers(message: Any) -> list[tuple[str, bytes]]:
    """The record's headers as a list of pairs (faust keeps what aiokafka gave it)."""
    headers = message.headers or ()
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _where(event: faust.types.EventT[bytes]) -> str:
    message = event.message
    return f"{message.topic}[{message.partition}]@{message.offset}"


async def _in_batches(
    plain: faust.Stream[bytes], rater: _Rater, size: int, linger: float = 0.05
) -> None:
    """The stream's events gathered by one task into a bounded queue, each with the epoch it
    arrived in; this one takes what has arrived, waiting up to `linger` seconds for more (up
    to `size`), and hands it to `rater`, which rates and acks it. The reading task is never
    cancelled mid-read, so no event is lost between the two; a failure propagates (the worker
    stops, nothing of the batch acked)."""
    queue: asyncio.Queue[tuple[int, faust.types.EventT[bytes]]] = asyncio.Queue(maxsize=2 * size)

    async def pump() -> None:
        async for event in plain.events():
            await queue.put((rater.epoch, event))

    reader = asyncio.create_task(pump(), name="rating-batch-reader")
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                reader.result()  # the stream ended or failed: re-raise, or stop
                return
            events = [getting.result()]
            deadline = asyncio.get_running_loop().time() + linger
            while len(events) < size:
                if not queue.empty():
                    events.append(queue.get_nowait())
                    continue
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or reader.done():
                    break
                try:  # cancelling a Queue.get loses nothing
                    events.append(await asyncio.wait_for(queue.get(), left))
                except TimeoutError:
                    break
            await rater.take(events, plain.ack)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


class _EmbeddedWorker(faust.Worker):
    """A faust Worker that leaves signals and logging to the program it runs in."""

    def install_signal_handlers(self) -> None:
        pass


async def run_rating_worker(app: faust.App, *, ready: asyncio.Event | None = None) -> None:
    """Run `app` in the running loop until it stops or crashes, or this task is cancelled.

    `ready` is set once the worker has started (the consumer may still be joining its group).
    A crash of the app (a failed handler) is raised from here.
    """
    worker = _EmbeddedWorker(
        app,
        loop=asyncio.get_running_loop(),
        quiet=True,
        override_logging=False,
        redirect_stdouts=False,
        daemon=False,
    )
    worker.spinner = None  # it writes terminal escapes to stdout even when quiet
    try:
        await worker.start()
        if ready is not None:
            ready.set()
        await worker.wait_until_stopped()
    finally:
        await worker.stop()
    if app.crash_reason is not None:
        raise app.crash_reason


async def run_rating_worker_recovering(
    make_app: Callable[[], faust.App],
    *,
    broker: str,
    topics: Mapping[str, int],
    check_every: float = 2.0,
    ready: asyncio.Event | None = None,
) -> None:
    """Run apps made by `make_app` one after the other: create `topics` (name: partitions)
    when missing, run an app, and when the broker no longer has one of the topics (it lost
    its state, or someone deleted it), stop that app and start over with a new one.

    Runs until cancelled; the crash of an app (a handler failure without a dead-letter sink)
    is raised from here. `ready` is set once the first app has started.
    """
    runs = 0
    while True:
        await _create_topics(broker, topics)
        runs += 1
        worker = asyncio.create_task(
            run_rating_worker(make_app(), ready=ready), name=f"rating-worker-{runs}"
        )
        watch = asyncio.create_task(
            _topics_lost(broker, list(topics), check_every), name="rating-broker-watch"
        )
        try:
            done, _ = await asyncio.wait({worker, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({watch})
            if not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        if worker in done:
            worker.result()  # a crash is raised
            return
        log.warning(
            "the broker lost %s (restarted without its data?): creating the topics again and"
            " joining the consumer group anew",
            ", ".join(watch.result()),
        )


async def _create_topics(broker: str, topics: Mapping[str, int]) -> None:
    """`topics` (name: partitions) that are missing, created; retried while the broker is
    down or refuses."""
    from ispbill_core.bus.kafka import ensure_topics

    backoff = 0.5
    while True:
        try:
            for count in sorted(set(topics.values())):
                names = [name for name, n in topics.items() if n == count]
                await ensure_topics(broker, names, partitions=count, request_timeout=10.0)
            return
        except Exception as exc:
            log.warning("cannot create topics %s yet (%r); retrying", list(topics), exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


async def _topics_lost(broker: str, topics: Sequence[str], every: float) -> list[str]:
    """Returns, once the broker has answered metadata without some of `topics` twice in a row,
    which ones (twice: a topic in the middle of being created is left out once). A broker that
    does not answer has not lost anything yet: that is waited out."""
    from aiokafka import AIOKafkaClient

    client: AIOKafkaClient | None = None
    missing_before: set[str] = set()
    try:
        while True:
            await asyncio.sleep(every)
            try:
                if client is None:
                    client = AIOKafkaClient(bootstrap_servers=broker, request_timeout_ms=5000)
                    await asyncio.wait_for(client.bootstrap(), 10)
                # Every topic's metadata: asking for these by name would make a broker that
                # creates topics on demand (Tansu does) create them with its defaults.
                metadata = await asyncio.wait_for(client.fetch_all_metadata(), 10)
            except Exception as exc:
                log.debug("broker metadata unavailable: %r", exc)
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.close()
                client = None
                continue
            if not metadata.brokers():
                continue
            missing = {t for t in topics if t not in metadata.topics()}
            if missing and missing & missing_before:
                return sorted(missing)
            missing_before = missing
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
