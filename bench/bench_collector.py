"""RADIUS accounting acks per second: FreeRADIUS + detail file vs ispbill's collector.

Run: `make bench-collector` (installs Debian's freeradius first), or
`uv run --frozen python bench/bench_collector.py [--servers freeradius,embedded,kafka]`.

One run measures, over loopback and with the same load generator (bench/collector/loadgen.c,
compiled here with gcc into .tools/bench/):

- FreeRADIUS 3.2 (Debian) from a minimal generated config: one client, an acct-only listener
  with `recv_buff` raised, and an accounting section that writes the `detail` file and returns
  ok. It runs in the foreground without debug output (`freeradius -f`).
- ispbill's collector in embedded mode (`python -m usage_collector`, SQLite ledger), one
  process per core when the collector has `--workers`.
- ispbill's collector on Kafka (a Tansu broker, memory storage), when it has `--kafka`.

For each: a warm-up, then a fixed number of distinct Interim-Updates at a window of requests in
flight that saturates the server; then a BNG reboot (a burst of Stop+Start pairs) against each.
Every acknowledged request is checked against the store afterwards: the records kept for a run
must equal the packets sent (none lost, none twice). The last line is

    RESULT collector ratio=<ispbill/freeradius> ispbill_pps=<n> freeradius_pps=<n> p99_ms=<n>

with ispbill's embedded figures. Sizes come from the options or ISPBILL_BENCH_* variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOADGEN_SOURCE = REPO / "bench" / "collector" / "loadgen.c"
BUILD_DIR = REPO / ".tools" / "bench"
SECRET = "bench-secret"
NAS_ID = "bench-nas"
# FreeRADIUS's recv_buff goes through SO_RCVBUF, which net.core.rmem_max caps.
RECEIVE_BUFFER = 16 * 1024 * 1024


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Load:
    """The summary line of one loadgen run."""

    fields: dict[str, str]
    #: CPU seconds spent during the run by the server (its process tree) and by loadgen
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    #: datagrams the kernel dropped for a full receive buffer during the run (host-wide)
    kernel_drops: int = 0

    @classmethod
    def parse(cls, output: str) -> Load:
        for line in reversed(output.splitlines()):
            if line.startswith("LOADGEN "):
                return cls(dict(part.split("=", 1) for part in line.split()[1:]))
        raise RuntimeError(f"loadgen printed no summary line:\n{output}")

    def number(self, name: str) -> float:
        return float(self.fields[name])

    @property
    def sent(self) -> int:
        return int(self.number("sent"))

    @property
    def acked(self) -> int:
        return int(self.number("acked"))

    @property
    def pps(self) -> int:
        return int(self.number("pps"))

    def cores(self, cpu_seconds: float) -> float:
        duration = self.number("duration_s")
        return cpu_seconds / duration if duration else 0.0


@dataclass
class Row:
    server: str
    run: str
    #: the sessions of this run are named "<prefix>-..."
    prefix: str
    window: int
    load: Load
    #: records the server kept for this run's packets (None: not checked)
    records: int | None = None
    distinct: int | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)


# -- the load generator --------------------------------------------------------------------


def build_loadgen() -> Path:
    if shutil.which("gcc") is None:
        raise SystemExit("bench-collector needs gcc to build bench/collector/loadgen.c")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    binary = BUILD_DIR / "loadgen"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(LOADGEN_SOURCE)], check=True, cwd=REPO
    )
    return binary


@dataclass
class LoadGenerator:
    binary: Path
    port: int
    sockets: int
    window: int
    timeout_ms: int = 3000
    retries: int = 5
    #: the server's processes, whose CPU time (children included) each run reports
    server_pids: tuple[int, ...] = ()

    def run(
        self,
        count: int,
        prefix: str,
        *,
        mode: str = "interim",
        window: int | None = None,
        sockets: int | None = None,
    ) -> Load:
        command = [
            str(self.binary),
            f"--port={self.port}",
            f"--secret={SECRET}",
            f"--count={count}",
            f"--window={window or self.window}",
            f"--sockets={sockets or self.sockets}",
            f"--mode={mode}",
            f"--prefix={prefix}",
            f"--timeout-ms={self.timeout_ms}",
            f"--retries={self.retries}",
            "--max-seconds=900",
        ]
        server_before = process_tree_cpu(*self.server_pids)
        generator_before = children_cpu()
        drops_before = udp_receive_buffer_errors()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        generator_cpu = children_cpu() - generator_before
        server_cpu = process_tree_cpu(*self.server_pids) - server_before
        if done.stderr.strip():
            print(done.stderr.strip(), file=sys.stderr)
        load = Load.parse(done.stdout)
        load.server_cpu, load.generator_cpu = server_cpu, generator_cpu
        load.kernel_drops = udp_receive_buffer_errors() - drops_before
        print(f"  {prefix}: {done.stdout.strip().splitlines()[-1]}", flush=True)
        return load

    def wait_until_answered(self, timeout: float = 30.0) -> None:
        """One request answered: the server is up (that record is counted under 'probe')."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [
                    str(self.binary),
                    f"--port={self.port}",
                    f"--secret={SECRET}",
                    "--count=1",
                    "--sockets=1",
                    "--prefix=probe",
                    "--timeout-ms=200",
                    "--retries=0",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("the server did not answer an Accounting-Request")


