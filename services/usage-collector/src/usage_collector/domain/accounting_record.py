"""Turning the attributes of a verified Accounting-Request into an AccountingRecordReceived.

Pure: the caller supplies the NAS identity and the time the datagram arrived.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import deterministic_id, utc

#: An attribute value as the dictionary decodes it: a named enum value or text (str), a number
#: (int), an address (str) or opaque octets (bytes).
AttributeValue = str | int | bytes
#: Attribute name -> its values in packet order (RADIUS allows repeated attributes).
AccountingAttributes = Mapping[str, Sequence[AttributeValue]]

GIGAWORD = 2**32

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


def accounting_record_id(
    *,
    nas_id: str,
    acct_session_id: str,
    status: AcctStatus,
    session_time: int | None,
    input_octets: int | None,
    output_octets: int | None,
    input_packets: int | None,
    output_packets: int | None,
    event_timestamp: int | None,
    estimated_event_time: datetime,
) -> uuid.UUID:
    """The id of the fact a request reports, the same for every retransmission of it.

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
    """
    when: object = event_timestamp if event_timestamp is not None else ""
    if event_timestamp is None:
        if status in _SESSION_STATUSES:
            started = int(estimated_event_time.timestamp()) - (session_time or 0)
            when = f"start-minute:{started // 60}"
        else:
            when = f"est:{int(estimated_event_time.timestamp())}"
    record_id: uuid.UUID = deterministic_id(
        "radius-accounting",
        nas_id,
        acct_session_id,
        status.value,
        _or_empty(session_time),
        _or_empty(input_octets),
        _or_empty(output_octets),
        _or_empty(input_packets),
        _or_empty(output_packets),
        when,
    )
    return record_id


def decode_accounting_request(
    attributes: AccountingAttributes, *, nas_id: str, nas_ip: str, received_at: datetime
) -> AccountingRecordReceived:
    """The record an Accounting-Request reports, or a named InvalidAccountingRecord."""
    received_at = utc(received_at)
    status = _status(attributes)
    session_id = _text(attributes, "Acct-Session-Id")
    if not session_id:
        if status in _SESSION_STATUSES:
            raise MissingAttribute("Acct-Session-Id", status)
        session_id = ""
    delay = _integer(attributes, "Acct-Delay-Time") or 0
    event_timestamp = _integer(attributes, "Event-Timestamp")
    if event_timestamp is not None:
        event_time = datetime.fromtimestamp(event_timestamp, UTC)
    else:
        event_time = received_at - timedelta(seconds=delay)
    session_time = _integer(attributes, "Acct-Session-Time")
    input_octets = _octets(attributes, "Acct-Input-Octets", "Acct-Input-Gigawords")
    output_octets = _octets(attributes, "Acct-Output-Octets", "Acct-Output-Gigawords")
    input_packets = _integer(attributes, "Acct-Input-Packets")
    output_packets = _integer(attributes, "Acct-Output-Packets")
    terminate_cause = _first(attributes, "Acct-Terminate-Cause")
    return AccountingRecordReceived(
        record_id=accounting_record_id(
            nas_id=nas_id,
            acct_session_id=session_id,
            status=status,
            session_time=session_time,
            input_octets=input_octets,
            output_octets=output_octets,
            input_packets=input_packets,
            output_packets=output_packets,
            event_timestamp=event_timestamp,
            estimated_event_time=event_time,
        ),
        nas_id=nas_id,
        nas_ip=nas_ip,
        status=status,
        acct_session_id=session_id,
        username=_text(attributes, "User-Name"),
        event_time=event_time,
        received_at=received_at,
        delay_time=delay,
        session_time=session_time,
        input_octets=input_octets,
        output_octets=output_octets,
        input_packets=input_packets,
        output_packets=output_packets,
        framed_ip_address=_text(attributes, "Framed-IP-Address"),
        calling_station_id=_text(attributes, "Calling-Station-Id"),
        terminate_cause=None if terminate_cause is None else str(terminate_cause),
    )


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
