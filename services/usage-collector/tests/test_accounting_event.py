"""The live path against the reference path, and the hand-written event JSON against pydantic.

1. decode_accounting_attributes (raw octets by attribute number, the receive path) must give
   the same AccountingRecord as decode_accounting_request over the same packet typed by the
   shipped dictionary (the detail-file path), or both must refuse it; and both must agree
   with an oracle written here from RFC 2865/2866/2869 (first value of an attribute wins).
2. accounting_message writes the AccountingRecordReceived event with f-strings; it must be
   the JSON that record.to_event() dumps, with the metadata and key the collector promises.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.usage_collector import (
    AccountingRecordReceived,
    AcctStatus,
    accounting_key,
)
from ispbill_core.events import (
    EncodedEvent,
    EventMetadata,
    NewEvent,
    new_event,
    ordered_deterministic_id,
)
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.publish_accounting_records import accounting_message
from usage_collector.domain.accounting_record import (
    AccountingRecord,
    InvalidAccountingRecord,
    decode_accounting_attributes,
    decode_accounting_request,
)
from usage_collector.domain.radius_packet import RadiusPacket, parse_packet
from usage_collector.testing import VENDOR_SPECIFIC, VENDORS, attribute, sign

pytestmark = pytest.mark.unit

DECODER = DictionaryAttributeDecoder()
TERMINATE_CAUSES = DECODER.value_names(49)
SECRET = b"testing123"
NAS_ID = "nas-1"
NAS_IP = "192.0.2.1"
PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# --- the oracle: RFC 2865/2866/2869, not the collector's code ---------------------------------

USER_NAME, FRAMED_IP_ADDRESS, CALLING_STATION_ID = 1, 8, 31
STATUS, DELAY, SESSION_ID, SESSION_TIME, TERMINATE_CAUSE = 40, 41, 44, 46, 49
IN_OCTETS, OUT_OCTETS, IN_PACKETS, OUT_PACKETS = 42, 43, 47, 48
IN_GIGAWORDS, OUT_GIGAWORDS, EVENT_TIMESTAMP = 52, 53, 55
INTEGERS: tuple[int, ...] = (DELAY, IN_OCTETS, OUT_OCTETS, SESSION_TIME, IN_PACKETS, OUT_PACKETS)
INTEGERS += (IN_GIGAWORDS, OUT_GIGAWORDS, EVENT_TIMESTAMP)
TEXTS = (USER_NAME, SESSION_ID, CALLING_STATION_ID)
READ = frozenset((*INTEGERS, *TEXTS, FRAMED_IP_ADDRESS, STATUS, TERMINATE_CAUSE))
#: Acct-Status-Type (RFC 2866 section 5.1) values that are accounted.
ACCOUNTED = {
    1: AcctStatus.START,
    2: AcctStatus.STOP,
    3: AcctStatus.INTERIM_UPDATE,
    7: AcctStatus.ACCOUNTING_ON,
    8: AcctStatus.ACCOUNTING_OFF,
}
SESSION_STATUSES = {AcctStatus.START, AcctStatus.STOP, AcctStatus.INTERIM_UPDATE}
#: Acct-Terminate-Cause (RFC 2866 section 5.10, RFC 3580 section 3.17) as FreeRADIUS names them.
CAUSE_NAMES = (
    "User-Request",
    "Lost-Carrier",
    "Lost-Service",
    "Idle-Timeout",
    "Session-Timeout",
    "Admin-Reset",
    "Admin-Reboot",
    "Port-Error",
    "NAS-Error",
    "NAS-Request",
    "NAS-Reboot",
    "Port-Unneeded",
    "Port-Preempted",
    "Port-Suspended",
    "Service-Unavailable",
    "Callback",
    "User-Error",
    "Host-Request",
    "Supplicant-Restart",
    "Reauthentication-Failure",
    "Port-Reinit",
    "Port-Disabled",
)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def expected_fields(
    attributes: list[tuple[int, bytes]], received_at: datetime
) -> dict[str, object] | None:
    """The record's fields the attributes describe (first value of each type), None if invalid."""
    first: dict[int, bytes] = {}
    for attribute_type, value in attributes:
        first.setdefault(attribute_type, value)
    raw_status = first.get(STATUS)
    if raw_status is None or len(raw_status) != 4:
        return None
    status = ACCOUNTED.get(struct.unpack("!I", raw_status)[0])
    if status is None:
        return None
    numbers: dict[int, int | None] = {}
    for attribute_type in INTEGERS:
        number = first.get(attribute_type)
        if number is not None and len(number) != 4:
            return None
        numbers[attribute_type] = None if number is None else struct.unpack("!I", number)[0]
    session_id = _text(first.get(SESSION_ID)) or ""
    if status in SESSION_STATUSES and not session_id:
        return None

    def octets(low: int, high: int) -> int | None:
        if numbers[low] is None and numbers[high] is None:
            return None
        return (numbers[high] or 0) * 2**32 + (numbers[low] or 0)

    delay = numbers[DELAY] or 0
    timestamp = numbers[EVENT_TIMESTAMP]
    framed = first.get(FRAMED_IP_ADDRESS)
    cause = first.get(TERMINATE_CAUSE)
    if cause is None:
        cause_text = None
    elif len(cause) == 4:
        code = struct.unpack("!I", cause)[0]
        cause_text = CAUSE_NAMES[code - 1] if 1 <= code <= len(CAUSE_NAMES) else str(code)
    else:
        cause_text = str(cause)
    return {
        "nas_id": NAS_ID,
        "nas_ip": NAS_IP,
        "status": status,
        "acct_session_id": session_id,
        "username": _text(first.get(USER_NAME)),
        "event_time": (
            datetime.fromtimestamp(timestamp, UTC)
            if timestamp is not None
            else received_at.astimezone(UTC) - timedelta(seconds=delay)
        ),
        "received_at": received_at.astimezone(UTC),
        "delay_time": delay,
        "session_time": numbers[SESSION_TIME],
        "input_octets": octets(IN_OCTETS, IN_GIGAWORDS),
        "output_octets": octets(OUT_OCTETS, OUT_GIGAWORDS),
        "input_packets": numbers[IN_PACKETS],
        "output_packets": numbers[OUT_PACKETS],
        "framed_ip_address": (
            ".".join(str(octet) for octet in framed)
            if framed is not None and len(framed) == 4
            else _text(framed)
        ),
        "calling_station_id": _text(first.get(CALLING_STATION_ID)),
        "terminate_cause": cause_text,
    }


