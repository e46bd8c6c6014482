"""record_manual_payment on the real SQLite ledger: once per reference, refused when invalid."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.invoicing import InvoiceIssued, invoice_stream
from ispbill_core.contracts.payments import PaymentReceived, payment_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from payments.application.record_manual_payment import MANUAL_GATEWAY, record_manual_payment
from payments.domain.commands import RecordManualPayment
from payments.domain.errors import DuplicatePaymentReference, InvalidPayment

pytestmark = pytest.mark.integration

AT = datetime(2026, 4, 2, 10, 0, tzinfo=UTC)


class LedgerInvoices:
    """The InvoiceLookup port answered from the ledger's InvoiceIssued events."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store

    async def find(self, reference: str) -> tuple[InvoiceIssued, str] | None:
        for invoice in await all_events_of(self._store, InvoiceIssued):
            if reference in (invoice.number, str(invoice.invoice_id)):
                return invoice, "issued"
        return None


class TogetherInvoices(LedgerInvoices):
    """Lets `parties` commands past the lookup only together, so that they race."""

    def __init__(self, store: SQLiteEventStore, parties: int) -> None:
        super().__init__(store)
        self._barrier = asyncio.Barrier(parties)

    async def find(self, reference: str) -> tuple[InvoiceIssued, str] | None:
        found = await super().find(reference)
        await self._barrier.wait()
        return found


def invoice_event(customer_id: str, number: str, currency: str = "USD") -> InvoiceIssued:
    total = Money.of("30.00", currency)
    return InvoiceIssued(
        invoice_id=deterministic_id("invoice", customer_id, "2026-03"),
        number=number,
        customer_id=customer_id,
        customer_name="Alice",
        customer_email="alice@example.com",
        period="2026-03",
        issued_at=datetime(2026, 4, 1, tzinfo=UTC),
        due_on=date(2026, 4, 15),
        currency=currency,
        lines=(),
        subtotal=total,
        taxes=(),
        tax_total=Money.zero(currency),
        total=total,
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    for invoice in [invoice_event("c-1", "INV-000001"), invoice_event("c-2", "INV-000002", "JPY")]:
        await s.append(
            invoice_stream(invoice.customer_id, invoice.period),
            [new_event(invoice, id=invoice.invoice_id, occurred_at=invoice.issued_at)],
            NO_STREAM,
        )
    yield s
    await s.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(AT)


def cmd(amount: str, reference: str = "BANK-2026-0001", invoice: str = "INV-000001"):
    return RecordManualPayment(invoice=invoice, amount=amount, reference=reference)


async def payments(store: SQLiteEventStore) -> list[PaymentReceived]:
    return await all_events_of(store, PaymentReceived)


async def test_a_manual_payment_is_recorded_against_its_invoice(store, clock) -> None:
    payment = await record_manual_payment(store, clock, LedgerInvoices(store), cmd("12.5"), "clerk")
    assert payment.amount == Money.of("12.50", "USD")
    assert payment.customer_id == "c-1"
    assert payment.invoice_id == invoice_event("c-1", "INV-000001").invoice_id
    assert payment.gateway == MANUAL_GATEWAY
    assert payment.received_at == AT
    [recorded] = await store.read_stream(payment_stream(MANUAL_GATEWAY, "BANK-2026-0001"))
    assert recorded.decode() == payment
    assert recorded.metadata.actor == "clerk"


async def test_an_invoice_is_found_by_its_id_as_well(store, clock) -> None:
    invoice_id = str(invoice_event("c-1", "INV-000001").invoice_id)
    payment = await record_manual_payment(
        store, clock, LedgerInvoices(store), cmd("5", invoice=invoice_id), "clerk"
    )
    assert payment.customer_id == "c-1"


async def test_the_same_payment_entered_twice_is_recorded_once(store, clock) -> None:
    lookup = LedgerInvoices(store)
    first = await record_manual_payment(store, clock, lookup, cmd("30.00"), "clerk")
    clock.set(datetime(2026, 4, 3, tzinfo=UTC))
    second = await record_manual_payment(store, clock, lookup, cmd("30"), "other clerk")
    assert second == first
    assert len(await payments(store)) == 1


@pytest.mark.parametrize(
    "other", [cmd("29.99"), cmd("30.00", invoice="INV-000002")], ids=["amount", "invoice"]
)
async def test_the_same_reference_for_another_payment_is_refused(store, clock, other) -> None:
    lookup = LedgerInvoices(store)
    await record_manual_payment(store, clock, lookup, cmd("30.00"), "clerk")
    with pytest.raises(DuplicatePaymentReference):
        await record_manual_payment(store, clock, lookup, other, "clerk")
    [payment] = await payments(store)
    assert payment.amount == Money.of("30.00", "USD")


async def test_the_same_reference_entered_twice_at_once_with_two_amounts_is_refused_once(
    store, clock
) -> None:
    lookup = TogetherInvoices(store, 2)
    results = await asyncio.gather(
        record_manual_payment(store, clock, lookup, cmd("30.00"), "clerk"),
        record_manual_payment(store, clock, lookup, cmd("3.00"), "other clerk"),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, PaymentReceived)]
    refused = [r for r in results if isinstance(r, DuplicatePaymentReference)]
    assert len(accepted) == 1 and len(refused) == 1, results
    [recorded] = await payments(store)
    assert recorded == accepted[0]


