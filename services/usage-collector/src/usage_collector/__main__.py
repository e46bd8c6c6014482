"""`python -m usage_collector`: the accounting server alone, as one process or one per core.

The NAS registry comes from the ledger (`--ledger`: an SQLite file or a postgresql:// DSN);
records go to that ledger, or to Kafka with `--kafka`. With `--workers N` a supervisor starts N
worker processes that bind the same port with SO_REUSEPORT, each with its own connections;
it prints READY once every worker is bound, and SIGTERM (or SIGINT) stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from ispbill_core.bus import Publisher
from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.sealing import Keyring, SealingError
from ispbill_core.telemetry import setup_tracing
from usage_collector.bootstrap import RADIUS_ACCOUNTING_PORT, accounting_stream_for, bootstrap

log = logging.getLogger("usage_collector")

READY = "READY"
#: How long a worker may take from start to bound socket (imports, ledger, Kafka metadata).
WORKER_START_TIMEOUT = 120.0
#: A stopping worker waits up to 5 s for the batch in flight, then closes its connections.
WORKER_STOP_TIMEOUT = 30.0
SUPERVISOR_CHECK_INTERVAL = 1.0


async def open_ledger(ledger: str, schema: str = "ispbill") -> EventStore:
    if _is_postgresql(ledger):
        from ispbill_core.eventstore.postgresql import PostgresEventStore

        return await PostgresEventStore.connect(ledger, schema=schema)
    # The loop of a collector process only screens packets; it writes each batch itself
    # rather than sharing the GIL with a writer thread row by row (docs/adr/0011).
    return SQLiteEventStore(ledger, write_on_loop=True)


def load_keyring(args: argparse.Namespace) -> Keyring:
    """ISPBILL_SECRETS_KEY or ISPBILL_SECRETS_KEY_FILE; for an SQLite ledger, its own key file
    beside it otherwise ("secrets.key", as `ispbill run` keeps it in its data directory)."""
    if args.secrets_key_file:
        return Keyring.from_file(Path(args.secrets_key_file))
    default = None if _is_postgresql(args.ledger) else Path(args.ledger).parent / "secrets.key"
    return Keyring.from_env(default_file=default)


def _is_postgresql(ledger: str) -> bool:
    return ledger.startswith(("postgresql://", "postgres://"))


async def open_publisher(args: argparse.Namespace, store: EventStore, worker: int) -> Publisher:
    if not args.kafka:
        return LedgerPublisher(store, accounting_stream_for)
    from ispbill_core.bus.kafka import KafkaPublisher, ensure_topics
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC
    from usage_collector.adapters.spool import RenewablePublisher, SpoolingPublisher

    timeout = args.publish_timeout
    topic_timeout = max(timeout, 5.0)

    async def create_topics() -> None:
        await ensure_topics(
            args.kafka,
            [ACCOUNTING_TOPIC],
            partitions=args.kafka_partitions,
            request_timeout=topic_timeout,
        )

    # As in `ispbill serve collector` (docs/adr/0010-collector-spool.md): Kafka unreachable or
    # slow, batches are fsynced to this worker's own spool (a spool is one process's: it is
    # locked) and acknowledged, and drained in order when Kafka is back.
    kafka = RenewablePublisher(
        lambda: KafkaPublisher(
            args.kafka, client_id=f"ispbill-collector-{worker}", delivery_timeout=timeout
        ),
        prepare=create_topics,
        start_timeout=topic_timeout + 5.0,
    )
    publisher = SpoolingPublisher(
        kafka,
        Path(args.spool_dir) / f"worker-{worker}",
        publish_timeout=timeout,
        recover=kafka.renew,
        max_spool_bytes=args.spool_max_bytes or None,
    )
    await publisher.start()
    return publisher


def setup_tracing_if_exported() -> None:
    """Spans only when they go somewhere: a recorded span costs more than screening a packet.

    Without ISPBILL_TRACE_FILE or OTEL_EXPORTER_OTLP_ENDPOINT the tracer stays the API's
    no-op, so no span is built and events carry no traceparent. With one, every packet gets
    a span unless OTEL_TRACES_SAMPLER (e.g. parentbased_traceidratio) samples them.
    """
    if any(
        os.environ.get(name)
        for name in ("ISPBILL_TRACE_FILE", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER")
    ):
        setup_tracing("ispbill-usage-collector")
    else:
        log.info("tracing off: set ISPBILL_TRACE_FILE or OTEL_EXPORTER_OTLP_ENDPOINT to trace")


async def serve(
    args: argparse.Namespace,
    *,
    worker: int = 0,
    reuse_port: bool = False,
    on_bound: Callable[[tuple[str, int]], None],
    parent_sentinel: int | None = None,
) -> dict[str, int]:
    """Run one collector until SIGTERM or SIGINT (or its supervisor's end); return its counters."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    supervisor = None
    if parent_sentinel is not None:
        # A supervisor killed outright must not leave its workers holding the port: its end
        # of the sentinel pipe closes, and (should that be missed) the parent pid changes.
        loop.add_reader(parent_sentinel, stopped.set)
        supervisor = os.getppid()
    setup_tracing_if_exported()
    keyring = load_keyring(args)
    store = await open_ledger(args.ledger, args.ledger_schema)
    try:
        publisher = await open_publisher(args, store, worker)
        try:
            collector = bootstrap(
                store,
                publisher,
                keyring=keyring,
                host=args.host,
                port=args.port,
                reuse_port=reuse_port,
            )
            await collector.start()
            counters = collector.accounting_server.counters
            _tune_garbage_collector()
            try:
                on_bound(collector.accounting_server.address)
                await _until_stopped(stopped, args.stats_interval, counters.as_dict, supervisor)
            finally:
                await collector.stop()
                log.info("final counters %s", counters.as_dict())
        finally:
            await publisher.stop()
    finally:
        await store.close()
    return counters.as_dict()


def _tune_garbage_collector() -> None:
    """Fewer collections on the receive path, which makes and drops many objects per packet.

    What is loaded by now (modules, the dictionary, the NAS registry) lives as long as the
    process, so it is frozen out of every collection; young objects are collected every
    50,000 allocations instead of 700 (2-5% less CPU per request in our runs).
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


async def _until_stopped(
    stopped: asyncio.Event,
    stats_interval: float,
    counters: Callable[[], dict[str, int]],
    supervisor: int | None,
) -> None:
    loop = asyncio.get_running_loop()
    next_stats = loop.time() + stats_interval
    while not stopped.is_set():
        timeout = max(0.0, next_stats - loop.time())
        if supervisor is not None:
            timeout = min(timeout, SUPERVISOR_CHECK_INTERVAL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), timeout)
        if supervisor is not None and os.getppid() != supervisor:
            log.warning("the supervisor is gone; stopping")
            return
        if loop.time() >= next_stats:
            log.info("counters %s", counters())
            next_stats = loop.time() + stats_interval


def _log_format(worker: int | None) -> str:
    where = "" if worker is None else f"[worker {worker}] "
    return f"%(asctime)s %(levelname)s {where}%(message)s"


def _announce_ready(address: tuple[str, int], workers: int) -> None:
    log.info("%d worker(s) bound to udp://%s:%s", workers, *address)
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(READY, flush=True)


def run_single(args: argparse.Namespace) -> int:
    asyncio.run(serve(args, on_bound=lambda address: _announce_ready(address, 1)))
    return 0


def _worker_main(args: argparse.Namespace, worker: int, conn: Connection) -> None:
    """A worker process: its own ledger and bus connections, the shared port via SO_REUSEPORT."""
    logging.basicConfig(level=logging.INFO, format=_log_format(worker))
    parent = multiprocessing.parent_process()
    counters = asyncio.run(
        serve(
            args,
            worker=worker,
            reuse_port=True,
            on_bound=lambda address: conn.send(("bound", address)),
            parent_sentinel=None if parent is None else parent.sentinel,
        )
    )
    with contextlib.suppress(OSError):  # no supervisor left to tell
        conn.send(("counters", counters))
    conn.close()


def _importable(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` as the module usage_collector.__main__ has it, so a spawned child finds it.

    Run with `python -m`, this module is `__main__`, which multiprocessing does not re-import
    in the child for a package's __main__; the same code imported by its name pickles by name.
    """
    if function.__module__ != "__main__":
        return function
    module = importlib.import_module("usage_collector.__main__")
    found: Callable[..., Any] = getattr(module, function.__name__)
    return found


class _Supervisor:
    """Starts the workers one after the other (the first one picks the port when it is 0)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.connections: dict[Connection, int] = {}
        self.totals: Counter[str] = Counter()
        self.stopping = False
        self.failed = False

    def on_signal(self, signum: int, frame: object) -> None:
        self.stop(f"signal {signal.Signals(signum).name}")

    def stop(self, why: str) -> None:
        if not self.stopping:
            log.info("stopping %d worker(s): %s", len(self.processes), why)
        self.stopping = True
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker stops cleanly

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.on_signal)
        port = self.args.port
        address: tuple[str, int] | None = None
        for worker in range(self.args.workers):
            if self.stopping:
                break
            address = self.start_worker(worker, port)
            if address is None:
                if not self.stopping:
                    self.failed = True
                    self.stop(f"worker {worker} did not start")
                break
            port = address[1]
        if not self.stopping and address is not None:
            _announce_ready(address, self.args.workers)
        self.supervise()
        log.info("final counters (all workers) %s", dict(self.totals))
        codes = [process.exitcode for process in self.processes]
        # A worker still importing when SIGTERM came has no handler yet and dies of it.
        clean = {0, -signal.SIGTERM} if self.stopping else {0}
        if self.failed or any(code not in clean for code in codes):
            log.error("worker exit codes %s", codes)
            return 1
        return 0

    def start_worker(self, worker: int, port: int) -> tuple[str, int] | None:
        args = argparse.Namespace(**{**vars(self.args), "port": port})
        parent_end, child_end = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_importable(_worker_main),
            args=(args, worker, child_end),
            name=f"usage-collector-{worker}",
        )
        process.start()
        self.processes.append(process)
        child_end.close()
        self.connections[parent_end] = worker
        ready = wait([parent_end, process.sentinel], WORKER_START_TIMEOUT)
        if parent_end in ready:
            try:
                kind, payload = parent_end.recv()
            except EOFError:
                return None
            if kind == "bound":
                return (str(payload[0]), int(payload[1]))
        return None

    def supervise(self) -> None:
        """Collect final counters; a worker that dies on its own stops the others."""
        running = {process.sentinel: process for process in self.processes}
        while running or self.connections:
            ready = wait([*running, *self.connections], WORKER_STOP_TIMEOUT)
            if not ready:
                if self.stopping:
                    for process in running.values():
                        log.error("worker %s did not stop; killing it", process.name)
                        process.kill()
                continue
            for handle in ready:
                if isinstance(handle, Connection):
                    self.receive(handle)
                elif (process := running.pop(handle, None)) is not None:
                    process.join()
                    if not self.stopping:
                        self.failed = True
                        self.stop(f"{process.name} exited with code {process.exitcode}")

    def receive(self, conn: Connection) -> None:
        try:
            kind, payload = conn.recv()
        except EOFError:
            del self.connections[conn]
            conn.close()
            return
        if kind == "counters":
            self.totals.update(payload)


def run_workers(args: argparse.Namespace) -> int:
    return _Supervisor(args).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--ledger",
        default="var/ispbill/ledger.db",
        help="the ledger: an SQLite file, or a postgresql:// DSN",
    )
    parser.add_argument(
        "--ledger-schema",
        default=os.environ.get("ISPBILL_LEDGER_SCHEMA", "ispbill"),
        help="with a postgresql:// ledger: its schema (default $ISPBILL_LEDGER_SCHEMA or ispbill)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    parser.add_argument("--port", type=int, default=RADIUS_ACCOUNTING_PORT)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="collector processes sharing the port with SO_REUSEPORT (one per core)",
    )
    parser.add_argument(
        "--kafka", metavar="HOST:PORT", help="publish records to Kafka instead of the ledger"
    )
    parser.add_argument(
        "--kafka-partitions",
        type=int,
        default=3,
        help="partitions of the accounting topic, when it has to be created",
    )
    parser.add_argument(
        "--spool-dir",
        default="var/ispbill/spool",
        help="with --kafka: where each worker spools (worker-N/) while Kafka is unreachable",
    )
    parser.add_argument(
        "--publish-timeout",
        type=float,
        default=2.0,
        help="with --kafka: seconds a publish may take before its batch is spooled",
    )
    parser.add_argument(
        "--spool-max-bytes",
        type=int,
        default=0,
        help="with --kafka: refuse (leave unanswered) batches beyond this spool size; 0: no limit",
    )
    parser.add_argument(
        "--secrets-key-file",
        help="the key that opens the NAS secrets in the ledger (default $ISPBILL_SECRETS_KEY,"
        " $ISPBILL_SECRETS_KEY_FILE, or secrets.key beside an SQLite ledger)",
    )
    parser.add_argument("--stats-interval", type=float, default=60.0, help="seconds")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        load_keyring(args)  # before any worker starts: a missing key is one clear error
    except SealingError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format=_log_format(None))
    sys.exit(run_single(args) if args.workers == 1 else run_workers(args))


if __name__ == "__main__":
    main()
