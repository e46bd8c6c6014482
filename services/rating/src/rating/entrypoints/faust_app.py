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
* A handler failure stops the worker (the agent's supervisor is ``mode.CrashingSupervisor``,
  and run_rating_worker raises the handler's exception), instead of faust's default of
  restarting the agent, which would carry on with later records while the failed one waits
  for the next rebalance. The process supervisor (systemd, Kubernetes) restarts it and
  consumption resumes from the failed record. A value that is not an envelope at all can
  never succeed: it is logged and skipped (acked), so it does not block its partition.
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
import mode

from ispbill_core.bus import UndecodableMessage, decode_message
from ispbill_core.bus.kafka_compat import install_kafka_compat
from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, ROUTER_COUNTERS_TOPIC
from ispbill_core.events import NewEvent

log = logging.getLogger(__name__)

Handler = Callable[[NewEvent], Awaitable[None]]
BatchHandler = Callable[[Sequence[NewEvent]], Awaitable[None]]

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
    counters_handler: BatchHandler | None = None,
    counters_topic: str = ROUTER_COUNTERS_TOPIC,
) -> faust.App:
    """A faust app whose single agent feeds every accounting record to `handler`, or, with a
    `batch_handler`, the records in batches of up to `batch_size`: those that have arrived
    by the time the previous batch is done, at least one. A batch's records are acked only
    after the batch handler returned; if it raises, the worker stops and the whole batch is
    delivered again (handlers are idempotent). A batch waits at most 50 ms for more records.

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

    @app.agent(records, name="rate-accounting-records", supervisor_strategy=mode.CrashingSupervisor)
    async def rate_accounting_records(stream: faust.StreamT[bytes]) -> None:
        # StreamT does not declare noack(); the stream faust passes is a Stream.
        plain = cast(faust.Stream[bytes], stream).noack()
        if batch_handler is not None:
            await _in_batches(plain, batch_handler, batch_size)
            return
        async for event in plain.events():
            envelope = _envelope(event)
            if envelope is not None:
                await handler(envelope)
            await plain.ack(event)

    if counters_handler is not None:
        samples = app.topic(counters_topic, key_type=bytes, value_type=bytes)

        @app.agent(
            samples, name="rate-router-counters", supervisor_strategy=mode.CrashingSupervisor
        )
        async def rate_router_counters(stream: faust.StreamT[bytes]) -> None:
            await _in_batches(
                cast(faust.Stream[bytes], stream).noack(), counters_handler, batch_size
            )

    return app


def _envelope(event: faust.types.EventT[bytes]) -> NewEvent | None:
    """The record's envelope; None (logged) for a value that is not one, which is skipped."""
    try:
        return decode_message(event.value)
    except UndecodableMessage as exc:
        log.error(
            "skipping %s[%s]@%s: %s",
            event.message.topic,
            event.message.partition,
            event.message.offset,
            exc,
        )
        return None


async def _in_batches(
    plain: faust.Stream[bytes], handler: BatchHandler, size: int, linger: float = 0.05
) -> None:
    """The stream's events gathered by one task into a bounded queue; this one takes what
    has arrived, waiting up to `linger` seconds for more (up to `size`), hands it to
    `handler`, then acks it. The reading task is never
    cancelled mid-read, so no event is lost between the two; a handler failure propagates
    (the worker stops, nothing of the batch acked)."""
    queue: asyncio.Queue[faust.types.EventT[bytes]] = asyncio.Queue(maxsize=2 * size)

    async def pump() -> None:
        async for event in plain.events():
            await queue.put(event)

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
            envelopes = [e for e in (_envelope(event) for event in events) if e is not None]
            if envelopes:
                await handler(envelopes)
            for event in events:
                await plain.ack(event)
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
