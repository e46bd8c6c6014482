"""Issue 3's acceptance, each case driven by both real RADIUS clients: FreeRADIUS's radclient
and pyrad's Client, against the accounting server over UDP on 127.0.0.1 and the real SQLite
ledger behind it (so "one record" is what the ledger holds, not what a fake saw).

Cases: wrong secret, unknown NAS, a missing Message-Authenticator when the NAS requires it,
duplicates, a retransmission with a higher Acct-Delay-Time, Accounting-On, and Gigawords.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pyrad.client import Client, Timeout
from pyrad.packet import AuthPacket, Packet

from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import AccountingRecordReceived
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import load_dictionary
from usage_collector.bootstrap import accounting_stream_for
from usage_collector.entrypoints.radius import AccountingServer

pytestmark = pytest.mark.integration

SECRET = "testing123"
GIGAWORD = 2**32
RADCLIENT = shutil.which("radclient")


class Collector:
    """An AccountingServer on the SQLite ledger, with a clock the test moves."""

    def __init__(self, server: AccountingServer, store: SQLiteEventStore, clock: FixedClock):
        self.server = server
        self.store = store
        self.clock = clock

    @property
    def port(self) -> int:
        return self.server.address[1]

    async def records(self) -> list[AccountingRecordReceived]:
        return await all_events_of(self.store, AccountingRecordReceived)


@pytest.fixture
async def make_collector(
    tmp_path: Path, requests: Any
) -> AsyncIterator[Callable[..., Awaitable[Collector]]]:
    started: list[Collector] = []

    async def make(*, nas_ip: str = "127.0.0.1", require_ma: bool = False) -> Collector:
        store = SQLiteEventStore(tmp_path / f"ledger-{len(started)}.db")
        nas = requests.nas(nas_ip, secret=SECRET.encode(), require_ma=require_ma)
        clock = FixedClock(requests.now)
        server = AccountingServer(
            "127.0.0.1",
            0,
            InMemoryNasRegistry([nas]),
            LedgerPublisher(store, accounting_stream_for),
            clock,
        )
        await server.start()
        collector = Collector(server, store, clock)
        started.append(collector)
        return collector

    yield make
    for collector in started:
        await collector.server.stop()
        await collector.store.close()


# --- the two clients ---------------------------------------------------------------------------


async def radclient(port: int, attributes: dict[str, Any], *, secret: str = SECRET) -> bool:
    """One request with radclient (1 try, 1 s timeout); True when a valid reply came back."""
    line = ",".join(f"{name}={value}" for name, value in attributes.items())
    return await _radclient(port, "acct", line, secret)


async def _radclient(port: int, command: str, line: str, secret: str) -> bool:
    if RADCLIENT is None:
        pytest.skip("radclient (Debian freeradius-utils) is not installed: make install-system")
    process = await asyncio.create_subprocess_exec(
        RADCLIENT, "-x", "-r", "1", "-t", "1", f"127.0.0.1:{port}", command, secret,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate(line.encode() + b"\n")
    answered = process.returncode == 0
    assert answered == (b"Received Accounting-Response" in output), output.decode()
    return answered


async def pyrad_client(port: int, attributes: dict[str, Any], *, secret: str = SECRET) -> bool:
    """One request with pyrad's Client (1 try, 1 s); True when a verified reply came back.

    pyrad's SendPacket checks the Response Authenticator and only returns a reply that
    matches; it raises Timeout otherwise. "Message-Authenticator" in attributes asks pyrad to
    add and sign one.
    """
    wants_ma = bool(attributes.pop("Message-Authenticator", False))

    def send() -> bool:
        client = Client(
            server="127.0.0.1", acctport=port, secret=secret.encode(), dict=load_dictionary()
        )
        client.timeout, client.retries = 1, 1
        request = client.CreateAcctPacket()
        for name, value in attributes.items():
            request[name] = value
        if wants_ma:
            request.add_message_authenticator()
        try:
            reply = client.SendPacket(request)
        except Timeout:
            return False
        return bool(reply.code == 5)

    return await asyncio.to_thread(send)


Send = Callable[..., Awaitable[bool]]
CLIENTS = [pytest.param(radclient, id="radclient"), pytest.param(pyrad_client, id="pyrad")]


def interim(session: str, **extra: Any) -> dict[str, Any]:
    return {
        "User-Name": "alice",
        "Acct-Session-Id": session,
        "Acct-Status-Type": "Interim-Update",
        "NAS-IP-Address": "127.0.0.1",
        "Acct-Session-Time": 600,
        "Acct-Input-Octets": 1000,
        "Acct-Output-Octets": 2000,
        **extra,
    }


# --- the cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize("send", CLIENTS)
async def test_a_wrong_secret_is_dropped_counted_and_the_next_packet_served(
    make_collector, send: Send
) -> None:
    collector = await make_collector()
    assert not await send(collector.port, interim("wrong"), secret="not-the-secret")
    assert collector.server.counters.dropped_bad_authenticator == 1
    assert await send(collector.port, interim("right"))
    assert [r.acct_session_id for r in await collector.records()] == ["right"]


@pytest.mark.parametrize("send", CLIENTS)
async def test_an_unknown_nas_is_dropped_counted_and_nothing_recorded(
    make_collector, send: Send
) -> None:
    collector = await make_collector(nas_ip="127.0.0.2")  # the clients send from 127.0.0.1
    assert not await send(collector.port, interim("unknown"))
    assert collector.server.counters.dropped_unknown_nas == 1
    assert await collector.records() == []


@pytest.mark.parametrize("send", CLIENTS)
async def test_a_missing_message_authenticator_is_dropped_when_the_nas_requires_it(
    make_collector, send: Send
) -> None:
    collector = await make_collector(require_ma=True)
    assert not await send(collector.port, interim("no-ma"))
    assert collector.server.counters.dropped_missing_message_authenticator == 1
    # radclient computes a Message-Authenticator given one to fill in (RFC 3579).
    with_ma = interim("with-ma", **{"Message-Authenticator": "0x00"})
    assert await send(collector.port, with_ma)
    assert [r.acct_session_id for r in await collector.records()] == ["with-ma"]


@pytest.mark.parametrize("send", CLIENTS)
async def test_a_duplicate_is_acknowledged_again_and_recorded_once(
    make_collector, send: Send
) -> None:
    collector = await make_collector()
    assert await send(collector.port, interim("dup"))
    assert await send(collector.port, interim("dup"))
    assert collector.server.counters.acked == 2
    assert len(await collector.records()) == 1


@pytest.mark.parametrize("send", CLIENTS)
async def test_a_retransmission_with_a_higher_delay_is_the_same_record(
    make_collector, send: Send
) -> None:
    collector = await make_collector()
    assert await send(collector.port, interim("retx", **{"Acct-Delay-Time": 0}))
    # The NAS heard nothing and sends again 7 s later, Acct-Delay-Time saying so.
    collector.clock.advance(timedelta(seconds=7))
    assert await send(collector.port, interim("retx", **{"Acct-Delay-Time": 7}))
    [record] = await collector.records()
    assert record.delay_time == 0 and record.event_time == collector.clock.now() - timedelta(
        seconds=7
    )
    # A later Interim of the same session is another fact.
    assert await send(collector.port, interim("retx", **{"Acct-Session-Time": 1200}))
    assert len(await collector.records()) == 2


@pytest.mark.parametrize("send", CLIENTS)
async def test_accounting_on_is_recorded_as_a_nas_reboot(make_collector, send: Send) -> None:
    collector = await make_collector()
    on = {"Acct-Status-Type": "Accounting-On", "NAS-IP-Address": "127.0.0.1"}
    assert await send(collector.port, on)
    [record] = await collector.records()
    assert record.status == "accounting-on" and record.nas_id == "nas-1"


@pytest.mark.parametrize("send", CLIENTS)
async def test_gigawords_carry_the_counters_past_four_gigabytes(make_collector, send: Send) -> None:
    collector = await make_collector()
    attributes = interim(
        "giga",
        **{
            "Acct-Input-Octets": 5,
            "Acct-Input-Gigawords": 3,
            "Acct-Output-Octets": GIGAWORD - 1,
            "Acct-Output-Gigawords": 1,
        },
    )
    assert await send(collector.port, attributes)
    [record] = await collector.records()
    assert record.input_octets == 3 * GIGAWORD + 5
    assert record.output_octets == 2 * GIGAWORD - 1


# --- Status-Server (RFC 5997) ------------------------------------------------------------------


async def radclient_status(port: int, *, secret: str = SECRET) -> bool:
    """A Status-Server from radclient, which signs it with a Message-Authenticator itself."""
    return await _radclient(port, "status", "Message-Authenticator = 0x00", secret)


async def pyrad_status(port: int, *, secret: str = SECRET) -> bool:
    """A Status-Server from pyrad: an AuthPacket of code 12 (a random Request Authenticator
    and a Message-Authenticator over it) sent to the accounting port; pyrad's VerifyReply,
    with enforce_ma, checks the reply's Response Authenticator and Message-Authenticator."""

    def send() -> bool:
        request = AuthPacket(code=12, secret=secret.encode(), dict=load_dictionary())
        request.add_message_authenticator()
        raw = request.RequestPacket()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1)
            sock.sendto(raw, ("127.0.0.1", port))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                return False
        reply = Packet(packet=data, secret=secret.encode(), dict=load_dictionary())
        return bool(reply.code == 5 and request.VerifyReply(reply, data, enforce_ma=True))

    return await asyncio.to_thread(send)


@pytest.mark.parametrize(
    "status",
    [pytest.param(radclient_status, id="radclient"), pytest.param(pyrad_status, id="pyrad")],
)
async def test_a_status_server_is_answered_and_records_nothing(make_collector, status) -> None:
    collector = await make_collector()
    assert await status(collector.port)
    assert collector.server.counters.status_server == 1
    assert collector.server.counters.acked == 0  # no record acknowledged
    assert await collector.records() == []
    # A wrong secret makes the Message-Authenticator wrong: dropped, not answered.
    assert not await status(collector.port, secret="not-the-secret")
    assert collector.server.counters.dropped_bad_authenticator == 1
    assert collector.server.counters.status_server == 1
