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


#: Kafka topic of router interface byte counters read over SNMP; keyed by
#: "<router_id>/<interface_key>" so that one interface's samples stay in order.
ROUTER_COUNTERS_TOPIC = "ispbill.usage.router-counters"


@event_type("RouterCountersSampled", 1)
class RouterCountersSampled(DomainEvent):
    """One SNMP reading of a router interface's byte counters (IF-MIB).

    `octets_in`/`octets_out` are the cumulative counter values as read (ifHCInOctets/
    ifHCOutOctets when `counter_bits` is 64, ifInOctets/ifOutOctets when it is 32).
    `delta_in`/`delta_out` are the bytes since the previous sample of the same interface,
    wraps and agent restarts accounted for (`counter_reset`); 0 for the first sample.
    `interface_key` is the ifName, or the ifIndex when the agent has no ifName.
    """

    router_id: str
    interface_key: str
    subscriber_hint: str | None = None
    octets_in: int = Field(ge=0)
    octets_out: int = Field(ge=0)
    delta_in: int = Field(ge=0)
    delta_out: int = Field(ge=0)
    sampled_at: AwareDatetime
    counter_bits: int = Field(default=64, ge=1, le=64)
    counter_reset: bool = False
