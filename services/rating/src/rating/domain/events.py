"""Events rating keeps to itself: the session index, each session's counter history, usage
kept unmatched, and usage measured by the source that does not bill it."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, Field

from ispbill_core.events import DomainEvent, event_type


@event_type("RadiusSessionOpened", 1)
class RadiusSessionOpened(DomainEvent):
    """Written to the index stream of (NAS, Acct-Session-Id): which session the id names now."""

    session_key: str
    nas_id: str
    acct_session_id: str
    started_at: AwareDatetime


@event_type("SessionCountersRecorded", 1)
class SessionCountersRecorded(DomainEvent):
    """One accounting record applied to its session: cumulative counters and the delta.

    `framed_ip_address` and `terminate_cause` are the record's own (Framed-IP-Address,
    Acct-Terminate-Cause), kept for the session log; added later with defaults, so entries
    recorded before them have neither, and an entry that closes a session because its NAS
    rebooted has no terminate cause (its `status` says why)."""

    session_key: str
    record_id: uuid.UUID
    status: str
    username: str | None
    customer_id: str | None
    subscription_id: str | None
    event_time: AwareDatetime
    input_octets: int = Field(ge=0)
    output_octets: int = Field(ge=0)
    input_delta: int = Field(ge=0)
    output_delta: int = Field(ge=0)
    closed: bool = False
    framed_ip_address: str | None = None
    terminate_cause: str | None = None


@event_type("RadiusNasRebooted", 1)
class RadiusNasRebooted(DomainEvent):
    """Written to a NAS's session list after an Accounting-On/Off closed its open sessions.

    Sessions listed before this marker that started before `event_time` are closed, so the next
    reboot only looks at sessions listed after it.
    """

    nas_id: str
    record_id: uuid.UUID
    status: str
    event_time: AwareDatetime
    sessions_closed: int = Field(ge=0)


@event_type("UsageUnmatched", 1)
class UsageUnmatched(DomainEvent):
    """Usage of a RADIUS username that no subscription had when it was rated. Kept in the
    username's own stream: rated once a subscription starts with that username (the usage from
    its start date on), and listed for the billing clerk until then."""

    username: str
    nas_id: str
    session_key: str
    record_id: uuid.UUID
    input_octets: int = Field(ge=0)
    output_octets: int = Field(ge=0)
    occurred_at: AwareDatetime
    #: the start of the time the usage covers (the session's previous record), when known
    started_at: AwareDatetime | None = None
    #: what measured it: RADIUS accounting, or a router's counters (`nas_id` is then the
    #: router's id, `session_key` "router:<router_id>/<interface_key>")
    source: Literal["radius", "router"] = "radius"


@event_type("UsageMeasured", 1)
class UsageMeasured(DomainEvent):
    """Usage of a subscription measured by the source that does NOT bill it (its
    `usage_source` names the other one): kept beside the billed usage, never invoiced, so that
    the two sources can be compared (the discrepancy report). One per bucket, as UsageRated:
    the same fields, split the same way, in `measured-usage-<customer_id>-<period>`."""

    customer_id: str
    subscription_id: str
    period: str
    session_key: str
    record_id: uuid.UUID
    input_octets: int = Field(ge=0)
    output_octets: int = Field(ge=0)
    occurred_at: AwareDatetime
    started_at: AwareDatetime | None = None
    source: Literal["radius", "router"]
    #: the source that bills the subscription
    billed_by: Literal["radius", "router"]
