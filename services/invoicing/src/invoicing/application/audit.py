"""The auditor's replay: every invoice derived again from the log, compared to the minor unit.

`verify_invoices` reads the ledger once, in global order, and keeps what the bill run reads
(customers, subscriptions and their lifecycle, plan versions, usage buckets, tax rules and
exemptions) as it stood at each point. At each `InvoiceIssued` it drafts that customer's
invoice again with the bill run's own functions (`close_billing_period._prepare`) from the
state just before the invoice was recorded, the usage it says it billed (`usage_through`) and
the rounding it says it used, and reports every field that differs. It also checks what can
be checked without deriving: each invoice's and credit note's arithmetic, the number series
(gapless, one number per invoice, the invoice's number the one assigned to it), and that an
invoice's credit notes never exceed it. ADR 0031.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from invoicing.application.close_billing_period import (
    BillRunCatalogue,
    _Late,
    _prepare,
    invoice_id_for,
)
from invoicing.application.settings import BillingSettings
from invoicing.domain.errors import InvoicingError
from invoicing.domain.tax import AnyExemptionEvent, AnyRuleEvent, TaxRounding
from ispbill_core.contracts.accounts import (
    CustomerDetailsChanged,
    CustomerRecord,
    CustomerRegistered,
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    SubscriptionStarted,
)
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    CreditNoteNumberAssigned,
    InvoiceIssued,
    InvoiceLine,
    InvoiceNumberAssigned,
    LateUsageBilled,
    LateUsageReleased,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxLine,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    invoice_stream,
    usage_billed_through,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.events import DomainEvent, RecordedEvent, registered_event_types
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import scan_to_head
from ispbill_core.money import Money, Rounding
from ispbill_core.periods import BillingPeriod

#: Made by machines by the million and never read by a bill run: not read by the replay.
_NOT_READ = frozenset(
    {"AccountingRecordReceived", "RouterCountersSampled", "UsageMeasured", "UsageUnmatched"}
)
_SUBSCRIPTION_PREFIX = "subscription-"
_USAGE_PREFIX = "usage-"


@dataclass(frozen=True)
class Finding:
    """One difference: the recorded event's global position, the document it is about, the
    field (`lines[1].amount`, `total`, `number`...), and both values."""

    position: int
    document: str
    customer_id: str
    period: str
    field: str
    recorded: str
    derived: str


@dataclass
class AuditReport:
    invoices_checked: int = 0
    credit_notes_checked: int = 0
    events_read: int = 0
    through_position: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def _text(value: object) -> str:
    if isinstance(value, Money):
        return f"{value.amount:f} {value.currency}"
    if isinstance(value, Decimal):
        return f"{value:f}"
    return "" if value is None else str(value)


class _Replay:
    """The bill run's inputs as of the point of the log read so far."""

    def __init__(self) -> None:
        self.streams: dict[str, list[RecordedEvent]] = defaultdict(list)
        self.customers: dict[str, CustomerRecord] = {}
        self.subscriptions: dict[str, list[SubscriptionStarted]] = defaultdict(list)
        self.plans: dict[str, list[PlanTerms]] = defaultdict(list)
        self.rules: dict[str, list[AnyRuleEvent]] = defaultdict(list)
        self.exemptions: dict[str, list[AnyExemptionEvent]] = defaultdict(list)
        #: per number series stream: invoice or credit note id -> its number
        self.numbers: dict[str, str] = {}
        self.credited: dict[str, Money] = {}
        self.invoices: dict[str, InvoiceIssued] = {}
        #: per invoice id: its own bound on its period's usage stream, and the bounds of the
        #: LateUsageBilled marks in its stream by the invoice that billed them (released ones
        #: removed): how far that usage is billed is the largest (ADR 0032)
        self.own_bound: dict[str, int] = {}
        self.marks: dict[str, dict[str, int]] = defaultdict(dict)

    def billed_through(self, invoice_id: str) -> int | None:
        own = self.own_bound.get(invoice_id)
        if own is None:
            return None
        return max([own, *self.marks[invoice_id].values()])

    def catalogue(self) -> BillRunCatalogue:
        return BillRunCatalogue(
            customers=self.customers,
            tax_rules=self.rules,
            subscriptions=self.subscriptions,
            exemptions=self.exemptions,
            plan_versions=self.plans,
            plans_complete=True,
        )


def _compare(
    findings: list[Finding],
    at: RecordedEvent,
    document: str,
    customer_id: str,
    period: str,
    pairs: Iterable[tuple[str, object, object]],
) -> None:
    for name, recorded, derived in pairs:
        if recorded != derived:
            findings.append(
                Finding(
                    at.global_position,
                    document,
                    customer_id,
                    period,
                    name,
                    _text(recorded),
                    _text(derived),
                )
            )


