"""RouterOS API poller: wire encoding and mapping (unit), then librouteros against the stand-in."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from librouteros import protocol as librouteros_protocol

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import (
    ROUTER_COUNTERS_TOPIC,
    CounterSource,
    RouterCountersSampled,
)
from usage_collector.adapters.routeros_poller import (
    CounterRow,
    PreviousSample,
    RouterOsCommandError,
    RouterOsConnectionError,
    RouterOsCounterPoller,
    RouterOsLoginError,
    RouterOsReading,
    RouterOsRouter,
    SubscriberMapping,
    interface_rows,
    normalize_target,
    parse_queue_bytes,
    parse_uptime,
    queue_rows,
    reconnect_delay,
    router_restarted,
    row_delta,
    username_from_pppoe_interface,
)
from usage_collector.domain.counters import CounterSample
from usage_collector.testing import routeros as standin

RouterOsStandIn = standin.RouterOsStandIn

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
USER, PASSWORD = "ispbill", "s3cret"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []
        self.fail = False

    async def publish(self, topic, messages) -> None:
        if self.fail:
            raise ConnectionError("bus unavailable")
        self.calls.append((topic, list(messages)))


def router(port: int = 8728, **overrides) -> RouterOsRouter:
    settings = {"router_id": "bras-1", "host": "127.0.0.1", "username": USER}
    settings |= {"password": PASSWORD, "port": port, "timeout": 2.0}
    return RouterOsRouter(**(settings | overrides))


def by_key(events: list[RouterCountersSampled]) -> dict[str, tuple[int, int, bool]]:
    return {e.interface_key: (e.delta_in, e.delta_out, e.counter_reset) for e in events}


# --- the wire format (unit) -----------------------------------------------------------------

WIDTH_BOUNDARIES = [
    (0, 1),
    (0x7F, 1),
    (0x80, 2),
    (0x3FFF, 2),
    (0x4000, 3),
    (0x1FFFFF, 3),
    (0x200000, 4),
    (0xFFFFFFF, 4),
    (0x10000000, 5),
    (0xFFFFFFFF, 5),
]


@pytest.mark.unit
@pytest.mark.parametrize(("length", "width"), WIDTH_BOUNDARIES)
def test_length_takes_the_documented_width_at_every_boundary(length, width):
    encoded = standin.encode_length(length)
    assert len(encoded) == width
    assert standin.decode_length(encoded) == (length, width)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0x7F, b"\x7f"),
        (0x80, b"\x80\x80"),
        (0x4000, b"\xc0\x40\x00"),
        (0x200000, b"\xe0\x20\x00\x00"),
        (0x10000000, b"\xf0\x10\x00\x00\x00"),
    ],
)
def test_length_bytes_are_those_of_the_mikrotik_api_documentation(length, encoded):
    assert standin.encode_length(length) == encoded


@pytest.mark.unit
@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_length_round_trips_over_all_five_widths(length):
    encoded = standin.encode_length(length)
    assert standin.decode_length(encoded + b"trailing") == (length, len(encoded))
    assert standin.length_width(encoded[0]) == len(encoded)


@pytest.mark.unit
@given(st.integers(min_value=0, max_value=0xFFFFFFF))
def test_length_encoding_agrees_with_librouteros_up_to_four_bytes(length):
    """librouteros (the client under test) has no 5-byte form; below it, both agree."""
    encoded = standin.encode_length(length)
    assert encoded == librouteros_protocol.encode_length(length)
    assert librouteros_protocol.determine_length(encoded[:1]) == len(encoded) - 1
    assert librouteros_protocol.decode_length(encoded) == length


@pytest.mark.unit
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_sentence_of_any_words_round_trips(words):
    encoded = b"".join(standin.encode_word(w) for w in words) + b"\x00"
    assert standin.decode_words(encoded) == [*words, b""]


@pytest.mark.unit
@given(st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=8))
def test_sentences_read_back_from_a_stream(words):
    async def read() -> list[str]:
        reader = asyncio.StreamReader()
        reader.feed_data(standin.encode_sentence(words))
        reader.feed_eof()
        return await standin.read_sentence(reader)

    assert asyncio.run(read()) == words


@pytest.mark.unit
def test_five_byte_length_is_read_from_a_stream():
    async def read() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(standin.encode_length(0x12345678) + b"...")
        reader.feed_eof()
        return await standin.read_length(reader)

    assert asyncio.run(read()) == 0x12345678


@pytest.mark.unit
@pytest.mark.parametrize("first", [0xF1, 0xF7, 0xF8, 0xFF])
def test_reserved_control_bytes_are_rejected(first):
    with pytest.raises(standin.WireError):
        standin.decode_length(bytes([first, 0, 0, 0, 0]))


@pytest.mark.unit
@pytest.mark.parametrize("data", [b"", b"\x80", b"\xc0\x00", b"\xe0\x00\x00", b"\xf0\x00\x00\x00"])
def test_cut_short_lengths_are_rejected(data):
    with pytest.raises(standin.WireError):
        standin.decode_length(data)


@pytest.mark.unit
def test_lengths_beyond_32_bits_cannot_be_encoded():
    with pytest.raises(standin.WireError):
        standin.encode_length(2**32)


# --- mapping to subscribers (unit) ----------------------------------------------------------


@pytest.mark.unit
def test_pppoe_interface_name_gives_the_username():
    assert username_from_pppoe_interface("<pppoe-alice>") == "alice"
    assert username_from_pppoe_interface("<pppoe-bob@isp.example>") == "bob@isp.example"
    assert username_from_pppoe_interface("pppoe-in1") is None
    assert username_from_pppoe_interface("ether1") is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1w2d3h4m5s", 604800 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("5m", 300),
        ("0s", 0),
        ("2d03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        ("1w03:00:00", 604800 + 3 * 3600),
        ("00:01:02", 62),
        ("", None),
        ("soon", None),
        ("3x", None),
    ],
)
def test_uptime_formats_of_routeros_6_and_7(text, seconds):
    assert parse_uptime(text) == seconds


@pytest.mark.unit
def test_queue_bytes_are_upload_then_download():
    assert parse_queue_bytes("123/4567") == (123, 4567)
    for bad in ("123", "a/b", "-1/2", ""):
        with pytest.raises(ValueError):
            parse_queue_bytes(bad)


@pytest.mark.unit
def test_targets_are_normalized_to_hosts_without_prefix():
    assert normalize_target("10.0.0.5/32") == "10.0.0.5"
    assert normalize_target(" 10.0.0.5 ") == "10.0.0.5"
    assert normalize_target("10.0.1.0/24") == "10.0.1.0/24"
    assert normalize_target("2001:db8::1/128") == "2001:db8::1"
    assert normalize_target("<pppoe-alice>") == "<pppoe-alice>"


@pytest.mark.unit
def test_interfaces_read_are_pppoe_sessions_and_mapped_ones():
    mapping = SubscriberMapping(router(interfaces={"ether5": "carol", "<pppoe-x1>": "xavier"}))
    assert mapping.interface_username("<pppoe-alice>", "pppoe-in") == (True, "alice")
    assert mapping.interface_username("<pppoe-x1>", "pppoe-in") == (True, "xavier")
    assert mapping.interface_username("ether5", "ether") == (True, "carol")
    assert mapping.interface_username("ether1", "ether") == (False, None)
    # a static PPPoE server binding with a name of its own: read, but whose is unknown
    assert mapping.interface_username("pppoe-static1", "pppoe-in") == (True, None)

    no_pppoe = SubscriberMapping(router(pppoe=False, interfaces={"ether5": "carol"}))
    assert no_pppoe.interface_username("<pppoe-alice>", "pppoe-in") == (False, None)
    assert no_pppoe.interface_username("ether5", "ether") == (True, "carol")


@pytest.mark.unit
def test_queue_mapping_order_is_name_then_target_then_the_queue_name():
    mapping = SubscriberMapping(
        router(
            queues={"q-dave": "dave"},
            queue_targets={"10.0.0.7/32": "erin", "10.0.0.8": "frank", "10.0.0.9": "gina"},
        )
    )
    assert mapping.queue_username("q-dave", "10.0.0.7/32", dynamic=False) == (True, "dave")
    assert mapping.queue_username("q-7", "10.0.0.7/32", dynamic=False) == (True, "erin")
    assert mapping.queue_username("q-8", "10.0.0.8/32,10.0.0.99/32", dynamic=False) == (
        True,
        "frank",
    )
    # two targets of two different users: nobody's (published with username None)
    assert mapping.queue_username("q-89", "10.0.0.8/32,10.0.0.9/32", dynamic=False) == (
        True,
        None,
    )
    assert mapping.queue_username("henry", "10.0.0.50/32", dynamic=False) == (True, "henry")
    # dynamic queues (PPP profile rate limits) double the PPPoE interface's traffic: skipped
    assert mapping.queue_username("<pppoe-alice>", "<pppoe-alice>", dynamic=True) == (False, None)


@pytest.mark.unit
def test_queue_rules_can_be_switched():
    strict = SubscriberMapping(router(queue_name_is_username=False, dynamic_queues=True))
    assert strict.queue_username("henry", "10.0.0.50/32", dynamic=False) == (True, None)
    named = SubscriberMapping(router(dynamic_queues=True))
    assert named.queue_username("<pppoe-alice>", "<pppoe-alice>", dynamic=True) == (True, "alice")
    off = SubscriberMapping(router(simple_queues=False))
    assert off.queue_username("henry", "10.0.0.50/32", dynamic=False) == (False, None)


@pytest.mark.unit
def test_interface_rx_is_the_subscribers_upload():
    items = [
        {".id": "*1", "name": "<pppoe-alice>", "type": "pppoe-in", "rx-byte": 10, "tx-byte": 900},
        {".id": "*2", "name": "ether1", "type": "ether", "rx-byte": 5, "tx-byte": 5},
        {".id": "*3", "name": "<pppoe-broken>", "type": "pppoe-in"},
    ]
    rows, malformed = interface_rows(items, SubscriberMapping(router()))
    assert rows == [
        CounterRow("<pppoe-alice>", "*1", CounterSource.ROUTEROS_INTERFACE, 10, 900, "alice")
    ]
    assert malformed == 1


@pytest.mark.unit
def test_queue_upload_is_octets_in_and_names_stay_text():
    # librouteros turns "1001" into an int and "true" into True: names must come back as text
    items = [
        {".id": "*A", "name": 1001, "target": "10.0.0.5/32", "bytes": "300/7000", "dynamic": False},
        {".id": "*B", "name": "dyn", "target": "x", "bytes": "1/1", "dynamic": True},
        {".id": "*C", "name": "bad", "target": "10.0.0.6/32", "bytes": "n/a", "dynamic": False},
    ]
    rows, malformed = queue_rows(items, SubscriberMapping(router()))
    assert rows == [
        CounterRow("queue:1001", "*A", CounterSource.ROUTEROS_SIMPLE_QUEUE, 300, 7000, "1001")
    ]
    assert malformed == 1


# --- deltas (unit) --------------------------------------------------------------------------


def _row(octets_in: int, octets_out: int, item_id: str = "*1") -> CounterRow:
    source = CounterSource.ROUTEROS_INTERFACE
    return CounterRow("<pppoe-a>", item_id, source, octets_in, octets_out, "a")


def _previous(octets_in: int, octets_out: int, item_id: str = "*1") -> PreviousSample:
    return PreviousSample(item_id, CounterSample("<pppoe-a>", octets_in, octets_out, T0))


def _delta(previous, row, *, baseline=False, restarted=False):
    sample = CounterSample(row.key, row.octets_in, row.octets_out, T0 + timedelta(minutes=1))
    return row_delta(previous, row, sample, baseline=baseline, restarted=restarted)


@pytest.mark.unit
def test_delta_is_the_difference_while_the_item_lives():
    assert _delta(_previous(100, 200), _row(150, 1200)) == (50, 1000, False)


@pytest.mark.unit
def test_a_decrease_of_a_64_bit_counter_is_a_reset_never_a_wrap():
    assert _delta(_previous(10**9, 10**9), _row(300, 400)) == (300, 400, True)


@pytest.mark.unit
def test_a_new_id_is_a_new_session_counted_from_zero_even_when_counters_grew():
    assert _delta(_previous(100, 100), _row(5000, 6000, item_id="*9")) == (5000, 6000, True)


@pytest.mark.unit
def test_first_sight_is_a_baseline_only_on_the_first_poll():
    assert _delta(None, _row(700, 800), baseline=True) == (0, 0, False)
    assert _delta(None, _row(700, 800)) == (700, 800, True)


@pytest.mark.unit
def test_a_restart_resets_every_counter():
    assert _delta(_previous(100, 100), _row(150, 150), restarted=True) == (150, 150, True)


@pytest.mark.unit
def test_restart_detection_by_uptime():
    previous = (3600, T0)
    assert not router_restarted(None, 10, T0)
    assert not router_restarted(previous, None, T0)
    assert not router_restarted(previous, 3660, T0 + timedelta(minutes=1))
    assert router_restarted(previous, 30, T0 + timedelta(minutes=1))  # uptime went back
    # up for 20 minutes, but an hour since the last poll: it booted after that poll
    assert router_restarted((100, T0), 1200, T0 + timedelta(hours=1))


@pytest.mark.unit
def test_reconnect_delay_doubles_up_to_the_cap():
    delays = [reconnect_delay(n, min_backoff=1, max_backoff=30) for n in range(0, 8)]
    assert delays == [0, 1, 2, 4, 8, 16, 30, 30]
    assert reconnect_delay(10_000, min_backoff=1, max_backoff=60) == 60


@pytest.mark.unit
def test_old_events_without_source_or_username_still_load():
    event = RouterCountersSampled.model_validate(
        {
            "router_id": "core-1",
            "interface_key": "ether1",
            "octets_in": 1,
            "octets_out": 2,
            "delta_in": 0,
            "delta_out": 0,
            "sampled_at": "2025-03-01T12:00:00Z",
        }
    )
    assert event.source is CounterSource.SNMP_INTERFACE
    assert event.username is None


# --- the poller on scripted readings (unit) -------------------------------------------------


class Script:
    def __init__(self, *readings: RouterOsReading) -> None:
        self.readings = list(readings)

    async def __call__(self) -> RouterOsReading:
        return self.readings.pop(0)


def reading(uptime: int | None, *rows: CounterRow) -> RouterOsReading:
    return RouterOsReading(uptime, list(rows))


@pytest.mark.unit
async def test_scripted_polls_publish_deltas_and_survive_a_failed_publish():
    clock = FixedClock(T0)
    publisher = Recorder()
    poller = RouterOsCounterPoller(
        router(),
        publisher=publisher,
        clock=clock,
        reader=Script(
            reading(1000, _row(100, 1000)),
            reading(1060, _row(400, 3000)),
            reading(1120, _row(500, 3500)),
        ),
    )
    assert by_key(await poller.poll_once()) == {"<pppoe-a>": (0, 0, False)}
    clock.advance(timedelta(minutes=1))
    publisher.fail = True
    with pytest.raises(ConnectionError):
        await poller.poll_once()
    publisher.fail = False
    clock.advance(timedelta(minutes=1))
    # measured from the last published sample (100/1000): the failed poll's bytes are not lost
    [third] = await poller.poll_once()
    assert by_key([third]) == {"<pppoe-a>": (400, 2500, False)}
    assert third.previous_sampled_at == T0  # and over the time since it
    assert poller.counters.publish_failures == 1
    assert poller.counters.polls == 3 and poller.counters.polls_failed == 1


@pytest.mark.unit
async def test_a_session_that_vanishes_and_comes_back_counts_from_zero():
    clock = FixedClock(T0)
    poller = RouterOsCounterPoller(
        router(),
        publisher=Recorder(),
        clock=clock,
        reader=Script(
            reading(1000, _row(10**6, 10**7)),
            reading(1060),  # the session is down: nothing to read
            reading(1120, _row(2000, 3000)),  # same .id reused: still a new item
        ),
    )
    [first] = await poller.poll_once()
    assert first.previous_sampled_at is None
    clock.advance(timedelta(minutes=1))
    assert await poller.poll_once() == []
    clock.advance(timedelta(minutes=1))
    [back] = await poller.poll_once()
    assert by_key([back]) == {"<pppoe-a>": (2000, 3000, True)}
    assert poller.counters.counter_resets == 1
    # it came back after the poll that did not see it: its bytes are from that time on
    assert back.previous_sampled_at == T0 + timedelta(minutes=1)


# --- librouteros against the stand-in over TCP (integration) --------------------------------


@pytest.fixture
async def ros():
    async with RouterOsStandIn(users={USER: PASSWORD}) as standin_router:
        yield standin_router


@pytest.fixture
async def make_poller(ros):
    made: list[RouterOsCounterPoller] = []

    def make(publisher=None, clock=None, **overrides) -> RouterOsCounterPoller:
        poller = RouterOsCounterPoller(
            router(ros.port, **overrides),
            publisher=publisher or Recorder(),
            clock=clock or FixedClock(T0),
        )
        made.append(poller)
        return poller

    yield make
    for poller in made:
        await poller.close()


@pytest.mark.integration
async def test_login_and_pppoe_counters_with_the_subscribers_direction(ros, make_poller):
    ros.connect_pppoe("alice", rx=1_000, tx=50_000)
    ros.add_interface("ether1", rx=10**12, tx=10**12)  # uplink: not a subscriber, not read
    clock = FixedClock(T0)
    publisher = Recorder()
    poller = make_poller(publisher, clock)

    first = await poller.poll_once()
    assert [(e.interface_key, e.username, e.octets_in, e.octets_out) for e in first] == [
        ("<pppoe-alice>", "alice", 1_000, 50_000)
    ]
    ros.pppoe("alice").rx_byte += 2_000  # alice uploads
    ros.pppoe("alice").tx_byte += 90_000  # and downloads
    clock.advance(timedelta(minutes=1))
    (event,) = await poller.poll_once()
    assert (event.delta_in, event.delta_out, event.counter_reset) == (2_000, 90_000, False)
    assert event.source is CounterSource.ROUTEROS_INTERFACE
    assert (event.counter_bits, event.router_id) == (64, "bras-1")

    assert ros.logins_ok == 1 and ros.connections_accepted == 1  # one connection, kept open
    (print_stats,) = ros.commands_named("/interface/print")[:1]
    assert "=stats=" in print_stats
    assert poller.counters.connections == 1


@pytest.mark.integration
async def test_legacy_md5_challenge_login(ros, make_poller):
    ros.connect_pppoe("alice", rx=1, tx=2)
    poller = make_poller(login_method="token")
    assert [e.username for e in await poller.poll_once()] == ["alice"]
    assert ros.logins_ok == 1
    assert any("=response=" in w for w in ros.commands_named("/login")[-1])


@pytest.mark.integration
@pytest.mark.parametrize("method", ["plain", "token"])
async def test_wrong_password_is_a_clear_counted_login_error(ros, make_poller, method):
    poller = make_poller(password="wrong", login_method=method)
    with pytest.raises(RouterOsLoginError, match=r"router bras-1: login as 'ispbill' refused"):
        await poller.poll_once()
    assert poller.counters.login_failures == 1
    assert poller.counters.polls_failed == 1
    assert ros.logins_refused == 1


@pytest.mark.integration
async def test_simple_queues_mapped_by_name_target_and_default(ros, make_poller):
    ros.add_queue("q-dave", "10.0.0.4/32", upload=100, download=1_000)
    ros.add_queue("q-7", "10.0.0.7/32", upload=200, download=2_000)
    ros.add_queue("henry", "10.0.0.8/32", upload=300, download=3_000)
    ros.connect_pppoe("alice", rx=5, tx=6)
    ros.add_queue("<pppoe-alice>", "<pppoe-alice>", 5, 6, dynamic=True)
    clock = FixedClock(T0)
    poller = make_poller(clock=clock, queues={"q-dave": "dave"}, queue_targets={"10.0.0.7": "erin"})
    first = await poller.poll_once()
    assert {e.interface_key: e.username for e in first} == {
        "<pppoe-alice>": "alice",
        "queue:q-dave": "dave",
        "queue:q-7": "erin",
        "queue:henry": "henry",
    }
    ros.queues["q-7"].upload += 50
    ros.queues["q-7"].download += 5_000
    clock.advance(timedelta(minutes=1))
    second = {e.interface_key: e for e in await poller.poll_once()}
    q7 = second["queue:q-7"]
    assert (q7.octets_in, q7.octets_out, q7.delta_in, q7.delta_out) == (250, 7_000, 50, 5_000)
    assert q7.source is CounterSource.ROUTEROS_SIMPLE_QUEUE


@pytest.mark.integration
async def test_a_reconnected_session_is_a_reset_never_negative_usage(ros, make_poller):
    ros.connect_pppoe("alice", rx=10**9, tx=10**10)
    ros.connect_pppoe("bob", rx=100, tx=100)
    clock = FixedClock(T0)
    poller = make_poller(clock=clock)
    await poller.poll_once()

    ros.reconnect_pppoe("alice", rx=4_000, tx=9_000)  # new .id, counters from zero, lower
    ros.reconnect_pppoe("bob", rx=500, tx=700)  # new .id, counters higher than before
    ros.connect_pppoe("carol", rx=42, tx=43)  # a session that came up between two polls
    clock.advance(timedelta(minutes=1))
    events = await poller.poll_once()
    assert by_key(events) == {
        "<pppoe-alice>": (4_000, 9_000, True),
        "<pppoe-bob>": (500, 700, True),
        "<pppoe-carol>": (42, 43, True),
    }
    assert all(e.delta_in >= 0 and e.delta_out >= 0 for e in events)

    ros.disconnect_pppoe("bob")
    ros.pppoe("alice").rx_byte += 1
    clock.advance(timedelta(minutes=1))
    assert by_key(await poller.poll_once()) == {
        "<pppoe-alice>": (1, 0, False),
        "<pppoe-carol>": (0, 0, False),
    }


@pytest.mark.integration
async def test_a_router_reboot_resets_static_counters(ros, make_poller):
    ros.add_queue("henry", "10.0.0.8/32", upload=10**8, download=10**9)
    clock = FixedClock(T0)
    poller = make_poller(clock=clock)
    await poller.poll_once()
    ros.reboot(uptime_seconds=30)
    ros.queues["henry"].upload, ros.queues["henry"].download = 10, 20
    clock.advance(timedelta(minutes=2))
    with pytest.raises(RouterOsConnectionError):
        await poller.poll_once()  # the reboot cut the kept connection
    assert by_key(await poller.poll_once()) == {"queue:henry": (10, 20, True)}


@pytest.mark.integration
async def test_connection_dropped_mid_poll_reconnects_on_the_next_poll(ros, make_poller):
    ros.connect_pppoe("alice", rx=100, tx=200)
    ros.add_queue("henry", "10.0.0.8/32", 1, 2)
    ros.add_queue("ivy", "10.0.0.9/32", 3, 4)
    clock = FixedClock(T0)
    poller = make_poller(clock=clock)
    await poller.poll_once()

    ros.pppoe("alice").rx_byte += 1_000
    ros.drop_on("/queue/simple/print", after_rows=1)  # one queue sent, then the line drops
    clock.advance(timedelta(minutes=1))
    with pytest.raises(RouterOsConnectionError, match=r"router bras-1: connection lost"):
        await poller.poll_once()
    assert poller.counters.connection_failures == 1

    ros.pppoe("alice").rx_byte += 500
    clock.advance(timedelta(minutes=1))
    events = by_key(await poller.poll_once())
    # nothing published from the broken poll: the next one carries all of it
    assert events["<pppoe-alice>"] == (1_500, 0, False)
    assert ros.connections_accepted == 2 and ros.logins_ok == 2
    assert poller.counters.connections == 2


@pytest.mark.integration
async def test_a_router_that_stops_answering_times_out(ros, make_poller):
    ros.connect_pppoe("alice", rx=1, tx=1)
    poller = make_poller(timeout=0.3)
    await poller.poll_once()
    ros.stall_on("/interface/print")
    with pytest.raises(RouterOsConnectionError, match="TimeoutError"):
        await poller.poll_once()
    assert len(await poller.poll_once()) == 1
    assert ros.connections_accepted == 2


@pytest.mark.integration
async def test_a_router_down_then_back_on_the_same_port(ros, make_poller):
    ros.connect_pppoe("alice", rx=1, tx=1)
    poller = make_poller(timeout=0.5)
    await poller.poll_once()
    port = ros.port
    await ros.stop()
    with pytest.raises(RouterOsConnectionError):
        await poller.poll_once()
    with pytest.raises(RouterOsConnectionError, match=r"cannot connect to 127\.0\.0\.1"):
        await poller.poll_once()
    await ros.start(port)
    assert len(await poller.poll_once()) == 1
    assert poller.counters.connection_failures == 2


@pytest.mark.integration
async def test_a_refused_command_is_a_command_error_and_the_connection_stays():
    class NoQueues(RouterOsStandIn):
        def _print(self, command, attributes, queries):
            return (
                None
                if command == "/queue/simple/print"
                else super()._print(command, attributes, queries)
            )

    async with NoQueues(users={USER: PASSWORD}) as limited:
        poller = RouterOsCounterPoller(
            router(limited.port), publisher=Recorder(), clock=FixedClock(T0)
        )
        try:
            with pytest.raises(RouterOsCommandError, match="no such command"):
                await poller.poll_once()
            assert poller.counters.command_failures == 1
            assert poller.counters.connection_failures == 0
            assert limited.connections_accepted == 1
        finally:
            await poller.close()


@pytest.mark.integration
async def test_samples_are_published_on_the_router_counters_topic(ros, make_poller, publisher):
    ros.connect_pppoe("alice", rx=7, tx=8)
    ros.add_queue("henry", "10.0.0.8/32", 1, 2)
    poller = make_poller(publisher)
    await poller.poll_once()
    await poller.poll_once()

    assert [topic for topic, _ in publisher.calls] == [ROUTER_COUNTERS_TOPIC] * 2
    keys = [key for key, _ in publisher.calls[0][1]]
    assert keys == ["bras-1/<pppoe-alice>", "bras-1/queue:henry"]
    envelope = publisher.events[0]
    assert envelope.type == "RouterCountersSampled" and envelope.version == 1
    assert envelope.data["username"] == "alice"
    assert envelope.data["source"] == "routeros-interface"
    assert envelope.data["octets_in"] == 7
    assert envelope.metadata.actor == "router:bras-1"
    assert poller.counters.samples_published == 4


@pytest.mark.integration
async def test_long_words_cross_the_wire_in_2_3_and_4_byte_lengths(ros, make_poller):
    """librouteros reads what the stand-in writes at every width it supports."""
    names = {"b" * 200: 2, "c" * 20_000: 3, "d" * 0x200000: 4}
    for name in names:
        ros.connect_pppoe(name, rx=len(name), tx=1)
    events = await make_poller(timeout=10.0).poll_once()
    assert sorted((e.username or "")[:1] + str(e.octets_in) for e in events) == sorted(
        n[:1] + str(len(n)) for n in names
    )
    for name, width in names.items():
        assert len(standin.encode_length(len(f"=name=<pppoe-{name}>"))) == width


@pytest.mark.integration
async def test_quit_on_close(ros, make_poller):
    poller = make_poller()
    await poller.poll_once()
    await poller.close()
    await asyncio.sleep(0.05)
    assert ros.commands[-1][1] == ["/quit"]


@pytest.mark.integration
async def test_the_loop_survives_failures_and_stops_when_told(ros, make_poller, caplog):
    caplog.set_level(logging.WARNING, logger="usage_collector.adapters.routeros_poller")
    ros.connect_pppoe("alice", rx=1, tx=1)
    publisher = Recorder()
    poller = make_poller(publisher)
    stop = asyncio.Event()
    ros.drop_on("/interface/print")
    task = asyncio.create_task(poller.run(0.05, stop=stop, min_backoff=0.01))
    for _ in range(200):
        if len(publisher.calls) >= 3:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(publisher.calls) >= 3
    assert poller.counters.connection_failures == 1 and poller.counters.polls_failed == 1
    assert ros.commands[-1][1] == ["/quit"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("router bras-1: connection lost while reading")
    assert "failure 1 in a row" in warning.getMessage() and not warning.exc_info


@pytest.mark.unit
async def test_the_loop_logs_unexpected_errors_with_the_router_and_a_traceback(caplog):
    class BrokenPublisher:
        async def publish(self, topic, messages):
            raise RuntimeError("a bug, not the network")

    stop = asyncio.Event()
    poller = RouterOsCounterPoller(
        router(),
        publisher=BrokenPublisher(),
        clock=FixedClock(T0),
        reader=Script(*[reading(1, _row(1, 1)) for _ in range(50)]),
    )
    poller.poll_once = _stop_after(poller.poll_once, stop, calls=2)
    await asyncio.wait_for(poller.run(0.01, stop=stop, min_backoff=0.001), 5)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.levelno == logging.ERROR and r.exc_info for r in records)
    messages = [r.getMessage() for r in records]
    assert messages and all(
        m.startswith("router bras-1: poll failed: RuntimeError") for m in messages
    )
    assert poller.counters.publish_failures == 2


def _stop_after(poll_once, stop: asyncio.Event, *, calls: int):
    count = 0

    async def poll():
        nonlocal count
        count += 1
        if count >= calls:
            stop.set()
        return await poll_once()

    return poll


# --- api-ssl --------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "router.pem", tmp_path / "router.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.integration
async def test_api_ssl_with_a_verified_certificate(certificate):
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with RouterOsStandIn(users={USER: PASSWORD}, tls=server_tls) as secure:
        secure.connect_pppoe("alice", rx=11, tx=22)
        verified = RouterOsCounterPoller(
            router(secure.port, tls=True, tls_ca_file=str(cert)),
            publisher=Recorder(),
            clock=FixedClock(T0),
        )
        untrusted = RouterOsCounterPoller(
            router(secure.port, tls=True), publisher=Recorder(), clock=FixedClock(T0)
        )
        try:
            assert [e.octets_in for e in await verified.poll_once()] == [11]
            with pytest.raises(RouterOsConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.poll_once()
        finally:
            await verified.close()
            await untrusted.close()


@pytest.mark.unit
def test_tls_defaults_to_the_api_ssl_port():
    assert router(None).api_port == 8728
    assert router(None, tls=True).api_port == 8729
    assert router(1234, tls=True).api_port == 1234
    assert router(None).ssl_context() is None
    unverified = router(None, tls=True, tls_verify=False).ssl_context()
    assert unverified is not None and unverified.verify_mode == ssl.CERT_NONE
    assert "s3cret" not in repr(router(None))
