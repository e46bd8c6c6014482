"""Read model of invoicing: every issued invoice with its status and what it has received.

Lists and searches (by number, customer, period, status, amount range, issue and due dates)
are indexed queries on this table; a single invoice's document is the InvoiceIssued event
kept in the row as it was recorded (issued invoices never change).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from invoicing.application.close_billing_period import BillRunCatalogue
from invoicing.application.queries import PdfRenderer
from invoicing.domain.tax import AnyExemptionEvent, AnyRuleEvent
from ispbill_core.contracts.accounts import CustomerRecord, CustomerRegistered, SubscriptionStarted
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoicePaid,
    InvoiceVoided,
    LateUsageBilled,
    LateUsageReleased,
    PaymentAllocated,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    usage_billed_through,
)
from ispbill_core.events import RecordedEvent
from ispbill_core.money import MINOR_UNITS
from ispbill_core.projections import (
    Projection,
    ReadModelDatabase,
    Statement,
    failure_reason,
    in_runs,
)


def minor_units(amount: Decimal, currency: str) -> int:
    """An amount in the currency's minor units (cents), for ordering and range filters."""
    return int(amount.scaleb(MINOR_UNITS[currency]))


class InvoicesProjection(Projection):
    """Every invoice with its status: `issued`, `paid` (payments cover what is owed),
    `credited` (credit notes cover its total) or `void`; what it received and what was
    credited on it."""

    name = "invoicing.invoices"
    version = 2
    tables = ("rm_invoices",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_invoices (invoice_id TEXT PRIMARY KEY,"
        " number TEXT NOT NULL, customer_id TEXT NOT NULL, period TEXT NOT NULL,"
        " status TEXT NOT NULL, currency TEXT NOT NULL, total_minor BIGINT NOT NULL,"
        " received TEXT NOT NULL, issued_on TEXT NOT NULL, due_on TEXT NOT NULL,"
        " issued_at BIGINT NOT NULL, data TEXT NOT NULL, credited TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_number ON rm_invoices (number)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_customer"
        " ON rm_invoices (customer_id, issued_at)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_period ON rm_invoices (period, issued_at)",
        # a period's or a status's invoices newest first (the dashboard's "unpaid in March")
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_period_status"
        " ON rm_invoices (period, status, issued_at)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_status_issued"
        " ON rm_invoices (status, issued_at)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_status ON rm_invoices (status, due_on)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_total ON rm_invoices (total_minor)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_issued ON rm_invoices (issued_on)",
        "CREATE INDEX IF NOT EXISTS rm_invoices_by_position ON rm_invoices (issued_at)",
    )
    types = frozenset(
        {
            InvoiceIssued.event_type,
            InvoicePaid.event_type,
            PaymentAllocated.event_type,
            CreditNoteIssued.event_type,
            InvoiceVoided.event_type,
        }
    )

    _INSERT = (
        "INSERT INTO rm_invoices (invoice_id, number, customer_id, period, status,"
        " currency, total_minor, received, issued_on, due_on, issued_at, data, credited)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (invoice_id) DO NOTHING"
    )
    _RECEIVED = "UPDATE rm_invoices SET received = ? WHERE invoice_id = ?"
    _PAID = "UPDATE rm_invoices SET status = 'paid', received = ? WHERE invoice_id = ?"
    _CREDITED = (
        "UPDATE rm_invoices SET credited = ?, status = CASE WHEN status = 'issued'"
        " AND ? >= total_minor THEN 'credited' ELSE status END WHERE invoice_id = ?"
    )
    _VOID = "UPDATE rm_invoices SET status = 'void' WHERE invoice_id = ?"

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        statements, parked = self.fold([event])
        if parked:
            raise ValueError(parked[0][1])
        return statements

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """Invoices issued in the batch are inserted already paid when their payment is in the
        batch too (a rebuild's common case): one INSERT run, then the updates of older rows in
        order. Reads the event data as recorded (validated when it was written) rather than
        building the models: a rebuild folds hundreds of thousands of invoices."""
        inserts: dict[str, list[Any]] = {}
        updates: list[Statement] = []
        parked: list[tuple[RecordedEvent, str]] = []
        for event in events:
            try:
                data = event.data
                if event.type == InvoiceIssued.event_type:
                    row = self._row(data, event.global_position, event.data_json())
                    inserts.setdefault(row[0], row)
                    continue
                invoice_id = str(uuid.UUID(str(data["invoice_id"])))
                pending = inserts.get(invoice_id)
                if event.type == CreditNoteIssued.event_type:
                    credited = Decimal(data["invoice_credited"]["amount"])
                    credited_minor = minor_units(credited, str(data["currency"]))
                    if pending is not None:
                        pending[12] = str(credited)
                        if pending[4] == "issued" and credited_minor >= pending[6]:
                            pending[4] = "credited"
                    else:
                        updates.append(
                            (self._CREDITED, (str(credited), credited_minor, invoice_id))
                        )
                    continue
                if event.type == InvoiceVoided.event_type:
                    if pending is not None:
                        pending[4] = "void"
                    else:
                        updates.append((self._VOID, (invoice_id,)))
                    continue
                if event.type == PaymentAllocated.event_type:
                    status, received = None, str(Decimal(data["amount_received"]["amount"]))
                else:
                    status, received = "paid", str(Decimal(data["amount_paid"]["amount"]))
                if pending is not None:
                    pending[7] = received
                    if status is not None:
                        pending[4] = status
                else:
                    updates.append(
                        (self._PAID if status else self._RECEIVED, (received, invoice_id))
                    )
            except Exception as exc:
                parked.append((event, failure_reason(exc)))
        statements: list[Statement] = [(self._INSERT, tuple(r)) for r in inserts.values()]
        return statements + updates, parked

    @staticmethod
    def _row(data: dict[str, Any], position: int, data_json: str) -> list[Any]:
        total = data["total"]
        currency = str(data["currency"])
        if total["currency"] != currency:
            raise ValueError(f"total in {total['currency']}, invoice in {currency}")
        return [
            str(uuid.UUID(str(data["invoice_id"]))),
            str(data["number"]),
            str(data["customer_id"]),
            str(data["period"]),
            "issued",
            currency,
            minor_units(Decimal(total["amount"]), currency),
            "0",
            str(data["issued_at"])[:10],
            date.fromisoformat(str(data["due_on"])).isoformat(),
            position,
            data_json,
            "0",
        ]


@dataclass(frozen=True)
class InvoiceFilter:
    """What an invoice search can ask; every field optional."""

    customer_id: str | None = None
    period: str | None = None
    status: str | None = None
    number: str | None = None
    min_total: Decimal | None = None
    max_total: Decimal | None = None
    currency: str | None = None
    issued_from: date | None = None
    issued_to: date | None = None
    due_before: date | None = None


class ProjectedInvoiceQueries:
    """InvoiceQueries (REST, gRPC, allocation's locator) answered from the read model."""

    def __init__(self, db: ReadModelDatabase, render_pdf: PdfRenderer) -> None:
        self._db = db
        self._render_pdf = render_pdf

    @staticmethod
    def _row(data: str, status: str) -> tuple[InvoiceIssued, str]:
        return InvoiceIssued.model_validate(json.loads(data)), status

    async def get_invoice(self, invoice_id: uuid.UUID) -> tuple[InvoiceIssued, str] | None:
        rows = await self._db.fetch(
            "SELECT data, status FROM rm_invoices WHERE invoice_id = ?", (str(invoice_id),)
        )
        return self._row(*rows[0]) if rows else None

    async def period_of(self, invoice_id: uuid.UUID) -> str | None:
        rows = await self._db.fetch(
            "SELECT period FROM rm_invoices WHERE invoice_id = ?", (str(invoice_id),)
        )
        return str(rows[0][0]) if rows else None

    async def find(self, reference: str) -> tuple[InvoiceIssued, str] | None:
        """By invoice id or by number (what a clerk types)."""
        try:
            by_id = await self.get_invoice(uuid.UUID(reference))
        except ValueError:
            by_id = None
        if by_id is not None:
            return by_id
        rows = await self._db.fetch(
            "SELECT data, status FROM rm_invoices WHERE number = ? ORDER BY issued_at LIMIT 1",
            (reference,),
        )
        return self._row(*rows[0]) if rows else None

    async def list_invoices(
        self,
        *,
        customer_id: str | None = None,
        period: str | None = None,
        search: InvoiceFilter | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[tuple[InvoiceIssued, str]]:
        """Newest first (by issue); `before` pages on from the previous page's `cursor`."""
        return [
            (inv, st)
            for inv, st, _ in await self.search(
                InvoiceFilter(customer_id=customer_id, period=period) if search is None else search,
                limit=limit,
                before=before,
            )
        ]

    async def search(
        self, f: InvoiceFilter, *, limit: int | None = None, before: int | None = None
    ) -> list[tuple[InvoiceIssued, str, int]]:
        """(invoice, status, cursor) newest first; pass the last cursor as `before` for more."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("customer_id", f.customer_id),
            ("period", f.period),
            ("status", f.status),
            ("number", f.number),
            ("currency", f.currency),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for op, amount in ((">=", f.min_total), ("<=", f.max_total)):
            if amount is None:
                continue
            if f.currency is not None:
                where.append(f"total_minor {op} ?")
                params.append(minor_units(amount, f.currency))
                continue
            # No currency: the amount in each invoice's own currency, one term per number of
            # minor digits (what turns the amount into the stored minor units).
            terms = []
            for digits in sorted(set(MINOR_UNITS.values())):
                codes = sorted(c for c, d in MINOR_UNITS.items() if d == digits)
                terms.append(
                    f"(currency IN ({', '.join('?' * len(codes))}) AND total_minor {op} ?)"
                )
                params.extend([*codes, int(amount.scaleb(digits))])
            where.append(f"({' OR '.join(terms)})")
        for column, op, day in (
            ("issued_on", ">=", f.issued_from),
            ("issued_on", "<=", f.issued_to),
            ("due_on", "<", f.due_before),
        ):
            if day is not None:
                where.append(f"{column} {op} ?")
                params.append(day.isoformat())
        if before is not None:
            where.append("issued_at < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        limit_clause = ""
        if limit is not None:
            limit_clause = " LIMIT ?"
            params.append(limit)
        rows = await self._db.fetch(
            f"SELECT data, status, issued_at FROM rm_invoices{clause}"  # noqa: S608 - fixed parts
            f" ORDER BY issued_at DESC{limit_clause}",
            params,
        )
        return [(*self._row(data, status), int(cursor)) for data, status, cursor in rows]

    async def invoice_pdf(self, invoice_id: uuid.UUID) -> bytes | None:
        found = await self.get_invoice(invoice_id)
        if found is None:
            return None
        invoice, status = found
        return self._render_pdf(invoice, status.upper())


_RULE_KINDS: tuple[type[TaxRateSet | TaxRuleSet | TaxRuleEnded], ...] = (
    TaxRateSet,
    TaxRuleSet,
    TaxRuleEnded,
)
_EXEMPTION_KINDS: tuple[type[TaxExemptionGranted | TaxExemptionRevoked], ...] = (
    TaxExemptionGranted,
    TaxExemptionRevoked,
)


class BillingCatalogueProjection(Projection):
    """What a bill run needs to know about every customer: their subscriptions (as started;
    each one's changes are read from its own stream when billed), that they are registered,
    each region level's tax rules and each customer's tax exemptions (in ledger order: which
    is in force is decided on the tax point, invoicing.domain.tax). Folded by invoicing from
    the published events, so the bill run reads its own tables, not another service's."""

    name = "invoicing.catalogue"
    #: 3: how far each invoiced period's usage is billed (late usage, ADR 0032); 4: releases
    version = 4
    tables = (
        "rm_billing_customers",
        "rm_billing_subscriptions",
        "rm_billing_tax_rules",
        "rm_billing_tax_exemptions",
        "rm_billing_usage_billed",
    )
    ddl = (
        "DROP TABLE IF EXISTS rm_billing_tax_rates",  # version 1's, replaced by the rules
        "CREATE TABLE IF NOT EXISTS rm_billing_customers (customer_id TEXT PRIMARY KEY,"
        " data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rm_billing_subscriptions (subscription_id TEXT PRIMARY KEY,"
        " customer_id TEXT NOT NULL, position BIGINT NOT NULL, data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rm_billing_tax_rules (position BIGINT PRIMARY KEY,"
        " region TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rm_billing_tax_exemptions (position BIGINT PRIMARY KEY,"
        " customer_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rm_billing_usage_billed (customer_id TEXT NOT NULL,"
        " period TEXT NOT NULL, billed_through BIGINT NOT NULL, void INTEGER NOT NULL,"
        " PRIMARY KEY (customer_id, period))",
    )
    types = frozenset(
        {
            CustomerRegistered.event_type,
            SubscriptionStarted.event_type,
            InvoiceIssued.event_type,
            LateUsageBilled.event_type,
            LateUsageReleased.event_type,
            InvoiceVoided.event_type,
            *(kind.event_type for kind in _RULE_KINDS),
            *(kind.event_type for kind in _EXEMPTION_KINDS),
        }
    )

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """As event by event, grouped by statement: rows of different tables commute."""
        statements, parked = super().fold(events)
        return in_runs(statements, first=(_USAGE_BILLED_INSERT,)), parked

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        if event.type in (
            InvoiceIssued.event_type,
            LateUsageBilled.event_type,
            LateUsageReleased.event_type,
            InvoiceVoided.event_type,
        ):
            return _usage_billed(event)
        if (event.type, event.version) == (
            CustomerRegistered.event_type,
            CustomerRegistered.event_version,
        ):
            # validated as recorded, the e-mail's form aside (CustomerRecord says why)
            customer = CustomerRecord.model_validate(event.data)
            return [
                (
                    "INSERT INTO rm_billing_customers (customer_id, data) VALUES (?, ?)"
                    " ON CONFLICT (customer_id) DO NOTHING",
                    (customer.customer_id, customer.model_dump_json()),
                )
            ]
        decoded = event.decode()
        if isinstance(decoded, SubscriptionStarted):
            return [
                (
                    "INSERT INTO rm_billing_subscriptions (subscription_id, customer_id,"
                    " position, data) VALUES (?, ?, ?, ?) ON CONFLICT (subscription_id) DO NOTHING",
                    (
                        decoded.subscription_id,
                        decoded.customer_id,
                        event.global_position,
                        decoded.model_dump_json(),
                    ),
                )
            ]
        if isinstance(decoded, TaxExemptionGranted | TaxExemptionRevoked):
            return [
                (
                    "INSERT INTO rm_billing_tax_exemptions (position, customer_id, type, data)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (position) DO NOTHING",
                    (
                        event.global_position,
                        decoded.customer_id,
                        event.type,
                        decoded.model_dump_json(),
                    ),
                )
            ]
        assert isinstance(decoded, TaxRateSet | TaxRuleSet | TaxRuleEnded)
        return [
            (
                "INSERT INTO rm_billing_tax_rules (position, region, type, data)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (position) DO NOTHING",
                (event.global_position, decoded.region, event.type, decoded.model_dump_json()),
            )
        ]


_USAGE_BILLED_INSERT = (
    "INSERT INTO rm_billing_usage_billed (customer_id, period, billed_through, void)"
    " VALUES (?, ?, ?, 0) ON CONFLICT (customer_id, period) DO NOTHING"
)
_INVOICE_STREAM = re.compile(r"^invoice-(.+)-(\d{4}-\d{2})$")


def _usage_billed(event: RecordedEvent) -> list[Statement]:
    """An invoice's period: billed through its `usage_through`, then each LateUsageBilled's;
    void once voided. Read from the data as recorded (the bill run wrote 100,000 of them)."""
    match = _INVOICE_STREAM.match(event.stream)
    if match is None:
        raise ValueError(f"{event.type} in {event.stream!r}, not an invoice's stream")
    customer_id, period = match.groups()
    data = event.data
    if event.type == InvoiceIssued.event_type:
        through = usage_billed_through(data)
        if through is None:
            return []  # issued before invoices recorded what they billed: no late usage
        return [(_USAGE_BILLED_INSERT, (customer_id, period, through))]
    if event.type == LateUsageReleased.event_type:
        # a filter only (the invoice's stream decides): lowered to the bound before the
        # voided adjustment, so the period is looked at again
        through = int(data["billed_through"])
        return [
            (
                "UPDATE rm_billing_usage_billed SET billed_through = CASE WHEN billed_through > ?"
                " THEN ? ELSE billed_through END WHERE customer_id = ? AND period = ?",
                (through, through, customer_id, period),
            )
        ]
    if event.type == LateUsageBilled.event_type:
        through = int(data["usage_through"])
        return [
            (
                "UPDATE rm_billing_usage_billed SET billed_through = CASE WHEN billed_through < ?"
                " THEN ? ELSE billed_through END WHERE customer_id = ? AND period = ?",
                (through, through, customer_id, period),
            )
        ]
    return [
        (
            "UPDATE rm_billing_usage_billed SET void = 1 WHERE customer_id = ? AND period = ?",
            (customer_id, period),
        )
    ]


class ProjectedCatalogue:
    """The bill run's catalogue from the billing catalogue projection."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def __call__(self) -> BillRunCatalogue:
        customers = {
            cid: CustomerRecord.model_validate_json(data)
            for cid, data in await self._db.fetch(
                "SELECT customer_id, data FROM rm_billing_customers"
            )
        }
        subscriptions: dict[str, list[SubscriptionStarted]] = {}
        for (data,) in await self._db.fetch(
            "SELECT data FROM rm_billing_subscriptions ORDER BY position"
        ):
            started = SubscriptionStarted.model_validate_json(data)
            subscriptions.setdefault(started.customer_id, []).append(started)
        rules: dict[str, list[AnyRuleEvent]] = {}
        kinds = {kind.event_type: kind for kind in _RULE_KINDS}
        for region, type_, data in await self._db.fetch(
            "SELECT region, type, data FROM rm_billing_tax_rules ORDER BY position"
        ):
            rules.setdefault(region, []).append(kinds[type_].model_validate_json(data))
        exemptions: dict[str, list[AnyExemptionEvent]] = {}
        exemption_kinds = {kind.event_type: kind for kind in _EXEMPTION_KINDS}
        for customer_id, type_, data in await self._db.fetch(
            "SELECT customer_id, type, data FROM rm_billing_tax_exemptions ORDER BY position"
        ):
            exemptions.setdefault(customer_id, []).append(
                exemption_kinds[type_].model_validate_json(data)
            )
        usage_billed = {
            (customer_id, period): int(through)
            for customer_id, period, through in await self._db.fetch(
                "SELECT customer_id, period, billed_through FROM rm_billing_usage_billed"
                " WHERE void = 0"
            )
        }
        return BillRunCatalogue(
            customers=customers,
            tax_rules=rules,
            subscriptions=subscriptions,
            exemptions=exemptions,
            usage_billed=usage_billed,
        )


class CreditNotesProjection(Projection):
    """Every credit note, for the history: by number, customer, invoice and period."""

    name = "invoicing.credit-notes"
    version = 1
    tables = ("rm_credit_notes",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_credit_notes (credit_note_id TEXT PRIMARY KEY,"
        " number TEXT NOT NULL, invoice_id TEXT NOT NULL, invoice_number TEXT NOT NULL,"
        " customer_id TEXT NOT NULL, period TEXT NOT NULL, currency TEXT NOT NULL,"
        " total_minor BIGINT NOT NULL, issued_on TEXT NOT NULL, position BIGINT NOT NULL,"
        " data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_credit_notes_by_number ON rm_credit_notes (number)",
        "CREATE INDEX IF NOT EXISTS rm_credit_notes_by_customer"
        " ON rm_credit_notes (customer_id, position)",
        "CREATE INDEX IF NOT EXISTS rm_credit_notes_by_invoice ON rm_credit_notes (invoice_id)",
        "CREATE INDEX IF NOT EXISTS rm_credit_notes_by_position ON rm_credit_notes (position)",
    )
    types = frozenset({CreditNoteIssued.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        data = event.data
        currency = str(data["currency"])
        return [
            (
                "INSERT INTO rm_credit_notes (credit_note_id, number, invoice_id, invoice_number,"
                " customer_id, period, currency, total_minor, issued_on, position, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (credit_note_id) DO NOTHING",
                (
                    str(uuid.UUID(str(data["credit_note_id"]))),
                    str(data["number"]),
                    str(uuid.UUID(str(data["invoice_id"]))),
                    str(data["invoice_number"]),
                    str(data["customer_id"]),
                    str(data["period"]),
                    currency,
                    minor_units(Decimal(data["total"]["amount"]), currency),
                    str(data["issued_at"])[:10],
                    event.global_position,
                    event.data_json(),
                ),
            )
        ]


class ProjectedCreditNotes:
    """Credit notes from their read model."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def find(self, reference: str) -> CreditNoteIssued | None:
        """By credit note id or number."""
        try:
            key, column = str(uuid.UUID(reference)), "credit_note_id"
        except ValueError:
            key, column = reference, "number"
        rows = await self._db.fetch(
            f"SELECT data FROM rm_credit_notes WHERE {column} = ? LIMIT 1",  # noqa: S608 - a column name of two
            (key,),
        )
        return CreditNoteIssued.model_validate_json(rows[0][0]) if rows else None

    async def search(
        self,
        *,
        customer_id: str | None = None,
        invoice_id: uuid.UUID | None = None,
        period: str | None = None,
        limit: int = 1000,
        before: int | None = None,
    ) -> list[tuple[CreditNoteIssued, int]]:
        """(credit note, cursor) newest first; pass the last cursor as `before` for more."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("customer_id", customer_id),
            ("invoice_id", None if invoice_id is None else str(invoice_id)),
            ("period", period),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("position < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.fetch(
            f"SELECT data, position FROM rm_credit_notes{clause}"  # noqa: S608 - fixed columns
            " ORDER BY position DESC LIMIT ?",
            (*params, limit),
        )
        return [(CreditNoteIssued.model_validate_json(data), int(pos)) for data, pos in rows]
