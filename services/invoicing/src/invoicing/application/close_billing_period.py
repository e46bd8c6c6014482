"""Use case: the bill run. Close a billing period for every subscription active in it."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry import trace

from invoicing.application.settings import BillingSettings
from invoicing.domain.errors import InvoicingError
from invoicing.domain.generator import (
    InvoiceDraft,
    UsageTotals,
    draft_subscription_invoice,
    late_usage_line,
    taxed_draft,
)
from invoicing.domain.service_days import (
    ServiceHistory,
    UnknownPlan,
    charged_segments,
    last_plan_in,
)
from invoicing.domain.tax import (
    AnyExemptionEvent,
    AnyRuleEvent,
    exemptions_in_force,
    rules_in_force,
)
from ispbill_core.access import system_actor
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import (
    CustomerDetailsChanged,
    CustomerRecord,
    CustomerRegistered,
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    SubscriptionStarted,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    InvoiceLine,
    InvoiceNumberAssigned,
    InvoiceVoided,
    LateUsage,
    LateUsageBilled,
    LateUsageReleased,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    invoice_series_stream,
    invoice_stream,
    usage_billed_through,
)
from ispbill_core.contracts.rating import UsageRated, usage_stream
from ispbill_core.events import NewEvent, RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import (
    ANY,
    NO_STREAM,
    EventIdConflict,
    EventStore,
    EventStoreError,
    ExpectedVersion,
    WrongExpectedVersion,
)
from ispbill_core.eventstore.queries import all_events_of, recorded_of_types
from ispbill_core.money import Money
from ispbill_core.periods import BillingPeriod
from ispbill_core.telemetry import links_from_traceparents, trace_id_of
from ispbill_core.time_bands import STANDARD, counted_octets

#: The actor of a bill run no one asked for (a scheduled one, later); a clerk's carries theirs.
SCHEDULED_ACTOR = system_actor("invoicing.bill-run")
log = logging.getLogger(__name__)
tracer = trace.get_tracer("ispbill.invoicing")


def invoice_id_for(customer_id: str, period: str) -> uuid.UUID:
    return deterministic_id("invoice", customer_id, period)


@dataclass(frozen=True)
class InvoicePreview:
    """What a dry run would issue to a customer (no number is taken, nothing is written)."""

    customer_id: str
    currency: str
    subtotal: str
    tax_total: str
    total: str
    lines: int


@dataclass
class BillRunReport:
    """Numbers issued by this run, issued before (by an earlier or a concurrent run), and the
    customers not invoiced: `skipped` by a billing rule (no tax rule in force, an unknown
    plan...) and `failed` on an unexpected error (logged with its traceback); each with the
    reason. A dry run fills `previews` instead of issuing."""

    period: str
    issued: list[str] = field(default_factory=list)
    already_issued: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    previews: list[InvoicePreview] = field(default_factory=list)


@dataclass
class BillRunCatalogue:
    #: the registered customers' details as recorded (CustomerRecord: the e-mail's form was
    #: checked when it was recorded; checking 100,000 again cost a bill run 9 s)
    customers: dict[str, CustomerRecord]
    #: each region level's tax rule events in ledger order (invoicing.domain.tax)
    tax_rules: dict[str, list[AnyRuleEvent]]
    subscriptions: dict[str, list[SubscriptionStarted]]
    #: each customer's tax exemption events in ledger order
    exemptions: dict[str, list[AnyExemptionEvent]] = field(default_factory=dict)
    #: every version of each plan, read from the plan's stream when a subscription needs it
    plan_versions: dict[str, list[PlanTerms]] = field(default_factory=dict)
    #: `plan_versions` holds every plan already, as of a point of the log (the auditor's
    #: replay): a plan not in it has no version then, and the store is not read
    plans_complete: bool = False
    #: (customer, period) of every invoice not void -> the last position of its usage
    #: stream billed (its `usage_through`, then each LateUsageBilled's; -1: none), as the
    #: projection has folded them: a filter for late usage, confirmed by reading the invoice's
    #: stream. None: not known, every candidate period's invoice stream is read (ADR 0032).
    usage_billed: dict[tuple[str, str], int] | None = None

    async def versions_of(self, store: EventStore, plan_id: str) -> list[PlanTerms]:
        if self.plans_complete:
            return self.plan_versions.get(plan_id, [])
        if plan_id not in self.plan_versions:
            versions: list[PlanTerms] = []
            for recorded in await store.read_stream(plan_stream(plan_id)):
                event = recorded.decode()
                assert isinstance(event, PlanDefined | PlanVersionPublished)
                versions.append(event)
            self.plan_versions[plan_id] = versions
        return self.plan_versions[plan_id]


async def scanned_catalogue(store: EventStore) -> BillRunCatalogue:
    """The catalogue read from the log itself: for tests and tools that run without read
    models. The running system reads the billing catalogue projection instead
    (invoicing.application.read_models.ProjectedCatalogue)."""
    subscriptions: dict[str, list[SubscriptionStarted]] = defaultdict(list)
    for sub in await all_events_of(store, SubscriptionStarted):
        subscriptions[sub.customer_id].append(sub)
    rules: dict[str, list[AnyRuleEvent]] = defaultdict(list)
    kinds = (TaxRateSet, TaxRuleSet, TaxRuleEnded)
    for recorded in await recorded_of_types(store, *(k.event_type for k in kinds)):
        rule = recorded.decode()
        assert isinstance(rule, TaxRateSet | TaxRuleSet | TaxRuleEnded)
        rules[rule.region].append(rule)
    exemptions: dict[str, list[AnyExemptionEvent]] = defaultdict(list)
    for recorded in await recorded_of_types(
        store, TaxExemptionGranted.event_type, TaxExemptionRevoked.event_type
    ):
        exemption = recorded.decode()
        assert isinstance(exemption, TaxExemptionGranted | TaxExemptionRevoked)
        exemptions[exemption.customer_id].append(exemption)
    return BillRunCatalogue(
        customers={
            r.data["customer_id"]: CustomerRecord.model_validate(r.data)
            for r in await recorded_of_types(store, CustomerRegistered.event_type)
        },
        tax_rules=dict(rules),
        subscriptions=dict(subscriptions),
        exemptions=dict(exemptions),
    )


class _Series:
    """The invoice series stream, read once per bill run and followed as we append to it.
    `year`: the billed period's (the series counts per year when the number format has one)."""

    def __init__(
        self,
        store: EventStore,
        series: str,
        actor: str = SCHEDULED_ACTOR,
        *,
        year: int = 0,
        key: str | None = None,
    ) -> None:
        self._store = store
        self._actor = actor
        self.year = year
        self.key = series if key is None else key
        self.stream = invoice_series_stream(self.key)
        self.version: int | None = None
        self.numbers: dict[uuid.UUID, InvoiceNumberAssigned] = {}

    @property
    def next_sequence(self) -> int:
        return 1 if self.version is None else self.version + 2

    @property
    def expected(self) -> ExpectedVersion:
        return NO_STREAM if self.version is None else self.version

    async def refresh(self) -> None:
        start = 0 if self.version is None else self.version + 1
        for recorded in await self._store.read_stream(self.stream, from_position=start):
            event = recorded.decode()
            assert isinstance(event, InvoiceNumberAssigned)
            self.numbers[event.invoice_id] = event
            self.version = recorded.stream_position


