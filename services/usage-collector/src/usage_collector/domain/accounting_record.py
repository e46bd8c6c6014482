"""Turning the attributes of a verified Accounting-Request into an AccountingRecord.

Pure: the caller supplies the NAS identity and the time the datagram arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from socket import inet_ntoa
from typing import NamedTuple

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import ordered_deterministic_id, utc

#: An attribute value as the dictionary decodes it: a named enum value or text (str), a number
#: (int), an address (str) or opaque octets (bytes).
AttributeValue = str | int | bytes
#: Attribute name -> its values in packet order (RADIUS allows repeated attributes).
AccountingAttributes = Mapping[str, Sequence[AttributeValue]]

GIGAWORD = 2**32

#: Attribute numbers the live decoder reads (RFC 2865, 2866, 2869).
USER_NAME = 1
FRAMED_IP_ADDRESS = 8
CALLING_STATION_ID = 31
ACCT_STATUS_TYPE = 40
ACCT_DELAY_TIME = 41
ACCT_INPUT_OCTETS = 42
ACCT_OUTPUT_OCTETS = 43
ACCT_SESSION_ID = 44
ACCT_SESSION_TIME = 46
ACCT_INPUT_PACKETS = 47
ACCT_OUTPUT_PACKETS = 48
ACCT_TERMINATE_CAUSE = 49
ACCT_INPUT_GIGAWORDS = 52
ACCT_OUTPUT_GIGAWORDS = 53
EVENT_TIMESTAMP = 55
#: The integer attributes the live decoder reads, in the order it unpacks them, and their names.
_RAW_INTEGERS = {
    ACCT_DELAY_TIME: "Acct-Delay-Time",
    EVENT_TIMESTAMP: "Event-Timestamp",
    ACCT_SESSION_TIME: "Acct-Session-Time",
    ACCT_INPUT_OCTETS: "Acct-Input-Octets",
    ACCT_OUTPUT_OCTETS: "Acct-Output-Octets",
    ACCT_INPUT_PACKETS: "Acct-Input-Packets",
    ACCT_OUTPUT_PACKETS: "Acct-Output-Packets",
    ACCT_INPUT_GIGAWORDS: "Acct-Input-Gigawords",
    ACCT_OUTPUT_GIGAWORDS: "Acct-Output-Gigawords",
}

_STATUS_BY_NAME = {
    "Start": AcctStatus.START,
    "Stop": AcctStatus.STOP,
    "Interim-Update": AcctStatus.INTERIM_UPDATE,
    "Alive": AcctStatus.INTERIM_UPDATE,
    "Accounting-On": AcctStatus.ACCOUNTING_ON,
    "Accounting-Off": AcctStatus.ACCOUNTING_OFF,
}
_STATUS_BY_CODE = {1: AcctStatus.START, 2: AcctStatus.STOP, 3: AcctStatus.INTERIM_UPDATE}
_STATUS_BY_CODE |= {7: AcctStatus.ACCOUNTING_ON, 8: AcctStatus.ACCOUNTING_OFF}
_SESSION_STATUSES = frozenset({AcctStatus.START, AcctStatus.STOP, AcctStatus.INTERIM_UPDATE})


class InvalidAccountingRecord(ValueError):
    """The request is authentic but does not describe a record we can keep; it is dropped."""


class MissingAttribute(InvalidAccountingRecord):
    def __init__(self, attribute: str, status: AcctStatus | None = None) -> None:
        self.attribute = attribute
        self.status = status
        suffix = f" in an Accounting-Request of status {status}" if status else ""
        super().__init__(f"{attribute} is required{suffix}")


class UnsupportedStatusType(InvalidAccountingRecord):
    """Acct-Status-Type values other than Start, Stop, Interim-Update, Accounting-On/Off."""

    def __init__(self, value: AttributeValue) -> None:
        self.value = value
        super().__init__(f"Acct-Status-Type {value!r} is not accounted")


class InvalidAttributeValue(InvalidAccountingRecord):
    def __init__(self, attribute: str, value: object) -> None:
        self.attribute = attribute
        super().__init__(f"{attribute} has an unusable value {value!r}")


class AccountingRecord(NamedTuple):
    """What one verified Accounting-Request reports: the collector's own value.

    The same fields as the AccountingRecordReceived event it is published as (`to_event`), but
    a NamedTuple: one is built per request on the receive path, where validating a pydantic
    model cost more than the rest of screening. The decoders below guarantee what the model
    would check (counters non-negative, times aware and in UTC).
    """

    #: Canonical UUID text (see accounting_record_id).
    record_id: str
    nas_id: str
    nas_ip: str
    status: AcctStatus
    acct_session_id: str
    username: str | None
    event_time: datetime
    received_at: datetime
    delay_time: int
    session_time: int | None
    input_octets: int | None
    output_octets: int | None
    input_packets: int | None
    output_packets: int | None
    framed_ip_address: str | None
    calling_station_id: str | None
    terminate_cause: str | None

    def to_event(self) -> AccountingRecordReceived:
        """The record as the event the collector publishes (validated)."""
        return AccountingRecordReceived.model_validate(self._asdict())


def accounting_record_id(
    nas_id: str,
    session_id: str,
    status: AcctStatus,
    session_time: int | None,
    input_octets: int | None,
    output_octets: int | None,
    input_packets: int | None,
    output_packets: int | None,
    event_timestamp: int | None,
    event_time: datetime,
) -> str:
    """The id of the fact a request reports, the same for every retransmission of it.

    `event_time` is the record's event time: Event-Timestamp, else the estimate (arrival minus
    Acct-Delay-Time).

    Acct-Delay-Time and the RADIUS Identifier change between retransmissions (RFC 2866
    section 5.2), so they are left out. When the NAS sends no Event-Timestamp:

    - two different Accounting-On/Off records would share every other field, so the estimated
      event time (whole seconds) stands in; retransmissions of such a record may then differ by
      a second, and downstream tolerates a repeated Accounting-On/Off (closing already closed
      sessions is a no-op);
    - a NAS that reboots restarts its Acct-Session-Id counter, so the Start (zero counters) of
      a session that reuses an id would share every field with the Start before the reboot and
      be taken for its retransmission. The minute in which the session started (estimated event
      time minus Acct-Session-Time) tells them apart. A retransmission whose estimate straddles a
      minute boundary gets a second id; that costs nothing, because counters are cumulative and
      rating counts a repeated reading of a session's counters as zero usage.

    The id is time-ordered (`ordered_deterministic_id`, docs/adr/0011-collector-hot-path.md):
    records arrive roughly in event-time order, so their ids go to the end of the ledger's
    unique index instead of all over it. The time is the record's own: Event-Timestamp, else
    the start minute plus Acct-Session-Time (derived from the fields the id already depends
    on, so no retransmission gets a second id for it), else the estimated second.
    """
    when: object
    if event_timestamp is not None:
        when = ordering = event_timestamp
    elif status in _SESSION_STATUSES:
        elapsed = session_time or 0
        started_minute = (int(event_time.timestamp()) - elapsed) // 60
        when = f"start-minute:{started_minute}"
        ordering = started_minute * 60 + elapsed
    else:
        ordering = int(event_time.timestamp())
        when = f"est:{ordering}"
    # The parts of the key, joined here in one go (what ordered_deterministic_id would do).
    key = (
        f"radius-accounting\x1f{nas_id}\x1f{session_id}\x1f{status.value}"
        f"\x1f{'' if session_time is None else session_time}"
        f"\x1f{'' if input_octets is None else input_octets}"
        f"\x1f{'' if output_octets is None else output_octets}"
        f"\x1f{'' if input_packets is None else input_packets}"
        f"\x1f{'' if output_packets is None else output_packets}\x1f{when}"
    )
    return ordered_deterministic_id(ordering, key)


def decode_accounting_request(
    attributes: AccountingAttributes, *, nas_id: str, nas_ip: str, received_at: datetime
) -> AccountingRecord:
    """The record that named, dictionary-typed attributes report (FreeRADIUS detail files),
    or a named InvalidAccountingRecord."""
    terminate_cause = _first(attributes, "Acct-Terminate-Cause")
    return _record(
        nas_id,
        nas_ip,
        utc(received_at),
        _status(attributes),
        _text(attributes, "Acct-Session-Id"),
        _integer(attributes, "Acct-Delay-Time"),
        _integer(attributes, "Event-Timestamp"),
        _integer(attributes, "Acct-Session-Time"),
        _octets(attributes, "Acct-Input-Octets", "Acct-Input-Gigawords"),
        _octets(attributes, "Acct-Output-Octets", "Acct-Output-Gigawords"),
        _integer(attributes, "Acct-Input-Packets"),
        _integer(attributes, "Acct-Output-Packets"),
        _text(attributes, "User-Name"),
        _text(attributes, "Framed-IP-Address"),
        _text(attributes, "Calling-Station-Id"),
        None if terminate_cause is None else str(terminate_cause),
    )


def decode_accounting_attributes(
    first: Mapping[int, bytes],
    *,
    nas_id: str,
    nas_ip: str,
    received_at: datetime,
    terminate_causes: Mapping[bytes, str],
) -> AccountingRecord:
    """The record that raw attributes (type -> first value, as on the wire) report.

    The live path: the same record as decode_accounting_request gives for those attributes
    typed by the shipped dictionary (a property test holds the two equal), read straight from
    the octets by attribute number. `terminate_causes` names Acct-Terminate-Cause values as
    the dictionary does. `received_at` must be in UTC.
    """
    status_value = first.get(ACCT_STATUS_TYPE)
    if status_value is None:
        raise MissingAttribute("Acct-Status-Type")
    status = _STATUS_BY_CODE.get(int.from_bytes(status_value)) if len(status_value) == 4 else None
    if status is None:
        code: AttributeValue = (
            int.from_bytes(status_value) if len(status_value) == 4 else status_value
        )
        raise UnsupportedStatusType(code)
    get = first.get
    integers: list[int | None] = []
    for attribute_type in _RAW_INTEGERS:
        value = get(attribute_type)
        if value is None:
            integers.append(None)
        elif len(value) == 4:
            integers.append(int.from_bytes(value))
        else:  # the dictionary keeps such a value as octets; there is no number to count
            raise InvalidAttributeValue(_RAW_INTEGERS[attribute_type], value)
    delay, event_timestamp, session_time, input_octets, output_octets = integers[:5]
    input_packets, output_packets, input_gigawords, output_gigawords = integers[5:]
    if input_gigawords is not None:
        input_octets = input_gigawords * GIGAWORD + (input_octets or 0)
    if output_gigawords is not None:
        output_octets = output_gigawords * GIGAWORD + (output_octets or 0)
    session_id = get(ACCT_SESSION_ID)
    username = get(USER_NAME)
    framed = get(FRAMED_IP_ADDRESS)
    calling = get(CALLING_STATION_ID)
    cause = get(ACCT_TERMINATE_CAUSE)
    return _record(
        nas_id,
        nas_ip,
        received_at if received_at.tzinfo is UTC else utc(received_at),
        status,
        None if session_id is None else session_id.decode("utf-8", "backslashreplace"),
        delay,
        event_timestamp,
        session_time,
        input_octets,
        output_octets,
        input_packets,
        output_packets,
        None if username is None else username.decode("utf-8", "backslashreplace"),
        None if framed is None else _raw_address(framed),
        None if calling is None else calling.decode("utf-8", "backslashreplace"),
        None if cause is None else _raw_named(cause, terminate_causes),
    )


def _record(
    nas_id: str,
    nas_ip: str,
    received_at: datetime,
    status: AcctStatus,
    session_id: str | None,
    delay: int | None,
    event_timestamp: int | None,
    session_time: int | None,
    input_octets: int | None,
    output_octets: int | None,
    input_packets: int | None,
    output_packets: int | None,
    username: str | None,
    framed_ip_address: str | None,
    calling_station_id: str | None,
    terminate_cause: str | None,
) -> AccountingRecord:
    """Both decoders end here: the rules of a record, whatever its attributes were read from."""
    if not session_id:
        if status in _SESSION_STATUSES:
            raise MissingAttribute("Acct-Session-Id", status)
        session_id = ""
    delay = delay or 0
    if event_timestamp is not None:
        event_time = _from_timestamp(event_timestamp)
    else:
        event_time = received_at - timedelta(seconds=delay) if delay else received_at
    return AccountingRecord(
        accounting_record_id(
            nas_id,
            session_id,
            status,
            session_time,
            input_octets,
            output_octets,
            input_packets,
            output_packets,
            event_timestamp,
            event_time,
        ),
        nas_id,
        nas_ip,
        status,
        session_id,
        username,
        event_time,
        received_at,
        delay,
        session_time,
        input_octets,
        output_octets,
        input_packets,
        output_packets,
        framed_ip_address,
        calling_station_id,
        terminate_cause,
    )


@lru_cache(maxsize=4096)
def _from_timestamp(seconds: int) -> datetime:
    """Event-Timestamp as a datetime; many records of one moment share it."""
    return datetime.fromtimestamp(seconds, UTC)


def _raw_address(value: bytes) -> str:
    if len(value) == 4:
        return inet_ntoa(value)  # a pure conversion of 4 octets to dotted text
    return value.decode("utf-8", "backslashreplace")


def _raw_named(value: bytes, names: Mapping[bytes, str]) -> str:
    name = names.get(value)
    if name is not None:
        return name
    return str(int.from_bytes(value)) if len(value) == 4 else str(value)


def _status(attributes: AccountingAttributes) -> AcctStatus:
    value = _first(attributes, "Acct-Status-Type")
    if value is None:
        raise MissingAttribute("Acct-Status-Type")
    status = _STATUS_BY_NAME.get(value) if isinstance(value, str) else None
    if status is None and isinstance(value, int):
        status = _STATUS_BY_CODE.get(value)
    if status is None:
        raise UnsupportedStatusType(value)
    return status


def _first(attributes: AccountingAttributes, name: str) -> AttributeValue | None:
    values = attributes.get(name)
    return values[0] if values else None


def _integer(attributes: AccountingAttributes, name: str) -> int | None:
    value = _first(attributes, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidAttributeValue(name, value)
    return value


def _text(attributes: AccountingAttributes, name: str) -> str | None:
    value = _first(attributes, name)
    if value is None:
        return None
    if isinstance(value, bytes):
        # Not valid UTF-8: keep it readable and stable rather than dropping the record.
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)


def _octets(attributes: AccountingAttributes, octets: str, gigawords: str) -> int | None:
    """The 64-bit counter: Gigawords counts how often the 32-bit Octets wrapped (RFC 2869 5.1)."""
    low = _integer(attributes, octets)
    high = _integer(attributes, gigawords)
    if low is None and high is None:
        return None
    return (high or 0) * GIGAWORD + (low or 0)


def _or_empty(value: int | None) -> object:
    return "" if value is None else value