# -- the machine ---------------------------------------------------------------------------


def process_tree_cpu(*pids: int) -> float:
    """CPU seconds (user + system) of the processes and their live descendants, from /proc."""
    if not pids:
        return 0.0
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ...
        parent[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree = set(pids)
    grew = True
    while grew:
        children = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def udp_receive_buffer_errors() -> int:
    """Udp RcvbufErrors from /proc/net/snmp: datagrams dropped because a socket buffer was full."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return 0
    udp = [line for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def raised_rmem_max(report: Report, wanted: int) -> Iterator[None]:
    """net.core.rmem_max at least `wanted` for the run, restored afterwards."""
    path = Path("/proc/sys/net/core/rmem_max")
    try:
        before = int(path.read_text())
    except OSError as exc:
        report.note(f"cannot read net.core.rmem_max ({exc}); recv_buff may be capped")
        yield
        return
    if before >= wanted:
        yield
        return
    try:
        path.write_text(str(wanted))
    except OSError as exc:
        report.note(
            f"cannot raise net.core.rmem_max from {before} ({exc}): FreeRADIUS's recv_buff is "
            f"capped at {before} bytes"
        )
        yield
        return
    report.note(f"net.core.rmem_max raised from {before} to {wanted} for the run")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.write_text(str(before))


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    release = platform.release()
    return f"{os.cpu_count()} cores, {cpu}, Linux {release}, Python {platform.python_version()}"


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for_line(
    path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float
) -> bool:
    """True once `pattern` (a regex) appears in the log; False on timeout or exit."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if regex.search(path.read_text(errors="replace")):
                return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# -- FreeRADIUS ----------------------------------------------------------------------------

RADIUSD_CONF = """\
# Generated by bench/bench_collector.py from Debian's /etc/freeradius/3.0: accounting only.
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = ${{exec_prefix}}/sbin
logdir = {root}/log
raddbdir = {root}/raddb
radacctdir = {root}/radacct
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
run_dir = {root}/run
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/${{name}}.pid
max_request_time = 30
# Stock value: replies are kept 5 s to answer retransmissions.
cleanup_delay = 5
# Stock is 16384 ("256 per client"); at tens of thousands of requests per second, kept for
# cleanup_delay, that refuses new requests, so it is raised.
max_requests = {max_requests}
hostname_lookups = no
log {{
    destination = files
    file = ${{logdir}}/radius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = no
}}
proxy_requests = no
client bench {{
    ipaddr = 127.0.0.1
    secret = {secret}
    require_message_authenticator = no
    nas_type = other
}}
# Stock thread pool.
thread pool {{
    start_servers = 5
    max_servers = 32
    min_spare_servers = 3
    max_spare_servers = 10
    max_requests_per_server = 0
    auto_limit_acct = no
}}
modules {{
    # mods-available/detail as shipped (IPv4 clients only, so no IPv6 fallback in the name).
    detail {{
        filename = ${{radacctdir}}/%{{Packet-Src-IP-Address}}/detail-%Y%m%d
        escape_filenames = no
        permissions = 0600
        header = "%t"
    }}
    # mods-available/always: the "ok" that ends the section.
    always ok {{
        rcode = ok
    }}
}}
instantiate {{
}}
server default {{
    listen {{
        type = acct
        ipaddr = 127.0.0.1
        port = {port}
        # The default (the kernel's 208 KiB) drops packets once ~256 are in flight.
        recv_buff = {recv_buff}
    }}
    accounting {{
        detail
        ok
    }}
}}
"""


def write_freeradius_config(root: Path, port: int, max_requests: int) -> Path:
    """The accounting-only config under root/raddb (logs, detail files, pid file beside it)."""
    for sub in ("raddb", "log", "radacct", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "raddb" / "radiusd.conf").write_text(
        RADIUSD_CONF.format(
            root=root, port=port, secret=SECRET, recv_buff=RECEIVE_BUFFER, max_requests=max_requests
        )
    )
    # radiusd reads <confdir>/dictionary after the system dictionaries; nothing to add.
    (root / "raddb" / "dictionary").write_text("")
    return root / "raddb"


@contextlib.contextmanager
def freeradius(root: Path, port: int, max_requests: int) -> Iterator[tuple[Path, int]]:
    """FreeRADIUS on 127.0.0.1:port; yields the radacct directory (detail files) and its pid."""
    binary = shutil.which("freeradius") or shutil.which("radiusd")
    if binary is None:
        raise FileNotFoundError("freeradius is not installed (make install-bench)")
    raddb = write_freeradius_config(root, port, max_requests)
    log = root / "log" / "radius.log"
    check = subprocess.run(
        [binary, "-C", "-d", str(raddb)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"freeradius -C rejected the config:\n{tail(log)}{check.stderr}")
    # -f: foreground, without -X's debug output (which costs most of the throughput).
    process = subprocess.Popen(
        [binary, "-f", "-d", str(raddb)],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "log" / "stderr.log", "wb"),  # noqa: SIM115
    )
    try:
        if not wait_for_line(log, r"Ready to process requests", process, 30):
            raise RuntimeError(
                f"freeradius did not start:\n{tail(log)}{tail(root / 'log' / 'stderr.log')}"
            )
        yield root / "radacct", process.pid
    finally:
        stop_process(process)


def detail_records(radacct: Path, prefix: str) -> tuple[int, int]:
    """(records, distinct facts) in the detail files whose Acct-Session-Id starts with prefix."""
    records = 0
    distinct: set[tuple[str, ...]] = set()
    wanted = f'"{prefix}-'
    for path in radacct.rglob("detail-*"):
        with open(path, errors="replace") as detail:
            fact: dict[str, str] = {}
            for line in detail:
                if not line.strip():
                    if fact.get("Acct-Session-Id", "").startswith(wanted):
                        records += 1
                        distinct.add(
                            tuple(
                                fact.get(name, "")
                                for name in (
                                    "Acct-Session-Id",
                                    "Acct-Status-Type",
                                    "Acct-Session-Time",
                                    "Acct-Input-Octets",
                                    "Event-Timestamp",
                                )
                            )
                        )
                    fact = {}
                    continue
                name, sep, value = line.strip().partition(" = ")
                if sep:
                    fact[name] = value
            if fact.get("Acct-Session-Id", "").startswith(wanted):
                records += 1
    return records, len(distinct)


# -- ispbill -------------------------------------------------------------------------------


def collector_options() -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "usage_collector", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(re.findall(r"--[a-z][a-z-]+", done.stdout))


async def register_nas(ledger: Path) -> None:
    """The bench NAS, its secret sealed with the key beside the ledger (where the collector
    finds it), as the accounts API would record it."""
    from ispbill_core.eventstore.sqlite import SQLiteEventStore
    from usage_collector import testing

    store = SQLiteEventStore(ledger)
    try:
        await testing.register_nas(
            store, testing.key_beside(ledger), secret=SECRET.encode(), nas_id=NAS_ID
        )
    finally:
        await store.close()


@contextlib.contextmanager
def collector(
    root: Path, port: int, workers: int, options: set[str], *, kafka: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    ledger = root / "ledger.db"
    asyncio.run(register_nas(ledger))
    command = [
        sys.executable,
        "-m",
        "usage_collector",
        "--ledger",
        str(ledger),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if "--workers" in options:
        command += ["--workers", str(workers)]
    if kafka is not None:
        command += ["--kafka", kafka]
    log = root / "collector.log"
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    ready = r"READY" if "--workers" in options else r"RADIUS accounting listening"
    try:
        if not wait_for_line(log, ready, process, 60):
            raise RuntimeError(f"the collector did not start:\n{tail(log)}")
        yield process
    finally:
        stop_process(process)
        print(f"  collector log tail:\n{tail(log, 600)}", flush=True)


def ledger_records(ledger: Path, prefix: str) -> tuple[int, int]:
    """(records, distinct record ids) in the NAS's accounting stream for sessions `prefix-*`."""
    from ispbill_core.contracts.usage_collector import accounting_stream

    with contextlib.closing(sqlite3.connect(ledger)) as db:
        records, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT json_extract(data, '$.record_id')) FROM events"
            " WHERE stream = ? AND json_extract(data, '$.acct_session_id') LIKE ?",
            (accounting_stream(NAS_ID), f"{prefix}-%"),
        ).fetchone()
    return int(records), int(distinct)


async def topic_records(bootstrap: str, prefixes: list[str]) -> dict[str, tuple[int, int]]:
    """Per prefix: (messages, distinct record ids) on the accounting topic, read to its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ispbill_core.bus.kafka_compat import install_kafka_compat
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC

    install_kafka_compat()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    counts = {prefix: 0 for prefix in prefixes}
    ids: dict[str, set[str]] = {prefix: set() for prefix in prefixes}
    try:
        partitions = [
            TopicPartition(ACCOUNTING_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(ACCOUNTING_TOPIC) or [])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            if not batches:
                break
            for tp, messages in batches.items():
                for message in messages:
                    data = json.loads(message.value)["data"]
                    session = data["acct_session_id"]
                    for prefix in prefixes:
                        if session.startswith(f"{prefix}-"):
                            counts[prefix] += 1
                            ids[prefix].add(data["record_id"])
                    if message.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return {prefix: (counts[prefix], len(ids[prefix])) for prefix in prefixes}


async def create_topic(bootstrap: str) -> None:
    from ispbill_core.bus.kafka import ensure_topics
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC

    await ensure_topics(bootstrap, [ACCOUNTING_TOPIC], partitions=3)


# -- the runs ------------------------------------------------------------------------------


@dataclass
class Settings:
    packets: int
    warmup: int
    windows: list[int]
    sockets: int
    burst: int
    burst_window: int
    burst_sockets: int
    workers: int
    servers: list[str]
    timeout_ms: int


def measure(
    report: Report, server: str, generator: LoadGenerator, settings: Settings, *, burst: bool
) -> list[Row]:
    """Warm-up, the Interim-Updates at each window, then (optionally) the reboot burst."""
    generator.wait_until_answered()
    generator.run(settings.warmup, "warm", window=settings.windows[0])
    rows = []
    for window in settings.windows:
        prefix = f"w{window}"
        load = generator.run(settings.packets, prefix, window=window)
        rows.append(Row(server, "interim", prefix, window, load))
    if burst and settings.burst:
        load = generator.run(
            settings.burst,
            "boot",
            mode="burst",
            window=settings.burst_window,
            sockets=settings.burst_sockets,
        )
        rows.append(Row(server, "burst", "boot", settings.burst_window, load))
    report.rows.extend(rows)
    return rows


def generator_for(binary: Path, port: int, settings: Settings) -> LoadGenerator:
    return LoadGenerator(binary, port, settings.sockets, settings.windows[0], settings.timeout_ms)


def run_freeradius(report: Report, binary: Path, settings: Settings, tmp: Path) -> None:
    print("FreeRADIUS (detail file):", flush=True)
    port = free_udp_port()
    generator = generator_for(binary, port, settings)
    total = settings.packets * len(settings.windows) + settings.warmup + settings.burst
    with freeradius(tmp / "freeradius", port, max_requests=max(16384, 2 * total)) as running:
        radacct, pid = running
        generator.server_pids = (pid,)
        rows = measure(report, "freeradius", generator, settings, burst=True)
    for row in rows:
        row.records, row.distinct = detail_records(radacct, row.prefix)


def run_embedded(
    report: Report, binary: Path, settings: Settings, tmp: Path, options: set[str]
) -> None:
    workers = settings.workers if "--workers" in options else 1
    print(f"ispbill embedded (SQLite ledger), {workers} worker process(es):", flush=True)
    if "--workers" not in options:
        report.note("the collector has no --workers yet: ispbill ran as one process")
    root = tmp / "embedded"
    root.mkdir()
    port = free_udp_port()
    generator = generator_for(binary, port, settings)
    with collector(root, port, workers, options) as process:
        generator.server_pids = (process.pid,)
        rows = measure(report, "ispbill-embedded", generator, settings, burst=True)
    for row in rows:
        row.records, row.distinct = ledger_records(root / "ledger.db", row.prefix)


def run_kafka(
    report: Report, binary: Path, settings: Settings, tmp: Path, options: set[str]
) -> None:
    if "--kafka" not in options:
        report.note("the collector has no --kafka option yet: the Kafka run was skipped")
        return
    sys.path.insert(0, str(REPO))
    from tests.fixtures.kafka import TansuBroker, TansuNotFound

    try:
        broker = TansuBroker(log_path=tmp / "tansu.log")
    except TansuNotFound as exc:
        report.note(f"Kafka run skipped: {exc}")
        return
    workers = settings.workers if "--workers" in options else 1
    print(f"ispbill on Kafka (Tansu, memory storage), {workers} worker process(es):", flush=True)
    root = tmp / "kafka"
    root.mkdir()
    port = free_udp_port()
    generator = generator_for(binary, port, settings)
    with broker:
        asyncio.run(create_topic(broker.bootstrap))
        with collector(root, port, workers, options, kafka=broker.bootstrap) as process:
            # The broker's CPU counts too: it is part of what acknowledges a request.
            generator.server_pids = (process.pid, broker.pid or process.pid)
            rows = measure(report, "ispbill-kafka", generator, settings, burst=True)
        counted = asyncio.run(topic_records(broker.bootstrap, [row.prefix for row in rows]))
    for row in rows:
        row.records, row.distinct = counted[row.prefix]


def best(report: Report, server: str) -> Row | None:
    """The server's interim run with the most acks per second (its saturating window)."""
    rows = [r for r in report.rows if r.server == server and r.run == "interim"]
    return max(rows, key=lambda r: r.load.pps, default=None)


def print_table(report: Report) -> None:
    print()
    print(
        f"{'server':<17} {'run':<8} {'window':>6} {'packets':>8} {'acked':>8} {'pps':>7} "
        f"{'p50_ms':>8} {'p99_ms':>8} {'resent':>7} {'lost':>5} {'seconds':>8} "
        f"{'records':>8} {'distinct':>8} {'srv_cpu':>7} {'gen_cpu':>7} {'k_drops':>7}"
    )
    for row in report.rows:
        load = row.load
        print(
            f"{row.server:<17} {row.run:<8} {row.window:>6} {load.sent:>8} {load.acked:>8} "
            f"{load.pps:>7} {load.number('p50_ms'):>8.1f} {load.number('p99_ms'):>8.1f} "
            f"{int(load.number('retransmits')):>7} {int(load.number('unanswered')):>5} "
            f"{load.number('duration_s'):>8.2f} "
            f"{'-' if row.records is None else row.records:>8} "
            f"{'-' if row.distinct is None else row.distinct:>8} "
            f"{load.cores(load.server_cpu):>7.2f} {load.cores(load.generator_cpu):>7.2f} "
            f"{load.kernel_drops:>7}"
        )
    print(
        "lost: unanswered after every retransmission; records/distinct: what the server kept "
        "for the run's sessions (detail file, ledger stream or topic); srv_cpu/gen_cpu: cores "
        "busy in the server's processes and in loadgen during the run; k_drops: datagrams the "
        "kernel dropped for a full socket buffer (host-wide, /proc/net/snmp)"
    )
    for row in report.rows:
        if row.records is not None and (
            row.records != row.load.sent or row.distinct != row.records
        ):
            print(
                f"CHECK FAILED {row.server} {row.run} window {row.window}: {row.load.sent} "
                f"packets sent, {row.records} records kept ({row.distinct} distinct)"
            )
    for text in report.notes:
        print(f"note: {text}")


def parse_args() -> Settings:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--packets",
        type=int,
        default=env_int("ISPBILL_BENCH_PACKETS", 200_000),
        help="distinct Interim-Updates per window",
    )
    parser.add_argument("--warmup", type=int, default=env_int("ISPBILL_BENCH_WARMUP", 20_000))
    parser.add_argument(
        "--windows",
        default=os.environ.get("ISPBILL_BENCH_WINDOWS", "256,1024,4096"),
        help="requests in flight, comma-separated; the best of each server is its figure",
    )
    parser.add_argument("--sockets", type=int, default=env_int("ISPBILL_BENCH_SOCKETS", 16))
    parser.add_argument(
        "--burst",
        type=int,
        default=env_int("ISPBILL_BENCH_BURST", 100_000),
        help="packets of the reboot burst: half Stops, half Starts",
    )
    parser.add_argument(
        "--burst-window", type=int, default=env_int("ISPBILL_BENCH_BURST_WINDOW", 16_384)
    )
    parser.add_argument("--burst-sockets", type=int, default=64)
    parser.add_argument("--workers", type=int, default=env_int("ISPBILL_BENCH_WORKERS", cores))
    parser.add_argument("--timeout-ms", type=int, default=3000, help="before a retransmission")
    parser.add_argument(
        "--servers",
        default=os.environ.get("ISPBILL_BENCH_SERVERS", "freeradius,embedded,kafka"),
        help="comma-separated: freeradius, embedded, kafka",
    )
    args = parser.parse_args()
    return Settings(
        packets=args.packets,
        warmup=args.warmup,
        windows=[int(w) for w in args.windows.split(",") if w.strip()],
        sockets=args.sockets,
        burst=args.burst,
        burst_window=args.burst_window,
        burst_sockets=args.burst_sockets,
        workers=args.workers,
        servers=[s.strip() for s in args.servers.split(",") if s.strip()],
        timeout_ms=args.timeout_ms,
    )