def _merged_lines(drafts: list[InvoiceDraft]) -> list[InvoiceLine]:
    """The lines of a customer's subscriptions, untaxed: the invoice is taxed as one."""
    currency = drafts[0].currency
    if any(d.currency != currency for d in drafts):
        raise InvoicingError("subscriptions of one customer bill in different currencies")
    return [line for d in drafts for line in d.lines]


async def _usage(
    store: EventStore, catalogue: BillRunCatalogue, recorded_usage: list[RecordedEvent]
) -> tuple[dict[str, UsageTotals], int | None]:
    """Per subscription, the period's usage from rating's buckets (`recorded_usage`, the
    customer's usage stream of the period): the octets, and the octets as they count on the
    plan version each bucket was rated on (its time band's multiplier; usage rated before
    buckets counts whole). And the usage stream's last position read (None: no usage): usage
    rated into the period after it is late."""
    per_subscription: dict[str, tuple[int, int, int, list[str]]] = {}
    through = recorded_usage[-1].stream_position if recorded_usage else None
    for recorded in recorded_usage:
        usage = _Bucket.of(recorded)
        i, o, c, tps = per_subscription.get(usage.subscription_id, (0, 0, 0, []))
        if recorded.metadata.traceparent:
            tps.append(recorded.metadata.traceparent)
        per_subscription[usage.subscription_id] = (
            i + usage.input_octets,
            o + usage.output_octets,
            c + await _counted(store, catalogue, usage),
            tps,
        )
    totals = {
        sub: UsageTotals(
            input_octets=i,
            output_octets=o,
            trace_ids=tuple(dict.fromkeys(tps)),
            counted_octets=c,
        )
        for sub, (i, o, c, tps) in per_subscription.items()
    }
    return totals, through


