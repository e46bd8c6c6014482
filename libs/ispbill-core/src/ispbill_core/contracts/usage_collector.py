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


#: Kafka topic of router byte counters (SNMP interfaces, RouterOS interfaces and simple
#: queues); keyed by "<router_id>/<interface_key>" so that one counter's samples stay in order.
ROUTER_COUNTERS_TOPIC = "ispbill.usage.router-counters"


def router_counters_stream(router_id: str) -> str:
    """Embedded runtime: the ledger stream that stands in for the topic, one per router."""
    return f"router-counters-{router_id}"


class CounterSource(StrEnum):
    """Where a router's byte counters were read."""

    SNMP_INTERFACE = "snmp-interface"
    ROUTEROS_INTERFACE = "routeros-interface"
    ROUTEROS_SIMPLE_QUEUE = "routeros-simple-queue"


@event_type("RouterCountersSampled", 1)
class RouterCountersSampled(DomainEvent):
    """One reading of a router's cumulative byte counters for an interface or a simple queue.

    `source` says what was read: an interface over SNMP (IF-MIB: ifHCInOctets/ifHCOutOctets
    when `counter_bits` is 64, ifInOctets/ifOutOctets when it is 32), an interface over the
    MikroTik RouterOS API (rx-byte/tx-byte), or a RouterOS simple queue (bytes upload/download).
    `octets_in` is what the router received from that side (an interface's rx, a queue's
    upload: the subscriber's upload when the interface faces the subscriber), `octets_out`
    what it sent there (the subscriber's download).
    `delta_in`/`delta_out` are the bytes since the previous sample of the same counter,
    wraps and resets (agent restart, a PPPoE session reconnecting) accounted for
    (`counter_reset`). A poller's first sample of a counter has delta 0; a RouterOS counter
    that appears later (a new PPPoE session) counted from zero, so its value is its delta.
    `interface_key` is the ifName (the ifIndex when the agent has no ifName), the RouterOS
    interface name, or "queue:<name>" for a simple queue.
    `username` is the RADIUS username the counters belong to, when known (a PPPoE interface's
    name, a simple queue's mapping); `subscriber_hint` is a label from the poller's
    configuration (SNMP interface mappings).
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
    source: CounterSource = CounterSource.SNMP_INTERFACE
    username: str | None = None
    #: when the sample the delta is measured from was taken (a counter that appeared since
    #: the previous poll: that poll's time); None for a first sample, and in samples of
    #: collectors older than this field. Rating spreads the delta over this span.
    previous_sampled_at: AwareDatetime | None = None
