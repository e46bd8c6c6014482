"""Several processes writing one SQLite ledger: they take turns on "<ledger>-writers.lock"."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import itertools
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_core.events import EventMetadata, NewEvent, RecordedEvent, deterministic_id
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.sqlite import SQLiteEventStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SHARED = "nas-shared"
BATCHES = 300
PER_BATCH = 4

#: One writer process: opens the ledger, says "ready", waits for "go" on stdin, then appends
#: BATCHES batches with ANY expected version, alternating the shared stream and a stream of
#: its own, half of the events already serialised (EncodedEvent), every 10th batch retried.
WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from ispbill_core.events import EventMetadata, NewEvent, deterministic_id
    from ispbill_core.eventstore import ANY
    from ispbill_core.eventstore.sqlite import SQLiteEventStore

    path, writer, batches, per_batch, on_loop = sys.argv[1:6]

    def event(b, i):
        new = NewEvent(
            id=deterministic_id("writer-test", writer, b, i),
            type="Tested",
            version=1,
            data={"writer": writer, "batch": b, "i": i},
            metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC), actor=writer),
        )
        return new.encoded() if (b + i) % 2 else new

    async def main():
        store = SQLiteEventStore(path, synchronous="NORMAL", write_on_loop=on_loop == "1")
        print("ready", flush=True)
        sys.stdin.readline()
        previous = None
        for b in range(int(batches)):
            stream = "SHARED" if b % 2 == 0 else f"own-{writer}"
            batch = [event(b, i) for i in range(int(per_batch))]
            await store.append(stream, batch, ANY)
            if b % 10 == 9:
                await store.append(*previous, ANY)  # a retry: a no-op
            previous = (stream, batch)
        await store.close()

    asyncio.run(main())
    """
).replace("SHARED", SHARED)


def expected_id(writer: str, batch: int, i: int) -> uuid.UUID:
    return deterministic_id("writer-test", writer, batch, i)


async def read_everything(path: Path) -> list[RecordedEvent]:
    store = SQLiteEventStore(path)
    try:
        return await store.read_all(after=0, limit=1_000_000)
    finally:
        await store.close()


def test_two_processes_append_to_one_ledger_each_event_once_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    writers = {"w1": "0", "w2": "1"}  # one appends in a worker thread, one on its loop
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, str(BATCHES), str(PER_BATCH), on_loop],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, on_loop in writers.items()
    }
    try:
        for name, process in processes.items():
            assert process.stdout is not None and process.stderr is not None
            if process.stdout.readline().strip() != "ready":
                pytest.fail(f"{name} did not start:\n{process.stderr.read()}")
        for process in processes.values():  # go, both at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for name, process in processes.items():
            _, err = process.communicate(timeout=30)
            assert process.returncode == 0, f"{name} failed:\n{err}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    assert Path(f"{path}-writers.lock").exists()
    recorded = asyncio.run(read_everything(path))

    # Every event exactly once: the retries were no-ops, nothing was lost to a race.
    ids = collections.Counter(r.id for r in recorded)
    assert [i for i, n in ids.items() if n > 1] == []
    assert set(ids) == {
        expected_id(w, b, i) for w in writers for b in range(BATCHES) for i in range(PER_BATCH)
    }

    globals_ = [r.global_position for r in recorded]
    assert all(a < b for a, b in itertools.pairwise(globals_))

    by_stream: dict[str, list[RecordedEvent]] = collections.defaultdict(list)
    for r in recorded:
        by_stream[r.stream].append(r)
    assert set(by_stream) == {SHARED, *(f"own-{w}" for w in writers)}
    for stream, events in by_stream.items():
        # In global order, a stream's positions count up from 0 with no gap or repeat.
        assert [r.stream_position for r in events] == list(range(len(events))), stream
    for w in writers:
        own = [(r.data["batch"], r.data["i"]) for r in by_stream[f"own-{w}"]]
        assert own == [(b, i) for b in range(1, BATCHES, 2) for i in range(PER_BATCH)]
        shared = [
            (r.data["batch"], r.data["i"]) for r in by_stream[SHARED] if r.data["writer"] == w
        ]
        assert shared == [(b, i) for b in range(0, BATCHES, 2) for i in range(PER_BATCH)]
        # A batch is contiguous in the shared stream: appends do not interleave inside one.
        positions = [r.stream_position for r in by_stream[SHARED] if r.data["writer"] == w]
        for start in range(0, len(positions), PER_BATCH):
            chunk = positions[start : start + PER_BATCH]
            assert chunk == list(range(chunk[0], chunk[0] + PER_BATCH))

    # The two really wrote at the same time (else this test proves little).
    turns = [r.data["writer"] for r in by_stream[SHARED]]
    switches = sum(a != b for a, b in itertools.pairwise(turns))
    assert switches >= 4, f"the writers hardly overlapped ({switches} switches)"