def _line_pairs(
    prefix: str, recorded: Sequence[InvoiceLine] | Sequence[TaxLine], derived: Sequence[object]
) -> list[tuple[str, object, object]]:
    if tuple(recorded) == tuple(derived):
        return []  # the usual case, without a pair per field
    pairs: list[tuple[str, object, object]] = []
    if len(recorded) != len(derived):
        pairs.append((f"{prefix} (count)", len(recorded), len(derived)))
    for index, (mine, theirs) in enumerate(zip(recorded, derived, strict=False)):
        for name in type(mine).model_fields:
            pairs.append((f"{prefix}[{index}].{name}", getattr(mine, name), getattr(theirs, name)))
    return pairs


def _sum(amounts: Iterable[Money], currency: str) -> Money:
    total = Money.zero(currency)
    for amount in amounts:
        total = total + amount
    return total


def _arithmetic(
    findings: list[Finding],
    at: RecordedEvent,
    document: str,
    customer_id: str,
    period: str,
    doc: InvoiceIssued | CreditNoteIssued,
) -> None:
    """What a document's own numbers must satisfy, whatever derived them."""
    _compare(
        findings,
        at,
        document,
        customer_id,
        period,
        [
            (
                "subtotal = sum of lines",
                doc.subtotal,
                _sum((li.amount for li in doc.lines), doc.currency),
            ),
            (
                "tax_total = sum of taxes",
                doc.tax_total,
                _sum((t.amount for t in doc.taxes), doc.currency),
            ),
            ("total = subtotal + tax_total", doc.total, doc.subtotal + doc.tax_total),
        ],
    )


async def verify_invoices(
    store: EventStore,
    settings: BillingSettings,
    *,
    period: str | None = None,
    customer_id: str | None = None,
) -> AuditReport:
    """Re-derive every issued invoice (of `period`, of `customer_id`, when given) from the log
    up to the head it finds when it starts; see the module's docstring."""
    if period is not None:
        period = str(BillingPeriod.parse(period))
    wanted = sorted(name for (name, _version) in registered_event_types() if name not in _NOT_READ)
    replay = _Replay()
    report = AuditReport(through_position=await store.head_position())
    async for recorded in scan_to_head(store, wanted, head=report.through_position):
        report.events_read += 1
        await _fold(store, settings, replay, report, recorded, period, customer_id)
    return report


def _selected(period: str | None, customer_id: str | None, p: str, c: str) -> bool:
    return (period is None or p == period) and (customer_id is None or c == customer_id)


async def _fold(
    store: EventStore,
    settings: BillingSettings,
    replay: _Replay,
    report: AuditReport,
    recorded: RecordedEvent,
    period: str | None,
    customer_id: str | None,
) -> None:
    t = recorded.type
    if t == UsageRated.event_type or t in (
        CustomerRegistered.event_type,
        CustomerDetailsChanged.event_type,
    ):
        replay.streams[recorded.stream].append(recorded)
        if t == CustomerRegistered.event_type:
            try:
                record = CustomerRecord.model_validate(recorded.data)
            except Exception:
                _decoded(report, recorded)
            else:
                replay.customers[record.customer_id] = record
        return
    if recorded.stream.startswith(_SUBSCRIPTION_PREFIX):
        replay.streams[recorded.stream].append(recorded)
        if t == SubscriptionStarted.event_type:
            started = _decoded(report, recorded)
            if isinstance(started, SubscriptionStarted):
                replay.subscriptions[started.customer_id].append(started)
        return
    if t in (PlanDefined.event_type, PlanVersionPublished.event_type):
        plan = _decoded(report, recorded)
        if isinstance(plan, PlanTerms):
            replay.plans[plan.plan_id].append(plan)
        return
    if t in (TaxRateSet.event_type, TaxRuleSet.event_type, TaxRuleEnded.event_type):
        rule = _decoded(report, recorded)
        if isinstance(rule, TaxRateSet | TaxRuleSet | TaxRuleEnded):
            replay.rules[rule.region].append(rule)
        return
    if t in (TaxExemptionGranted.event_type, TaxExemptionRevoked.event_type):
        exemption = _decoded(report, recorded)
        if isinstance(exemption, TaxExemptionGranted | TaxExemptionRevoked):
            replay.exemptions[exemption.customer_id].append(exemption)
        return
    if t in (InvoiceNumberAssigned.event_type, CreditNoteNumberAssigned.event_type):
        _check_number(replay, report, recorded)
        return
    if t == InvoiceIssued.event_type:
        invoice = _decoded(report, recorded)
        if not isinstance(invoice, InvoiceIssued):
            return
        replay.invoices[str(invoice.invoice_id)] = invoice
        own = _usage_bound(replay, invoice)
        if own is not None:
            replay.own_bound[str(invoice.invoice_id)] = own
        if _selected(period, customer_id, invoice.period, invoice.customer_id):
            report.invoices_checked += 1
            try:
                await _verify_invoice(store, settings, replay, report, recorded, invoice)
            except Exception as exc:  # a tampered row (a currency edited): a finding
                _unverifiable(report, recorded, invoice.number, invoice.customer_id, exc)
        return
    if t in (LateUsageBilled.event_type, LateUsageReleased.event_type):
        mark = _decoded(report, recorded)
        if isinstance(mark, LateUsageBilled):
            replay.marks[str(mark.invoice_id)][str(mark.on_invoice_id)] = mark.usage_through
        elif isinstance(mark, LateUsageReleased):
            replay.marks[str(mark.invoice_id)].pop(str(mark.on_invoice_id), None)
        return
    if t == CreditNoteIssued.event_type:
        note = _decoded(report, recorded)
        if isinstance(note, CreditNoteIssued) and _selected(
            period, customer_id, note.period, note.customer_id
        ):
            report.credit_notes_checked += 1
            try:
                _verify_credit_note(replay, report, recorded, note)
            except Exception as exc:  # a tampered row: a finding, never a crash
                _unverifiable(report, recorded, note.number, note.customer_id, exc)
        return


