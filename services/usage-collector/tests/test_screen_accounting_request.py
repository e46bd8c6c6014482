"""Verification of Accounting-Requests: Request Authenticator, Message-Authenticator, NAS."""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import UTC, datetime
from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad.packet import AcctPacket

from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder, load_dictionary
from usage_collector.application.nas_registry import RegisteredNas
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    DropReason,
    StatusServerRequest,
    screen_accounting_request,
)
from usage_collector.domain.radius_packet import (
    has_message_authenticator,
    message_authenticator_is_valid,
    parse_packet,
    request_authenticator_is_valid,
)
from usage_collector.testing import attribute, sign

pytestmark = pytest.mark.unit


@pytest.fixture
def screen(requests):
    def screen(datagram: bytes, *, source: str = "127.0.0.1", registry=None):
        return screen_accounting_request(
            datagram,
            source,
            requests.now,
            registry=registry or InMemoryNasRegistry([requests.nas()]),
            decode_attributes=DictionaryAttributeDecoder(),
        )

    return screen


def test_a_good_request_is_accepted_with_its_record(screen, requests) -> None:
    result = screen(requests.start())
    assert isinstance(result, AcceptedRequest)
    assert result.record.acct_session_id == "sess-1"
    assert result.record.nas_id == "nas-1" and result.record.nas_ip == "127.0.0.1"


def test_request_authenticator_is_rfc_2866(requests) -> None:
    raw = requests.start()
    packet = parse_packet(raw)
    assert request_authenticator_is_valid(packet, requests.secret)
    assert not request_authenticator_is_valid(packet, b"other-secret")
    # pyrad's own check agrees
    received = AcctPacket(secret=requests.secret, dict=load_dictionary(), packet=raw)
    assert received.VerifyAcctRequest()


def test_wrong_secret_is_a_bad_authenticator(screen, requests) -> None:
    result = screen(requests.start(secret=b"not-the-secret"))
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.BAD_AUTHENTICATOR


def test_a_tampered_attribute_breaks_the_authenticator(screen, requests) -> None:
    raw = bytearray(requests.start())
    raw[-1] ^= 0x01
    result = screen(bytes(raw))
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.BAD_AUTHENTICATOR


def test_message_authenticator_is_verified_when_present(screen, requests) -> None:
    raw = requests.start(message_authenticator=True)
    packet = parse_packet(raw)
    assert has_message_authenticator(packet)
    assert message_authenticator_is_valid(packet, requests.secret)
    assert isinstance(screen(raw), AcceptedRequest)


def test_a_bad_message_authenticator_is_dropped(screen, requests) -> None:
    # Valid Request Authenticator over a packet whose Message-Authenticator was computed with
    # another secret: only the HMAC catches it.
    packet = AcctPacket(id=3, secret=b"other", dict=load_dictionary())
    packet["Acct-Status-Type"] = "Start"
    packet["Acct-Session-Id"] = "s"
    packet.add_message_authenticator()
    packet._refresh_message_authenticator()
    packet.secret = requests.secret
    packet.message_authenticator = False  # keep the foreign HMAC when encoding
    raw = packet.RequestPacket()
    parsed = parse_packet(raw)
    assert request_authenticator_is_valid(parsed, requests.secret)
    assert not message_authenticator_is_valid(parsed, requests.secret)
    result = screen(raw)
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.BAD_AUTHENTICATOR


def test_missing_message_authenticator_when_required(screen, requests) -> None:
    strict = InMemoryNasRegistry([requests.nas(require_ma=True)])
    result = screen(requests.start(), registry=strict)
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.MISSING_MESSAGE_AUTHENTICATOR
    signed = requests.start(message_authenticator=True)
    assert isinstance(screen(signed, registry=strict), AcceptedRequest)


def test_unknown_nas_is_dropped_before_anything_else(screen, requests) -> None:
    result = screen(requests.start(), source="192.0.2.99")
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.UNKNOWN_NAS


def test_ipv4_mapped_source_finds_the_ipv4_nas(screen, requests) -> None:
    assert isinstance(screen(requests.start(), source="::ffff:127.0.0.1"), AcceptedRequest)


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x04\x01\x00",
        b"\x04\x01\x00\x10" + bytes(16),  # Length below 20
        b"\x04\x01\x00\x30" + bytes(16),  # Length beyond the datagram
        b"\x04\x01\x00\x17" + bytes(16) + b"\x01\x01\x00",  # attribute length 1
        b"\x04\x01\x00\x18" + bytes(16) + b"\x01\x09\x00\x00",  # attribute overruns
    ],
)
def test_malformed_datagrams_are_dropped(screen, datagram: bytes) -> None:
    result = screen(datagram)
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.MALFORMED


