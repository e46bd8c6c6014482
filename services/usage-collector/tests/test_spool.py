"""The spool: its file format, crash recovery, order, rotation, and the drain's offset.

The bus here is an in-memory publisher the test switches between up, down and hung; the
integration tests against a real broker are in test_kafka_faults.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.bus import BusUnavailable, Message, Publisher
from ispbill_core.events import EventMetadata, NewEvent
from usage_collector.adapters.spool import (
    DAMAGED_SUFFIX,
    OFFSET_FILE,
    Damage,
    RenewablePublisher,
    SpooledBatch,
    SpoolingPublisher,
    SpoolLocked,
    TornTail,
    encode_frame,
    main,
    scan_segment,
    spool_status,
)

pytestmark = pytest.mark.unit

TOPIC = "ispbill.usage.radius-accounting"
_NAMESPACE = uuid.UUID("6f1c8a52-2f3e-4c1e-9d7a-7d1f1b3c0e01")


def event(n: int) -> NewEvent:
    return NewEvent(
        id=uuid.uuid5(_NAMESPACE, str(n)),
        type="AccountingRecordReceived",
        version=1,
        data={"n": n, "acct_session_id": f"s{n % 7}"},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


def batch(first: int, size: int) -> list[Message]:
    return [(f"nas-1/s{n % 7}", event(n)) for n in range(first, first + size)]


def ids(messages: Sequence[Message]) -> list[uuid.UUID]:
    return [e.id for _, e in messages]


class Bus(Publisher):
    """A bus the test switches: "up" keeps batches, "down" raises, "hung" never answers.

    `crash_after=k`: the first k calls succeed; call k+1 keeps its batch and then hangs, as a
    process killed after the broker acknowledged and before the offset was written.
    """

    def __init__(self, mode: str = "up", *, crash_after: int | None = None) -> None:
        self.mode = mode
        self.crash_after = crash_after
        self.published: list[tuple[str, list[Message]]] = []
        self.calls = 0
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        self.calls += 1
        if self.mode == "down":
            raise BusUnavailable("down")
        if self.mode == "hung":
            await asyncio.Event().wait()
        self.published.append((topic, list(messages)))
        if self.crash_after is not None and self.calls > self.crash_after:
            await asyncio.Event().wait()

    @property
    def ids(self) -> list[uuid.UUID]:
        return [i for _, messages in self.published for i in ids(messages)]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def spool(bus: Bus, directory: Path, **options: object) -> SpoolingPublisher:
    defaults: dict[str, object] = {
        "publish_timeout": 0.5,
        "retry_initial": 0.01,
        "retry_max": 0.05,
    }
    return SpoolingPublisher(bus, directory, **{**defaults, **options})  # type: ignore[arg-type]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.spool"))


async def spool_batches(directory: Path, batches: list[list[Message]], **options: object) -> None:
    """Spool every batch with the bus down, then stop: the spool a dead bus leaves behind."""
    bus = Bus("down")
    publisher = spool(bus, directory, **options)
    await publisher.start()
    try:
        for messages in batches:
            await publisher.publish(TOPIC, messages)
    finally:
        await publisher.stop()
    assert bus.published == []


async def drain(directory: Path, bus: Bus | None = None, **options: object) -> Bus:
    bus = bus or Bus("up")
    publisher = spool(bus, directory, **options)
    await publisher.start()
    try:
        await publisher.wait_drained(10)
    finally:
        await publisher.stop()
    return bus


# -- the frame format


def test_a_frame_holds_the_topic_keys_and_events() -> None:
    messages = batch(0, 3)
    frame = encode_frame(TOPIC, messages)
    [item] = list(scan_segment(frame))
    assert isinstance(item, SpooledBatch)
    assert (item.topic, item.start, item.end) == (TOPIC, 0, len(frame))
    assert item.messages() == messages


def test_a_scan_tells_damage_from_a_torn_tail() -> None:
    first, second, third = (encode_frame(TOPIC, batch(n * 10, 2)) for n in range(3))
    damaged = bytearray(first + second + third)
    damaged[len(first) + 20] ^= 0xFF  # inside the second frame's payload: CRC mismatch
    items = list(scan_segment(bytes(damaged)))
    assert [type(i) for i in items] == [SpooledBatch, Damage, SpooledBatch]
    assert items[1] == Damage(len(first), len(first) + len(second))

    torn = first + second[: len(second) // 2]
    assert list(scan_segment(torn))[1:] == [TornTail(len(first), len(torn))]


def test_a_crc_valid_frame_that_is_not_events_is_damage() -> None:
    import struct
    import zlib

    payload = struct.pack(">HI", 1, 1) + b"t" + struct.pack(">HI", 1, 2) + b"k" + b"{}"
    frame = struct.pack(">4sII", b"\xffSP1", len(payload), zlib.crc32(payload)) + payload
    assert [type(i) for i in scan_segment(frame)] == [TornTail]


# -- publishing


async def test_a_healthy_bus_gets_the_batch_and_nothing_is_spooled(tmp_path: Path) -> None:
    bus = Bus("up")
    publisher = spool(bus, tmp_path)
    await publisher.start()
    try:
        await publisher.publish(TOPIC, batch(0, 3))
        assert not publisher.active
    finally:
        await publisher.stop()
    assert bus.ids == ids(batch(0, 3))
    assert publisher.counters.spooled_records == 0
    assert segments(tmp_path) == []


async def test_a_failing_bus_is_spooled_and_drained_in_order(tmp_path: Path) -> None:
    bus = Bus("down")
    publisher = spool(bus, tmp_path)
    await publisher.start()
    try:
        for n in range(5):
            await publisher.publish(TOPIC, batch(n * 3, 3))
        assert publisher.active
        assert publisher.counters_dict()["spool_pending_records"] == 15
        assert publisher.counters_dict()["spool_bytes"] > 0
        bus.mode = "up"
        await publisher.wait_drained(5)
        await publisher.publish(TOPIC, batch(15, 3))  # straight to the bus again
    finally:
        await publisher.stop()
    assert bus.ids == [i for n in range(6) for i in ids(batch(n * 3, 3))]
    counters = publisher.counters_dict()
    assert counters["spooled_records"] == counters["drained_records"] == 15
    assert counters["spool_active"] == 0 and counters["spool_pending_records"] == 0
    assert counters["spool_fallbacks"] == 1
    assert segments(tmp_path) == []


async def test_while_records_wait_in_the_spool_new_batches_queue_behind_them(
    tmp_path: Path,
) -> None:
    bus = Bus("down")
    # A long backoff keeps the drain asleep after its first failure while the bus is back.
    publisher = spool(bus, tmp_path, retry_initial=0.5)
    await publisher.start()
    try:
        await publisher.publish(TOPIC, batch(0, 2))
        await eventually(lambda: publisher.counters.drain_failures > 0)
        bus.mode = "up"
        await publisher.publish(TOPIC, batch(2, 2))
        assert bus.published == [], "the second batch must not overtake the spooled one"
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert bus.ids == ids(batch(0, 4))


async def test_a_bus_that_does_not_answer_is_spooled_after_the_timeout(tmp_path: Path) -> None:
    bus = Bus("hung")
    publisher = spool(bus, tmp_path, publish_timeout=0.2)
    await publisher.start()
    try:
        started = time.monotonic()
        await publisher.publish(TOPIC, batch(0, 2))
        assert 0.2 <= time.monotonic() - started < 2
        assert publisher.counters.spooled_records == 2
        bus.mode = "up"
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert bus.ids == ids(batch(0, 2))


async def test_concurrent_batches_share_an_fsync(tmp_path: Path) -> None:
    bus = Bus("down")
    publisher = spool(bus, tmp_path, retry_initial=5)
    await publisher.start()
    try:
        await asyncio.gather(*(publisher.publish(TOPIC, batch(n * 2, 2)) for n in range(50)))
        assert publisher.counters.spooled_records == 100
        assert publisher.counters.spool_fsyncs < 50
    finally:
        await publisher.stop()


async def test_the_drain_calls_the_recovery_hook_until_the_bus_is_back(tmp_path: Path) -> None:
    bus = Bus("down")
    recoveries = 0

    async def recover() -> None:
        nonlocal recoveries
        recoveries += 1
        if recoveries == 3:
            bus.mode = "up"

    publisher = spool(bus, tmp_path, recover=recover)
    await publisher.start()
    try:
        await publisher.publish(TOPIC, batch(0, 2))
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert recoveries == 3
    assert bus.ids == ids(batch(0, 2))


async def test_a_bus_down_at_start_is_not_fatal(tmp_path: Path) -> None:
    class StartsOnSecondTry(Bus):
        started = False

        async def start(self) -> None:
            self.starts += 1
            if self.starts == 1:
                raise BusUnavailable("no broker")
            self.started = True

        async def publish(self, topic: str, messages: Sequence[Message]) -> None:
            if not self.started:
                raise BusUnavailable("not started")
            await super().publish(topic, messages)

    bus = StartsOnSecondTry("up")
    publisher = spool(bus, tmp_path)
    await publisher.start()  # does not raise
    try:
        await publisher.publish(TOPIC, batch(0, 1))
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert bus.starts >= 2, "the default recovery starts the inner publisher again"
    assert bus.ids == ids(batch(0, 1))


async def test_a_full_spool_refuses_the_batch_so_it_is_not_acknowledged(tmp_path: Path) -> None:
    bus = Bus("down")
    limit = 3 * len(encode_frame(TOPIC, batch(0, 2)))
    publisher = spool(bus, tmp_path, max_spool_bytes=limit)
    await publisher.start()
    try:
        for n in range(3):
            await publisher.publish(TOPIC, batch(n * 2, 2))
        with pytest.raises(BusUnavailable):
            await publisher.publish(TOPIC, batch(6, 2))
        assert publisher.counters.spool_full_rejections == 1
        bus.mode = "up"
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert bus.ids == ids(batch(0, 6))


async def test_a_second_process_cannot_use_the_same_spool(tmp_path: Path) -> None:
    first = spool(Bus(), tmp_path)
    await first.start()
    try:
        with pytest.raises(SpoolLocked):
            await spool(Bus(), tmp_path).start()
    finally:
        await first.stop()
    second = spool(Bus(), tmp_path)
    await second.start()
    await second.stop()


# -- crashes, damage, rotation, the offset


@pytest.mark.parametrize("kept", [1, 5, 11, 12, 13, 40, -1])
async def test_a_torn_last_frame_is_cut_off_and_the_rest_drains_once(
    tmp_path: Path, kept: int
) -> None:
    batches = [batch(n * 3, 3) for n in range(3)]
    await spool_batches(tmp_path, batches)
    [segment] = segments(tmp_path)
    complete = segment.stat().st_size
    torn = encode_frame(TOPIC, batch(100, 3))[:kept]  # the append a crash interrupted
    append_bytes(segment, torn)

    bus = await drain(tmp_path)
    assert bus.ids == [i for b in batches for i in ids(b)]
    assert publisher_files_clean(tmp_path)
    assert not segment.exists() or segment.stat().st_size == complete


def damaged_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{DAMAGED_SUFFIX}"))


def publisher_files_clean(directory: Path) -> bool:
    return segments(directory) == [] and damaged_files(directory) == []


async def test_a_damaged_frame_is_set_aside_and_the_frames_after_it_drain(
    tmp_path: Path,
) -> None:
    batches = [batch(n * 3, 3) for n in range(3)]
    await spool_batches(tmp_path, batches)
    [segment] = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    first = len(encode_frame(TOPIC, batches[0]))
    second = len(encode_frame(TOPIC, batches[1]))
    data[first + 30] ^= 0x01
    segment.write_bytes(bytes(data))

    bus = Bus("up")
    publisher = spool(bus, tmp_path)
    await publisher.start()
    try:
        await publisher.wait_drained(5)
    finally:
        await publisher.stop()
    assert bus.ids == ids(batches[0]) + ids(batches[2])
    assert publisher.counters.spool_damaged_bytes == second
    [kept] = damaged_files(tmp_path)
    assert kept.read_bytes() == bytes(data[first : first + second])


async def test_segments_rotate_and_drained_segments_are_deleted(tmp_path: Path) -> None:
    batches = [batch(n * 2, 2) for n in range(10)]
    await spool_batches(tmp_path, batches, segment_bytes=1)  # one batch per segment
    assert len(segments(tmp_path)) == 10
    bus = await drain(tmp_path, drain_batch=3)
    assert bus.ids == [i for b in batches for i in ids(b)]
    assert segments(tmp_path) == []
    offset = json.loads((tmp_path / OFFSET_FILE).read_text())
    assert offset["offset"] == 0 and offset["segment"] >= 10


async def test_the_drain_resumes_at_its_offset_after_a_kill(tmp_path: Path) -> None:
    batches = [batch(n * 3, 3) for n in range(10)]
    await spool_batches(tmp_path, batches)

    # The 5th chunk reaches the bus, then the process dies before writing the offset.
    killed = Bus("up", crash_after=4)
    publisher = spool(killed, tmp_path, drain_batch=3, publish_timeout=30)
    await publisher.start()
    await eventually(lambda: killed.calls >= 5)
    await publisher.stop()
    assert killed.ids == [i for b in batches[:5] for i in ids(b)]

    resumed = await drain(tmp_path, drain_batch=3)
    assert resumed.ids == [i for b in batches[4:] for i in ids(b)], (
        "everything after the last recorded offset, the unrecorded chunk once more"
    )


@pytest.fixture
def root_logging() -> Iterator[None]:
    """main() sets up logging like a command does; undo it after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
