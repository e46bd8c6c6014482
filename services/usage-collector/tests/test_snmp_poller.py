"""SnmpCounterPoller: deltas and publishing with a scripted reader (unit), then a real snmpd."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import ROUTER_COUNTERS_TOPIC, RouterCountersSampled
from ispbill_core.events import NewEvent
from usage_collector.adapters.snmp_poller import (
    InterfaceCounters,
    RouterReading,
    SnmpCounterPoller,
    SnmpPollError,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
COMMUNITY = "ispbilltest"


class Recorder:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[tuple[str, NewEvent]]]] = []
        self.fail = fail

    async def publish(self, topic: str, messages: Sequence[tuple[str, NewEvent]]) -> None:
        if self.fail:
            raise ConnectionError("bus unavailable")
        self.calls.append((topic, list(messages)))


class Script:
    """A reader that returns the given readings in turn."""

    def __init__(self, *readings: RouterReading) -> None:
        self.readings = list(readings)

    async def __call__(self) -> RouterReading:
        return self.readings.pop(0)


def reading(uptime: int | None, *rows: tuple[int, str | None, int, int, int]) -> RouterReading:
    return RouterReading(uptime, [InterfaceCounters(*row) for row in rows])


def poller(script, publisher, clock, interfaces=None) -> SnmpCounterPoller:
    return SnmpCounterPoller(
        "127.0.0.1",
        161,
        COMMUNITY,
        interfaces=interfaces if interfaces is not None else {},
        publisher=publisher,
        clock=clock,
        router_id="core-1",
        reader=script,
    )


def deltas(events: list[RouterCountersSampled]) -> dict[str, tuple[int, int, bool]]:
    return {e.interface_key: (e.delta_in, e.delta_out, e.counter_reset) for e in events}


@pytest.mark.unit
async def test_first_sample_has_zero_delta_then_differences():
    clock = FixedClock(T0)
    publisher = Recorder()
    p = poller(
        Script(
            reading(100, (1, "ether1", 1000, 500, 64)),
            reading(6100, (1, "ether1", 4000, 900, 64)),
        ),
        publisher,
        clock,
        {"ether1": "sub-42"},
    )
    first = await p.poll_once()
    assert deltas(first) == {"ether1": (0, 0, False)}
    clock.advance(timedelta(minutes=1))
    second = await p.poll_once()
    assert deltas(second) == {"ether1": (3000, 400, False)}
    event = second[0]
    assert (event.router_id, event.subscriber_hint, event.counter_bits) == ("core-1", "sub-42", 64)
    assert (event.octets_in, event.octets_out) == (4000, 900)
    assert (first[0].previous_sampled_at, event.previous_sampled_at) == (None, T0)

    assert [topic for topic, _ in publisher.calls] == [ROUTER_COUNTERS_TOPIC] * 2
    key, envelope = publisher.calls[1][1][0]
    assert key == "core-1/ether1"
    assert envelope.type == "RouterCountersSampled"
    assert envelope.data["delta_in"] == 3000


@pytest.mark.unit
async def test_32_bit_fallback_wraps_at_2_32_and_ifindex_is_the_key_without_ifname():
    p = poller(
        Script(
            reading(100, (7, None, 2**32 - 10, 0, 32)),
            reading(200, (7, None, 20, 5, 32)),
        ),
        Recorder(),
        FixedClock(T0),
    )
    await p.poll_once()
    events = await p.poll_once()
    assert deltas(events) == {"7": (30, 5, False)}
    assert events[0].counter_bits == 32


@pytest.mark.unit
async def test_agent_restart_is_a_reset_counted_from_zero():
    p = poller(
        Script(
            reading(90_000, (1, "ether1", 10**9, 10**9, 64)),
            reading(300, (1, "ether1", 1234, 99, 64)),
        ),
        Recorder(),
        FixedClock(T0),
    )
    await p.poll_once()
    assert deltas(await p.poll_once()) == {"ether1": (1234, 99, True)}


@pytest.mark.unit
async def test_only_configured_interfaces_are_sampled():
    publisher = Recorder()
    p = poller(
        Script(reading(1, (1, "ether1", 1, 1, 64), (2, "ether2", 2, 2, 64))),
        publisher,
        FixedClock(T0),
        {"ether2": "sub-7"},
    )
    events = await p.poll_once()
    assert [(e.interface_key, e.subscriber_hint) for e in events] == [("ether2", "sub-7")]


@pytest.mark.unit
async def test_nothing_to_publish_makes_no_call():
    publisher = Recorder()
    p = poller(Script(reading(1)), publisher, FixedClock(T0))
    assert await p.poll_once() == []
    assert publisher.calls == []


@pytest.mark.unit
async def test_failed_publish_keeps_the_previous_sample():
    publisher = Recorder()
    p = poller(
        Script(
            reading(100, (1, "ether1", 1000, 0, 64)),
            reading(200, (1, "ether1", 1500, 0, 64)),
            reading(300, (1, "ether1", 1800, 0, 64)),
        ),
        publisher,
        FixedClock(T0),
    )
    await p.poll_once()
    publisher.fail = True
    with pytest.raises(ConnectionError):
        await p.poll_once()
    publisher.fail = False
    # measured from the last published sample (1000): the failed poll's 500 bytes are not lost
    assert deltas(await p.poll_once()) == {"ether1": (800, 0, False)}


@pytest.mark.unit
async def test_counter_width_change_restarts_from_zero_delta():
    p = poller(
        Script(
            reading(100, (1, "ether1", 1000, 0, 32)),
            reading(200, (1, "ether1", 5000, 0, 64)),
        ),
        Recorder(),
        FixedClock(T0),
    )
    await p.poll_once()
    assert deltas(await p.poll_once()) == {"ether1": (0, 0, False)}


# --- a real Debian snmpd on loopback ---------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snmpd_binary() -> str | None:
    return shutil.which("snmpd") or next(
        (p for p in ("/usr/sbin/snmpd", "/sbin/snmpd") if os.access(p, os.X_OK)), None
    )


@pytest.fixture
def snmpd(tmp_path):
    binary = snmpd_binary()
    if binary is None:
        pytest.skip("snmpd is not installed (make install-system: apt-get install snmpd snmp)")
    port = free_udp_port()
    conf = tmp_path / "snmpd.conf"
    # the listening address is given here only: the same endpoint on the command line too
    # makes snmpd try to bind it twice and exit
    conf.write_text(f"agentAddress udp:127.0.0.1:{port}\nrocommunity {COMMUNITY} 127.0.0.1\n")
    log = tmp_path / "snmpd.log"
    env = {**os.environ, "MIBS": ""}  # no MIB files to load: the agent needs none
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "-f", "-Lo", "-C", "-c", str(conf), "-p", str(tmp_path / "snmpd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        if not wait_until_answers(port, proc):
            pytest.skip(f"snmpd did not start: {log.read_text(errors='replace')[-500:]}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_answers(port: int, proc: subprocess.Popen, deadline: float = 10.0) -> bool:
    async def probe() -> bool:
        p = SnmpCounterPoller(
            "127.0.0.1",
            port,
            COMMUNITY,
            interfaces={},
            publisher=Recorder(),
            clock=FixedClock(T0),
            router_id="probe",
            timeout=0.3,
            retries=0,
        )
        try:
            await p.read_snmp()
            return True
        except SnmpPollError:
            return False
        finally:
            await p.close()

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if asyncio.run(probe()):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.integration
async def test_polls_real_counters_of_lo_from_snmpd(snmpd):
    publisher = Recorder()
    clock = FixedClock(T0)
    p = SnmpCounterPoller(
        "127.0.0.1",
        snmpd,
        COMMUNITY,
        interfaces={"lo": "loopback-subscriber"},
        publisher=publisher,
        clock=clock,
        router_id="snmpd-test",
    )
    try:
        first = await p.poll_once()
        clock.advance(timedelta(seconds=1))
        second = await p.poll_once()
    finally:
        await p.close()

    assert [e.interface_key for e in first] == ["lo"]
    assert [e.interface_key for e in second] == ["lo"]
    lo1, lo2 = first[0], second[0]
    assert lo1.counter_bits == 64  # net-snmp serves ifHCInOctets for lo
    assert lo1.octets_in > 0 and lo1.octets_out > 0
    assert (lo1.delta_in, lo1.delta_out) == (0, 0)
    assert lo2.octets_in >= lo1.octets_in
    assert lo2.delta_in >= 0 and lo2.delta_out >= 0
    assert lo2.delta_in == lo2.octets_in - lo1.octets_in
    assert lo2.subscriber_hint == "loopback-subscriber"
    assert not lo2.counter_reset
    assert [topic for topic, _ in publisher.calls] == [ROUTER_COUNTERS_TOPIC] * 2
