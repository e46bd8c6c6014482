"""Credit notes and voids, pure (invoicing.domain.corrections): golden figures by hand, and
properties: credit notes add up to the invoice exactly and never exceed it."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing.domain.corrections import (
    CorrectionRefused,
    InvoiceAccount,
    check_void,
    draft_credit_note,
)
from invoicing.domain.generator import taxed_draft
from invoicing.domain.tax import TaxRounding, TaxRule
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    InvoiceIssued,
    InvoiceLine,
    InvoiceVoided,
    LineKind,
)
from ispbill_core.money import Money

pytestmark = pytest.mark.unit

SD = TaxRule(tax_code="SD", name="SD", rate=Decimal("0.10"), region="BD")
VAT = TaxRule(
    tax_code="VAT", name="VAT", rate=Decimal("0.15"), region="BD", compound=True, sequence=1
)
AT = datetime(2026, 3, 1, tzinfo=UTC)


def line(amount: str, currency: str = "BDT", inclusive: bool = False) -> InvoiceLine:
    price = Money.of(amount, currency)
    return InvoiceLine(
        kind=LineKind.RECURRING,
        description="Plan Home",
        quantity=Decimal(1),
        unit="month",
        unit_price=price,
        amount=price,
        tax_inclusive=inclusive,
    )


def invoice(lines: list[InvoiceLine], rules: list[TaxRule], mode=TaxRounding.PER_INVOICE):
    draft = taxed_draft(lines, rules, (), mode)
    return InvoiceIssued(
        invoice_id=uuid.uuid4(),
        number="INV-000001",
        customer_id="c-1",
        customer_name="C",
        customer_email="c@example.com",
        period="2026-02",
        issued_at=AT,
        due_on=date(2026, 3, 15),
        currency=draft.currency,
        lines=draft.lines,
        subtotal=draft.subtotal,
        taxes=draft.taxes,
        tax_total=draft.tax_total,
        total=draft.total,
    )


def note_of(account: InvoiceAccount, draft, n: int) -> CreditNoteIssued:
    return CreditNoteIssued(
        credit_note_id=uuid.uuid4(),
        number=f"CN-{n:06d}",
        invoice_id=account.invoice.invoice_id,
        invoice_number=account.invoice.number,
        customer_id="c-1",
        period="2026-02",
        issued_at=AT,
        reason="r",
        reference=f"ref-{n}",
        currency=account.currency,
        lines=draft.lines,
        subtotal=draft.subtotal,
        taxes=draft.taxes,
        tax_total=draft.tax_total,
        total=draft.total,
        invoice_credited=account.credited + draft.total,
    )


def test_a_full_credit_note_mirrors_the_invoice() -> None:
    inv = invoice([line("1000.00")], [SD, VAT])  # 1000 + SD 100 + VAT 165 = 1265
    draft = draft_credit_note(InvoiceAccount(inv), None, "wrong plan")
    assert (draft.subtotal, draft.tax_total, draft.total) == (
        inv.subtotal,
        inv.tax_total,
        inv.total,
    )
    assert [(t.tax_code, t.taxable, t.amount) for t in draft.taxes] == [
        (t.tax_code, t.taxable, t.amount) for t in inv.taxes
    ]
    assert [ln.kind for ln in draft.lines] == [LineKind.CREDIT]
    assert draft.lines[0].description == "Credit: Plan Home"


def test_a_partial_credit_takes_the_invoices_tax_proportions() -> None:
    inv = invoice([line("1000.00")], [SD, VAT])
    # 253.00 is a fifth of 1265.00: SD 20.00 of 200.00; VAT 33.00 of 220.00; value 200.00
    draft = draft_credit_note(InvoiceAccount(inv), Money.of("253.00", "BDT"), "outage")
    assert [(t.tax_code, str(t.taxable.amount), str(t.amount.amount)) for t in draft.taxes] == [
        ("SD", "200.00", "20.00"),
        ("VAT", "220.00", "33.00"),
    ]
    assert (str(draft.subtotal.amount), str(draft.total.amount)) == ("200.00", "253.00")
    assert draft.lines[0].description == "Credit of invoice INV-000001: outage"


def test_the_last_credit_takes_exactly_what_is_left() -> None:
    inv = invoice([line("0.10", "USD")], [VAT])  # 0.10 + VAT 0.02 (0.015 rounded up) = 0.12
    account = InvoiceAccount(inv)
    first = draft_credit_note(account, Money.of("0.05", "USD"), "r")
    account.credit_notes.append(note_of(account, first, 1))
    rest = draft_credit_note(account, None, "r")
    assert first.total + rest.total == inv.total
    assert first.tax_total + rest.tax_total == inv.tax_total
    assert first.subtotal + rest.subtotal == inv.subtotal


@pytest.mark.parametrize(
    ("amount", "why"),
    [
        (Money.of("1265.01", "BDT"), "more than the 1265.00 BDT"),
        (Money.of("0", "BDT"), "above zero"),
        (Money.of("-5", "BDT"), "above zero"),
        (Money.of("5", "USD"), "in BDT, the credit in USD"),
    ],
)
def test_a_credit_that_cannot_be_is_refused(amount: Money, why: str) -> None:
    inv = invoice([line("1000.00")], [SD, VAT])
    with pytest.raises(CorrectionRefused, match=why):
        draft_credit_note(InvoiceAccount(inv), amount, "r")


def test_nothing_more_is_credited_on_a_credited_or_void_invoice() -> None:
    inv = invoice([line("1000.00")], [SD, VAT])
    account = InvoiceAccount(inv)
    account.credit_notes.append(note_of(account, draft_credit_note(account, None, "r"), 1))
    with pytest.raises(CorrectionRefused, match="in full already"):
        draft_credit_note(account, Money.of("1", "BDT"), "r")
    void = InvoiceAccount(inv)
    void.voided = InvoiceVoided(
        invoice_id=inv.invoice_id, number=inv.number, reason="x", voided_at=AT
    )
    with pytest.raises(CorrectionRefused, match="void"):
        draft_credit_note(void, None, "r")


def test_only_an_untouched_invoice_may_be_voided() -> None:
    inv = invoice([line("1000.00")], [SD, VAT])
    check_void(InvoiceAccount(inv))  # nothing paid or credited: may
    paid = InvoiceAccount(inv, received=Decimal("1.00"))
    with pytest.raises(CorrectionRefused, match="payments"):
        check_void(paid)
    credited = InvoiceAccount(inv)
    credited.credit_notes.append(
        note_of(credited, draft_credit_note(credited, Money.of("1.00", "BDT"), "r"), 1)
    )
    with pytest.raises(CorrectionRefused, match="credit notes"):
        check_void(credited)


currencies = st.sampled_from(["BDT", "USD", "JPY", "KWD"])
rates = st.decimals(min_value=0, max_value=Decimal("0.3"), places=3)


@st.composite
def invoices_and_credits(draw):
    currency = draw(currencies)
    exponent = Money.zero(currency).amount.as_tuple().exponent
    minor = draw(st.lists(st.integers(min_value=1, max_value=10**8), min_size=1, max_size=5))
    inclusive = draw(st.booleans())
    lines = [line(str(Decimal(m).scaleb(exponent)), currency, inclusive) for m in minor]
    rules = [
        TaxRule(tax_code=f"T{i}", name=f"T{i}", rate=r, region="R", compound=c, sequence=i)
        for i, (r, c) in enumerate(draw(st.lists(st.tuples(rates, st.booleans()), max_size=3)))
    ]
    inv = invoice(lines, rules, draw(st.sampled_from(list(TaxRounding))))
    # credits as fractions of the total, some possibly too large
    fractions = draw(st.lists(st.integers(min_value=1, max_value=70), max_size=8))
    return inv, fractions, exponent


@settings(max_examples=300, deadline=None)
@given(invoices_and_credits())
def test_credit_notes_add_up_to_the_invoice_and_never_exceed_it(case) -> None:
    inv, fractions, exponent = case
    account = InvoiceAccount(inv)
    unit = Decimal(1).scaleb(exponent)
    for n, percent in enumerate(fractions, start=1):
        wanted = (inv.total.amount * percent / 100).quantize(unit)
        amount = Money.of(wanted, inv.currency)
        if amount.amount <= 0 or amount > account.creditable:
            with pytest.raises(CorrectionRefused):
                draft_credit_note(account, amount, "r")
            continue
        draft = draft_credit_note(account, amount, "r")
        assert draft.total == amount
        assert draft.subtotal + draft.tax_total == draft.total
        assert all(t.amount.amount >= 0 and t.taxable.amount >= 0 for t in draft.taxes)
        assert draft.subtotal.amount >= 0
        assert sum((ln.amount for ln in draft.lines), Money.zero(inv.currency)) == draft.subtotal
        account.credit_notes.append(note_of(account, draft, n))
        assert account.credited <= inv.total
    if account.creditable.amount > 0:
        rest = draft_credit_note(account, None, "r")
        account.credit_notes.append(note_of(account, rest, 99))
    # every part of the invoice credited exactly, to the minor unit
    assert account.credited == inv.total
    for tax in inv.taxes:
        assert account.credited_tax(tax) == (tax.taxable.amount, tax.amount.amount)
    credited_values = sum((c.subtotal for c in account.credit_notes), Money.zero(inv.currency))
    assert credited_values == inv.subtotal
