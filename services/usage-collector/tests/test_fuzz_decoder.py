"""Fuzzing screen_accounting_request: bad input never raises and never becomes a record.

Three classes of input (the usage-collector issue: "Bad input never crashes it"):

(a) arbitrary bytes, some dressed as an Accounting-Request header;
(b) valid signed packets with mutations (bit flips, truncation, a lying Length field,
    attributes of length 0/1/255, garbage Vendor-Specific, duplicated attributes, huge counts)
    that are *not* re-signed: accepted only if the packet still verifies independently;
(c) packets with random attribute values that are re-signed with the right secret, so the
    authenticators pass and the attribute decoding is what is fuzzed: any accepted record
    must be sane.

Packets are built and verified here by hand from the RFCs (2865, 2866, 2869), not with the
module under test, so the oracle is independent. bench/fuzz_collector.py runs a million.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.nas_registry import RegisteredNas
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    screen_accounting_request,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NASES = {
    "127.0.0.1": RegisteredNas(
        nas_id="nas-1",
        ip_address="127.0.0.1",
        secret=b"testing123",
        require_message_authenticator=False,
    ),
    "127.0.0.2": RegisteredNas(
        nas_id="nas-2",
        ip_address="127.0.0.2",
        secret=b"s3cr3t-ma",
        require_message_authenticator=True,
    ),
}
REGISTRY = InMemoryNasRegistry(list(NASES.values()))
DECODER = DictionaryAttributeDecoder()
FUZZ = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

ACCOUNTING_REQUEST = 4
MESSAGE_AUTHENTICATOR = 80
VENDOR_SPECIFIC = 26
#: Integer attributes the record is built from (RFC 2866, RFC 2869).
INTEGER_ATTRIBUTES = (40, 41, 42, 43, 46, 47, 48, 49, 52, 53, 55)
#: Text and address attributes: User-Name, NAS-IP, Framed-IP, Calling-Station-Id, Session-Id...
OTHER_ATTRIBUTES = (1, 4, 5, 8, 30, 31, 32, 33, 44, 45, 50, 51, 61, 87, 95, 96, 97)
VENDORS = (9, 2636, 14988, 0, 311, 0xFFFFFFFF)


# --- packets built and checked by hand --------------------------------------------------------


def attribute(attribute_type: int, value: bytes) -> bytes:
    return bytes([attribute_type, len(value) + 2]) + value


def sign(code: int, identifier: int, attributes: bytes, secret: bytes, *, ma: bool) -> bytes:
    """An Accounting-Request signed per RFC 2866 section 3 (and RFC 3579 for the MA)."""
    if ma:
        attributes += attribute(MESSAGE_AUTHENTICATOR, bytes(16))
    length = 20 + len(attributes)
    header = struct.pack("!BBH", code, identifier, length)
    if ma:
        offset = len(attributes) - 16
        digest = hmac.new(secret, header + bytes(16) + attributes, hashlib.md5).digest()
        attributes = attributes[:offset] + digest
    authenticator = hashlib.md5(header + bytes(16) + attributes + secret).digest()
    return header + authenticator + attributes


def independently_authentic(datagram: bytes, nas: RegisteredNas) -> bool:
    """Would an RFC-following server accept this datagram's framing and authenticators?"""
    if len(datagram) < 20:
        return False
    code, _, length = struct.unpack_from("!BBH", datagram)
    if code != ACCOUNTING_REQUEST or not 20 <= length <= 4096 or len(datagram) < length:
        return False
    raw = datagram[:length]
    offset, ma_values, ma_offset = 20, [], -1
    while offset < length:
        if length - offset < 2 or raw[offset + 1] < 2 or offset + raw[offset + 1] > length:
            return False
        if raw[offset] == MESSAGE_AUTHENTICATOR:
            ma_values.append(raw[offset + 2 : offset + raw[offset + 1]])
            ma_offset = offset + 2 if ma_offset < 0 else ma_offset
        offset += raw[offset + 1]
    digest = hashlib.md5(raw[:4] + bytes(16) + raw[20:] + nas.secret).digest()
    if not hmac.compare_digest(digest, raw[4:20]):
        return False
    if not ma_values:
        return not nas.require_message_authenticator
    if len(ma_values) != 1 or len(ma_values[0]) != 16:
        return False
    zeroed = raw[:ma_offset] + bytes(16) + raw[ma_offset + 16 :]
    expected = hmac.new(nas.secret, zeroed[:4] + bytes(16) + zeroed[20:], hashlib.md5).digest()
    return hmac.compare_digest(expected, ma_values[0])


