"""Events the usage collector publishes: one per accounting record it acknowledged."""

from __future__ import annotations

import uuid
from enum import StrEnum

from pydantic import AwareDatetime, Field

from ispbill_core.events import DomainEvent, event_type

#: Kafka topic of accounting records; keyed by "<nas_id>/<acct_session_id>" so that one
#: session's records stay in order on one partition.
ACCOUNTING_TOPIC = "ispbill.usage.radius-accounting"


def accounting_stream(nas_id: str) -> str:
    """Embedded runtime: the ledger stream that stands in for the topic, one per NAS."""
    return f"radius-acct-{nas_id}"


def accounting_key(nas_id: str, acct_session_id: str) -> str:
    return f"{nas_id}/{acct_session_id}"


class AcctStatus(StrEnum):
    """Acct-Status-Type (RFC 2866 section 5.1)."""

    START = "start"
    STOP = "stop"
    INTERIM_UPDATE = "interim-update"
    ACCOUNTING_ON = "accounting-on"
    ACCOUNTING_OFF = "accounting-off"


@event_type("AccountingRecordReceived", 1)
class AccountingRecordReceived(DomainEvent):
    """A RADIUS Accounting-Request from a registered NAS, verified and acknowledged.

    Octet counts are the full 64-bit values: Acct-Input-Gigawords * 2**32 + Acct-Input-Octets.
    `record_id` is derived from the record's content, so a retransmission has the same id.
    """

    record_id: uuid.UUID
    nas_id: str
    nas_ip: str
    status: AcctStatus
    acct_session_id: str
    username: str | None = None
    event_time: AwareDatetime
    received_at: AwareDatetime
    delay_time: int = Field(default=0, ge=0)
    session_time: int | None = Field(default=None, ge=0)
    input_octets: int | None = Field(default=None, ge=0)
    output_octets: int | None = Field(default=None, ge=0)
    input_packets: int | None = Field(default=None, ge=0)
    output_packets: int | None = Field(default=None, ge=0)
    framed_ip_address: str | None = None
    calling_station_id: str | None = None
    terminate_cause: str | None = None
