"""The accounting server over real UDP on 127.0.0.1, driven by pyrad and by radclient."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pyrad.client import Client
from pyrad.packet import AcctPacket

from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC, AcctStatus
from ispbill_core.events import NewEvent
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import load_dictionary
from usage_collector.entrypoints.radius import AccountingServer, DropsBySource

pytestmark = pytest.mark.integration

NO_REPLY = 0.4


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


class Nas:
    """A NAS on 127.0.0.1 that sends raw datagrams and collects replies."""

    def __init__(self, transport: asyncio.DatagramTransport, receiver: _Receiver) -> None:
        self.transport = transport
        self.receiver = receiver

    def send(self, datagram: bytes) -> None:
        self.transport.sendto(datagram)

    async def reply(self, wait: float = 3.0) -> bytes | None:
        try:
            return await asyncio.wait_for(self.receiver.replies.get(), wait)
        except TimeoutError:
            return None

    async def exchange(self, datagram: bytes, wait: float = 3.0) -> bytes | None:
        self.send(datagram)
        return await self.reply(wait)


@pytest.fixture
def make_server(registry, clock) -> Callable[..., AccountingServer]:
    def make(publisher, nas_registry=None, **options) -> AccountingServer:
        return AccountingServer(
            "127.0.0.1", 0, nas_registry or registry, publisher, clock, **options
        )

    return make


@pytest.fixture
async def server(make_server, publisher) -> AsyncIterator[AccountingServer]:
    server = make_server(publisher)
    await server.start()
    yield server
    await server.stop()


async def connect(server: AccountingServer) -> Nas:
    loop = asyncio.get_running_loop()
    receiver = _Receiver()
    transport, _ = await loop.create_datagram_endpoint(lambda: receiver, remote_addr=server.address)
    return Nas(transport, receiver)


@pytest.fixture
async def nas_client(server) -> AsyncIterator[Nas]:
    nas = await connect(server)
    yield nas
    nas.transport.close()


def reply_to(raw_request: bytes, raw_reply: bytes, secret: bytes) -> bool:
    request = AcctPacket(secret=secret, dict=load_dictionary(), packet=raw_request)
    reply = request.CreateReply(packet=raw_reply)
    return reply.code == 5 and bool(request.VerifyReply(reply, raw_reply))


async def test_start_interim_stop_are_published_then_acknowledged(
    server, nas_client, publisher, requests
) -> None:
    for status, extra in [
        ("Start", {}),
        ("Interim-Update", {"Acct_Input_Octets": 100, "Acct_Input_Gigawords": 1}),
        ("Stop", {"Acct_Input_Octets": 200, "Acct_Terminate_Cause": "User-Request"}),
    ]:
        raw = requests.start(Acct_Status_Type=status, **extra)
        reply = await nas_client.exchange(raw)
        assert reply is not None and reply_to(raw, reply, requests.secret)
    assert [topic for topic, _ in publisher.calls] == [ACCOUNTING_TOPIC] * 3
    keys = [key for _, messages in publisher.calls for key, _ in messages]
    assert keys == ["nas-1/sess-1"] * 3
    statuses = [event.data["status"] for event in publisher.events]
    assert statuses == ["start", "interim-update", "stop"]
    assert publisher.events[1].data["input_octets"] == 2**32 + 100
    assert server.counters.acked == 3 and server.counters.received == 3
    assert server.receive_buffer_size is not None and server.receive_buffer_size >= 65536


async def test_ack_waits_for_the_publish(make_server, requests) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        nas.send(requests.start())
        assert await nas.reply(NO_REPLY) is None
        assert publisher.calls == [] and server.counters.acked == 0
        gate.set()
        assert await nas.reply() is not None
        assert len(publisher.calls) == 1 and server.counters.acked == 1
    finally:
        nas.transport.close()
        await server.stop()


async def test_datagrams_arriving_during_a_publish_go_out_as_one_batch(
    make_server, requests
) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        nas.send(requests.start(Acct_Session_Id="first"))
        await asyncio.sleep(0.1)  # the first batch is now waiting on the gate
        for n in range(20):
            nas.send(requests.start(Acct_Session_Id=f"s{n}", id=n))
        await asyncio.sleep(0.2)
        gate.set()
        replies = [await nas.reply() for _ in range(21)]
        assert all(replies)
        assert [len(messages) for _, messages in publisher.calls] == [1, 20]
    finally:
        nas.transport.close()
        await server.stop()


async def test_wrong_secret_gets_no_response_and_is_counted(
    server, nas_client, publisher, requests, clock
) -> None:
    assert await nas_client.exchange(requests.start(secret=b"wrong"), NO_REPLY) is None
    assert server.counters.dropped_bad_authenticator == 1
    assert publisher.calls == []
    seen = clock.now().isoformat(timespec="seconds")
    assert server.drops.as_dict() == {
        "127.0.0.1": {
            "nas_id": "nas-1",
            "first_seen": seen,
            "last_seen": seen,
            "reasons": {"dropped_bad_authenticator": 1},
        }
    }


async def test_unknown_nas_is_dropped_and_the_server_keeps_serving(
    make_server, publisher, requests
) -> None:
    registry = InMemoryNasRegistry([requests.nas(ip="192.0.2.10")])
    server = make_server(publisher, nas_registry=registry)
    await server.start()
    nas = await connect(server)
    try:
        assert await nas.exchange(requests.start(), NO_REPLY) is None
        assert server.counters.dropped_unknown_nas == 1
        [unknown] = server.drops.as_dict().values()  # a router sending, not registered
        assert unknown["nas_id"] is None and unknown["reasons"] == {"dropped_unknown_nas": 1}
        registry.register(requests.nas(ip="127.0.0.1"))
        assert await nas.exchange(requests.start()) is not None
        assert server.counters.acked == 1
    finally:
        nas.transport.close()
        await server.stop()


async def test_garbage_is_dropped_and_the_next_valid_packet_is_served(
    server, nas_client, requests
) -> None:
    # (asyncio's sendto does not send an empty datagram; the unit tests cover that one)
    junk = [b"\x04", b"\xff" * 30, b"\x04\x01\x00\x18" + bytes(16) + b"\x01\x09xx", b"\x05" * 20]
    for datagram in junk:
        nas_client.send(datagram)
    assert await nas_client.exchange(requests.start()) is not None
    assert server.counters.dropped_malformed == 4
    assert server.counters.acked == 1


async def test_missing_message_authenticator_when_required(
    make_server, publisher, requests
) -> None:
    registry = InMemoryNasRegistry([requests.nas(require_ma=True)])
    server = make_server(publisher, nas_registry=registry)
    await server.start()
    nas = await connect(server)
    try:
        assert await nas.exchange(requests.start(), NO_REPLY) is None
        assert server.counters.dropped_missing_message_authenticator == 1
        assert await nas.exchange(requests.start(message_authenticator=True)) is not None
    finally:
        nas.transport.close()
        await server.stop()


async def test_a_retransmission_has_the_same_record_id(
    server, nas_client, publisher, requests, clock
) -> None:
    from datetime import timedelta

    first = requests.start(Acct_Status_Type="Interim-Update", Acct_Input_Octets=5, id=10)
    again = requests.start(
        Acct_Status_Type="Interim-Update", Acct_Input_Octets=5, Acct_Delay_Time=3, id=11
    )
    assert await nas_client.exchange(first) is not None
    clock.advance(timedelta(seconds=3))
    assert await nas_client.exchange(again) is not None
    ids = [event.data["record_id"] for event in publisher.events]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert {event.id for event in publisher.events} == {publisher.events[0].id}


async def test_duplicates_in_one_batch_are_published_once_and_both_acked(
    make_server, requests
) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        nas.send(requests.start(Acct_Session_Id="warmup"))
        await asyncio.sleep(0.1)
        duplicate = requests.start()
        nas.send(duplicate)
        nas.send(duplicate)
        await asyncio.sleep(0.1)
        gate.set()
        assert all([await nas.reply() for _ in range(3)])
        assert [len(messages) for _, messages in publisher.calls] == [1, 1]
        assert server.counters.acked == 3
    finally:
        nas.transport.close()
        await server.stop()


async def test_a_failing_publisher_means_no_ack(make_server, failing_publisher, requests) -> None:
    server = make_server(failing_publisher)
    await server.start()
    nas = await connect(server)
    try:
        assert await nas.exchange(requests.start(), NO_REPLY) is None
        assert failing_publisher.attempts == 1
        assert server.counters.publish_failures == 1 and server.counters.acked == 0
    finally:
        nas.transport.close()
        await server.stop()


async def test_accounting_on_and_off_are_published(server, nas_client, publisher, requests) -> None:
    for status in ["Accounting-On", "Accounting-Off"]:
        raw = requests.build(Acct_Status_Type=status, NAS_Identifier="edge-1")
        assert await nas_client.exchange(raw) is not None
    statuses = [event.data["status"] for event in publisher.events]
    assert statuses == [AcctStatus.ACCOUNTING_ON.value, AcctStatus.ACCOUNTING_OFF.value]
    assert [key for _, m in publisher.calls for key, _ in m] == ["nas-1/", "nas-1/"]


async def test_each_packet_has_a_span_whose_traceparent_rides_on_the_event(
    make_server, publisher, requests, monkeypatch
) -> None:
    from usage_collector.entrypoints import radius

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(radius, "tracer", provider.get_tracer("ispbill.usage_collector"))
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        assert await nas.exchange(requests.start()) is not None
    finally:
        nas.transport.close()
        await server.stop()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "radius.accounting"]
    assert span.attributes["radius.nas_id"] == "nas-1"
    assert span.attributes["radius.acct_session_id"] == "sess-1"
    assert span.attributes["radius.acct_status_type"] == "start"
    traceparent = publisher.events[0].metadata.traceparent
    assert traceparent is not None
    assert format(span.context.trace_id, "032x") in traceparent
    assert format(span.context.span_id, "016x") in traceparent


async def test_pyrad_client_gets_a_verified_reply(server, requests) -> None:
    host, port = server.address
    client = Client(server=host, acctport=port, secret=requests.secret, dict=load_dictionary())
    client.timeout = 2
    client.retries = 1
    request = client.CreateAcctPacket(User_Name="bob")
    request["Acct-Status-Type"] = "Start"
    request["Acct-Session-Id"] = "pyrad-1"
    request.add_message_authenticator()
    reply = await asyncio.to_thread(client.SendPacket, request)
    assert reply.code == 5
    assert server.counters.acked == 1


# --- radclient (FreeRADIUS) as the NAS -------------------------------------------------------

radclient_missing = shutil.which("radclient") is None


async def radclient(server: AccountingServer, secret: str, attributes: str) -> int:
    host, port = server.address
    process = await asyncio.create_subprocess_exec(
        "radclient", "-x", "-r", "1", "-t", "1", f"{host}:{port}", "acct", secret,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate(attributes.encode())
    assert process.returncode is not None
    if process.returncode != 0:
        print(output.decode())
    return process.returncode


@pytest.mark.skipif(radclient_missing, reason="radclient (freeradius-utils) is not installed")
async def test_radclient_session(server, publisher, requests) -> None:
    secret = requests.secret.decode()
    common = "User-Name=alice,Acct-Session-Id=rc-1,Framed-IP-Address=10.0.0.7"
    assert await radclient(server, secret, f"{common},Acct-Status-Type=Start") == 0
    interim = (
        f"{common},Acct-Status-Type=Interim-Update,Acct-Session-Time=60,"
        "Acct-Input-Octets=1000,Acct-Input-Gigawords=2,Acct-Output-Octets=3000,"
        "Event-Timestamp=1700000060,Message-Authenticator=0x00"
    )
    assert await radclient(server, secret, interim) == 0
    stop = (
        f"{common},Acct-Status-Type=Stop,Acct-Session-Time=90,Acct-Input-Octets=2000,"
        "Acct-Output-Octets=4000,Acct-Terminate-Cause=User-Request,Acct-Delay-Time=4"
    )
    assert await radclient(server, secret, stop) == 0
    events = [event.data for event in publisher.events]
    assert [e["status"] for e in events] == ["start", "interim-update", "stop"]
    assert events[1]["input_octets"] == 2 * 2**32 + 1000
    assert events[1]["event_time"].startswith("2023-11-14T22:14:20")
    assert events[2]["terminate_cause"] == "User-Request"
    assert events[2]["delay_time"] == 4
    assert server.counters.acked == 3


@pytest.mark.skipif(radclient_missing, reason="radclient (freeradius-utils) is not installed")
async def test_radclient_with_the_wrong_secret_gets_no_reply(server, publisher) -> None:
    attributes = "User-Name=alice,Acct-Session-Id=rc-2,Acct-Status-Type=Start"
    assert await radclient(server, "not-the-secret", attributes) != 0
    assert server.counters.dropped_bad_authenticator >= 1
    assert server.counters.acked == 0 and publisher.calls == []


# --- batched reading, SO_REUSEPORT ------------------------------------------------------------


class FlakyPublisher:
    """Fails while `failing` is set, then keeps the events it is given."""

    def __init__(self) -> None:
        self.failing = True
        self.attempts = 0
        self.events: list[NewEvent] = []

    async def publish(self, topic: str, messages: Sequence[tuple[str, NewEvent]]) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("bus unavailable")
        self.events.extend(event for _, event in messages)


async def _hold_the_worker(nas: Nas, requests, server: AccountingServer) -> None:
    """Send one request and wait until its publish is in flight (the publisher's gate is shut)."""
    nas.send(requests.start(Acct_Session_Id="held"))
    for _ in range(200):
        if server.counters.received:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the server never read the first datagram")


async def test_one_drain_counts_every_kind_of_drop_and_acks_only_after_the_publish(
    make_server, requests
) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        await _hold_the_worker(nas, requests, server)
        # A burst the reader takes in one or a few drains while the publish is in flight.
        for n in range(10):
            nas.send(requests.start(Acct_Session_Id=f"ok-{n}", id=n))
        for n in range(5):
            nas.send(requests.start(Acct_Session_Id=f"bad-{n}", secret=b"wrong"))
        for datagram in [b"\x04" * 3, b"\xff" * 40, b"\x05" * 20]:
            nas.send(datagram)
        nas.send(requests.build(Acct_Session_Id="no-status"))
        assert await nas.reply(NO_REPLY) is None
        counters = server.counters
        assert counters.received == 20
        assert counters.dropped_bad_authenticator == 5
        assert counters.dropped_malformed == 3
        assert counters.dropped_invalid_record == 1
        assert counters.acked == 0 and publisher.calls == []
        gate.set()
        replies = [await nas.reply() for _ in range(11)]
        assert all(replies)
        assert await nas.reply(NO_REPLY) is None
        assert [len(messages) for _, messages in publisher.calls] == [1, 10]
        assert counters.acked == 11 and counters.batches_published == 2
    finally:
        nas.transport.close()
        await server.stop()


async def test_no_response_while_the_publisher_fails_then_the_retransmission_is_acked(
    make_server, requests
) -> None:
    publisher = FlakyPublisher()
    server = make_server(publisher)
    await server.start()
    nas = await connect(server)
    try:
        request = requests.start()
        for _ in range(3):
            assert await nas.exchange(request, NO_REPLY) is None
        assert server.counters.publish_failures == 3 and server.counters.acked == 0
        publisher.failing = False
        reply = await nas.exchange(request)
        assert reply is not None and reply_to(request, reply, requests.secret)
        assert server.counters.acked == 1 and len(publisher.events) == 1
    finally:
        nas.transport.close()
        await server.stop()


async def test_batches_are_capped_at_max_batch(make_server, requests) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher, max_batch=4)
    await server.start()
    nas = await connect(server)
    try:
        await _hold_the_worker(nas, requests, server)
        for n in range(10):
            nas.send(requests.start(Acct_Session_Id=f"s{n}", id=n))
        await asyncio.sleep(0.2)
        gate.set()
        assert all([await nas.reply() for _ in range(11)])
        assert [len(messages) for _, messages in publisher.calls] == [1, 4, 4, 2]
    finally:
        nas.transport.close()
        await server.stop()


