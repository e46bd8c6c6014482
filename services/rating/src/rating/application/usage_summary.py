"""Read side of rating: a customer's rated usage in a billing period."""

from __future__ import annotations

from pydantic import BaseModel

from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.eventstore import EventStore


class UsageSummary(BaseModel):
    customer_id: str
    period: str
    input_octets: int
    output_octets: int
    total_octets: int
    records: int


async def usage_summary(store: EventStore, customer_id: str, period: str) -> UsageSummary:
    i = o = n = 0
    for recorded in await store.read_stream(usage_stream(customer_id, period)):
        usage = recorded.decode()
        assert isinstance(usage, UsageRated)
        i += usage.input_octets
        o += usage.output_octets
        n += 1
    return UsageSummary(
        customer_id=customer_id,
        period=period,
        input_octets=i,
        output_octets=o,
        total_octets=i + o,
        records=n,
    )
