"""allocate_payment on the real SQLite ledger: paid once, only when fully covered."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from invoicing.application.allocate_payment import allocate_payment
from invoicing.application.close_billing_period import close_billing_period, invoice_id_for
from invoicing.application.queries import LedgerInvoiceQueries
from invoicing.application.settings import BillingSettings
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    CustomerRegistered,
    PlanDefined,
    SubscriptionStarted,
    customer_stream,
    plan_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import (
    InvoiceIssued,
    InvoicePaid,
    TaxRateSet,
    invoice_stream,
    tax_region_stream,
)
from ispbill_core.contracts.payments import PaymentReceived, payment_stream
from ispbill_core.events import DomainEvent, RecordedEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY, NO_STREAM, WrongExpectedVersion
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.money import Money
from ispbill_core.subscriber import TransientError

pytestmark = pytest.mark.integration

PERIOD = "2026-03"
AT = datetime(2026, 4, 1, tzinfo=UTC)


async def put(store: SQLiteEventStore, stream: str, event: DomainEvent) -> None:
    await store.append(
        stream,
        [new_event(event, id=deterministic_id("seed", stream, event), occurred_at=AT)],
        ANY,
    )


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@pytest.fixture
async def invoice(store) -> InvoiceIssued:
    """One issued invoice of 30.00 USD (an untaxed region, no usage)."""
    await put(store, tax_region_stream("X"), TaxRateSet(region="X", tax_name="untaxed", rate=0))
    await put(
        store,
        plan_stream("home"),
        PlanDefined(
            plan_id="home",
            name="Home",
            monthly_fee=Money.of("30.00", "USD"),
            included_bytes=0,
            overage_price=Money.of("1.00", "USD"),
        ),
    )
    await put(
        store,
        customer_stream("c-1"),
        CustomerRegistered(customer_id="c-1", name="Alice", email="a@example.com", tax_region="X"),
    )
    await put(
        store,
        subscription_stream("sub-1"),
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 1, 1),
        ),
    )
    await close_billing_period(store, FixedClock(AT), BillingSettings(ZoneInfo("UTC")), PERIOD)
    [issued] = await all_events_of(store, InvoiceIssued)
    assert issued.total == Money.of("30.00", "USD")
    return issued


async def pay(
    store: SQLiteEventStore,
    ref: str,
    amount: str,
    *,
    invoice_id: uuid.UUID | None,
    currency: str = "USD",
    minutes: int = 0,
    period: str | None = PERIOD,
) -> RecordedEvent:
    payment = PaymentReceived(
        payment_id=deterministic_id("payment", "bank", ref),
        gateway="bank",
        transaction_ref=ref,
        customer_id="c-1",
        invoice_id=invoice_id,
        amount=Money.of(amount, currency),
        received_at=AT + timedelta(minutes=minutes),
        invoice_period=period if invoice_id is not None else None,
    )
    stream = payment_stream("bank", ref)
    await store.append(
        stream,
        [new_event(payment, id=payment.payment_id, occurred_at=payment.received_at)],
        NO_STREAM,
    )
    [recorded] = await store.read_stream(stream)
    return recorded


async def paid_events(store: SQLiteEventStore) -> list[InvoicePaid]:
    return await all_events_of(store, InvoicePaid)


async def status(store: SQLiteEventStore, invoice: InvoiceIssued) -> str:
    found = await LedgerInvoiceQueries(store, lambda i, s: b"").get_invoice(invoice.invoice_id)
    assert found is not None
    return found[1]


async def test_a_full_payment_marks_the_invoice_paid(store, invoice) -> None:
    payment = await pay(store, "r-1", "30.00", invoice_id=invoice.invoice_id)
    paid = await allocate_payment(store, payment)
    assert paid is not None
    assert paid.amount_paid == Money.of("30.00", "USD")
    assert paid.payment_id == payment.decode().payment_id  # type: ignore[attr-defined]
    events = await store.read_stream(invoice_stream("c-1", PERIOD))
    assert [e.type for e in events] == ["InvoiceIssued", "PaymentAllocated", "InvoicePaid"]
    assert events[2].metadata.causation_id == payment.id
    assert await status(store, invoice) == "paid"


async def test_partial_payments_add_up_and_only_the_covering_one_marks_it_paid(
    store, invoice
) -> None:
    first = await pay(store, "r-1", "10.00", invoice_id=invoice.invoice_id)
    assert await allocate_payment(store, first) is None
    assert await status(store, invoice) == "issued"
    second = await pay(store, "r-2", "19.99", invoice_id=invoice.invoice_id, minutes=1)
    assert await allocate_payment(store, second) is None
    assert await paid_events(store) == []
    third = await pay(store, "r-3", "0.01", invoice_id=invoice.invoice_id, minutes=2)
    paid = await allocate_payment(store, third)
    assert paid is not None
    assert paid.amount_paid == Money.of("30.00", "USD")
    assert paid.paid_at == AT + timedelta(minutes=2)
    assert await status(store, invoice) == "paid"


async def test_an_invoice_is_marked_paid_once(store, invoice) -> None:
    payment = await pay(store, "r-1", "30.00", invoice_id=invoice.invoice_id)
    extra = await pay(store, "r-2", "5.00", invoice_id=invoice.invoice_id, minutes=1)
    assert await allocate_payment(store, payment) is not None
    assert await allocate_payment(store, payment) is None  # redelivered
    assert await allocate_payment(store, extra) is None  # a later overpayment
    assert len(await paid_events(store)) == 1


async def test_concurrent_allocations_record_one_invoice_paid(store, invoice) -> None:
    payments = [
        await pay(store, f"r-{n}", "15.00", invoice_id=invoice.invoice_id, minutes=n)
        for n in range(4)
    ]

    async def allocate(payment: RecordedEvent) -> None:
        while True:  # as the subscriber does: a concurrent allocation won, read again
            try:
                await allocate_payment(store, payment)
                return
            except WrongExpectedVersion:
                await asyncio.sleep(0)

    await asyncio.gather(*(allocate(p) for p in payments * 2))
    [paid] = await paid_events(store)
    assert paid.invoice_id == invoice.invoice_id
    assert paid.amount_paid == Money.of("30.00", "USD")
    events = await store.read_stream(invoice_stream("c-1", PERIOD))
    assert [e.type for e in events] == [
        "InvoiceIssued",
        "PaymentAllocated",
        "PaymentAllocated",
        "InvoicePaid",
    ]


async def test_an_overpayment_marks_the_invoice_paid(store, invoice) -> None:
    payment = await pay(store, "r-1", "50.00", invoice_id=invoice.invoice_id)
    paid = await allocate_payment(store, payment)
    assert paid is not None
    assert paid.amount_paid == Money.of("50.00", "USD")


async def test_a_payment_in_another_currency_is_refused_for_parking(store, invoice) -> None:
    """Not silently ignored: the subscriber parks it, for a clerk to look at."""
    payment = await pay(store, "r-1", "3000.00", invoice_id=invoice.invoice_id, currency="BDT")
    with pytest.raises(ValueError, match="in BDT"):
        await allocate_payment(store, payment)
    assert await paid_events(store) == []


async def test_a_payment_without_the_invoice_period_is_located_through_the_read_model(
    store, invoice
) -> None:
    """Payments recorded before PaymentReceived named the invoice's period."""
    payment = await pay(store, "r-1", "30.00", invoice_id=invoice.invoice_id, period=None)

    class Locator:
        def __init__(self, known: bool) -> None:
            self.known = known

        async def period_of(self, invoice_id: uuid.UUID) -> str | None:
            return PERIOD if self.known and invoice_id == invoice.invoice_id else None

    with pytest.raises(TransientError):  # the read model has not caught up: retried later
        await allocate_payment(store, payment, Locator(known=False))
    paid = await allocate_payment(store, payment, Locator(known=True))
    assert paid is not None and paid.amount_paid == Money.of("30.00", "USD")