async def test_more_than_max_pending_waiting_is_counted_as_overload(make_server, requests) -> None:
    gate = asyncio.Event()
    publisher = requests.recording_publisher(gate)
    server = make_server(publisher, max_pending=5)
    await server.start()
    nas = await connect(server)
    try:
        await _hold_the_worker(nas, requests, server)
        for n in range(12):
            nas.send(requests.start(Acct_Session_Id=f"s{n}", id=n))
        assert await nas.reply(NO_REPLY) is None
        assert server.counters.received == 13
        assert server.counters.dropped_overload == 7
        gate.set()
        assert all([await nas.reply() for _ in range(6)])
        assert await nas.reply(NO_REPLY) is None
        assert server.counters.acked == 6
    finally:
        nas.transport.close()
        await server.stop()


async def test_stop_is_bounded_when_the_publish_never_returns(make_server, requests) -> None:
    publisher = requests.recording_publisher(asyncio.Event())  # a gate nobody opens
    server = make_server(publisher, stop_timeout=0.2)
    await server.start()
    nas = await connect(server)
    try:
        await _hold_the_worker(nas, requests, server)
        await asyncio.wait_for(server.stop(), 30)
        assert server.counters.acked == 0
        assert await nas.reply(NO_REPLY) is None
    finally:
        nas.transport.close()


