"""Fault tests: the collector's acknowledgement survives a hung broker, a broker that loses
everything, and a collector killed with SIGKILL.

Everything here is real: Tansu (a Kafka-protocol broker, memory storage) on loopback, the
collector (in process, or `ispbill serve collector` as a child process), pyrad-built
Accounting-Requests over UDP from a NAS that retransmits unanswered packets every second with
the same bytes, and an aiokafka consumer that reads the topic as rating would.

"Exactly once" is checked where consumers see it: every acknowledged packet has exactly one
distinct record id among the consumed messages, none is missing, no id is there that was not
sent, and per session the first occurrences come in the order the NAS sent them. Raw duplicates
(a spooled batch whose timed-out original the broker wrote anyway, a chunk re-published after
a kill) carry the same record id, which every consumer treats as a no-op; the tests print them.

Tansu keeps messages in memory, so a restart loses what it had acknowledged: counted here is
what the consumer received, and the restart is done once the consumer has read what the broker
acknowledged (a replicated Kafka cluster would not lose it; that loss is not the collector's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ispbill_core.bus import decode_message
from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
from ispbill_core.clock import SystemClock
from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC
from ispbill_core.events import EventMetadata, NewEvent, deterministic_id
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.sealing import Keyring
from tests.fixtures.kafka import TansuBroker, TansuNotFound
from tests.fixtures.smtp import free_port
from tests.fixtures.staff import staff_token
from usage_collector.adapters.spool import RenewablePublisher, SpoolingPublisher
from usage_collector.adapters.spool import main as spool_main
from usage_collector.bootstrap import UsageCollector, bootstrap
from usage_collector.testing import key_beside, register_nas

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

ISPBILL = [sys.executable, "-m", "ispbill_app.cli"]
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z, the Event-Timestamp of every session's Start


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    """A broker of the test's own: these tests pause and restart it."""
    try:
        broker = TansuBroker()
    except TansuNotFound as exc:
        pytest.skip(str(exc))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        with contextlib.suppress(OSError):
            broker.log_path.unlink()


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "", every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(every)


# -- the NAS ------------------------------------------------------------------------------------


@dataclass
class SentPacket:
    session_id: str
    status: str
    session_time: int
    sends: int = 0
    acked: bool = False


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the collector is down: keep retransmitting


@dataclass
class Nas:
    """Sessions as a NAS sends them: Start, Interim-Updates, Stop, each packet sent once the
    previous one of its session was answered, and retransmitted with the same bytes every
    `retransmit` seconds until it is. `lanes` sessions run side by side, each from its own
    UDP port. `hold()` stops new packets (retransmissions go on) until `release()`."""

    address: tuple[str, int]
    build: Callable[..., bytes]
    lanes: int
    per_lane: int
    gap: float = 0.0
    retransmit: float = 1.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    packets: list[SentPacket] = field(default_factory=list)
    acked: int = 0
    retransmissions: int = 0
    in_flight: int = 0
    _go: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._go.set()

    @property
    def total(self) -> int:
        return self.lanes * self.per_lane

    def hold(self) -> None:
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._session(lane) for lane in range(self.lanes)))

    async def _session(self, lane: int) -> None:
        loop = asyncio.get_running_loop()
        transport, replies = await loop.create_datagram_endpoint(_Replies, remote_addr=self.address)
        session_id = f"{self.run_id}-{lane}"
        try:
            for k in range(self.per_lane):
                await self._go.wait()
                status = (
                    "Start" if k == 0 else "Stop" if k == self.per_lane - 1 else "Interim-Update"
                )
                identifier = k % 256
                data = self.build(
                    id=identifier,
                    User_Name=f"user-{lane}",
                    Acct_Status_Type=status,
                    Acct_Session_Id=session_id,
                    Event_Timestamp=EPOCH + k * 60,
                    Acct_Session_Time=k * 60,
                    Acct_Input_Octets=k * 1000,
                    Acct_Output_Octets=k * 2000,
                    NAS_IP_Address="127.0.0.1",
                )
                packet = SentPacket(session_id, status, k * 60)
                self.packets.append(packet)
                self.in_flight += 1
                await self._until_answered(transport, replies, packet, data, identifier)
                self.in_flight -= 1
                if self.gap:
                    await asyncio.sleep(self.gap)
        finally:
            transport.close()

    async def _until_answered(
        self,
        transport: asyncio.DatagramTransport,
        replies: _Replies,
        packet: SentPacket,
        data: bytes,
        identifier: int,
    ) -> None:
        while True:
            transport.sendto(data)
            packet.sends += 1
            if packet.sends > 1:
                self.retransmissions += 1
            try:
                async with asyncio.timeout(self.retransmit):
                    while True:
                        reply = await replies.queue.get()
                        # Accounting-Response (5) to this request's Identifier.
                        if reply[0] == 5 and reply[1] == identifier:
                            packet.acked = True
                            self.acked += 1
                            return
            except TimeoutError:
                continue


