"""The pieces of `make bench-collector` work (not timed): the C load generator and the config.

bench/collector/loadgen.c is compiled with gcc and sends a few hundred requests to ispbill's
AccountingServer on loopback; every one must be acknowledged with a Response Authenticator that
verifies, and each must reach the publisher as its own record.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.events import NewEvent
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.application.nas_registry import RegisteredNas
from usage_collector.entrypoints.radius import AccountingServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build loadgen.c"),
]

REPO = Path(__file__).resolve().parents[2]
SECRET = "bench-secret"


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), "bench/collector/loadgen.c"],
        check=True,
        cwd=REPO,
    )
    return binary


class Recorder:
    def __init__(self) -> None:
        self.events: list[NewEvent] = []

    async def publish(self, topic: str, messages: Sequence[tuple[str, NewEvent]]) -> None:
        self.events.extend(event for _, event in messages)


async def run_loadgen(binary: Path, port: int, *options: str) -> tuple[int, dict[str, str]]:
    process = await asyncio.create_subprocess_exec(
        str(binary),
        f"--port={port}",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    line = stdout.decode().strip().splitlines()[-1]
    assert line.startswith("LOADGEN "), line
    return process.returncode or 0, dict(part.split("=", 1) for part in line.split()[1:])


@pytest.fixture
async def server():
    registry = InMemoryNasRegistry(
        [RegisteredNas(nas_id="bench-nas", ip_address="127.0.0.1", secret=SECRET.encode())]
    )
    recorder = Recorder()
    clock = FixedClock(datetime(2025, 3, 1, tzinfo=UTC))
    accounting = AccountingServer("127.0.0.1", 0, registry, recorder, clock)
    await accounting.start()
    try:
        yield accounting, recorder
    finally:
        await accounting.stop()


@pytest.mark.parametrize("mode", ["interim", "burst"])
async def test_every_request_is_acked_verified_and_recorded_once(loadgen, server, mode) -> None:
    accounting, recorder = server
    code, summary = await run_loadgen(
        loadgen,
        accounting.address[1],
        f"--secret={SECRET}",
        "--count=200",
        "--window=64",
        "--sockets=4",
        f"--mode={mode}",
        "--sessions=50",
    )
    assert code == 0
    assert summary["sent"] == summary["acked"] == "200"
    assert summary["unanswered"] == summary["bad"] == "0"
    assert float(summary["p99_ms"]) > 0
    ids = {event.id for event in recorder.events}
    assert len(ids) == len(recorder.events) == 200
    statuses = {event.data["status"] for event in recorder.events}
    assert statuses == ({"interim-update"} if mode == "interim" else {"start", "stop"})


async def test_a_wrong_secret_is_never_acked_and_counted_unanswered(loadgen, server) -> None:
    accounting, recorder = server
    code, summary = await run_loadgen(
        loadgen,
        accounting.address[1],
        "--secret=not-the-secret",
        "--count=5",
        "--timeout-ms=100",
        "--retries=1",
    )
    assert code == 1
    assert summary["acked"] == "0"
    assert summary["unanswered"] == "5"
    assert summary["retransmits"] == "5"
    assert accounting.counters.dropped_bad_authenticator == 10
    assert recorder.events == []


class _ForgingResponder(asyncio.DatagramProtocol):
    """Answers each request with an Accounting-Response whose authenticator is zeros."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(bytes([5, data[1], 0, 20]) + bytes(16), addr)


async def test_a_response_whose_authenticator_does_not_verify_is_not_an_ack(loadgen) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _ForgingResponder, local_addr=("127.0.0.1", 0)
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        code, summary = await run_loadgen(
            loadgen, port, "--count=3", "--timeout-ms=100", "--retries=0"
        )
    finally:
        transport.close()
    assert code == 1
    assert summary["acked"] == "0"
    assert summary["bad"] == "3"


@pytest.mark.skipif(shutil.which("freeradius") is None, reason="freeradius not installed")
def test_the_generated_freeradius_config_is_accepted(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_collector", REPO / "bench/bench_collector.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_collector", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    raddb = bench.write_freeradius_config(tmp_path, port=18999, max_requests=65536)
    check = subprocess.run(
        ["freeradius", "-C", "-d", str(raddb)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, (tmp_path / "log" / "radius.log").read_text()