async def test_two_servers_share_one_port_with_so_reuseport(
    make_server, publisher, requests
) -> None:
    first = make_server(publisher, reuse_port=True)
    await first.start()
    second = AccountingServer(*first.address, first._registry, publisher, first._clock,
                              reuse_port=True)  # fmt: skip
    await second.start()
    clients = [await connect(first) for _ in range(32)]
    try:
        assert second.address == first.address
        for n, nas in enumerate(clients):
            nas.send(requests.start(Acct_Session_Id=f"s{n}"))
        assert all([await nas.reply() for nas in clients])
        # The kernel spreads the 32 client sockets over both (by address and port hash).
        assert first.counters.acked > 0 and second.counters.acked > 0
        assert first.counters.acked + second.counters.acked == 32
    finally:
        for nas in clients:
            nas.transport.close()
        await second.stop()
        await first.stop()


async def test_without_reuse_port_a_second_server_cannot_bind(make_server, publisher) -> None:
    first = make_server(publisher)
    await first.start()
    try:
        second = AccountingServer(*first.address, first._registry, publisher, first._clock)
        with pytest.raises(OSError):
            await second.start()
    finally:
        await first.stop()


def test_drops_are_kept_for_a_bounded_number_of_sources(clock) -> None:
    """A flood from spoofed addresses costs one entry per address up to the limit, then one."""
    drops = DropsBySource(limit=2)
    for n in range(1000):
        drops.count(f"198.51.100.{n % 250}", "dropped_unknown_nas", None, clock.now())
    drops.count("198.51.100.0", "dropped_bad_authenticator", "nas-7", clock.now())
    shown = drops.as_dict()
    assert list(shown) == ["198.51.100.0", "198.51.100.1", "other"]
    assert shown["198.51.100.0"]["reasons"] == {
        "dropped_unknown_nas": 4,
        "dropped_bad_authenticator": 1,
    }
    assert shown["198.51.100.0"]["nas_id"] == "nas-7"
    assert shown["other"]["reasons"] == {"dropped_unknown_nas": 1000 - 8}
    drops.count("198.51.100.99", "dropped_bad_authenticator", "nas-7", clock.now())
    assert drops.as_dict()["other"]["nas_id"] is None  # many addresses: no one NAS