async def test_payments_of_other_invoices_do_not_count(store, invoice) -> None:
    other = await pay(
        store, "r-1", "30.00", invoice_id=invoice_id_for("c-1", "2026-02"), period="2026-02"
    )
    assert await allocate_payment(store, other) is None
    unallocated = await pay(store, "r-2", "30.00", invoice_id=None)
    assert await allocate_payment(store, unallocated) is None
    part = await pay(store, "r-3", "29.00", invoice_id=invoice.invoice_id)
    assert await allocate_payment(store, part) is None
    assert await paid_events(store) == []


async def test_a_payment_of_the_total_less_its_credit_notes_marks_it_paid(store, invoice) -> None:
    from invoicing.application.corrections import issue_credit_note

    settings = BillingSettings(ZoneInfo("UTC"))
    await issue_credit_note(
        store,
        FixedClock(AT),
        settings,
        invoice,
        amount=Money.of("10.00", "USD"),
        reason="outage",
        reference="T-1",
        actor="staff:clerk",
    )
    assert (
        await allocate_payment(
            store, await pay(store, "r-1", "15.00", invoice_id=invoice.invoice_id)
        )
        is None
    )
    paid = await allocate_payment(
        store, await pay(store, "r-2", "5.00", invoice_id=invoice.invoice_id, minutes=1)
    )
    assert paid is not None and paid.amount_paid == Money.of("20.00", "USD")