# --- strategies -------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1).map(lambda n: struct.pack("!I", n))
#: Not 4 octets: garbage, or a small number (a valid status code) in too few or too many octets.
wrong_length = st.one_of(
    st.binary(max_size=3),
    st.binary(min_size=5, max_size=9),
    st.tuples(st.sampled_from([0, 1, 2, 3, 7, 8, 15]), st.sampled_from([1, 2, 3, 5, 8])).map(
        lambda n_size: n_size[0].to_bytes(n_size[1], "big")
    ),
)


def mostly(
    usual: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes], one_in: int = 8
) -> st.SearchStrategy[bytes]:
    """`usual`, and one time in `one_in` `odd`."""
    return st.integers(1, one_in).flatmap(lambda n: odd if n == 1 else usual)


#: Mostly 4 octets (a number), sometimes not.
integer_values = mostly(u32, wrong_length, one_in=20)
texts = st.one_of(
    st.text(max_size=24).map(str.encode),
    st.binary(max_size=24),  # mostly invalid UTF-8
    st.sampled_from([b"", b"\xff", b"caf\xc3", b'"\\\x00\n\x1f', "s\u2028\U0001f600".encode()]),
)
accounted = st.sampled_from([1, 2, 3, 7, 8]).map(lambda n: struct.pack("!I", n))
statuses = st.one_of(
    accounted,
    accounted,
    st.sampled_from([0, 4, 5, 6, 9, 15]).map(lambda n: struct.pack("!I", n)),
    u32,
    wrong_length,
)
causes = st.one_of(st.integers(1, 22).map(lambda n: struct.pack("!I", n)), u32, wrong_length)
addresses = mostly(st.binary(min_size=4, max_size=4), texts, one_in=3)
#: Timestamps around now, so that records of one session share seconds and minutes.
timestamps = mostly(
    st.integers(1_740_000_000, 1_740_100_000).map(lambda n: struct.pack("!I", n)),
    integer_values,
    one_in=3,
)
#: The value strategy of every attribute the record is read from.
FIELDS: dict[int, st.SearchStrategy[bytes]] = {
    STATUS: statuses,
    SESSION_ID: texts,
    USER_NAME: texts,
    CALLING_STATION_ID: texts,
    FRAMED_IP_ADDRESS: addresses,
    TERMINATE_CAUSE: causes,
    EVENT_TIMESTAMP: timestamps,
    **{t: integer_values for t in INTEGERS if t != EVENT_TIMESTAMP},
}