@dataclass(frozen=True)
class _Bucket:
    """What the bill run reads of a UsageRated bucket, taken from the event's data as recorded
    (validated when rating wrote it) instead of building the model: a bill run reads every
    bucket of every customer."""

    subscription_id: str
    input_octets: int
    output_octets: int
    band: str
    plan_id: str | None
    plan_version: int | None

    @property
    def total_octets(self) -> int:
        return self.input_octets + self.output_octets

    @classmethod
    def of(cls, recorded: RecordedEvent) -> _Bucket:
        if recorded.type != UsageRated.event_type:
            raise ValueError(f"a usage stream holds {recorded.type}, not {UsageRated.event_type}")
        data = recorded.data
        inp, out = int(data["input_octets"]), int(data["output_octets"])
        if inp < 0 or out < 0:
            raise ValueError(f"usage bucket {recorded.id}: negative octets")
        version = data.get("plan_version")
        return cls(
            subscription_id=str(data["subscription_id"]),
            input_octets=inp,
            output_octets=out,
            band=str(data.get("band", STANDARD)),
            plan_id=None if data.get("plan_id") is None else str(data["plan_id"]),
            plan_version=None if version is None else int(version),
        )


async def _counted(store: EventStore, catalogue: BillRunCatalogue, usage: _Bucket) -> int:
    if usage.band == STANDARD or usage.plan_id is None or usage.plan_version is None:
        return usage.total_octets
    versions = await catalogue.versions_of(store, usage.plan_id)
    if len(versions) < usage.plan_version:
        return usage.total_octets
    bands = versions[usage.plan_version - 1].time_bands
    return counted_octets(bands, usage.band, usage.total_octets)


def _current_details(history: list[RecordedEvent]) -> CustomerRecord:
    """The customer's details as the latest registration or change in its stream says (read
    back as a CustomerRecord: the e-mail's form was checked when it was recorded, and checking
    it again cost a bill run a fifth of its time)."""
    latest = history[-1]
    if latest.type not in (CustomerRegistered.event_type, CustomerDetailsChanged.event_type):
        raise ValueError(f"customer stream ends with {latest.type}, not the customer's details")
    return CustomerRecord.model_validate(latest.data)


def _service_history(started: SubscriptionStarted, recorded: list[RecordedEvent]) -> ServiceHistory:
    """The subscription's lifecycle from its own stream."""
    return ServiceHistory.of(started, [r.decode() for r in recorded[1:]])


#: Customers billed together: their streams read in a few queries, and their numbers and
#: invoices appended in one `append_many` (one transaction on SQLite and PostgreSQL: a crash
#: leaves all of a chunk or none of it, so numbers stay gapless without reservations).
BILL_RUN_CHUNK = 250
_CHUNK_ATTEMPTS = 20


@dataclass(frozen=True)
class _Late:
    """Usage of an earlier invoiced period rated after its invoice (ADR 0032): what to bill
    (`spec`), that period's usage stream (up to at least `spec.usage_through`), and its
    invoice's stream and version, where `LateUsageBilled` is appended with the new invoice."""

    spec: LateUsage
    usage: list[RecordedEvent]
    stream: str = ""
    expected: int = 0


@dataclass
class _Prepared:
    """A customer's invoice drafted, waiting for its number; with the late usage it bills,
    each with its adjustment's amount before tax."""

    customer_id: str
    customer: CustomerRecord
    draft: InvoiceDraft
    usage_through: int | None
    late: list[tuple[_Late, Money]] = field(default_factory=list)