async def test_status_and_dump_read_a_spool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await spool_batches(tmp_path, [batch(0, 2), batch(2, 3)])
    status = spool_status(tmp_path)
    assert status["undrained_records"] == 5
    assert main(["dump", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"]["id"] for line in lines] == [str(i) for i in ids(batch(0, 5))]
    assert {line["topic"] for line in lines} == {TOPIC}


# -- properties


_batch_sizes = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12)


def _numbered(sizes: list[int]) -> list[list[Message]]:
    batches, first = [], 0
    for size in sizes:
        batches.append(batch(first, size))
        first += size
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=_batch_sizes,
    segment_bytes=st.sampled_from([1, 700, 1 << 20]),
    cut=st.floats(min_value=0, max_value=1),
)
def test_a_crash_at_any_byte_loses_only_batches_whose_append_had_not_returned(
    sizes: list[int], segment_bytes: int, cut: float
) -> None:
    """Spool batches, cut the spool at any byte (a crash while appending), then drain: exactly
    the batches that lie wholly before the cut come out, in order, each once."""
    batches = _numbered(sizes)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        asyncio.run(spool_batches(directory, batches, segment_bytes=segment_bytes))
        files = segments(directory)
        sizes_on_disk = [f.stat().st_size for f in files]
        total = sum(sizes_on_disk)
        at = round(cut * total)
        # Frames in file order are the batches in order (they were published one by one).
        frame_ends, before = [], 0
        for file in files:
            data = file.read_bytes()
            frame_ends += [
                before + i.end for i in scan_segment(data) if isinstance(i, SpooledBatch)
            ]
            before += len(data)
        assert len(frame_ends) == len(batches)
        # The crash: the segment holding byte `at` ends there; later segments were never made.
        before = 0
        for file, size in zip(files, sizes_on_disk, strict=True):
            if before >= at and before > 0:
                file.unlink()
            elif before + size > at:
                with open(file, "r+b") as handle:
                    handle.truncate(at - before)
            before += size
        survivors = [b for b, end in zip(batches, frame_ends, strict=True) if end <= at]

        bus = asyncio.run(drain(directory))
        assert bus.ids == [i for b in survivors for i in ids(b)]
        assert segments(directory) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=_batch_sizes,
    drain_batch=st.integers(min_value=1, max_value=8),
    killed_after=st.integers(min_value=0, max_value=10),
)
def test_a_drain_killed_at_any_chunk_publishes_everything_in_order_on_restart(
    sizes: list[int], drain_batch: int, killed_after: int
) -> None:
    """Killed after the bus took a chunk and before the offset was written: the restart
    publishes that chunk again (same ids) and then the rest; nothing lost, order kept."""
    batches = _numbered(sizes)
    expected = [i for b in batches for i in ids(b)]

    async def scenario(directory: Path) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        await spool_batches(directory, batches, segment_bytes=500)
        killed = Bus("up", crash_after=killed_after)
        publisher = spool(killed, directory, drain_batch=drain_batch, publish_timeout=30)
        await publisher.start()
        await eventually(lambda: killed.calls > killed_after or not publisher.active)
        await publisher.stop()
        resumed = await drain(directory, drain_batch=drain_batch)
        return killed.ids, resumed.ids

    with tempfile.TemporaryDirectory() as name:
        first, second = asyncio.run(scenario(Path(name)))
    assert set(first + second) == set(expected)
    first_seen = list(dict.fromkeys(first + second))
    assert first_seen == expected
    # Only the chunk in flight at the kill is published twice: a suffix of the first run.
    repeated = len(first) + len(second) - len(expected)
    assert repeated == 0 or first[-repeated:] == second[:repeated]