async def test_a_credit_note_that_leaves_nothing_owed_settles_a_part_paid_invoice(
    store, invoice
) -> None:
    from invoicing.application.corrections import issue_credit_note

    await allocate_payment(store, await pay(store, "r-1", "25.00", invoice_id=invoice.invoice_id))
    await issue_credit_note(
        store,
        FixedClock(AT),
        BillingSettings(ZoneInfo("UTC")),
        invoice,
        amount=Money.of("5.00", "USD"),
        reason="outage",
        reference="T-1",
        actor="staff:clerk",
    )
    [paid] = await paid_events(store)
    assert paid.amount_paid == Money.of("25.00", "USD")


async def test_a_void_invoice_takes_no_payment_and_a_paid_one_cannot_be_voided(
    store, invoice
) -> None:
    from invoicing.application.corrections import void_invoice
    from invoicing.domain.corrections import CorrectionRefused

    await void_invoice(store, FixedClock(AT), invoice, reason="wrong", actor="staff:clerk")
    assert (
        await allocate_payment(
            store, await pay(store, "r-1", "30.00", invoice_id=invoice.invoice_id)
        )
        is None
    )
    events = await store.read_stream(invoice_stream("c-1", PERIOD))
    assert [e.type for e in events] == ["InvoiceIssued", "InvoiceVoided"]
    # another period's invoice, paid: voiding it is refused
    await close_billing_period(store, FixedClock(AT), BillingSettings(ZoneInfo("UTC")), "2026-04")
    april = next(i for i in await all_events_of(store, InvoiceIssued) if i.period == "2026-04")
    await allocate_payment(
        store, await pay(store, "r-2", "1.00", invoice_id=april.invoice_id, period="2026-04")
    )
    with pytest.raises(CorrectionRefused, match="payments"):
        await void_invoice(store, FixedClock(AT), april, reason="x", actor="staff:clerk")


async def test_credit_notes_number_per_year_with_a_yearly_format(store, invoice) -> None:
    from invoicing.application.corrections import issue_credit_note

    yearly = BillingSettings(ZoneInfo("UTC"), number_format="{series}-{year}-{seq:04d}")
    note, _ = await issue_credit_note(
        store,
        FixedClock(AT),
        yearly,
        invoice,
        amount=Money.of("1.00", "USD"),
        reason="outage",
        reference="T-1",
        actor="staff:clerk",
    )
    assert note.number == "CN-2026-0001"


async def test_a_payment_for_an_invoice_credited_in_full_stays_unallocated(store, invoice) -> None:
    from invoicing.application.corrections import issue_credit_note

    await issue_credit_note(
        store,
        FixedClock(AT),
        BillingSettings(ZoneInfo("UTC")),
        invoice,
        amount=None,
        reason="billed by mistake",
        reference="T-1",
        actor="staff:clerk",
    )
    payment = await pay(store, "r-1", "30.00", invoice_id=invoice.invoice_id)
    assert await allocate_payment(store, payment) is None
    events = await store.read_stream(invoice_stream("c-1", PERIOD))
    assert [e.type for e in events] == ["InvoiceIssued", "CreditNoteIssued"]


class _BothReadFirst:
    """The ledger, except that an append waits until two credit notes have read the invoice:
    two clerks judging the same state, whatever the scheduling."""

    def __init__(self, inner: SQLiteEventStore) -> None:
        self._inner = inner
        self._reads = 0
        self._both_read = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def read_stream(self, stream: str, **kwargs: object) -> list[RecordedEvent]:
        events = await self._inner.read_stream(stream, **kwargs)  # type: ignore[arg-type]
        if stream.startswith("invoice-c-"):
            self._reads += 1
            if self._reads >= 2:
                self._both_read.set()
        return events

    async def append_many(self, batches: object, **kwargs: object) -> object:
        await asyncio.wait_for(self._both_read.wait(), timeout=10)
        return await self._inner.append_many(batches, **kwargs)  # type: ignore[arg-type]


async def test_two_credit_notes_judged_on_the_same_state_never_pass_the_total(
    store, invoice
) -> None:
    from invoicing.application.corrections import issue_credit_note
    from invoicing.domain.corrections import CorrectionRefused

    racing = _BothReadFirst(store)

    async def credit(reference: str) -> object:
        try:
            note, _ = await issue_credit_note(
                racing,  # type: ignore[arg-type]
                FixedClock(AT),
                BillingSettings(ZoneInfo("UTC")),
                invoice,
                amount=Money.of("20.00", "USD"),
                reason="goodwill",
                reference=reference,
                actor="staff:clerk",
            )
            return note
        except CorrectionRefused as exc:
            return exc

    results = await asyncio.gather(credit("A"), credit("B"))
    assert sorted(type(r).__name__ for r in results) == ["CorrectionRefused", "CreditNoteIssued"]
    events = await store.read_stream(invoice_stream("c-1", PERIOD))
    assert [e.type for e in events] == ["InvoiceIssued", "CreditNoteIssued"]