def test_other_codes_are_not_accounting(screen, requests) -> None:
    packet = AcctPacket(code=1, id=1, secret=requests.secret, dict=load_dictionary())
    packet["User-Name"] = "x"
    result = screen(packet.RequestPacket())
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.MALFORMED


def test_authentic_but_invalid_record_is_its_own_drop(screen, requests) -> None:
    result = screen(requests.build(Acct_Status_Type="Start"))
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.INVALID_RECORD
    assert "Acct-Session-Id" in result.detail


def test_padding_past_length_is_ignored(screen, requests) -> None:
    assert isinstance(screen(requests.start() + b"\x00" * 7), AcceptedRequest)


def test_the_response_authenticator_verifies_at_the_nas(screen, requests) -> None:
    request = AcctPacket(id=42, secret=requests.secret, dict=load_dictionary())
    request["Acct-Status-Type"] = "Start"
    request["Acct-Session-Id"] = "s"
    request["Proxy-State"] = [b"proxy-1", b"proxy-2"]
    raw = request.RequestPacket()
    result = screen(raw)
    assert isinstance(result, AcceptedRequest)
    reply = request.CreateReply(packet=result.response)
    assert request.VerifyReply(reply, result.response)
    request.secret = b"wrong"
    assert not request.VerifyReply(reply, result.response)
    assert reply.code == 5 and reply.id == 42
    assert reply["Proxy-State"] == [b"proxy-1", b"proxy-2"]


# --- parsing: first values, every value, Proxy-State, Message-Authenticator ---------------------

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
START = attribute(40, struct.pack("!I", 1)) + attribute(44, b"sess-1")


@PROPERTY
@given(
    attributes=st.lists(
        st.tuples(
            st.sampled_from([1, 8, 26, 33, 40, 44]) | st.integers(0, 255), st.binary(max_size=30)
        ),
        max_size=20,
    )
)
def test_first_keeps_the_first_of_repeated_attributes_and_attributes_lists_them_all(
    attributes: list[tuple[int, bytes]],
) -> None:
    packet = parse_packet(sign(1, b"".join(attribute(t, v) for t, v in attributes), b"s", ma=False))
    assert packet.attributes == attributes
    first: dict[int, bytes] = {}
    for attribute_type, value in attributes:
        first.setdefault(attribute_type, value)
    assert packet.first == first
    for attribute_type in {t for t, _ in attributes} | {0, 255}:
        assert packet.values(attribute_type) == [v for t, v in attributes if t == attribute_type]


def test_a_repeated_user_name_keeps_its_first_value() -> None:
    body = attribute(1, b"alice") + START + attribute(1, b"mallory") + attribute(1, b"")
    packet = parse_packet(sign(1, body, b"s", ma=False))
    assert packet.first[1] == b"alice"
    assert packet.values(1) == [b"alice", b"mallory", b""]
    assert [t for t, _ in packet.attributes] == [1, 40, 44, 1, 1]


def expected_response(request: bytes, attributes: bytes, secret: bytes) -> bytes:
    """RFC 2866 section 3, written out: the Accounting-Response to `request`."""
    header = struct.pack("!BBH", 5, request[1], 20 + len(attributes))
    authenticator = hashlib.md5(
        header + request[4:20] + attributes + secret, usedforsecurity=False
    ).digest()
    return header + authenticator + attributes


PROXY_NAS = RegisteredNas(
    nas_id="nas-1",
    ip_address="127.0.0.1",
    secret=b"testing123",
    require_message_authenticator=False,
)


