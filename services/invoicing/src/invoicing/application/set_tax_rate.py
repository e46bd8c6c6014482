"""Use case: set the tax rate of a region (the latest one set applies to later bill runs)."""

from __future__ import annotations

from decimal import Decimal

from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import TaxRateSet, tax_region_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY, EventStore


async def set_tax_rate(
    store: EventStore, clock: Clock, region: str, tax_name: str, rate: Decimal, actor: str
) -> TaxRateSet:
    event = TaxRateSet(region=region, tax_name=tax_name, rate=rate)
    stream = tax_region_stream(region)
    version = await store.stream_version(stream)
    await store.append(
        stream,
        [
            new_event(
                event,
                id=deterministic_id("tax-rate", region, version, event.model_dump_json()),
                occurred_at=clock.now(),
                actor=actor,
            )
        ],
        ANY,
    )
    return event