async def close_billing_period(
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    period_text: str,
    catalogue_source: Callable[[], Awaitable[BillRunCatalogue]] | None = None,
    *,
    actor: str = SCHEDULED_ACTOR,
    dry_run: bool = False,
    chunk: int = 0,
) -> BillRunReport:
    """Issue one invoice per customer with a subscription active in the period.

    Customers are billed `chunk` (default `BILL_RUN_CHUNK`) at a time, in customer id order:
    their streams read in a few `read_streams`, their invoices drafted, then their numbers (the
    series at the version read) and invoices (each stream created with NO_STREAM) appended
    together. Safe to run twice, or twice at once: a chunk that meets another run's appends is
    read again, and the ids derive from the invoice, so a rerun issues nothing new. One
    customer's failure never stops the run: it is reported (`skipped` or `failed`) and the run
    goes on; so are a chunk's customers when other runs kept appending first. Only the ledger
    failing (EventStoreError) stops it, and a rerun resumes. `dry_run`: draft every invoice and
    report them, without taking a number or writing.
    """
    period = BillingPeriod.parse(period_text)
    report = BillRunReport(period=str(period), dry_run=dry_run)
    run_id = uuid.uuid4()  # tells this run's appends from a concurrent run's identical ones
    with tracer.start_as_current_span(
        "invoicing.bill_run", attributes={"billing.period": str(period)}
    ):
        catalogue = await (catalogue_source or (lambda: scanned_catalogue(store)))()
        series = _Series(
            store,
            settings.series,
            actor,
            year=period.year,
            key=settings.series_key(settings.series, period.year),
        )
        await series.refresh()
        customers = sorted(catalogue.subscriptions.items())
        size = chunk if chunk > 0 else BILL_RUN_CHUNK
        for at in range(0, len(customers), size):
            await _close_chunk(
                store,
                clock,
                settings,
                catalogue,
                series,
                period,
                customers[at : at + size],
                run_id,
                actor,
                report,
            )
    return report


async def _close_chunk(
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    catalogue: BillRunCatalogue,
    series: _Series,
    period: BillingPeriod,
    chunk: list[tuple[str, list[SubscriptionStarted]]],
    run_id: uuid.UUID,
    actor: str,
    report: BillRunReport,
) -> None:
    p = str(period)
    for _ in range(_CHUNK_ATTEMPTS):
        attempt = BillRunReport(period=p, dry_run=report.dry_run)
        existing = await store.read_streams([invoice_stream(c, p) for c, _ in chunk])
        todo: list[tuple[str, list[SubscriptionStarted]]] = []
        repairs: list[tuple[str, Sequence[NewEvent], ExpectedVersion]] = []
        for customer_id, subs in chunk:
            recorded = existing[invoice_stream(customer_id, p)]
            if recorded:
                issued = recorded[0].decode()
                assert isinstance(issued, InvoiceIssued)
                attempt.already_issued.append(issued.number)
                repairs += _late_marks(issued, clock, actor)
                continue
            if customer_id not in catalogue.customers:
                attempt.skipped[customer_id] = (
                    f"customer {customer_id} has subscriptions but no registration"
                )
                continue
            # Not billed before it starts: a subscription starting after the period has no
            # day in it.
            active = [s for s in subs if s.started_on < period.next.first_day]
            if active:
                todo.append((customer_id, active))
        if repairs and not report.dry_run:
            # An invoice issued by a run whose appends were not one transaction (KurrentDB)
            # and cut short may lack its marks in the originals' streams: appended again
            # (the same ids: a no-op where they are), so late usage is never billed twice.
            await store.append_many(repairs)
        read = await store.read_streams(
            [customer_stream(c) for c, _ in todo]
            + [usage_stream(c, p) for c, _ in todo]
            + [subscription_stream(s.subscription_id) for _, active in todo for s in active]
        )
        late = await _late_usage(store, settings, catalogue, period, [c for c, _ in todo])
        prepared: list[_Prepared] = []
        for customer_id, active in todo:
            try:
                ready = await _prepare(
                    store,
                    settings,
                    catalogue,
                    period,
                    customer_id,
                    active,
                    read,
                    late.get(customer_id, ()),
                )
            except InvoicingError as exc:
                attempt.skipped[customer_id] = str(exc)
                continue
            except EventStoreError:
                raise  # the ledger itself: every customer after would fail too; rerun later
            except Exception as exc:
                log.exception("bill run %s: customer %s failed", period, customer_id)
                attempt.failed[customer_id] = f"{type(exc).__name__}: {exc}"
                continue
            if ready is not None:
                prepared.append(ready)
        if report.dry_run:
            attempt.previews = [_preview(ready) for ready in prepared]
            _merge_report(report, attempt)
            return
        if prepared and not await _issue(
            store, clock, settings, series, p, prepared, run_id, actor, attempt
        ):
            await series.refresh()
            continue  # another run appended to the series or one of these first: read again
        _merge_report(report, attempt)
        return
    # Other runs kept appending first (a faster run on the same series): these customers are
    # reported, and the run goes on; a rerun bills them.
    log.warning("bill run %s: a chunk kept meeting other runs' appends", p)
    for customer_id, _ in chunk:
        report.failed.setdefault(
            customer_id,
            f"ConcurrentBillRuns: other bill runs appended first {_CHUNK_ATTEMPTS} times;"
            " run the bill run again",
        )


