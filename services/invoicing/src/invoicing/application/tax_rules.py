"""Use cases: set and end the tax rules of a region level, grant and revoke a customer's tax
exemption, and tell which rules a region pays on a day (ADR 0029).

Each write is idempotent: recording what the stream already says is a no-op that returns it,
so a retried request records nothing twice, while setting A, then B, then A again records all
three. Dates: a rule or an end takes effect on a day in the ISP's time zone, not before the
current month (invoices already issued never change), except while no invoice has been issued
at all: an ISP setting up enters the rules it had before it started using ispbill.
"""

from __future__ import annotations

from datetime import date
from typing import TypeVar
from zoneinfo import ZoneInfo

from invoicing.domain.errors import InvalidTaxRule, InvoicingNotFound
from invoicing.domain.tax import (
    LEGACY_TAX_CODE,
    AnyExemptionEvent,
    AnyRuleEvent,
    TaxRule,
    exemptions_in_force,
    rules_in_force,
)
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import customer_stream
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    tax_exemption_stream,
    tax_region_levels,
    tax_region_stream,
)
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion

E = TypeVar("E", bound=DomainEvent)

_ATTEMPTS = 5


async def set_tax_rule(
    store: EventStore, clock: Clock, timezone: ZoneInfo, rule: TaxRuleSet, actor: str
) -> TaxRuleSet:
    """Record `rule` on its level (see the module for dates and retries)."""
    return await _record(
        store,
        clock,
        timezone,
        tax_region_stream(rule.region),
        rule,
        actor,
        dated=rule.effective_from,
    )


async def end_tax_rule(
    store: EventStore, clock: Clock, timezone: ZoneInfo, end: TaxRuleEnded, actor: str
) -> TaxRuleEnded:
    """From `end.effective_from` the level's rule for the code no longer applies; refused when
    the level never had a rule for the code."""
    history = await _events(store, tax_region_stream(end.region))
    if not any(
        (isinstance(e, TaxRuleSet) and e.tax_code == end.tax_code)
        # a rate set with /tax-rates is the code "rate": ended like any rule, which is how a
        # level moves from the simple form to dated rules without paying both
        or (isinstance(e, TaxRateSet) and end.tax_code == LEGACY_TAX_CODE)
        for e in history
    ):
        raise InvoicingNotFound(
            f"region {end.region!r} has no rule for tax code {end.tax_code!r} to end"
        )
    return await _record(
        store,
        clock,
        timezone,
        tax_region_stream(end.region),
        end,
        actor,
        dated=end.effective_from,
    )


async def grant_tax_exemption(
    store: EventStore, clock: Clock, grant: TaxExemptionGranted, actor: str
) -> TaxExemptionGranted:
    """Record a customer's exemption (a grant with the same certificate replaces it)."""
    if await store.stream_version(customer_stream(grant.customer_id)) is None:
        raise InvoicingNotFound(f"customer {grant.customer_id!r} does not exist")
    if grant.valid_until is not None and grant.valid_until < grant.valid_from:
        raise InvalidTaxRule(
            f"valid_until {grant.valid_until} is before valid_from {grant.valid_from}"
        )
    return await _record(
        store,
        clock,
        None,
        tax_exemption_stream(grant.customer_id),
        grant,
        actor,
    )


async def revoke_tax_exemption(
    store: EventStore, clock: Clock, revoke: TaxExemptionRevoked, actor: str
) -> TaxExemptionRevoked:
    history = await _events(store, tax_exemption_stream(revoke.customer_id))
    if not any(
        isinstance(e, TaxExemptionGranted) and e.certificate == revoke.certificate for e in history
    ):
        raise InvoicingNotFound(
            f"customer {revoke.customer_id!r} has no exemption with certificate"
            f" {revoke.certificate!r}"
        )
    return await _record(
        store,
        clock,
        None,
        tax_exemption_stream(revoke.customer_id),
        revoke,
        actor,
    )


async def tax_rules_on(store: EventStore, region: str, on: date) -> list[TaxRule]:
    """The rules a customer of `region` pays on `on` (NoTaxRuleInForce when none)."""
    history: dict[str, list[AnyRuleEvent]] = {}
    for level in tax_region_levels(region):
        history[level] = [
            e
            for e in await _events(store, tax_region_stream(level))
            if isinstance(e, TaxRuleSet | TaxRuleEnded | TaxRateSet)
        ]
    return rules_in_force(history, region, on)


async def tax_exemptions_on(store: EventStore, customer_id: str, on: date) -> list[DomainEvent]:
    """The customer's grants whose exemption is in force on `on`."""
    events: list[AnyExemptionEvent] = [
        e
        for e in await _events(store, tax_exemption_stream(customer_id))
        if isinstance(e, TaxExemptionGranted | TaxExemptionRevoked)
    ]
    certificates = {e.certificate for e in exemptions_in_force(events, on)}
    latest: dict[str, TaxExemptionGranted] = {}
    for event in events:
        if isinstance(event, TaxExemptionGranted):
            latest[event.certificate] = event
    return [latest[c] for c in sorted(certificates)]


async def _any_invoice(store: EventStore) -> bool:
    """Whether any invoice has been issued (an indexed read by type, one row)."""
    return bool(await store.read_all(after=0, limit=1, types={InvoiceIssued.event_type}))


async def _events(store: EventStore, stream: str) -> list[DomainEvent]:
    return [r.decode() for r in await store.read_stream(stream)]


async def _record(
    store: EventStore,
    clock: Clock,
    timezone: ZoneInfo | None,
    stream: str,
    event: E,
    actor: str,
    *,
    dated: date | None = None,
) -> E:
    """Append `event` at the version read, unless the stream's latest event of its kind and
    key says the same already (a retry). Dated events: not before the current month, except
    the stream's first."""
    for _ in range(_ATTEMPTS):
        recorded = await store.read_stream(stream)
        decoded = [r.decode() for r in recorded]
        latest = _latest_same_key(decoded, event)
        if latest == event:
            return event
        if dated is not None and timezone is not None:
            this_month = clock.now().astimezone(timezone).date().replace(day=1)
            if dated < this_month and await _any_invoice(store):
                raise InvalidTaxRule(
                    f"effective_from {dated} is before this month ({this_month}): invoices"
                    " already issued never change; rules may be dated earlier only while no"
                    " invoice has been issued"
                )
        version = recorded[-1].stream_position if recorded else None
        try:
            await store.append(
                stream,
                [
                    new_event(
                        event,
                        id=deterministic_id("tax", stream, version, event.model_dump_json()),
                        occurred_at=clock.now(),
                        actor=actor,
                    )
                ],
                NO_STREAM if version is None else version,
            )
        except WrongExpectedVersion:
            continue  # another clerk wrote to the stream: look again
        return event
    raise InvalidTaxRule(f"{stream} kept changing while this was recorded; try again")


def _latest_same_key(history: list[DomainEvent], event: DomainEvent) -> DomainEvent | None:
    """The stream's latest event about the same thing as `event`: a rule's (code, date), an
    exemption's certificate."""
    for earlier in reversed(history):
        if _key(earlier) == _key(event):
            return earlier
    return None


def _key(event: DomainEvent) -> tuple[str, ...] | None:
    if isinstance(event, TaxRuleSet | TaxRuleEnded):
        return ("rule", event.tax_code, event.effective_from.isoformat())
    if isinstance(event, TaxExemptionGranted | TaxExemptionRevoked):
        return ("exemption", event.certificate)
    return None