# -- the consumer -------------------------------------------------------------------------------


@dataclass
class Consumed:
    generation: int
    partition: int
    offset: int
    event: NewEvent


class TopicReader:
    """Reads the accounting topic from the beginning, keeping every message, in the background.

    `resubscribe()` is what a consumer must do after a broker that lost its data came back: its
    positions refer to a log that no longer exists, so it starts again from the beginning of
    the new one (offsets restart at 0 and would otherwise skip or repeat messages).
    """

    def __init__(self, bootstrap_servers: str, topic: str = ACCOUNTING_TOPIC) -> None:
        self._bootstrap = bootstrap_servers
        self._topic = topic
        self.records: list[Consumed] = []
        self.generation = 0
        self._restart = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicReader:
        self._task = asyncio.create_task(self._run(), name="topic-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resubscribe(self) -> None:
        self._restart.set()

    def ids(self, prefix: str) -> set[uuid.UUID]:
        return {
            r.event.id
            for r in self.records
            if str(r.event.data.get("acct_session_id", "")).startswith(prefix)
        }

    async def _run(self) -> None:
        while True:
            self._restart.clear()
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                request_timeout_ms=5000,
                metadata_max_age_ms=1000,
            )
            # getmany() does not return while the broker is gone, whatever its timeout: wait
            # for it and for a resubscribe side by side.
            reading = asyncio.create_task(self._read(consumer, self.generation))
            restart = asyncio.create_task(self._restart.wait())
            try:
                await asyncio.wait({reading, restart}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reading, restart):
                    task.cancel()
                await asyncio.wait({reading, restart})
                # Stopping a consumer of a dead broker can hang or raise CancelledError from
                # inside aiokafka: give it a few seconds on a task of its own, then leave it.
                stopping = asyncio.create_task(consumer.stop())
                await asyncio.wait({stopping}, timeout=5)
            if restart.done() and not restart.cancelled():
                self.generation += 1
            elif not reading.cancelled() and reading.exception() is not None:
                log.info("topic reader: %r", reading.exception())
                await asyncio.sleep(0.2)

    async def _read(self, consumer: AIOKafkaConsumer, generation: int) -> None:
        await consumer.start()
        partitions: set[int] = set()
        while not partitions:
            await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
            partitions = consumer.partitions_for_topic(self._topic) or set()
            if not partitions:
                await asyncio.sleep(0.1)
        consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            for tp, messages in batches.items():
                for message in messages:
                    assert message.value is not None
                    self.records.append(
                        Consumed(
                            generation, tp.partition, message.offset, decode_message(message.value)
                        )
                    )


# -- the checks ---------------------------------------------------------------------------------


def exactly_once(nas: Nas, reader: TopicReader) -> dict[str, int]:
    """Every packet the NAS sent was acknowledged, and reached the consumer as exactly one record
    id, in order per session. Returns the figures for the test's report."""
    assert nas.acked == nas.total == len(nas.packets)
    mine = [
        r for r in reader.records if str(r.event.data["acct_session_id"]).startswith(nas.run_id)
    ]
    ids_of: dict[tuple[str, int], set[uuid.UUID]] = defaultdict(set)
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[uuid.UUID] = set()
    for record in mine:
        data = record.event.data
        key = (str(data["acct_session_id"]), int(data["session_time"]))
        ids_of[key].add(record.event.id)
        if record.event.id not in seen:
            seen.add(record.event.id)
            first_seen[key[0]].append(key[1])
    sent = {(p.session_id, p.session_time) for p in nas.packets}
    missing = sent - ids_of.keys()
    assert not missing, f"{len(missing)} acknowledged packets never reached the consumer"
    assert ids_of.keys() == sent, "records that no packet sent"
    several = {k: v for k, v in ids_of.items() if len(v) > 1}
    assert not several, f"packets with more than one record id: {list(several)[:5]}"
    assert len(seen) == nas.total
    for session, times in first_seen.items():
        assert times == sorted(times), f"session {session} out of order: {times}"
    return {
        "packets": nas.total,
        "acked": nas.acked,
        "distinct_record_ids": len(seen),
        "messages_consumed": len(mine),
        "duplicate_messages": len(mine) - len(seen),
        "retransmissions": nas.retransmissions,
    }