def _decoded(report: AuditReport, recorded: RecordedEvent) -> DomainEvent | None:
    """The event, or None with a finding when the row no longer reads as its type."""
    try:
        return recorded.decode()
    except Exception as exc:  # a row edited into something its type refuses
        report.findings.append(
            Finding(
                recorded.global_position,
                recorded.stream,
                "",
                "",
                "event",
                f"unreadable {recorded.type}: {type(exc).__name__}: {str(exc)[:200]}",
                "",
            )
        )
        return None


def _unverifiable(
    report: AuditReport, recorded: RecordedEvent, document: str, customer: str, exc: Exception
) -> None:
    report.findings.append(
        Finding(
            recorded.global_position,
            document,
            customer,
            "",
            "checks",
            "cannot be checked",
            f"{type(exc).__name__}: {str(exc)[:200]}",
        )
    )


def _usage_bound(replay: _Replay, invoice: InvoiceIssued) -> int:
    """The last position of the period's usage stream the invoice billed: its own
    `usage_through` (-1: none); for an invoice issued before invoices recorded it, every
    bucket recorded before the invoice (the replay's stream as it stands)."""
    bound = usage_billed_through(invoice.model_dump(include={"usage_through", "rounding"}))
    if bound is not None:
        return bound
    usage = replay.streams.get(f"{_USAGE_PREFIX}{invoice.customer_id}-{invoice.period}", [])
    return usage[-1].stream_position if usage else -1


def _check_number(replay: _Replay, report: AuditReport, recorded: RecordedEvent) -> None:
    assigned = _decoded(report, recorded)
    if not isinstance(assigned, InvoiceNumberAssigned | CreditNoteNumberAssigned):
        return
    if isinstance(assigned, InvoiceNumberAssigned):
        owner, customer, p = str(assigned.invoice_id), assigned.customer_id, assigned.period
    else:
        owner, customer, p = str(assigned.credit_note_id), assigned.customer_id, ""
    pairs: list[tuple[str, object, object]] = [
        (
            "sequence (gapless: its position in the series + 1)",
            assigned.sequence,
            recorded.stream_position + 1,
        )
    ]
    earlier = replay.numbers.get(owner)
    if earlier is not None:
        pairs.append(("number (one per document)", assigned.number, earlier))
    _compare(report.findings, recorded, assigned.number, customer, p, pairs)
    replay.numbers.setdefault(owner, assigned.number)