async def _prepare(
    store: EventStore,
    settings: BillingSettings,
    catalogue: BillRunCatalogue,
    period: BillingPeriod,
    customer_id: str,
    active: list[SubscriptionStarted],
    read: dict[str, list[RecordedEvent]],
    late: Sequence[_Late] = (),
) -> _Prepared | None:
    """The customer's invoice drafted from the streams read (None: nothing to charge), with
    an adjustment line per subscription whose usage of an earlier period in `late` was rated
    after that period's invoice."""
    customer = _current_details(read[customer_stream(customer_id)])
    usage, usage_through = await _usage(
        store, catalogue, read[usage_stream(customer_id, str(period))]
    )
    # The tax point is the period's last day (ADR 0029): the rules and exemptions in force then.
    tax_point = period.next.first_day - timedelta(days=1)
    rules = rules_in_force(catalogue.tax_rules, customer.tax_region, tax_point)
    exemptions = exemptions_in_force(catalogue.exemptions.get(customer_id, ()), tax_point)
    drafts = []
    histories: dict[str, tuple[ServiceHistory, dict[str, list[PlanTerms]]]] = {}
    for sub in active:
        history = _service_history(sub, read[subscription_stream(sub.subscription_id)])
        plans: dict[str, list[PlanTerms]] = {}
        for plan_id in {history.plan_id, *(p for _, p in history.plan_changes)}:
            versions = await catalogue.versions_of(store, plan_id)
            if versions:
                plans[plan_id] = versions
        histories[sub.subscription_id] = (history, plans)
        try:
            segments = charged_segments(history, plans, period)
            usage_plan = last_plan_in(history, plans, period)
        except UnknownPlan:
            raise InvoicingError(
                f"subscription {sub.subscription_id} names unknown plan {sub.plan_id}"
            ) from None
        sub_draft = draft_subscription_invoice(
            segments=segments,
            usage_plan=usage_plan,
            period=period,
            usage=usage.get(sub.subscription_id, UsageTotals(0, 0)),
            tax=None,  # taxed below, the customer's invoice as one
            rounding=settings.rounding,
        )
        if sub_draft is not None:
            drafts.append(sub_draft)
    adjustments: list[InvoiceLine] = []
    billed_late: list[tuple[_Late, Money]] = []
    currency = drafts[0].currency if drafts else None
    kept: list[_Late] = []
    for item in late:
        lines = await _late_lines(store, settings, catalogue, item, histories)
        if lines and currency is not None and lines[0].amount.currency != currency:
            # priced in the period's currency, which the customer no longer bills in: left
            # for a clerk (logged), neither billed here nor marked billed
            log.warning(
                "late usage of %s for %s bills in %s, the invoice in %s: not billed",
                item.spec.period,
                customer_id,
                lines[0].amount.currency,
                currency,
            )
            continue
        currency = currency or (lines[0].amount.currency if lines else None)
        kept.append(item)
        adjustments += lines
        if lines:
            amount = lines[0].amount
            for line in lines[1:]:
                amount = amount + line.amount
            billed_late.append((item, amount))
    if not drafts and not adjustments:
        return None  # every day of the period suspended, on hold or after termination
    merged = (_merged_lines(drafts) if drafts else []) + adjustments
    draft = taxed_draft(merged, rules, exemptions, settings.tax_rounding, settings.rounding)
    if billed_late:
        # Late usage that stayed within the included data changes no charge: still marked
        # billed (amount zero) with this invoice, so that no bill run weighs it again.
        billed = {id(item) for item, _ in billed_late}
        billed_late += [
            (item, Money.zero(draft.currency)) for item in kept if id(item) not in billed
        ]
    else:
        billed_late = [(item, Money.zero(draft.currency)) for item in kept]
    return _Prepared(customer_id, customer, draft, usage_through, billed_late)