@st.composite
def vendor_specific(draw: st.DrawFn) -> tuple[int, bytes]:
    """Vendor-Specific: sub-attributes (numbered like standard ones too) or garbage."""
    vendor = struct.pack("!I", draw(st.sampled_from(VENDORS) | st.integers(0, 2**32 - 1)))
    subs = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(READ)) | st.integers(0, 255), st.binary(max_size=12)),
            max_size=4,
        )
    )
    tail = draw(st.sampled_from([b"", b"", b"\x01", b"\x05\x09x"]))
    body = vendor + b"".join(attribute(t, v) for t, v in subs) + tail
    return VENDOR_SPECIFIC, body[:253]


unknown_types = st.sampled_from([t for t in range(256) if t not in READ and t != VENDOR_SPECIFIC])
any_attribute = st.one_of(
    *(st.tuples(st.just(t), values) for t, values in FIELDS.items()),
    st.tuples(unknown_types, st.binary(max_size=16)),
    vendor_specific(),
    vendor_specific(),
)


@st.composite
def accounting_requests(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """A request's attributes in packet order: usually an accounted status and a session id,
    each attribute the record reads at one time in two, and any others (repeats included)."""
    attributes: list[tuple[int, bytes]] = []
    if draw(st.integers(0, 9)):
        attributes.append((STATUS, draw(accounted)))
    if draw(st.integers(0, 9)):
        attributes.append((SESSION_ID, draw(st.text(max_size=16)).encode()))
    for attribute_type, values in FIELDS.items():
        if draw(st.booleans()):
            attributes.append((attribute_type, draw(values)))
    attributes += draw(st.lists(any_attribute, max_size=8))
    if draw(st.booleans()):
        attributes = list(draw(st.permutations(attributes)))
    if draw(st.booleans()) and attributes:
        # The same type again later with another value: the first must win.
        repeated, _ = attributes[draw(st.integers(0, len(attributes) - 1))]
        attributes.append((repeated, draw(FIELDS.get(repeated, texts))))
    return attributes


received_times = st.datetimes(
    min_value=datetime(2024, 1, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.just(UTC) | st.sampled_from([timezone(timedelta(hours=2)), UTC]),
)


def decode_live(first: Mapping[int, bytes], received_at: datetime) -> AccountingRecord:
    return decode_accounting_attributes(
        first,
        nas_id=NAS_ID,
        nas_ip=NAS_IP,
        received_at=received_at,
        terminate_causes=TERMINATE_CAUSES,
    )


def decode_reference(packet: RadiusPacket, received_at: datetime) -> AccountingRecord:
    return decode_accounting_request(
        DECODER(packet), nas_id=NAS_ID, nas_ip=NAS_IP, received_at=received_at
    )


def outcome(
    decode: Callable[..., AccountingRecord], *args: object
) -> AccountingRecord | InvalidAccountingRecord:
    try:
        return decode(*args)
    except InvalidAccountingRecord as exc:
        return exc


# --- 1. the two decoders ----------------------------------------------------------------------


@PROPERTY
@given(attributes=accounting_requests(), received_at=received_times)
@example(
    attributes=[(STATUS, b"\x00\x00\x00\x02"), (SESSION_ID, b"s"), (SESSION_ID, b"t")],
    received_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
)
@example(
    attributes=[(STATUS, b"\x00\x00\x00\x01"), (SESSION_ID, b"\xff\xfe-\xc3")],
    received_at=datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC),
)
@example(  # a valid status code in one octet is no status code
    attributes=[(STATUS, b"\x01"), (SESSION_ID, b"s")],
    received_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
)
@example(  # an empty Acct-Session-Id is none
    attributes=[(STATUS, b"\x00\x00\x00\x01"), (SESSION_ID, b"")],
    received_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
)
@example(  # Accounting-Off needs no Acct-Session-Id
    attributes=[(STATUS, b"\x00\x00\x00\x08")], received_at=datetime(2025, 3, 1, tzinfo=UTC)
)
@example(  # a vendor's sub-attribute numbered 1 is not User-Name
    attributes=[
        (STATUS, b"\x00\x00\x00\x03"),
        (SESSION_ID, b"s"),
        (VENDOR_SPECIFIC, struct.pack("!I", 14988) + attribute(USER_NAME, b"vsa")),
        (USER_NAME, b"alice"),
    ],
    received_at=datetime(2025, 3, 1, 12, tzinfo=timezone(timedelta(hours=2))),
)
@example(  # 64-bit counters; an unnamed cause; an address
    attributes=[
        (STATUS, b"\x00\x00\x00\x02"),
        (SESSION_ID, b"s"),
        (IN_OCTETS, struct.pack("!I", 5)),
        (IN_GIGAWORDS, struct.pack("!I", 1)),
        (OUT_OCTETS, struct.pack("!I", 7)),
        (OUT_GIGAWORDS, struct.pack("!I", 2)),
        (TERMINATE_CAUSE, struct.pack("!I", 99)),
        (FRAMED_IP_ADDRESS, b"\x0a\x00\x00\x01"),
        (DELAY, struct.pack("!I", 30)),
    ],
    received_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
)
def test_the_live_decoder_gives_the_records_of_the_dictionary_decoder(
    attributes: list[tuple[int, bytes]], received_at: datetime
) -> None:
    datagram = sign(7, b"".join(attribute(t, v) for t, v in attributes), SECRET, ma=False)
    packet = parse_packet(datagram)
    assert packet.attributes == attributes

    live = outcome(decode_live, packet.first, received_at)
    reference = outcome(decode_reference, packet, received_at)
    expected = expected_fields(attributes, received_at)
    event("accepted" if isinstance(live, AccountingRecord) else type(live).__name__)

    if isinstance(live, InvalidAccountingRecord) or isinstance(reference, InvalidAccountingRecord):
        assert type(live) is type(reference), (live, reference)
        assert expected is None, (live, expected)
        return
    assert live == reference
    assert expected is not None, live
    fields = live._asdict()
    assert fields.pop("record_id") == str(uuid.UUID(live.record_id))
    assert fields == expected
    assert live.event_time.tzinfo is UTC and live.received_at.tzinfo is UTC


def test_the_terminate_causes_the_live_decoder_gets_are_the_dictionary_s() -> None:
    assert {struct.unpack("!I", raw)[0]: name for raw, name in TERMINATE_CAUSES.items()} == {
        code: name for code, name in enumerate(CAUSE_NAMES, start=1)
    }


# --- 2. the event as JSON ---------------------------------------------------------------------

#: Text with what JSON must escape or may pass through: quotes, backslashes, controls, U+2028.
#: Unicode scalar values only: a lone surrogate has no UTF-8 form, so no JSON writer (pydantic's
#: included) can publish it; the decoders never make one from octets (backslashreplace).
awkward_text = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\n", "\u2028", "/", "\U0001f600"]),
    ),
    max_size=20,
)
aware_utc = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.just(UTC),
)
counters = st.none() | st.integers(0, 2**64 - 1) | st.sampled_from([0, 2**32, 2**64 - 1])