def report(name: str, figures: dict[str, Any]) -> None:
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- the collector in process -------------------------------------------------------------------


async def ledger_with_nas(path: Path, secret: bytes) -> tuple[SQLiteEventStore, Keyring]:
    """A ledger with the NAS 127.0.0.1 registered: the collector's NAS registry reads it."""
    store = SQLiteEventStore(path)
    keyring = key_beside(path)
    await register_nas(store, keyring, secret=secret)
    return store, keyring


@contextlib.asynccontextmanager
async def collector_in_process(
    directory: Path, broker: TansuBroker, secret: bytes, *, publish_timeout: float = 1.0
) -> AsyncIterator[tuple[UsageCollector, SpoolingPublisher, RenewablePublisher]]:
    """Wired as `ispbill serve collector` wires it, on port 0."""
    store, keyring = await ledger_with_nas(directory / "ledger.db", secret)

    async def create_topics() -> None:
        await ensure_topics(broker.bootstrap, [ACCOUNTING_TOPIC], 3, request_timeout=3)

    kafka = RenewablePublisher(
        lambda: KafkaPublisher(
            broker.bootstrap, client_id="test-collector", delivery_timeout=publish_timeout
        ),
        prepare=create_topics,
        start_timeout=5,
    )
    spool = SpoolingPublisher(
        kafka,
        directory / "spool",
        publish_timeout=publish_timeout,
        recover=kafka.renew,
        retry_max=0.5,
    )
    await spool.start()
    collector = bootstrap(
        store, spool, keyring=keyring, host="127.0.0.1", port=0, clock=SystemClock()
    )
    await collector.start()
    try:
        yield collector, spool, kafka
    finally:
        await collector.stop()
        await spool.stop()
        await store.close()


def spool_segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.spool"))


# -- (a) the broker hangs and comes back --------------------------------------------------------