async def _late_lines(
    store: EventStore,
    settings: BillingSettings,
    catalogue: BillRunCatalogue,
    item: _Late,
    histories: dict[str, tuple[ServiceHistory, dict[str, list[PlanTerms]]]],
) -> list[InvoiceLine]:
    """One adjustment line per subscription whose charge for the earlier period's usage
    changes now that the usage rated after its invoice counts too (ADR 0032)."""
    spec = item.spec
    period = BillingPeriod.parse(spec.period)
    billed, _ = await _usage(
        store, catalogue, [u for u in item.usage if u.stream_position <= spec.billed_through]
    )
    now, _ = await _usage(
        store, catalogue, [u for u in item.usage if u.stream_position <= spec.usage_through]
    )
    lines = []
    for subscription_id, totals in now.items():
        before = billed.get(subscription_id, UsageTotals(0, 0))
        if (totals.total_octets, totals.billable_octets) == (
            before.total_octets,
            before.billable_octets,
        ):
            continue
        known = histories.get(subscription_id)
        if known is None:
            continue  # a subscription not billed now (started after this period): none
        history, plans = known
        try:
            plan = last_plan_in(history, plans, period)
        except UnknownPlan:
            raise InvoicingError(f"subscription {subscription_id} names an unknown plan") from None
        if plan is None:
            continue
        line = late_usage_line(
            plan, period, before, totals, settings.rounding, invoice_number=spec.invoice_number
        )
        if line is not None:
            lines.append(line)
    return lines


def billed_through_of(recorded: Sequence[RecordedEvent]) -> int | None:
    """How far an invoice's stream says its period's usage is billed: the invoice's own
    bound, raised by each `LateUsageBilled` whose invoice was not voided since (its
    `LateUsageReleased`). None: the invoice predates the bound (ADR 0032)."""
    billed = usage_billed_through(recorded[0].data)
    if billed is None:
        return None
    released = {
        str(r.data["on_invoice_id"]) for r in recorded if r.type == LateUsageReleased.event_type
    }
    for r in recorded[1:]:
        if r.type == LateUsageBilled.event_type and str(r.data["on_invoice_id"]) not in released:
            billed = max(billed, int(r.data["usage_through"]))
    return billed


async def _late_usage(
    store: EventStore,
    settings: BillingSettings,
    catalogue: BillRunCatalogue,
    period: BillingPeriod,
    customers: list[str],
) -> dict[str, list[_Late]]:
    """Per customer, the earlier periods (up to `settings.late_usage_periods` back) whose
    usage stream holds usage after what their invoice and its adjustments billed: one
    versions query and one read of those periods' invoice streams per chunk; the usage
    streams are read only where something is late. A voided invoice's period is left alone
    (its re-issue bills the whole period)."""
    if settings.late_usage_periods <= 0 or not customers:
        return {}
    periods: list[str] = []
    back = period
    for _ in range(settings.late_usage_periods):
        back = back.previous
        periods.append(str(back))
    periods.reverse()  # oldest first: the lines read in time order
    known = catalogue.usage_billed
    pairs = [(c, q) for c in customers for q in periods if known is None or (c, q) in known]
    if not pairs:
        return {}
    versions = await store.stream_versions([usage_stream(c, q) for c, q in pairs])
    candidates = [
        (c, q)
        for c, q in pairs
        if (version := versions[usage_stream(c, q)]) is not None
        # the projection's filter: an invoice it has not folded yet waits for the next run;
        # one it has is read below, which is what decides
        and (known is None or ((c, q) in known and version > known[(c, q)]))
    ]
    if not candidates:
        return {}
    invoices = await store.read_streams([invoice_stream(c, q) for c, q in candidates])
    due: list[tuple[str, str, list[RecordedEvent], int, int]] = []
    for c, q in candidates:
        recorded = invoices[invoice_stream(c, q)]
        if not recorded or recorded[0].type != InvoiceIssued.event_type:
            continue  # not invoiced: its own bill run bills it
        if any(r.type == InvoiceVoided.event_type for r in recorded):
            continue
        billed = billed_through_of(recorded)
        if billed is None:
            continue  # issued before invoices recorded what they billed
        head = versions[usage_stream(c, q)]
        assert head is not None
        if head > billed:
            due.append((c, q, recorded, billed, head))
    if not due:
        return {}
    usage = await store.read_streams([usage_stream(c, q) for c, q, *_ in due])
    late: dict[str, list[_Late]] = defaultdict(list)
    for c, q, recorded, billed, head in due:
        original = recorded[0].data
        late[c].append(
            _Late(
                spec=LateUsage(
                    period=q,
                    invoice_id=uuid.UUID(str(original["invoice_id"])),
                    invoice_number=str(original["number"]),
                    billed_through=billed,
                    usage_through=head,
                ),
                usage=[u for u in usage[usage_stream(c, q)] if u.stream_position <= head],
                stream=invoice_stream(c, q),
                expected=recorded[-1].stream_position,
            )
        )
    return dict(late)