async def test_the_same_payment_entered_twice_at_once_is_recorded_once(store, clock) -> None:
    lookup = TogetherInvoices(store, 3)
    results = await asyncio.gather(
        *(record_manual_payment(store, clock, lookup, cmd("30.00"), "clerk") for _ in range(3))
    )
    [recorded] = await payments(store)
    assert all(r == recorded for r in results)


async def test_an_unknown_invoice_is_an_invalid_payment(store, clock) -> None:
    with pytest.raises(InvalidPayment):
        await record_manual_payment(
            store, clock, LedgerInvoices(store), cmd("30.00", invoice="INV-999999"), "clerk"
        )
    assert await payments(store) == []


@pytest.mark.parametrize("amount", ["0", "0.00", "0.001"])
async def test_non_positive_or_too_precise_amounts_are_invalid(store, clock, amount) -> None:
    with pytest.raises(InvalidPayment):
        await record_manual_payment(store, clock, LedgerInvoices(store), cmd(amount), "clerk")
    assert await payments(store) == []


@pytest.mark.parametrize(
    "amount",
    ["abc", "", "1,000.00", "NaN", "Infinity", "1e999999", "1e2", "+5", " 5", "5\n",
     "\u0665", "1" + "0" * 26, "1000000000000", "-5.00"],
)  # fmt: skip
def test_malformed_or_huge_amounts_are_refused_at_the_edge(amount) -> None:
    with pytest.raises(ValidationError):
        cmd(amount)


async def test_an_amount_above_the_currencys_maximum_is_invalid(store, clock, monkeypatch) -> None:
    monkeypatch.setenv("ISPBILL_MONEY_MAX_USD", "1000")
    with pytest.raises(InvalidPayment, match="more than 1000 USD"):
        await record_manual_payment(store, clock, LedgerInvoices(store), cmd("1000.01"), "clerk")
    assert await payments(store) == []


async def test_the_amount_is_in_the_invoices_currency_and_minor_unit(store, clock) -> None:
    payment = await record_manual_payment(
        store, clock, LedgerInvoices(store), cmd("3000", invoice="INV-000002"), "clerk"
    )
    assert payment.amount.currency == "JPY"
    assert payment.amount.amount == Decimal(3000)


@pytest.mark.parametrize("reference", ["", "has space", "semi;colon", "x" * 101])
def test_a_reference_is_a_plain_token(reference: str) -> None:
    with pytest.raises(ValidationError):
        cmd("1.00", reference=reference)