async def _verify_invoice(
    store: EventStore,
    settings: BillingSettings,
    replay: _Replay,
    report: AuditReport,
    recorded: RecordedEvent,
    invoice: InvoiceIssued,
) -> None:
    findings = report.findings
    c, p, number = invoice.customer_id, invoice.period, invoice.number
    _arithmetic(findings, recorded, number, c, p, invoice)
    _compare(
        findings,
        recorded,
        number,
        c,
        p,
        [
            ("invoice_id", invoice.invoice_id, invoice_id_for(c, p)),
            ("stream", recorded.stream, invoice_stream(c, p)),
            (
                "number (as assigned in its series)",
                number,
                replay.numbers.get(str(invoice.invoice_id)),
            ),
        ],
    )
    used = dataclasses.replace(
        settings,
        rounding=Rounding(invoice.rounding) if invoice.rounding else settings.rounding,
        tax_rounding=(
            TaxRounding(invoice.tax_rounding) if invoice.tax_rounding else settings.tax_rounding
        ),
    )
    billing_period = BillingPeriod.parse(p)
    active = [
        s for s in replay.subscriptions.get(c, []) if s.started_on < billing_period.next.first_day
    ]
    usage_name = f"{_USAGE_PREFIX}{c}-{p}"
    through = _usage_bound(replay, invoice)
    read: dict[str, list[RecordedEvent]] = defaultdict(list)
    for name in (f"customer-{c}", *(f"{_SUBSCRIPTION_PREFIX}{s.subscription_id}" for s in active)):
        read[name] = replay.streams.get(name, [])
    read[usage_name] = [
        u for u in replay.streams.get(usage_name, []) if u.stream_position <= through
    ]
    late = []
    for spec in invoice.late_usage:
        _compare(
            findings,
            recorded,
            number,
            c,
            p,
            [
                (
                    f"late_usage {spec.period} billed_through (what was billed before)",
                    spec.billed_through,
                    replay.billed_through(str(spec.invoice_id)),
                ),
                (
                    f"late_usage {spec.period} invoice_number",
                    spec.invoice_number,
                    getattr(replay.invoices.get(str(spec.invoice_id)), "number", None),
                ),
            ],
        )
        late.append(
            _Late(spec=spec, usage=replay.streams.get(f"{_USAGE_PREFIX}{c}-{spec.period}", []))
        )
    try:
        if c not in replay.customers or not active:
            raise InvoicingError(f"customer {c} had no registration or subscription in {p}")
        prepared = await _prepare(
            store, used, replay.catalogue(), billing_period, c, active, read, late
        )
    except Exception as exc:  # the log cannot produce this invoice at all
        findings.append(
            Finding(
                recorded.global_position,
                number,
                c,
                p,
                "derivation",
                "issued",
                f"{type(exc).__name__}: {exc}",
            )
        )
        return
    if prepared is None:
        findings.append(
            Finding(
                recorded.global_position, number, c, p, "derivation", "issued", "nothing to charge"
            )
        )
        return
    draft, customer = prepared.draft, prepared.customer
    pairs: list[tuple[str, object, object]] = [
        ("currency", invoice.currency, draft.currency),
        ("customer_name", invoice.customer_name, customer.name),
        ("customer_email", invoice.customer_email, customer.email),
        ("billing_address", invoice.billing_address, customer.billing_address),
        ("language", invoice.language, customer.language),
        ("subtotal", invoice.subtotal, draft.subtotal),
        ("tax_total", invoice.tax_total, draft.tax_total),
        ("total", invoice.total, draft.total),
    ]
    if invoice.usage_through is not None or invoice.rounding is not None:
        pairs.append(("usage_through", invoice.usage_through, prepared.usage_through))
    if invoice.tax_region:  # "" on invoices issued before the field
        pairs.append(("tax_region", invoice.tax_region, customer.tax_region))
    pairs += _line_pairs("lines", invoice.lines, draft.lines)
    pairs += _line_pairs("taxes", invoice.taxes, draft.taxes)
    _compare(findings, recorded, number, c, p, pairs)


def _verify_credit_note(
    replay: _Replay, report: AuditReport, recorded: RecordedEvent, note: CreditNoteIssued
) -> None:
    findings = report.findings
    c, p = note.customer_id, note.period
    _arithmetic(findings, recorded, note.number, c, p, note)
    invoice = replay.invoices.get(str(note.invoice_id))
    if invoice is None:
        findings.append(
            Finding(
                recorded.global_position,
                note.number,
                c,
                p,
                "invoice_id",
                str(note.invoice_id),
                "no such invoice before it",
            )
        )
        return
    credited = replay.credited.get(str(note.invoice_id), Money.zero(note.currency)) + note.total
    replay.credited[str(note.invoice_id)] = credited
    pairs: list[tuple[str, object, object]] = [
        (
            "number (as assigned in its series)",
            note.number,
            replay.numbers.get(str(note.credit_note_id)),
        ),
        ("invoice_number", note.invoice_number, invoice.number),
        ("currency", note.currency, invoice.currency),
        ("invoice_credited (sum of its credit notes)", note.invoice_credited, credited),
    ]
    if credited > invoice.total:
        pairs.append(("invoice_credited (at most the invoice's total)", credited, invoice.total))
    _compare(findings, recorded, note.number, c, p, pairs)