def main() -> None:
    settings = parse_args()
    report = Report()
    print(f"bench-collector on {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    print(
        f"{settings.packets} distinct Interim-Updates per window {settings.windows} on "
        f"{settings.sockets} sockets after {settings.warmup} warm-up; reboot burst of "
        f"{settings.burst} packets (Stop+Start pairs), window {settings.burst_window} on "
        f"{settings.burst_sockets} sockets; retransmission after {settings.timeout_ms} ms",
        flush=True,
    )
    binary = build_loadgen()
    options = collector_options()
    with tempfile.TemporaryDirectory(prefix="ispbill-bench-collector-") as tmp_name:
        tmp = Path(tmp_name)
        with raised_rmem_max(report, RECEIVE_BUFFER):
            if "freeradius" in settings.servers:
                run_freeradius(report, binary, settings, tmp)
            if "embedded" in settings.servers:
                run_embedded(report, binary, settings, tmp, options)
            if "kafka" in settings.servers:
                run_kafka(report, binary, settings, tmp, options)
    print_table(report)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    ispbill = best(report, "ispbill-embedded")
    anchor = best(report, "freeradius")
    ratio = ispbill.load.pps / anchor.load.pps if ispbill and anchor and anchor.load.pps else 0.0
    print(
        f"RESULT collector ratio={ratio:.2f}"
        f" ispbill_pps={ispbill.load.pps if ispbill else 0}"
        f" freeradius_pps={anchor.load.pps if anchor else 0}"
        f" p99_ms={ispbill.load.number('p99_ms') if ispbill else 0:.1f}"
    )


if __name__ == "__main__":
    main()
