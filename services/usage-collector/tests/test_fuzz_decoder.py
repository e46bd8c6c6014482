"""Fuzzing screen_accounting_request: bad input never raises and never becomes a record.

Three classes of input (the usage-collector issue: "Bad input never crashes it"):

(a) arbitrary bytes, some dressed as an Accounting-Request header;
(b) valid signed packets with mutations (bit flips, truncation, a lying Length field,
    attributes of length 0/1/255, garbage Vendor-Specific, duplicated attributes, huge counts)
    that are *not* re-signed: accepted only if the packet still verifies independently;
(c) packets with random attribute values that are re-signed with the right secret, so the
    authenticators pass and the attribute decoding is what is fuzzed: any accepted record
    must be sane.

Packets are built and verified by usage_collector.testing, written from the RFCs (2865, 2866,
2869, 3579) and not from the code under test, so the oracle is independent.
bench/fuzz_collector.py runs a million.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    screen_accounting_request,
)
from usage_collector.testing import (
    FUZZ_NASES,
    INTEGER_ATTRIBUTES,
    MESSAGE_AUTHENTICATOR,
    OTHER_ATTRIBUTES,
    VENDOR_SPECIFIC,
    VENDORS,
    attribute,
    independently_authentic,
    insane_fields,
    sign,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
NASES = FUZZ_NASES
REGISTRY = InMemoryNasRegistry(list(NASES.values()))
DECODER = DictionaryAttributeDecoder()
FUZZ = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def screen(datagram: bytes, source: str) -> AcceptedRequest | DroppedRequest:
    return screen_accounting_request(
        datagram, source, NOW, registry=REGISTRY, decode_attributes=DECODER
    )


def assert_sane(result: AcceptedRequest) -> None:
    assert insane_fields(result, NASES) == []


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
    packet = sign(draw(st.integers(0, 255)), draw(attribute_blocks()), nas.secret, ma=ma)
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
        packet = sign(1, body, nas.secret, ma=nas.require_message_authenticator)
        assert independently_authentic(packet, nas)
        result = screen(packet, source)
        assert isinstance(result, AcceptedRequest), result
        assert result.record.acct_session_id == "sess-1"
        assert_sane(result)
        flipped = packet[:-1] + bytes([packet[-1] ^ 1])
        assert not independently_authentic(flipped, nas)
        assert isinstance(screen(flipped, source), DroppedRequest)