def _preview(ready: _Prepared) -> InvoicePreview:
    draft = ready.draft
    return InvoicePreview(
        customer_id=ready.customer_id,
        currency=draft.currency,
        subtotal=f"{draft.subtotal.amount:f}",
        tax_total=f"{draft.tax_total.amount:f}",
        total=f"{draft.total.amount:f}",
        lines=len(draft.lines),
    )


def _merge_report(report: BillRunReport, attempt: BillRunReport) -> None:
    report.issued += attempt.issued
    report.already_issued += attempt.already_issued
    report.skipped.update(attempt.skipped)
    report.failed.update(attempt.failed)
    report.previews += attempt.previews


async def _issue(
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    series: _Series,
    period: str,
    prepared: list[_Prepared],
    run_id: uuid.UUID,
    actor: str,
    attempt: BillRunReport,
) -> bool:
    """Number and append the chunk's invoices in one `append_many`; False when another run
    appended to the series or to one of these invoices first (nothing was written). A number
    the series holds already for an invoice (taken before a crash on a store whose appends of
    several streams are not one transaction) is used again, never a second one."""
    now = clock.now()
    issued_on = now.astimezone(settings.timezone).date()
    sequence = series.next_sequence
    number_events: list[NewEvent] = []
    invoices: list[InvoiceIssued] = []
    for ready in prepared:
        invoice_id = invoice_id_for(ready.customer_id, period)
        assigned = series.numbers.get(invoice_id)
        if assigned is None:
            assigned = InvoiceNumberAssigned(
                series=series.key,
                sequence=sequence,
                number=settings.invoice_number(sequence, series.year),
                invoice_id=invoice_id,
                customer_id=ready.customer_id,
                period=period,
            )
            # The id names the invoice, not the number: a retry finds the number assigned.
            number_events.append(
                new_event(
                    assigned,
                    id=deterministic_id("invoice-number", invoice_id),
                    occurred_at=now,
                    actor=actor,
                )
            )
            sequence += 1
        customer, draft = ready.customer, ready.draft
        invoices.append(
            InvoiceIssued(
                invoice_id=invoice_id,
                number=assigned.number,
                customer_id=ready.customer_id,
                customer_name=customer.name,
                customer_email=customer.email,
                billing_address=customer.billing_address,
                tax_region=customer.tax_region,
                period=period,
                issued_at=now,
                due_on=issued_on + timedelta(days=settings.payment_terms_days),
                currency=draft.currency,
                lines=draft.lines,
                subtotal=draft.subtotal,
                taxes=draft.taxes,
                tax_total=draft.tax_total,
                total=draft.total,
                usage_through=ready.usage_through,
                rounding=str(settings.rounding),
                tax_rounding=str(settings.tax_rounding),
                late_usage=tuple(item.spec for item, _ in ready.late),
                language=customer.language,
            )
        )
    batches: list[tuple[str, Sequence[NewEvent], ExpectedVersion]] = []
    if number_events:
        batches.append((series.stream, number_events, series.expected))
    for invoice, ready in zip(invoices, prepared, strict=True):
        batches.append(
            (
                invoice_stream(invoice.customer_id, period),
                [
                    new_event(
                        invoice,
                        id=deterministic_id("invoice-issued", invoice.invoice_id),
                        occurred_at=now,
                        correlation_id=run_id,
                        actor=actor,
                    )
                ],
                NO_STREAM,
            )
        )
        # In the same transaction: the earlier invoice's stream says how far its usage is
        # billed now, so that no later bill run bills it again (ADR 0032).
        for item, amount in ready.late:
            mark = _late_mark(invoice, item.spec, amount, now, actor, run_id)
            batches.append((item.stream, [mark], item.expected))
    try:
        await store.append_many(batches)
    except (WrongExpectedVersion, EventIdConflict):
        return False
    # The series moved on by these numbers (or by another run's identical ones, which made
    # ours a no-op): read what it holds now, so the next chunk numbers from there.
    await series.refresh()
    # An invoice another run recorded with the same ids made ours a no-op: the ledger's copy,
    # not ours, tells who issued it, and its number.
    back = await store.read_streams([invoice_stream(i.customer_id, period) for i in invoices])
    for invoice in invoices:
        recorded = back[invoice_stream(invoice.customer_id, period)][0]
        if recorded.metadata.correlation_id != run_id:
            theirs = recorded.decode()
            assert isinstance(theirs, InvoiceIssued)
            attempt.already_issued.append(theirs.number)
            continue
        attempt.issued.append(invoice.number)
        _trace_invoice(invoice)
        log.info(
            "issued invoice %s to %s for %s: %s",
            invoice.number,
            invoice.customer_id,
            period,
            invoice.total,
        )
    return True