@st.composite
def direct_records(draw: st.DrawFn) -> AccountingRecord:
    record_id = draw(
        st.builds(ordered_deterministic_id, st.integers(0, 2**33), st.text()) | st.uuids().map(str)
    )
    return AccountingRecord(
        record_id=record_id,
        nas_id=draw(awkward_text),
        nas_ip=draw(awkward_text),
        status=draw(st.sampled_from(AcctStatus)),
        acct_session_id=draw(awkward_text),
        username=draw(st.none() | awkward_text),
        event_time=draw(aware_utc),
        received_at=draw(aware_utc),
        delay_time=draw(st.integers(0, 2**32 - 1)),
        session_time=draw(st.none() | st.integers(0, 2**32 - 1)),
        input_octets=draw(counters),
        output_octets=draw(counters),
        input_packets=draw(counters),
        output_packets=draw(counters),
        framed_ip_address=draw(st.none() | awkward_text),
        calling_station_id=draw(st.none() | awkward_text),
        terminate_cause=draw(st.none() | awkward_text),
    )


@st.composite
def decoded_records(draw: st.DrawFn) -> AccountingRecord:
    """A record the detail-file path decodes from named attributes."""
    u32s = st.integers(0, 2**32 - 1)
    named: dict[str, list[object]] = {
        "Acct-Status-Type": [draw(st.sampled_from(["Start", "Stop", "Interim-Update", "Alive"]))],
        "Acct-Session-Id": [draw(awkward_text.filter(bool))],
    }
    optional = {
        "User-Name": awkward_text,
        "Calling-Station-Id": awkward_text,
        "Framed-IP-Address": awkward_text,
        "Acct-Terminate-Cause": st.sampled_from(CAUSE_NAMES) | u32s,
        "Event-Timestamp": u32s,
        "Acct-Delay-Time": u32s,
        "Acct-Session-Time": u32s,
        "Acct-Input-Octets": u32s,
        "Acct-Output-Octets": u32s,
        "Acct-Input-Gigawords": u32s,
        "Acct-Output-Gigawords": u32s,
        "Acct-Input-Packets": u32s,
        "Acct-Output-Packets": u32s,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            named[name] = [draw(values)]
    return decode_accounting_request(
        named,  # type: ignore[arg-type]
        nas_id=draw(awkward_text),
        nas_ip=draw(awkward_text),
        received_at=draw(aware_utc),
    )


traceparents = st.none() | st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
traceparents |= awkward_text


@PROPERTY
@given(record=direct_records() | decoded_records(), traceparent=traceparents)
@example(
    record=AccountingRecord(
        record_id=ordered_deterministic_id(1_740_830_400, "k"),
        nas_id='n"\\',
        nas_ip="192.0.2.1",
        status=AcctStatus.STOP,
        acct_session_id="\x00\u2028",
        username=None,
        event_time=datetime(2025, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
        received_at=datetime(2025, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC),
        delay_time=0,
        session_time=None,
        input_octets=2**64 - 1,
        output_octets=0,
        input_packets=None,
        output_packets=None,
        framed_ip_address=None,
        calling_station_id=None,
        terminate_cause="User-Request",
    ),
    traceparent=None,
)
def test_the_message_is_the_json_of_the_event(
    record: AccountingRecord, traceparent: str | None
) -> None:
    expected = record.to_event()
    key, message = accounting_message(record, traceparent)

    assert isinstance(message, EncodedEvent)
    assert key == accounting_key(record.nas_id, record.acct_session_id)
    assert json.loads(message.data_json) == expected.model_dump(mode="json")
    assert AccountingRecordReceived.model_validate_json(message.data_json) == expected
    assert message.id == record.record_id
    assert (message.type, message.version) == ("AccountingRecordReceived", 1)
    assert message.traceparent == traceparent

    metadata = EventMetadata.model_validate_json(message.metadata_json)
    assert metadata.occurred_at == record.event_time
    assert metadata.actor == f"nas:{record.nas_id}"
    assert metadata.traceparent == traceparent
    assert metadata.recorded_at is None
    assert metadata.correlation_id is None and metadata.causation_id is None

    decoded = message.decoded()
    assert isinstance(decoded, NewEvent)
    # What the pydantic path would have published, envelope and all.
    reference = new_event(
        expected,
        id=uuid.UUID(record.record_id),
        occurred_at=record.event_time,
        actor=f"nas:{record.nas_id}",
        traceparent=traceparent,
    )
    assert decoded == reference
    assert json.loads(message.metadata_json) == json.loads(reference.encoded().metadata_json)
