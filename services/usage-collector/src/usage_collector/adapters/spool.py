"""A local spool that keeps the collector acknowledging while the bus is down: append, drain.

`SpoolingPublisher` wraps the bus publisher (Kafka). A batch normally goes straight to the bus.
When the bus raises or does not answer within `publish_timeout`, the batch is appended to a
local append-only file instead and fsynced (one fsync for every batch, and for every batch that
arrived during that fsync: group commit); then `publish` returns and the collector answers the
NAS. This is the FreeRADIUS "detail file" pattern. While anything is left in the spool, new
batches are spooled too, so that one session's records reach the bus in the order they came.

A background task drains the spool in order: it publishes spooled batches to the bus, records
how far it got in a small offset file (written to a temporary file, fsynced, renamed), and
deletes segments it has drained. Once it has caught up, batches go straight to the bus again.

On disk, in `directory`:

    segment-0000000000000001.spool   frames, appended, one frame per batch
    drained                          {"segment": N, "offset": BYTES}: where the drain resumes
    lock                             flock()ed while a process uses the spool

A frame is a 12-byte header (magic b"\\xffSP1", payload length, CRC-32 of the payload; big
endian) and a payload: the topic, then per message its key and value, each length-prefixed. The
value is the bus's own message value (`ispbill_core.bus.encode_message`, the envelope as JSON).

Delivery is at least once, and the event id makes it exactly once for consumers:

- a process killed between publishing a drained chunk and writing the offset publishes that
  chunk again when it restarts;
- a publish that timed out may still be written by the bus later (Kafka producers retry what
  they hold), and the spooled copy is published too;
- a frame torn by a crash during its append belongs to a batch that was never acknowledged,
  so it is cut off at start; the NAS retransmits that batch.

Every duplicate carries the same event id, and every consumer treats a repeated id as a no-op
(docs/adr/0005, 0010). The order of first occurrences per key is kept: the drain publishes in
the order of the spool, and only after everything before has been published.

Run `python -m usage_collector.adapters.spool --help` to inspect, dump or drain a spool by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import struct
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ispbill_core.bus import (
    BusUnavailable,
    Message,
    Publisher,
    UndecodableMessage,
    decode_message,
    encode_message,
)
from ispbill_core.events import NewEvent
from ispbill_core.files import open_private, private_directory

__all__ = [
    "RenewablePublisher",
    "SpoolCounters",
    "SpoolLocked",
    "SpoolingPublisher",
    "encode_frame",
    "scan_segment",
]

log = logging.getLogger(__name__)

MAGIC = b"\xffSP1"
_HEADER = struct.Struct(">4sII")  # magic, payload length, CRC-32 of the payload
_TOPIC = struct.Struct(">HI")  # topic length, message count
_MESSAGE = struct.Struct(">HI")  # key length, value length
#: A frame larger than this is damage, not data (a batch of 1,024 records is about 1 MB).
MAX_PAYLOAD = 256 * 1024 * 1024

SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".spool"
OFFSET_FILE = "drained"
LOCK_FILE = "lock"
DAMAGED_SUFFIX = ".damaged"


class SpoolLocked(RuntimeError):
    """Another process (a collector, or a manual drain) is using this spool directory."""


# -- the file format ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    """One frame: a batch as it was handed to `publish`, with its place in the segment."""

    topic: str
    #: (key, message value) pairs; the value is `encode_message(event)`.
    records: tuple[tuple[str, bytes], ...]
    start: int
    end: int
    #: The values decoded, once, when the frame was checked (in `records`' order).
    events: tuple[NewEvent, ...] = ()

    def messages(self) -> list[Message]:
        if len(self.events) == len(self.records):
            return [(key, event) for (key, _), event in zip(self.records, self.events, strict=True)]
        return [(key, decode_message(value)) for key, value in self.records]


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that are not a valid frame, followed by a valid frame (bit rot, a torn page)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class TornTail:
    """From `start` to the end nothing is a valid frame: an append cut short by a crash."""

    start: int
    end: int


ScanItem = SpooledBatch | Damage | TornTail


def encode_frame(topic: str, messages: Sequence[Message]) -> bytes:
    """One batch as a frame: header (magic, length, CRC-32) and payload."""
    topic_bytes = topic.encode()
    parts = [_TOPIC.pack(len(topic_bytes), len(messages)), topic_bytes]
    for key, event in messages:
        key_bytes = key.encode()
        value = encode_message(event)
        parts += [_MESSAGE.pack(len(key_bytes), len(value)), key_bytes, value]
    payload = b"".join(parts)
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_payload(payload: bytes, start: int, end: int) -> SpooledBatch | None:
    """The batch a payload holds; None when it does not parse or its values are not events."""
    try:
        topic_length, count = _TOPIC.unpack_from(payload, 0)
        at = _TOPIC.size
        topic = payload[at : at + topic_length].decode()
        at += topic_length
        records = []
        for _ in range(count):
            key_length, value_length = _MESSAGE.unpack_from(payload, at)
            at += _MESSAGE.size
            key = payload[at : at + key_length].decode()
            at += key_length
            value = payload[at : at + value_length]
            at += value_length
            if len(value) != value_length:
                return None
            records.append((key, value))
        if at != len(payload):
            return None
        # A CRC-valid frame whose values are not events is damage too; the events decoded here
        # are the ones the drain publishes (decoding is most of a drain's cost).
        events = tuple(decode_message(value) for _, value in records)
    except (struct.error, UnicodeDecodeError, UndecodableMessage):
        return None
    return SpooledBatch(topic, tuple(records), start, end, events)


def _frame_at(data: bytes | memoryview, at: int, limit: int) -> SpooledBatch | None:
    if limit - at < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, at)
    if magic != MAGIC or length > MAX_PAYLOAD:
        return None
    end = at + _HEADER.size + length
    if end > limit:
        return None
    payload = bytes(data[at + _HEADER.size : end])
    if zlib.crc32(payload) != crc:
        return None
    return _decode_payload(payload, at, end)


def scan_segment(
    data: bytes, start: int = 0, *, max_records: int | None = None
) -> Iterator[ScanItem]:
    """The frames of a segment's bytes from `start`, and what lies between or after them.

    An invalid frame is followed by a search for the next magic that starts a valid frame: if
    one is found, the bytes in between are Damage and the scan goes on; if none is, the rest is
    a TornTail. Stops after the frame that reaches `max_records` records.
    """
    at, limit, records = start, len(data), 0
    view = memoryview(data)
    while at < limit:
        frame = _frame_at(view, at, limit)
        if frame is not None:
            yield frame
            at = frame.end
            records += len(frame.records)
            if max_records is not None and records >= max_records:
                return
            continue
        resync = data.find(MAGIC, at + 1)
        while resync != -1 and _frame_at(view, resync, limit) is None:
            resync = data.find(MAGIC, resync + 1)
        if resync == -1:
            yield TornTail(at, limit)
            return
        yield Damage(at, resync)
        at = resync


def _segment_name(seq: int) -> str:
    return f"{SEGMENT_PREFIX}{seq:016d}{SEGMENT_SUFFIX}"


def _segment_seq(name: str) -> int | None:
    if not (name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)):
        return None
    digits = name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def _list_segments(directory: Path) -> list[int]:
    seqs = (_segment_seq(entry.name) for entry in directory.iterdir())
    return sorted(seq for seq in seqs if seq is not None)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_offset(directory: Path) -> tuple[int, int] | None:
    path = directory / OFFSET_FILE
    try:
        raw = json.loads(path.read_text())
        return int(raw["segment"]), int(raw["offset"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Unreadable: drain from the first segment. Duplicates are no-ops, gaps would be losses.
        log.error("spool offset %s unreadable (%r): draining from the first segment", path, exc)
        return None


def _write_offset(directory: Path, seq: int, offset: int) -> None:
    tmp = directory / f"{OFFSET_FILE}.tmp"
    with open_private(tmp, "w") as out:
        out.write(json.dumps({"segment": seq, "offset": offset}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, directory / OFFSET_FILE)
    _fsync_directory(directory)


# -- the writer ---------------------------------------------------------------------------------


class _SegmentWriter:
    """Appends to the newest segment; rotates when it is full. `write` runs on a worker thread,
    one call at a time; the loop thread reads `seq`/`size` only between calls."""

    def __init__(self, directory: Path, next_seq: int, segment_bytes: int) -> None:
        self._directory = directory
        self._segment_bytes = segment_bytes
        self.next_seq = next_seq
        self.seq: int | None = None
        self.size = 0
        self._file: IO[bytes] | None = None

    def write(self, data: bytes) -> tuple[int, int, int | None]:
        """Append and fsync; (segment, its durable size, the segment sealed by rotation)."""
        sealed = None
        if self._file is None or self.size >= self._segment_bytes:
            sealed = self.seal()
            self._open()
        assert self._file is not None and self.seq is not None
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            # Cut off what may have been written, so the next append starts on a frame boundary;
            # if even that fails, the next append starts a new segment.
            try:
                self._file.truncate(self.size)
                os.fsync(self._file.fileno())
            except OSError:
                self.seal()
            raise
        self.size += len(data)
        return self.seq, self.size, sealed

    def _open(self) -> None:
        seq = self.next_seq
        self._file = open_private(self._directory / _segment_name(seq), "ab")
        self._file.truncate(0)  # a new segment: nothing of an older process's may be in it
        _fsync_directory(self._directory)  # the file itself must survive a crash
        self.seq, self.size, self.next_seq = seq, 0, seq + 1

    def seal(self) -> int | None:
        """Close the current segment; the next write opens a new one. Returns the closed seq."""
        file, self._file = self._file, None
        sealed, self.seq, self.size = self.seq, None, 0
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        return sealed


# -- the publisher ------------------------------------------------------------------------------


@dataclass
class SpoolCounters:
    """What the spool did in this process; `spool_*` gauges describe it now."""

    #: records appended to the spool (acknowledged upstream while the bus was away)
    spooled_records: int = 0
    #: records the drain published to the bus
    drained_records: int = 0
    #: publish calls that failed or timed out on the bus, so their batch was spooled
    spool_fallbacks: int = 0
    #: drain attempts that failed (the bus still away); each is retried with backoff
    drain_failures: int = 0
    #: bytes of the spool found damaged and set aside (`*.damaged` files next to the segments)
    spool_damaged_bytes: int = 0
    #: publish calls refused because the spool reached its size limit (not acknowledged)
    spool_full_rejections: int = 0
    #: publish calls whose spool append failed (disk error; not acknowledged)
    spool_write_failures: int = 0
    #: appends written with one fsync each; spooled batches per fsync shows the group commit
    spool_fsyncs: int = 0


@dataclass
class _Chunk:
    seq: int
    end: int
    groups: list[tuple[str, list[Message]]] = field(default_factory=list)
    records: int = 0


class SpoolingPublisher(Publisher):
    """Publisher that spools a batch to local disk when the bus fails, and drains it in order.

    `publish` returns once the batch is on the bus or fsynced in the spool; it raises
    BusUnavailable only when the spool cannot take the batch either (disk error, or
    `max_spool_bytes` reached). `start()` starts the inner publisher (tolerating a bus that
    is down: it then spools), recovers the spool left by an earlier process and starts the
    drain; `stop()` stops both. After a failed drain attempt, `recover` is awaited before the
    next one (default: `inner.start()`); for Kafka pass `RenewablePublisher.renew`.
    """

    def __init__(
        self,
        inner: Publisher,
        directory: Path | str,
        *,
        publish_timeout: float = 2.0,
        recover: Callable[[], Awaitable[None]] | None = None,
        segment_bytes: int = 64 * 1024 * 1024,
        drain_batch: int = 2048,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        max_spool_bytes: int | None = None,
        stop_timeout: float = 10.0,
        recover_timeout: float = 30.0,
    ) -> None:
        self.inner = inner
        self.directory = Path(directory)
        self.counters = SpoolCounters()
        self._publish_timeout = publish_timeout
        self._recover = recover or inner.start
        self._segment_bytes = segment_bytes
        self._drain_batch = drain_batch
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._max_spool_bytes = max_spool_bytes
        self._stop_timeout = stop_timeout
        #: a safety net for `inner.start()` and `recover`; the adapters have their own timeouts
        #: (interrupting one half way can leave a client behind), and should use them first
        self._recover_timeout = recover_timeout
        self._active = False
        #: segment -> end of its valid frames (for the segment being written: its durable end)
        self._segments: dict[int, int] = {}
        self._read_seq = 0
        self._read_pos = 0
        self._pending_records = 0
        self._writer: _SegmentWriter | None = None
        #: the segment the last append went to, as the loop thread knows it (the writer's own
        #: `seq` changes on its worker thread during a rotation)
        self._write_seq: int | None = None
        #: damaged ranges already set aside, so that a retried chunk does not count them twice
        self._set_aside_at: set[tuple[int, int]] = set()
        self._inflight: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._queue: list[tuple[bytes, int, asyncio.Future[None]]] = []
        self._queued = asyncio.Event()
        self._flushing = False
        self._flushed = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._lock_file: IO[bytes] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        #: Also checked by the drain: a cancellation can be swallowed by code it awaits (in
        #: Python 3.11, asyncio.wait_for returns the result of a task that finished while it
        #: was being cancelled), and stop() must still stop it.
        self._stopping = False

    # -- lifecycle

    async def start(self) -> None:
        if self._flusher is not None:
            return
        private_directory(self.directory)
        self._lock()
        try:
            await asyncio.to_thread(self._recover_from_disk)
        except BaseException:
            self._unlock()
            raise
        self._stopping = False
        self._flusher = asyncio.create_task(self._flush_loop(), name="spool-flusher")
        try:
            async with asyncio.timeout(self._recover_timeout):
                await self.inner.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not fatal: the first publish fails at once and is spooled, and the drain keeps
            # calling `recover` until the bus is there.
            log.warning("the bus is not reachable at start (%r): spooling until it is", exc)
        self._drainer = asyncio.create_task(self._drain_loop(), name="spool-drainer")

    async def stop(self) -> None:
        """Stop the drain (what it has not recorded as drained is published again next time),
        let appends in flight finish, and stop the inner publisher."""
        drainer, self._drainer = self._drainer, None
        self._stopping = True
        if drainer is not None:
            await _cancel(drainer)
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            deadline = time.monotonic() + self._stop_timeout
            while (self._queue or self._flushing) and time.monotonic() < deadline:
                self._flushed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._flushed.wait()
            await _cancel(flusher)
            for _, _, future in [*self._inflight, *self._queue]:
                if not future.done():
                    future.set_exception(BusUnavailable("the spool was stopped"))
            self._queue.clear()
            self._inflight = []
        if self._writer is not None:
            self._writer.seal()
            self._writer = None
        self._unlock()
        await self.inner.stop()

    def _lock(self) -> None:
        lock = open_private(self.directory / LOCK_FILE, "ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SpoolLocked(f"another process is using the spool in {self.directory}") from None
        self._lock_file = lock

    def _unlock(self) -> None:
        lock, self._lock_file = self._lock_file, None
        if lock is not None:
            lock.close()

    # -- state

    @property
    def active(self) -> bool:
        """True while batches go to the spool (the bus failed and the drain has not caught up)."""
        return self._active

    @property
    def pending_records(self) -> int:
        return self._pending_records

    @property
    def spool_bytes(self) -> int:
        return sum(self._segments.values())

    def counters_dict(self) -> dict[str, int]:
        """Counters and gauges for the collector's counters endpoint."""
        return {
            **vars(self.counters),
            "spool_active": int(self._active),
            "spool_pending_records": self._pending_records,
            "spool_bytes": self.spool_bytes,
        }

    async def wait_drained(self, timeout: float | None = None) -> None:
        """Until the drain has caught up and batches go straight to the bus again."""
        async with asyncio.timeout(timeout):
            while self._active:
                self._idle.clear()
                await self._idle.wait()

    # -- publish

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if not self._active:
            try:
                async with asyncio.timeout(self._publish_timeout):
                    await self.inner.publish(topic, messages)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters.spool_fallbacks += 1
                if not self._active:
                    log.warning("the bus failed (%r): spooling to %s", exc, self.directory)
                self._active = True
        await self._append(topic, messages)

    async def _append(self, topic: str, messages: Sequence[Message]) -> None:
        if self._flusher is None:
            raise BusUnavailable("the spool is not started")
        frame = encode_frame(topic, messages)
        if self._max_spool_bytes and self.spool_bytes + len(frame) > self._max_spool_bytes:
            self.counters.spool_full_rejections += 1
            raise BusUnavailable(
                f"the spool in {self.directory} is full ({self.spool_bytes} bytes); not acked"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((frame, len(messages), future))
        self._queued.set()
        await future

    async def _flush_loop(self) -> None:
        """Group commit: everything queued while the previous fsync ran goes in one write."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                batch, self._queue = self._queue, []
                self._flushing, self._inflight = True, batch
                try:
                    await self._write(batch)
                finally:
                    self._flushing, self._inflight = False, []
                    self._flushed.set()
                    self._wakeup.set()  # the drain may be waiting for this append

    async def _write(self, batch: list[tuple[bytes, int, asyncio.Future[None]]]) -> None:
        writer = self._writer
        assert writer is not None
        try:
            # shield: a stop() must not abandon a write whose thread is still running.
            seq, size, sealed = await asyncio.shield(
                asyncio.to_thread(writer.write, b"".join(frame for frame, _, _ in batch))
            )
        except Exception as exc:
            self.counters.spool_write_failures += len(batch)
            log.error("spool append to %s failed: %r (not acknowledged)", self.directory, exc)
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(BusUnavailable(f"spool append failed: {exc!r}"))
            return
        del sealed  # its end is already recorded; the drain moves on to the next segment
        self._segments[seq] = size
        self._write_seq = seq
        self.counters.spool_fsyncs += 1
        records = sum(count for _, count, _ in batch)
        self._pending_records += records
        self.counters.spooled_records += records
        for _, _, future in batch:
            if not future.done():
                future.set_result(None)

    # -- recovery

    def _recover_from_disk(self) -> None:
        """Find the segments and the offset; cut off a torn tail; count what is left."""
        seqs = _list_segments(self.directory)
        offset = _read_offset(self.directory)
        if offset is None:
            read_seq, read_pos = (seqs[0] if seqs else 1), 0
        else:
            read_seq, read_pos = offset
        for seq in seqs:
            if seq < read_seq:  # drained; the process stopped between the offset and the unlink
                (self.directory / _segment_name(seq)).unlink(missing_ok=True)
        pending = 0
        for seq in (s for s in seqs if s >= read_seq):
            path = self.directory / _segment_name(seq)
            data = path.read_bytes()
            start = read_pos if seq == read_seq else 0
            if start > len(data):
                log.error("spool offset %d beyond %s (%d bytes)", start, path, len(data))
                start = len(data)
                if seq == read_seq:
                    read_pos = start
            end = len(data)
            for item in scan_segment(data, start):
                if isinstance(item, SpooledBatch):
                    pending += len(item.records)
                elif isinstance(item, TornTail):
                    # The append this belonged to never returned, so it was never acknowledged.
                    log.warning(
                        "spool %s: cutting off a torn tail of %d bytes at %d",
                        path.name,
                        item.end - item.start,
                        item.start,
                    )
                    with open(path, "r+b") as file:
                        file.truncate(item.start)
                        os.fsync(file.fileno())
                    end = item.start
            self._segments[seq] = end
        self._read_seq, self._read_pos = read_seq, read_pos
        self._pending_records = pending
        next_seq = max([read_seq, *(s + 1 for s in self._segments)])
        self._writer = _SegmentWriter(self.directory, next_seq, self._segment_bytes)
        if pending:
            self._active = True
            log.warning(
                "spool %s holds %d records from an earlier run: draining", self.directory, pending
            )
        elif self._segments:
            self._active = True  # empty or damaged leftovers: let the drain clean them up

    # -- drain

    async def _drain_loop(self) -> None:
        delay = self._retry_initial
        probing = False
        while not self._stopping:
            self._wakeup.clear()
            # After a failure, probe with one frame: whatever a hung bus holds is sent again
            # once it returns, and that should be one batch, not a whole chunk.
            chunk = await self._next_chunk(1 if probing else self._drain_batch)
            if chunk is None:
                if self._active and await self._caught_up():
                    log.info("spool %s drained: publishing straight to the bus", self.directory)
                if not self._active:
                    self._idle.set()
                # Woken by every finished append (whether or not the spool was active).
                await self._wakeup.wait()
                continue
            if not chunk.groups:  # only damage skipped
                await self._advance(chunk)
                continue
            try:
                for topic, messages in chunk.groups:
                    async with asyncio.timeout(self._publish_timeout):
                        await self.inner.publish(topic, messages)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters.drain_failures += 1
                if not probing:
                    log.warning("draining the spool failed (%r): retrying", exc)
                probing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                await self._try_recover()
                continue
            if probing:
                log.info("the bus is back: draining the spool (%d records)", self._pending_records)
            probing, delay = False, self._retry_initial
            self.counters.drained_records += chunk.records
            await self._advance(chunk)

    async def _try_recover(self) -> None:
        try:
            async with asyncio.timeout(self._recover_timeout):
                await self._recover()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("bus recovery failed (%r); retrying later", exc)

    async def _next_chunk(self, max_records: int) -> _Chunk | None:
        """The next frames to publish (grouped by topic), or None when nothing durable is left."""
        while True:
            later = [s for s in self._segments if s >= self._read_seq]
            if not later:
                return None
            if self._read_seq not in self._segments:
                self._read_seq, self._read_pos = min(later), 0
            seq, end = self._read_seq, self._segments[self._read_seq]
            if self._read_pos < end:
                chunk = await asyncio.to_thread(
                    self._read_chunk, seq, self._read_pos, end, max_records
                )
                if chunk.end == self._read_pos:
                    # The file is shorter than recorded (changed behind our back): take it as is.
                    log.error("spool segment %d is shorter than recorded", seq)
                    self._segments[seq] = chunk.end
                    continue
                return chunk
            if seq == self._write_seq:
                return None  # caught up with the segment being written
            # A sealed segment, fully drained: move on, then delete it.
            following = [s for s in self._segments if s > seq]
            next_seq = min(following) if following else seq + 1
            await asyncio.to_thread(_write_offset, self.directory, next_seq, 0)
            self._read_seq, self._read_pos = next_seq, 0
            del self._segments[seq]
            await asyncio.to_thread(self._delete_segment, seq)

    def _read_chunk(self, seq: int, start: int, end: int, max_records: int) -> _Chunk:
        path = self.directory / _segment_name(seq)
        with open(path, "rb") as file:
            file.seek(start)
            data = file.read(end - start)
        chunk = _Chunk(seq=seq, end=start)
        for item in scan_segment(data, 0, max_records=max_records):
            if not isinstance(item, SpooledBatch):
                if chunk.groups:
                    break  # publish what came before the damage first
                self._set_aside(path, data, item, start, seq)
                chunk.end = start + item.end
                continue
            messages = item.messages()
            if chunk.groups and chunk.groups[-1][0] == item.topic:
                chunk.groups[-1][1].extend(messages)
            elif chunk.groups and chunk.records + len(messages) > max_records:
                break
            else:
                chunk.groups.append((item.topic, messages))
            chunk.records += len(messages)
            chunk.end = start + item.end
            if chunk.records >= max_records:
                break
        return chunk

    def _set_aside(
        self, path: Path, data: bytes, item: Damage | TornTail, base: int, seq: int
    ) -> None:
        """Keep damaged bytes for an operator to look at, and count them (once)."""
        if (seq, base + item.start) in self._set_aside_at:
            return
        self._set_aside_at.add((seq, base + item.start))
        damaged = data[item.start : item.end]
        self.counters.spool_damaged_bytes += len(damaged)
        target = path.with_name(f"{path.name}.{base + item.start}{DAMAGED_SUFFIX}")
        try:
            target.write_bytes(damaged)
        except OSError as exc:
            log.error("cannot keep damaged spool bytes in %s: %r", target, exc)
        log.error(
            "spool %s: %d damaged bytes at %d skipped (kept in %s); a batch may be lost",
            path.name,
            len(damaged),
            base + item.start,
            target.name,
        )

    async def _advance(self, chunk: _Chunk) -> None:
        self._read_seq, self._read_pos = chunk.seq, chunk.end
        self._pending_records = max(0, self._pending_records - chunk.records)
        await asyncio.to_thread(_write_offset, self.directory, chunk.seq, chunk.end)

    async def _caught_up(self) -> bool:
        """Everything durable is drained and no append is in flight: back to the bus directly.

        The checks and the switch run without an await in between, so no batch can be spooled
        after the check and then be overtaken by a batch sent straight to the bus.
        """
        if self._queue or self._flushing:
            return False
        for seq, end in self._segments.items():
            if seq > self._read_seq or (seq == self._read_seq and self._read_pos < end):
                return False
        self._active = False
        writer = self._writer
        if writer is None or writer.seq is None:
            return True
        sealed = writer.seal()
        self._write_seq = None
        assert sealed is not None
        self._read_seq, self._read_pos = sealed + 1, 0
        self._segments.pop(sealed, None)
        await asyncio.to_thread(_write_offset, self.directory, sealed + 1, 0)
        await asyncio.to_thread(self._delete_segment, sealed)
        return True

    def _delete_segment(self, seq: int) -> None:
        (self.directory / _segment_name(seq)).unlink(missing_ok=True)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel until it is done: code a task awaits may swallow one cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %r", task.get_name(), task.exception())


class RenewablePublisher(Publisher):
    """A publisher that can be replaced by a new one: what the spool's drain calls to recover.

    A Kafka producer does not always outlive its broker: after a broker restart that lost its
    state (Tansu's memory storage; a wiped cluster), an idempotent producer gets
    UnknownProducerId for good, and the topics must be created again. `renew()` retires the
    current publisher, stopping it in the background (it may still deliver messages it holds;
    they carry the same ids as their spooled copies), runs `prepare` (e.g. ensure_topics), and
    starts a new one from `factory`.
    """

    def __init__(
        self,
        factory: Callable[[], Publisher],
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        start_timeout: float = 10.0,
        retire_timeout: float = 300.0,
    ) -> None:
        self._factory = factory
        self._prepare = prepare
        self._start_timeout = start_timeout
        self._retire_timeout = retire_timeout
        self._current: Publisher | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        #: publishers started so far; renew() after a concurrent renewal does nothing more
        self._generation = 0
        self.renewals = 0

    async def start(self) -> None:
        async with self._lock:
            await self._start()

    async def renew(self) -> None:
        """Retire the current publisher and start a new one (unless one was started meanwhile)."""
        generation = self._generation
        async with self._lock:
            if self._generation != generation and self._current is not None:
                return
            current, self._current = self._current, None
            if current is not None:
                self._retire(current)
                self.renewals += 1
            await self._start()

    async def _start(self) -> None:
        if self._current is not None:
            return
        if self._prepare is not None:
            async with asyncio.timeout(self._start_timeout):
                await self._prepare()
        publisher = self._factory()
        try:
            async with asyncio.timeout(self._start_timeout):
                await publisher.start()
        except BaseException:
            self._retire(publisher)
            raise
        self._current = publisher
        self._generation += 1

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        current = self._current
        if current is None:
            raise BusUnavailable("no bus connection (the last start failed)")
        await current.publish(topic, messages)

    async def stop(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            self._retire(current)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=self._start_timeout)
            for task in set(self._retiring):
                task.cancel()
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def _retire(self, publisher: Publisher) -> None:
        task = asyncio.create_task(self._stop_quietly(publisher), name="retire-publisher")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop_quietly(self, publisher: Publisher) -> None:
        try:
            async with asyncio.timeout(self._retire_timeout):
                await publisher.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("stopping a retired publisher failed: %r", exc)


# -- by hand ------------------------------------------------------------------------------------


def spool_status(directory: Path) -> dict[str, Any]:
    """What a spool directory holds; read-only, safe while a collector runs."""
    offset = _read_offset(directory)
    segments = []
    pending = damaged = 0
    for seq in _list_segments(directory):
        data = (directory / _segment_name(seq)).read_bytes()
        start = 0
        if offset is not None and seq < offset[0]:
            start = len(data)
        elif offset is not None and seq == offset[0]:
            start = min(offset[1], len(data))
        records = 0
        for item in scan_segment(data, start):
            if isinstance(item, SpooledBatch):
                records += len(item.records)
            else:
                damaged += item.end - item.start
        pending += records
        segments.append({"segment": seq, "bytes": len(data), "undrained_records": records})
    return {
        "directory": str(directory),
        "drained_up_to": None if offset is None else {"segment": offset[0], "offset": offset[1]},
        "segments": segments,
        "undrained_records": pending,
        "undrained_damaged_or_torn_bytes": damaged,
        "damaged_files": sorted(p.name for p in directory.glob(f"*{DAMAGED_SUFFIX}")),
    }


def _undrained(directory: Path) -> Iterator[tuple[int, SpooledBatch]]:
    offset = _read_offset(directory) or (0, 0)
    for seq in _list_segments(directory):
        if seq < offset[0]:
            continue
        data = (directory / _segment_name(seq)).read_bytes()
        start = offset[1] if seq == offset[0] else 0
        for item in scan_segment(data, min(start, len(data))):
            if isinstance(item, SpooledBatch):
                yield seq, item


def _dump(directory: Path, out: IO[str]) -> int:
    count = 0
    for seq, batch in _undrained(directory):
        for key, value in batch.records:
            line = {"segment": seq, "offset": batch.start, "topic": batch.topic, "key": key}
            out.write(json.dumps({**line, "event": json.loads(value)}) + "\n")
            count += 1
    return count


async def _drain_by_hand(
    directory: Path, bootstrap: str, timeout: float, partitions: int
) -> dict[str, int]:
    from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics

    topics = sorted({batch.topic for _, batch in _undrained(directory)})

    async def create_topics() -> None:
        await ensure_topics(bootstrap, topics, partitions, request_timeout=10)

    kafka = RenewablePublisher(
        lambda: KafkaPublisher(bootstrap, client_id="ispbill-spool-drain"), prepare=create_topics
    )
    spool = SpoolingPublisher(kafka, directory, recover=kafka.renew)
    await spool.start()
    try:
        await spool.wait_drained(timeout)
    finally:
        await spool.stop()
    return spool.counters_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m usage_collector.adapters.spool",
        description="Inspect or drain the collector's spool (docs/runbooks/collector-spool.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="segments, offset and undrained records, as JSON")
    status.add_argument("directory", type=Path)
    dump = sub.add_parser("dump", help="every undrained record as a JSON line")
    dump.add_argument("directory", type=Path)
    drain = sub.add_parser(
        "drain", help="publish the spool to Kafka and exit (the collector must be stopped)"
    )
    drain.add_argument("directory", type=Path)
    drain.add_argument("--kafka", required=True, help="bootstrap servers, host:port")
    drain.add_argument("--timeout", type=float, default=600.0, help="give up after (seconds)")
    drain.add_argument(
        "--partitions", type=int, default=3, help="partitions of a topic that must be created"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "status":
        print(json.dumps(spool_status(args.directory), indent=2))
    elif args.command == "dump":
        _dump(args.directory, sys.stdout)
    else:
        try:
            counters = asyncio.run(
                _drain_by_hand(args.directory, args.kafka, args.timeout, args.partitions)
            )
        except SpoolLocked as exc:
            print(f"spool: {exc}; stop the collector first", file=sys.stderr)
            return 2
        except TimeoutError:
            print("spool: not drained before --timeout; is Kafka reachable?", file=sys.stderr)
            return 1
        print(json.dumps(counters, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