# -- the recovery hook for Kafka


class Numbered(Bus):
    made = 0

    def __init__(self) -> None:
        super().__init__("up")
        Numbered.made += 1
        self.number = Numbered.made
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_renew_retires_the_publisher_and_starts_a_new_one() -> None:
    prepared = 0

    async def prepare() -> None:
        nonlocal prepared
        prepared += 1
        await asyncio.sleep(0.01)  # ensure_topics talks to the broker: renewals overlap

    renewable = RenewablePublisher(Numbered, prepare=prepare)
    await renewable.start()
    await renewable.publish(TOPIC, batch(0, 1))
    first = renewable._current
    assert isinstance(first, Numbered)
    await asyncio.gather(renewable.renew(), renewable.renew())  # one renewal, not two
    second = renewable._current
    assert isinstance(second, Numbered) and second is not first
    await eventually(lambda: first.stopped)
    assert renewable.renewals == 1 and prepared == 2
    await renewable.publish(TOPIC, batch(1, 1))
    assert second.ids == ids(batch(1, 1))
    await renewable.stop()
    assert second.stopped


async def test_a_renewable_publisher_whose_start_failed_raises_bus_unavailable() -> None:
    async def unreachable() -> None:
        raise BusUnavailable("no broker")

    renewable = RenewablePublisher(Numbered, prepare=unreachable)
    with pytest.raises(BusUnavailable):
        await renewable.start()
    with pytest.raises(BusUnavailable):
        await renewable.publish(TOPIC, batch(0, 1))


async def test_the_spool_is_its_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    """Spooled records name subscribers: the directory 0700, every file in it 0600."""
    directory = tmp_path / "spool"
    old = os.umask(0o022)
    try:
        await spool_batches(directory, [batch(0, 3), batch(3, 3)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = [p for p in directory.iterdir() if p.is_file()]
    assert segments(directory), "the dead bus left segments behind"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o600 for p in files}
