"""The all-in-one polls a router's byte counters (ISPBILL_POLLERS) into the ledger.

The router is the RouterOS API stand-in (usage_collector.testing.routeros), speaking the real wire
protocol on 127.0.0.1; `ispbill run` is the real process.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from ispbill_core.contracts.usage_collector import RouterCountersSampled, router_counters_stream
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from tests.e2e.harness import ISPBILL, Process, create_admin, free_port, log_in
from usage_collector.testing.routeros import RouterOsStandIn

pytestmark = pytest.mark.e2e


async def poll_json(url: str, condition, timeout: float = 30.0, headers=None):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=2, headers=headers) as client:
        deadline = asyncio.get_running_loop().time() + timeout
        last: object = None
        while asyncio.get_running_loop().time() < deadline:
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    last = response.json()
                    if condition(last):
                        return last
            except httpx.HTTPError as exc:
                last = exc
            await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting on {url}: last {last!r}")


async def test_all_in_one_polls_a_routeros_router_into_the_ledger(tmp_path: Path) -> None:
    router = RouterOsStandIn()
    router.connect_pppoe("alice", rx=1_000, tx=5_000)
    api_port = await router.start()
    (tmp_path / "api-password").write_text("s3cret\n")
    config = tmp_path / "pollers.toml"
    config.write_text(
        f"""
interval = 1

[[routeros]]
router_id = "bras-1"
host = "127.0.0.1"
port = {api_port}
username = "ispbill"
password_file = "api-password"
"""
    )
    http = free_port()
    data = tmp_path / "data"
    create_admin(["--data-dir", str(data)], {}, tmp_path)
    proc = Process(
        "ispbill-run-pollers",
        [
            *ISPBILL,
            "run",
            "--data-dir",
            str(data),
            "--http-port",
            str(http),
            "--radius-acct-port",
            str(free_port(socket.SOCK_DGRAM)),
            "--grpc-port",
            str(free_port()),
        ],
        tmp_path,
        {"ISPBILL_POLLERS": str(config)},
    )
    try:
        url = f"http://127.0.0.1:{http}/api/v1/collector/pollers"
        await poll_json(f"http://127.0.0.1:{http}/healthz", lambda c: c["status"] == "ok")
        token = await asyncio.to_thread(log_in, f"http://127.0.0.1:{http}")
        auth = {"Authorization": f"Bearer {token}"}
        await poll_json(
            url, lambda c: c.get("bras-1", {}).get("samples_published", 0) >= 1, headers=auth
        )
        # Traffic flows; the next polls publish the difference.
        router.pppoe("alice").rx_byte += 4_000_000
        router.pppoe("alice").tx_byte += 9_000_000
        counters = await poll_json(
            url, lambda c: c["bras-1"]["samples_published"] >= 3, timeout=30, headers=auth
        )
        assert counters["bras-1"].get("polls_failed", 0) == 0, counters
    finally:
        code = proc.stop()
        await router.stop()
        print(proc.log_text()[-5000:])
    assert code == 0

    store = SQLiteEventStore(data / "ledger.db")
    try:
        samples = [e.decode() for e in await store.read_stream(router_counters_stream("bras-1"))]
    finally:
        await store.close()
    assert samples and all(isinstance(s, RouterCountersSampled) for s in samples)
    alice = [s for s in samples if s.username == "alice"]
    # The router's rx is alice's upload: in total 4 MB up and 9 MB down since the baseline.
    assert sum(s.delta_in for s in alice) == 4_000_000
    assert sum(s.delta_out for s in alice) == 9_000_000