@PROPERTY
@given(
    states=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    others=st.lists(
        st.tuples(st.sampled_from([1, 31, 32, 44, 87]), st.binary(min_size=1, max_size=10)),
        max_size=6,
    ),
    order=st.randoms(use_true_random=False),
    identifier=st.integers(0, 255),
)
def test_proxy_states_are_echoed_in_order(
    states: list[bytes], others: list[tuple[int, bytes]], order: Random, identifier: int
) -> None:
    """RFC 2865 section 5.33: every Proxy-State, in the order received, and nothing else."""
    parts = [(33, state) for state in states] + others
    order.shuffle(parts)
    # Proxy-States stay in their generated order among themselves, wherever they land.
    in_order = iter(states)
    parts = [(t, next(in_order)) if t == 33 else (t, v) for t, v in parts]
    body = START + b"".join(attribute(t, v) for t, v in parts)
    datagram = sign(identifier, body, PROXY_NAS.secret, ma=False)
    result = screen_accounting_request(
        datagram,
        PROXY_NAS.ip_address,
        datetime(2025, 3, 1, 12, tzinfo=UTC),
        registry=InMemoryNasRegistry([PROXY_NAS]),
        decode_attributes=DictionaryAttributeDecoder(),
    )
    assert isinstance(result, AcceptedRequest), result
    echoed = b"".join(attribute(33, state) for state in states)
    assert result.response == expected_response(datagram, echoed, PROXY_NAS.secret)
    assert parse_packet(result.response).attributes == [(33, state) for state in states]


def two_message_authenticators(secret: bytes, *, second: bytes) -> bytes:
    """A request whose first Message-Authenticator is the right HMAC, followed by another one."""
    attributes = START + attribute(80, bytes(16)) + attribute(80, second)
    header = struct.pack("!BBH", 4, 9, 20 + len(attributes))
    mac = hmac.new(secret, header + bytes(16) + attributes, hashlib.md5).digest()
    attributes = START + attribute(80, mac) + attribute(80, second)
    authenticator = hashlib.md5(header + bytes(16) + attributes + secret, usedforsecurity=False)
    return header + authenticator.digest() + attributes


@pytest.mark.parametrize("second", [bytes(16), b"\x01" * 16, b"\x02" * 4])
@pytest.mark.parametrize("require_ma", [False, True])
def test_a_packet_with_two_message_authenticators_is_dropped(
    screen, requests, second: bytes, require_ma: bool
) -> None:
    registry = InMemoryNasRegistry([requests.nas(require_ma=require_ma)])
    datagram = two_message_authenticators(requests.secret, second=second)
    packet = parse_packet(datagram)
    assert request_authenticator_is_valid(packet, requests.secret)
    assert packet.values(80)[1] == second
    assert not message_authenticator_is_valid(packet, requests.secret)
    result = screen(datagram, registry=registry)
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.BAD_AUTHENTICATOR
    # The same request with its one (first) Message-Authenticator is accepted.
    single = sign(9, START, requests.secret, ma=True)
    assert isinstance(screen(single, registry=registry), AcceptedRequest)


# --- Status-Server (RFC 5997) ------------------------------------------------------------------


def status_server(secret: bytes, *, ma: bool = True, authenticator: bytes = b"\x5a" * 16) -> bytes:
    """A Status-Server as a client sends it: a random Request Authenticator and, when `ma`, a
    Message-Authenticator = HMAC-MD5(secret, packet with the attribute zeroed)."""
    attributes = attribute(80, bytes(16)) if ma else b""
    header = struct.pack("!BBH", 12, 7, 20 + len(attributes))
    if ma:
        signature = hmac.new(secret, header + authenticator + attributes, hashlib.md5).digest()
        attributes = attributes[:2] + signature
    return header + authenticator + attributes


def test_a_status_server_is_answered_with_a_signed_accounting_response(screen, requests) -> None:
    request = status_server(requests.secret)
    result = screen(request)
    assert isinstance(result, StatusServerRequest)
    response = parse_packet(result.response)
    assert (response.code, response.identifier) == (5, 7)
    # Response Authenticator over the response with the request's authenticator (RFC 2866 3).
    expected = hashlib.md5(
        result.response[:4] + request[4:20] + result.response[20:] + requests.secret
    ).digest()
    assert response.authenticator == expected
    # Its Message-Authenticator, as a client checks it: over the response with the request's
    # authenticator in the header and the attribute zeroed (RFC 3579 3.2).
    zeroed = result.response[:4] + request[4:20] + result.response[20:22] + bytes(16)
    signature = hmac.new(requests.secret, zeroed, hashlib.md5).digest()
    assert response.first[80] == signature


def test_a_status_server_without_a_message_authenticator_is_dropped(screen, requests) -> None:
    """RFC 5997 section 3, whatever the NAS's own switch says (this NAS does not require one)."""
    result = screen(status_server(requests.secret, ma=False))
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.MISSING_MESSAGE_AUTHENTICATOR


def test_a_status_server_signed_with_another_secret_is_dropped(screen, requests) -> None:
    result = screen(status_server(b"not-the-secret"))
    assert isinstance(result, DroppedRequest)
    assert result.reason is DropReason.BAD_AUTHENTICATOR
