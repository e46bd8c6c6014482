"""Verification of Accounting-Requests: Request Authenticator, Message-Authenticator, NAS."""

from __future__ import annotations

import pytest
from pyrad.packet import AcctPacket

from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder, load_dictionary
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    DropReason,
    screen_accounting_request,
)
from usage_collector.domain.radius_packet import (
    has_message_authenticator,
    message_authenticator_is_valid,
    parse_packet,
    request_authenticator_is_valid,
)

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