def _late_mark(
    invoice: InvoiceIssued,
    spec: LateUsage,
    amount: Money,
    now: datetime,
    actor: str,
    run_id: uuid.UUID | None = None,
) -> NewEvent:
    """The `LateUsageBilled` an invoice leaves in the stream of a period whose late usage it
    bills; its id names the invoice and the period, so writing it again is a no-op."""
    billed = LateUsageBilled(
        invoice_id=spec.invoice_id,
        period=spec.period,
        usage_through=spec.usage_through,
        on_invoice_id=invoice.invoice_id,
        on_invoice_number=invoice.number,
        amount=amount,
    )
    return new_event(
        billed,
        id=deterministic_id("late-usage-billed", invoice.invoice_id, spec.period),
        occurred_at=now,
        correlation_id=run_id,
        actor=actor,
    )


def _late_marks(
    invoice: InvoiceIssued, clock: Clock, actor: str
) -> list[tuple[str, Sequence[NewEvent], ExpectedVersion]]:
    """The marks an issued invoice left (or should have) for the late usage it bills."""
    batches: list[tuple[str, Sequence[NewEvent], ExpectedVersion]] = []
    for spec in invoice.late_usage:
        amount = Money.zero(invoice.currency)
        for line in invoice.lines:
            if line.adjusts_period == spec.period:
                amount = amount + line.amount
        mark = _late_mark(invoice, spec, amount, clock.now(), actor)
        batches.append((invoice_stream(invoice.customer_id, spec.period), [mark], ANY))
    return batches


def _trace_invoice(invoice: InvoiceIssued) -> None:
    """A span per invoice and one per line, linked to the trace of every RADIUS packet the
    line bills."""
    with tracer.start_as_current_span(
        "invoicing.issue_invoice",
        attributes={
            "billing.customer_id": invoice.customer_id,
            "billing.period": invoice.period,
            "invoice.number": invoice.number,
        },
    ):
        for index, line in enumerate(invoice.lines):
            with tracer.start_as_current_span(
                "invoicing.invoice_line",
                links=links_from_traceparents(line.source_trace_ids),
                attributes={
                    "invoice.number": invoice.number,
                    "invoice.line": index,
                    "invoice.line.kind": str(line.kind),
                    "invoice.line.amount": str(line.amount.amount),
                    "invoice.line.source_trace_ids": [
                        t for t in (trace_id_of(tp) for tp in line.source_trace_ids) if t
                    ],
                },
            ):
                pass