def screen(datagram: bytes, source: str) -> AcceptedRequest | DroppedRequest:
    return screen_accounting_request(
        datagram, source, NOW, registry=REGISTRY, decode_attributes=DECODER
    )


def assert_sane(result: AcceptedRequest) -> None:
    record = result.record
    for counter in (
        record.delay_time,
        record.session_time,
        record.input_octets,
        record.output_octets,
        record.input_packets,
        record.output_packets,
    ):
        assert counter is None or (isinstance(counter, int) and 0 <= counter < 2**64)
    assert record.event_time.tzinfo is not None and record.event_time.utcoffset() is not None
    assert record.received_at.tzinfo is not None and record.received_at.utcoffset() is not None
    assert record.nas_id == NASES[record.nas_ip].nas_id
    assert len(result.response) >= 20 and result.response[0] == 5


# --- strategies -------------------------------------------------------------------------------

sources = st.sampled_from(sorted(NASES))
u32 = st.integers(0, 2**32 - 1)


@st.composite
def attribute_values(draw: st.DrawFn) -> bytes:
    """One attribute: well-typed, wrongly sized, garbage VSA, or anything."""
    kind = draw(st.integers(0, 4))
    if kind == 0:  # an integer attribute, mostly 4 octets, sometimes huge or the wrong size
        value = draw(
            st.one_of(
                u32.map(lambda n: struct.pack("!I", n)),
                st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x80\x00\x00\x00"]),
                st.binary(max_size=9),
            )
        )
        return attribute(draw(st.sampled_from(INTEGER_ATTRIBUTES)), value)
    if kind == 1:  # text/address attributes with arbitrary octets (invalid UTF-8, wrong size)
        return attribute(draw(st.sampled_from(OTHER_ATTRIBUTES)), draw(st.binary(max_size=40)))
    if kind == 2:  # Vendor-Specific: a vendor id then sub-attributes or garbage
        vendor = struct.pack("!I", draw(st.sampled_from(VENDORS) | u32))
        subs = draw(
            st.lists(
                st.tuples(st.integers(0, 255), st.binary(max_size=20)).map(
                    lambda t: attribute(t[0], t[1])
                ),
                max_size=4,
            )
        )
        tail = draw(st.binary(max_size=6))
        return attribute(VENDOR_SPECIFIC, (vendor + b"".join(subs) + tail)[:253])
    if kind == 3:  # Acct-Status-Type, any value
        return attribute(40, struct.pack("!I", draw(st.sampled_from([1, 2, 3, 7, 8, 0, 15]) | u32)))
    # any type but Message-Authenticator: a second one would make the packet unsigned
    any_type = st.integers(0, 255).filter(lambda t: t != MESSAGE_AUTHENTICATOR)
    return attribute(draw(any_type), draw(st.binary(max_size=30)))


@st.composite
def attribute_blocks(draw: st.DrawFn) -> bytes:
    """A plausible request body (status, session id) plus random attributes, some duplicated."""
    parts = []
    if draw(st.booleans()):
        parts.append(attribute(40, struct.pack("!I", draw(st.sampled_from([1, 2, 3, 7, 8])))))
    if draw(st.booleans()):
        parts.append(attribute(44, draw(st.binary(min_size=1, max_size=20))))
    parts += draw(st.lists(attribute_values(), max_size=12))
    if parts and draw(st.booleans()):
        parts += [parts[draw(st.integers(0, len(parts) - 1))]] * draw(st.integers(1, 5))
    parts = draw(st.permutations(parts))
    block = b""
    for part in parts:
        if 20 + len(block) + len(part) + 18 > 4096:
            break
        block += part
    return block


@st.composite
def signed_packets(draw: st.DrawFn) -> tuple[bytes, str]:
    source = draw(sources)
    nas = NASES[source]
    ma = nas.require_message_authenticator or draw(st.booleans())
    packet = sign(
        ACCOUNTING_REQUEST, draw(st.integers(0, 255)), draw(attribute_blocks()), nas.secret, ma=ma
    )
    return packet, source