def _event(n: int) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="Tested",
        version=1,
        data={"n": n},
        metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )


@pytest.mark.parametrize("write_on_loop", [False, True], ids=["in-a-thread", "on-the-loop"])
@pytest.mark.parametrize("held", [fcntl.LOCK_EX, fcntl.LOCK_SH], ids=["held-ex", "held-sh"])
async def test_an_append_waits_for_the_writers_lock_and_reads_do_not(
    tmp_path: Path, write_on_loop: bool, held: int
) -> None:
    """Another writer (this test, through its own open file description) holds the flock:
    the append waits until it is released; reads go on meanwhile. Held shared, too: a
    writer's lock is exclusive."""
    path = tmp_path / "ledger.sqlite"
    store = SQLiteEventStore(path, write_on_loop=write_on_loop)
    try:
        await store.append("before", [_event(0)], NO_STREAM)
        hold = 0.5
        with open(f"{path}-writers.lock", "ab") as lock:  # noqa: ASYNC230 - a local file
            fcntl.flock(lock, held)
            released = threading.Event()

            def release() -> None:
                fcntl.flock(lock, fcntl.LOCK_UN)
                released.set()

            timer = threading.Timer(hold, release)
            started = time.monotonic()
            timer.start()
            try:
                if not write_on_loop:
                    appending = asyncio.create_task(store.append("s", [_event(1)], NO_STREAM))
                    await asyncio.sleep(hold / 2)
                    assert not appending.done(), "appended while another writer held the lock"
                    # The loop is free, and reading does not take the writers' lock.
                    assert [r.data["n"] for r in await store.read_stream("before")] == [0]
                    assert not released.is_set()
                    await asyncio.wait_for(appending, 10)
                else:
                    await store.append("s", [_event(1)], NO_STREAM)
                elapsed = time.monotonic() - started
            finally:
                timer.cancel()
                timer.join()
            assert released.is_set()
            assert elapsed >= hold * 0.9, f"the append went through after {elapsed:.2f}s"
        assert [r.data["n"] for r in await store.read_stream("s")] == [1]
    finally:
        await store.close()


def test_stores_opened_at_once_on_a_new_ledger_all_open(tmp_path: Path) -> None:
    """Turning a new file to WAL takes SQLite's exclusive lock, and a second connection doing the
    same at that moment got "database is locked" without waiting (CI saw it once when two
    collector processes started together; 14 of 1,800 opens failed here before the fix)."""
    failures: list[BaseException] = []
    stores: list[SQLiteEventStore] = []
    for round_ in range(150):
        path = tmp_path / f"ledger-{round_}.sqlite"
        barrier = threading.Barrier(6)

        def open_store(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                stores.append(SQLiteEventStore(path))
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for store in stores:
        asyncio.run(store.close())
    assert not failures, f"{len(failures)} of 900 opens failed, first: {failures[0]!r}"


def test_a_new_ledger_has_16_kib_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new = tmp_path / "new.sqlite"
    asyncio.run(SQLiteEventStore(new).close())
    with contextlib.closing(sqlite3.connect(new)) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    old = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(old)) as conn:  # made by an earlier ispbill
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE before_us (x)")

    async def append_and_read() -> list[RecordedEvent]:
        store = SQLiteEventStore(old)
        try:
            await store.append("s-1", [_event(1)], NO_STREAM)
            return await store.read_stream("s-1")
        finally:
            await store.close()

    assert len(asyncio.run(append_and_read())) == 1
    with contextlib.closing(sqlite3.connect(old)) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