async def test_a_paused_broker_is_spooled_and_every_acked_packet_is_consumed_once(
    tmp_path: Path, broker: TansuBroker, requests: Any
) -> None:
    started = time.monotonic()
    async with (
        collector_in_process(tmp_path, broker, requests.secret) as (collector, spool, _),
        TopicReader(broker.bootstrap) as reader,
    ):
        nas = Nas(collector.accounting_server.address, requests.build, lanes=40, per_lane=30)
        nas.gap = 0.05
        sending = asyncio.create_task(nas.run())
        await eventually(lambda: nas.acked >= 400, what="acks before the pause")

        broker.pause()  # SIGSTOP: connections stay open, nothing answers
        acked_at_pause = nas.acked
        try:
            # ... and the drain has tried the hung broker (and renewed its producer) in vain.
            await eventually(
                lambda: (
                    spool.counters.spooled_records >= 300 and spool.counters.drain_failures >= 2
                ),
                what="acks from the spool",
            )
            acked_while_paused = nas.acked - acked_at_pause
            spooled_while_paused = spool.counters.spooled_records
        finally:
            broker.resume()

        await asyncio.wait_for(sending, 30)
        await spool.wait_drained(20)
        await eventually(
            lambda: len(reader.ids(nas.run_id)) >= nas.total, what="the consumer to catch up"
        )
        figures = exactly_once(nas, reader)
        counters = spool.counters_dict()
    assert acked_while_paused > 0, "the collector kept acknowledging while the broker hung"
    assert spool_segments(tmp_path / "spool") == []
    report(
        "broker paused",
        {
            **figures,
            "acked_while_paused": acked_while_paused,
            "spooled_while_paused": spooled_while_paused,
            **{k: counters[k] for k in ("spooled_records", "drained_records", "drain_failures")},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


# -- (b) the broker restarts and has lost everything --------------------------------------------


async def test_a_restarted_broker_gets_the_spool_and_the_consumer_everything_once(
    tmp_path: Path, broker: TansuBroker, requests: Any
) -> None:
    started = time.monotonic()
    async with (
        collector_in_process(tmp_path, broker, requests.secret) as (collector, spool, kafka),
        TopicReader(broker.bootstrap) as reader,
    ):
        nas = Nas(collector.accounting_server.address, requests.build, lanes=40, per_lane=30)
        nas.gap = 0.05
        sending = asyncio.create_task(nas.run())
        await eventually(lambda: nas.acked >= 400, what="acks before the restart")

        # Let the consumer read what the broker acknowledged: Tansu forgets it on restart.
        nas.hold()
        await eventually(lambda: nas.in_flight == 0, what="answers to the packets in flight")
        await spool.wait_drained(20)
        acked_before = nas.acked
        await eventually(
            lambda: len(reader.ids(nas.run_id)) >= acked_before, what="the consumer to catch up"
        )

        await asyncio.to_thread(broker.stop)  # the broker is gone, with all its data
        reader.resubscribe()
        nas.release()
        await eventually(lambda: spool.counters.spooled_records >= 300, what="acks from the spool")
        acked_while_down = nas.acked - acked_before
        await asyncio.to_thread(broker.start)  # empty: no topic, no producer ids

        await asyncio.wait_for(sending, 30)
        await spool.wait_drained(20)
        await eventually(
            lambda: len(reader.ids(nas.run_id)) >= nas.total, what="the consumer to catch up"
        )
        figures = exactly_once(nas, reader)
        counters = spool.counters_dict()
        renewals = kafka.renewals
    assert acked_while_down > 0
    assert renewals >= 1, "the producer of the lost broker was replaced"
    report(
        "broker restarted",
        {
            **figures,
            "acked_while_down": acked_while_down,
            "consumed_before_restart": sum(1 for r in reader.records if r.generation == 0),
            "producer_renewals": renewals,
            **{k: counters[k] for k in ("spooled_records", "drained_records", "drain_failures")},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


# -- (c) the collector is killed with SIGKILL during a burst ------------------------------------


class CollectorProcess:
    """`ispbill serve collector` as a child process, on fixed ports so it can be restarted."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.http = f"http://127.0.0.1:{env['ISPBILL_HTTP_PORT']}"
        self.runs = 0
        self.proc: Any = None
        self.token = ""

    async def start(self) -> None:
        self._spawn()
        await eventually(self._healthy, timeout=30, what="the collector to serve", every=0.1)

    def _spawn(self) -> None:
        self.runs += 1
        log_path = self.directory / f"collector-{self.runs}.log"
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*ISPBILL, "serve", "collector"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"collector exited {self.proc.returncode}: {self.logs()[-3000:]}")
        try:
            return httpx.get(f"{self.http}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def counters(self) -> dict[str, int]:
        response = httpx.get(
            f"{self.http}/api/v1/collector/counters",
            timeout=2,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        response.raise_for_status()
        return dict(response.json())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob("collector-*.log"))
        )


@pytest.fixture
async def collector_process(
    tmp_path: Path, broker: TansuBroker, requests: Any
) -> AsyncIterator[CollectorProcess]:
    data = tmp_path / "data"
    data.mkdir()
    store, _ = await ledger_with_nas(data / "ledger.db", requests.secret)  # data/secrets.key
    token = await staff_token(store)  # the counters route needs collector:read
    await store.close()
    env = {
        "ISPBILL_DATA_DIR": str(data),
        "ISPBILL_LEDGER": "sqlite",
        "ISPBILL_KAFKA": broker.bootstrap,
        "ISPBILL_HOST": "127.0.0.1",
        "ISPBILL_RADIUS_ACCT_PORT": str(free_port(socket.SOCK_DGRAM)),
        "ISPBILL_HTTP_PORT": str(free_port()),
        "ISPBILL_PUBLISH_TIMEOUT": "1",
    }
    process = CollectorProcess(tmp_path, env)
    process.token = token
    try:
        yield process
    finally:
        process.stop()
        print(f"===== collector logs\n{process.logs()[-6000:]}")


def _radius_address(process: CollectorProcess) -> tuple[str, int]:
    return "127.0.0.1", int(process.env["ISPBILL_RADIUS_ACCT_PORT"])


@pytest.mark.parametrize("broker_state", ["up", "paused"])
async def test_a_collector_killed_during_a_burst_gives_one_record_per_packet(
    collector_process: CollectorProcess,
    broker: TansuBroker,
    requests: Any,
    broker_state: str,
) -> None:
    """SIGKILL with batches in flight to Kafka ("up"), or with the spool full of undrained
    batches because the broker hangs ("paused"); the restarted collector answers the NAS's
    retransmissions and drains the spool the killed one left."""
    started = time.monotonic()
    await collector_process.start()
    spool_dir = Path(collector_process.env["ISPBILL_DATA_DIR"]) / "spool"
    async with TopicReader(broker.bootstrap) as reader:
        nas = Nas(_radius_address(collector_process), requests.build, lanes=200, per_lane=10)
        if broker_state == "paused":
            broker.pause()
        try:
            sending = asyncio.create_task(nas.run())
            await eventually(lambda: nas.acked >= 500, what="acks before the kill", every=0.002)
            if broker_state == "paused":
                # Wait for the frames to be on disk and acked, then kill mid-burst anyway.
                await eventually(lambda: nas.acked >= 700, what="acks from the spool")
            acked_at_kill = nas.acked
            collector_process.kill()
            spooled_at_kill = sum(p.stat().st_size for p in spool_segments(spool_dir))
            await collector_process.start()
            if broker_state == "paused":
                # The new collector acks retransmissions from the spool while the broker hangs.
                await eventually(
                    lambda: collector_process.counters()["spooled_records"] >= 100,
                    what="the restarted collector to spool",
                    every=0.1,
                )
        finally:
            if broker_state == "paused":
                broker.resume()
        await asyncio.wait_for(sending, 40)
        await eventually(
            lambda: collector_process.counters()["spool_active"] == 0,
            what="the spool to drain",
            every=0.2,
        )
        await eventually(
            lambda: len(reader.ids(nas.run_id)) >= nas.total, what="the consumer to catch up"
        )
        figures = exactly_once(nas, reader)
        counters = collector_process.counters()
    assert acked_at_kill < nas.total, "the kill came after the burst"
    if broker_state == "paused":
        assert spooled_at_kill > 0, "the killed collector left a spool"
    assert spool_segments(spool_dir) == []
    report(
        f"collector SIGKILLed (broker {broker_state})",
        {
            **figures,
            "acked_at_kill": acked_at_kill,
            "spool_bytes_at_kill": spooled_at_kill,
            "spooled_after_restart": counters["spooled_records"],
            "drained_after_restart": counters["drained_records"],
            "seconds": round(time.monotonic() - started, 1),
        },
    )


# -- by hand ------------------------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """The tool's main() sets up logging like a command does; undo it after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_a_spool_left_behind_is_drained_by_hand(
    tmp_path: Path, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runbook's `python -m usage_collector.adapters.spool drain`: a spool written while no
    broker answered (nothing listens on the port) goes to a broker that has never seen the
    topic, in order."""
    topic = "test.spool.by-hand"
    run_id = uuid.uuid4().hex[:8]
    messages = [
        (
            f"nas-1/{run_id}-{n % 5}",
            NewEvent(
                id=deterministic_id("by-hand", run_id, str(n)),
                type="SpooledByHand",
                version=1,
                data={"acct_session_id": f"{run_id}-{n % 5}", "n": n},
                metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
            ),
        )
        for n in range(300)
    ]

    async def spool_while_no_broker() -> None:
        nowhere = KafkaPublisher(f"127.0.0.1:{free_port()}", delivery_timeout=1)
        spool = SpoolingPublisher(nowhere, tmp_path, publish_timeout=0.5, retry_initial=60)
        await spool.start()
        try:
            for first in range(0, len(messages), 50):
                await spool.publish(topic, messages[first : first + 50])
            assert spool.pending_records == len(messages)
        finally:
            await spool.stop()

    asyncio.run(spool_while_no_broker())
    assert spool_main(["status", str(tmp_path)]) == 0
    assert '"undrained_records": 300' in capsys.readouterr().out

    assert spool_main(["drain", str(tmp_path), "--kafka", broker.bootstrap, "--timeout", "30"]) == 0
    assert spool_segments(tmp_path) == []

    async def consume() -> list[uuid.UUID]:
        async with TopicReader(broker.bootstrap, topic) as reader:
            await eventually(lambda: len(reader.ids(run_id)) >= len(messages))
            return [r.event.id for r in reader.records]

    consumed = asyncio.run(consume())
    assert sorted(consumed) == sorted(e.id for _, e in messages)
    for session in range(5):
        sent = [e.id for k, e in messages if k.endswith(f"-{session}")]
        assert [i for i in consumed if i in set(sent)] == sent