def _mutate(draw: st.DrawFn, packet: bytes) -> bytes:
    data = bytearray(packet)
    kind = draw(st.integers(0, 8))
    if kind == 0 and data:  # bit flips
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == 1:  # truncation
        del data[draw(st.integers(0, len(data))) :]
    elif kind == 2 and len(data) >= 4:  # Length field lies
        lie = draw(
            st.sampled_from([0, 1, 19, 20, 21, len(data) - 1, len(data) + 1, 4096, 4097, 65535])
            | st.integers(0, 65535)
        )
        data[2:4] = struct.pack("!H", lie)
    elif kind == 3:  # an attribute with length 0, 1 or 255, inserted or appended
        bad = bytes([draw(st.integers(0, 255)), draw(st.sampled_from([0, 1, 255]))])
        bad += draw(st.binary(max_size=4))
        at = draw(st.integers(min(20, len(data)), len(data)))
        data[at:at] = bad
    elif kind == 4:  # garbage VSA appended
        data += attribute(VENDOR_SPECIFIC, draw(st.binary(max_size=40)))
    elif kind == 5:  # duplicated tail
        data += data[20:][: draw(st.integers(0, 200))]
    elif kind == 6:  # padding past Length (legitimately ignored)
        data += draw(st.binary(min_size=1, max_size=30))
    elif kind == 7 and len(data) > 20:  # overwrite some octets of the body
        i = draw(st.integers(20, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=8))
        data[i : i + len(chunk)] = chunk
    elif kind == 8:  # an extra Message-Authenticator, of any size
        data += attribute(MESSAGE_AUTHENTICATOR, draw(st.binary(max_size=20)))
    return bytes(data)


@st.composite
def mutated_packets(draw: st.DrawFn) -> tuple[bytes, str]:
    packet, source = draw(signed_packets())
    for _ in range(draw(st.integers(1, 3))):
        packet = _mutate(draw, packet)
    return packet, source


@st.composite
def header_like_bytes(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=300))
    code = draw(st.sampled_from([4, 4, 4, 1, 5, 0, 255]))
    return (
        struct.pack("!BBH", code, draw(st.integers(0, 255)), 20 + len(body))
        + draw(st.binary(min_size=16, max_size=16))
        + body
    )


# --- properties -------------------------------------------------------------------------------


@FUZZ
@given(
    datagram=st.binary(max_size=4200) | header_like_bytes(), source=sources | st.text(max_size=20)
)
def test_arbitrary_bytes_never_raise_and_never_become_a_record(
    datagram: bytes, source: str
) -> None:
    result = screen(datagram, source)
    assert isinstance(result, AcceptedRequest | DroppedRequest)
    event(type(result).__name__ if isinstance(result, AcceptedRequest) else result.reason.value)
    if isinstance(result, AcceptedRequest):
        assert independently_authentic(datagram, NASES[source])
        assert_sane(result)


@FUZZ
@given(case=mutated_packets())
def test_mutated_packets_are_accepted_only_if_they_still_verify(case: tuple[bytes, str]) -> None:
    datagram, source = case
    result = screen(datagram, source)
    assert isinstance(result, AcceptedRequest | DroppedRequest)
    event(type(result).__name__ if isinstance(result, AcceptedRequest) else result.reason.value)
    if isinstance(result, AcceptedRequest):
        assert independently_authentic(datagram, NASES[source])
        assert_sane(result)


@FUZZ
@given(case=signed_packets())
def test_resigned_packets_with_random_values_never_raise_and_give_sane_records(
    case: tuple[bytes, str],
) -> None:
    datagram, source = case
    assert independently_authentic(datagram, NASES[source])
    result = screen(datagram, source)
    assert isinstance(result, AcceptedRequest | DroppedRequest)
    event(type(result).__name__ if isinstance(result, AcceptedRequest) else result.reason.value)
    if isinstance(result, AcceptedRequest):
        assert_sane(result)


def test_the_builder_makes_packets_the_collector_accepts() -> None:
    """Guards the oracle: a hand-built Start is accepted, so (c) exercises real acceptances."""
    body = attribute(40, struct.pack("!I", 1)) + attribute(44, b"sess-1") + attribute(1, b"alice")
    for source, nas in NASES.items():
        packet = sign(ACCOUNTING_REQUEST, 1, body, nas.secret, ma=nas.require_message_authenticator)
        assert independently_authentic(packet, nas)
        result = screen(packet, source)
        assert isinstance(result, AcceptedRequest), result
        assert result.record.acct_session_id == "sess-1"
        assert_sane(result)
        flipped = packet[:-1] + bytes([packet[-1] ^ 1])
        assert not independently_authentic(flipped, nas)
        assert isinstance(screen(flipped, source), DroppedRequest)
