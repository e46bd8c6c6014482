"""Use case: what each customer owed on a past day (`ispbill reports receivables --as-of`).

Balance = invoices issued - credit notes issued - payments received, each counted on the day
its document bears (the invoice's and credit note's `issued_at`, the payment's `received_at`,
as days in the ISP's time zone), up to and including the day asked for. An invoice voided on or
before that day counts for nothing; voided later, it was owed then. A payment counts whether or
not it was allocated to an invoice (an overpayment is credit: a negative balance). Read from
the log, not from the read models, so any past day can be asked and the answer never changes
once the day is over (documents dated later do not count, whenever they were recorded).
Amounts come from the events' data as recorded, to the minor unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from invoicing.application.csv_export import csv_text
from ispbill_core.contracts.invoicing import CreditNoteIssued, InvoiceIssued, InvoiceVoided
from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStore
from ispbill_core.eventstore.queries import scan_to_head
from ispbill_core.money import quantize

CSV_COLUMNS = ("customer_id", "currency", "invoiced", "credited", "paid", "balance", "invoices")
_TYPES = (
    InvoiceIssued.event_type,
    InvoiceVoided.event_type,
    CreditNoteIssued.event_type,
    PaymentReceived.event_type,
)


@dataclass
class ReceivableRow:
    customer_id: str
    currency: str
    invoiced: Decimal = Decimal(0)
    credited: Decimal = Decimal(0)
    paid: Decimal = Decimal(0)
    #: invoices counted (issued by the day, not void by it)
    invoices: int = 0

    @property
    def balance(self) -> Decimal:
        return self.invoiced - self.credited - self.paid

    def as_text(self) -> dict[str, str | int]:
        """Amounts with the currency's minor units ("0.00", "-5.50")."""

        def text(amount: Decimal) -> str:
            return f"{quantize(amount, self.currency):f}"

        return {
            "customer_id": self.customer_id,
            "currency": self.currency,
            "invoiced": text(self.invoiced),
            "credited": text(self.credited),
            "paid": text(self.paid),
            "balance": text(self.balance),
            "invoices": self.invoices,
        }


def _day(text: str, tz: ZoneInfo) -> date:
    return datetime.fromisoformat(text).astimezone(tz).date()


async def receivables_as_of(
    store: EventStore, tz: ZoneInfo, as_of: date, *, customer_id: str | None = None
) -> list[ReceivableRow]:
    """Every customer's balance at the end of `as_of` (one row per customer and currency,
    by customer id); see the module's docstring for what counts."""
    invoices: dict[str, tuple[str, str, Decimal]] = {}  # invoice id -> customer, currency, total
    rows: dict[tuple[str, str], ReceivableRow] = {}
    voided: set[str] = set()

    def row(customer: str, currency: str) -> ReceivableRow:
        key = (customer, currency)
        found = rows.get(key)
        if found is None:
            found = rows[key] = ReceivableRow(customer, currency)
        return found

    async for recorded in scan_to_head(store, _TYPES):
        _fold(recorded, tz, as_of, customer_id, invoices, voided, row)
    for invoice_id in voided:
        customer, currency, total = invoices[invoice_id]
        target = row(customer, currency)
        target.invoiced -= total
        target.invoices -= 1
    return [rows[key] for key in sorted(rows) if _active(rows[key])]


def _active(row: ReceivableRow) -> bool:
    return bool(row.invoices or row.invoiced or row.credited or row.paid)


def _fold(
    recorded: RecordedEvent,
    tz: ZoneInfo,
    as_of: date,
    customer_id: str | None,
    invoices: dict[str, tuple[str, str, Decimal]],
    voided: set[str],
    row: Callable[[str, str], ReceivableRow],
) -> None:
    data = recorded.data
    kind = recorded.type
    if kind == InvoiceVoided.event_type:
        invoice_id = str(data["invoice_id"])
        if invoice_id in invoices and _day(str(data["voided_at"]), tz) <= as_of:
            voided.add(invoice_id)
        return
    customer = str(data["customer_id"])
    if customer_id is not None and customer != customer_id:
        return
    if kind == InvoiceIssued.event_type:
        if _day(str(data["issued_at"]), tz) > as_of:
            return
        total = data["total"]
        amount = Decimal(str(total["amount"]))
        invoices[str(data["invoice_id"])] = (customer, str(total["currency"]), amount)
        target = row(customer, str(total["currency"]))
        target.invoiced += amount
        target.invoices += 1
    elif kind == CreditNoteIssued.event_type:
        if _day(str(data["issued_at"]), tz) > as_of:
            return
        total = data["total"]
        row(customer, str(total["currency"])).credited += Decimal(str(total["amount"]))
    elif kind == PaymentReceived.event_type:
        if _day(str(data["received_at"]), tz) > as_of:
            return
        amount = data["amount"]
        row(customer, str(amount["currency"])).paid += Decimal(str(amount["amount"]))


def receivables_csv(rows: Iterable[ReceivableRow]) -> str:
    """RFC 4180 CSV (CRLF line ends), a header row first; amounts as plain decimals."""
    return csv_text(CSV_COLUMNS, (row.as_text() for row in rows))
