"""The pure invoice generator: proration, overage, tax rounding and totals."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from invoicing.domain.errors import (
    CurrencyMismatchInPlan,
    InvalidSubscriptionDates,
    InvalidUsage,
    InvoicingError,
    NotBillableInPeriod,
)
from invoicing.domain.generator import (
    InvoiceDraft,
    TaxRounding,
    UsageTotals,
    days_active,
    draft_invoice,
    format_bytes,
)
from invoicing.domain.tax import apply_taxes, rule_of_rate
from ispbill_core.contracts.accounts import GIGABYTE, PlanDefined
from ispbill_core.contracts.invoicing import InvoiceLine, LineKind, TaxLine, TaxRateSet
from ispbill_core.money import MINOR_UNITS, Money, Rounding, minor_unit_exponent
from ispbill_core.periods import BillingPeriod

pytestmark = pytest.mark.unit

NOV = BillingPeriod(2026, 11)
NO_USAGE = UsageTotals(0, 0)


def plan(
    fee: str = "30.00",
    currency: str = "USD",
    included: int = 50 * GIGABYTE,
    overage: str = "2.00",
    overage_currency: str | None = None,
    unit: int = GIGABYTE,
) -> PlanDefined:
    return PlanDefined(
        plan_id="fiber-100",
        name="Fiber 100",
        monthly_fee=Money.of(fee, currency),
        included_bytes=included,
        overage_price=Money.of(overage, overage_currency or currency),
        overage_unit_bytes=unit,
    )


def vat(rate: str = "0.20") -> TaxRateSet:
    return TaxRateSet(region="XX", tax_name="VAT", rate=Decimal(rate))


def tax_on(
    amounts: list[Money],
    tax: TaxRateSet,
    mode: TaxRounding,
    rounding: Rounding = Rounding.HALF_UP,
) -> TaxLine:
    """The one tax `tax` charges on lines of `amounts`, as the bill run taxes an invoice."""
    lines = [
        InvoiceLine(
            kind=LineKind.RECURRING,
            description="line",
            quantity=Decimal(1),
            unit="month",
            unit_price=a,
            amount=a,
        )
        for a in amounts
    ]
    (line,) = apply_taxes(lines, [rule_of_rate(tax)], (), mode, rounding).taxes
    return line


def draft(**overrides: object) -> InvoiceDraft:
    kwargs: dict[str, object] = {
        "plan": plan(),
        "subscription_started_on": date(2020, 1, 1),
        "period": NOV,
        "usage": NO_USAGE,
        "tax": None,
    }
    kwargs.update(overrides)
    return draft_invoice(**kwargs)  # type: ignore[arg-type]


def assert_consistent(d: InvoiceDraft) -> None:
    """Totals are sums of what the invoice shows, all in one currency, none of it float."""
    money = [d.subtotal, d.tax_total, d.total]
    money += [line.amount for line in d.lines] + [line.unit_price for line in d.lines]
    money += [t.amount for t in d.taxes] + [t.taxable for t in d.taxes]
    for m in money:
        assert type(m.amount) is Decimal
        assert m.currency == d.currency
        assert m.amount.as_tuple().exponent == -MINOR_UNITS[d.currency]
    assert d.subtotal.amount == sum(line.amount.amount for line in d.lines)
    assert d.tax_total.amount == sum(t.amount.amount for t in d.taxes)
    assert d.total == d.subtotal + d.tax_total
    for t in d.taxes:
        assert t.taxable == d.subtotal


# --- the recurring line and proration -------------------------------------------------------


def test_full_month_bills_the_full_fee_and_describes_included_usage() -> None:
    d = draft(usage=UsageTotals(12_300_000_000, 0))
    assert d.currency == "USD"
    (line,) = d.lines
    assert line.kind is LineKind.RECURRING
    assert line.amount == Money.of("30.00", "USD")
    assert line.quantity == 1
    assert line.unit_price == Money.of("30.00", "USD")
    assert line.description == "Plan Fiber 100 — 2026-11 (12.3 GB of 50 GB included used)"
    assert d.total == Money.of("30.00", "USD")
    assert d.taxes == ()
    assert_consistent(d)


def test_subscription_starting_on_the_first_day_is_a_full_month() -> None:
    d = draft(subscription_started_on=date(2026, 11, 1))
    assert d.lines[0].amount == Money.of("30.00", "USD")
    assert "prorated" not in d.lines[0].description


def test_subscription_ending_on_the_last_day_is_a_full_month() -> None:
    d = draft(subscription_ended_on=date(2026, 11, 30))
    assert d.lines[0].amount == Money.of("30.00", "USD")


def test_start_mid_period_prorates_by_days_active() -> None:
    # Active 21..30 November: 10 of 30 days.
    d = draft(subscription_started_on=date(2026, 11, 21))
    line = d.lines[0]
    assert line.amount == Money.of("10.00", "USD")
    assert line.description.endswith(", prorated 10 of 30 days")
    assert line.quantity == Decimal("0.3333")
    assert_consistent(d)


def test_end_mid_period_is_inclusive_of_the_last_day() -> None:
    d = draft(subscription_ended_on=date(2026, 11, 15))
    assert d.lines[0].amount == Money.of("15.00", "USD")


def test_start_and_end_inside_the_period() -> None:
    d = draft(subscription_started_on=date(2026, 11, 10), subscription_ended_on=date(2026, 11, 10))
    assert d.lines[0].amount == Money.of("1.00", "USD")


def test_proration_rounds_once_at_the_end() -> None:
    # 10.00 * 1/3 = 3.333..; a fee rounded per day first (0.33 * 1 ... ) would drift.
    d = draft(plan=plan(fee="10.00"), subscription_started_on=date(2026, 11, 21))
    assert d.lines[0].amount == Money.of("3.33", "USD")
    # 29.99 * 7/30 = 6.997666.. -> 7.00
    d = draft(plan=plan(fee="29.99"), subscription_started_on=date(2026, 11, 24))
    assert d.lines[0].amount == Money.of("7.00", "USD")


def test_proration_honours_the_rounding_mode() -> None:
    # 0.05 * 15/30 = 0.025: half-up gives 0.03, half-even 0.02.
    kwargs = {"plan": plan(fee="0.05"), "subscription_started_on": date(2026, 11, 16)}
    assert draft(**kwargs).lines[0].amount == Money.of("0.03", "USD")
    even = draft(**kwargs, rounding=Rounding.HALF_EVEN)
    assert even.lines[0].amount == Money.of("0.02", "USD")


def test_february_of_a_leap_year_has_29_days() -> None:
    feb = BillingPeriod(2028, 2)
    assert days_active(feb, date(2028, 2, 15)) == 15
    d = draft(period=feb, plan=plan(fee="29.00"), subscription_started_on=date(2028, 2, 15))
    assert d.lines[0].amount == Money.of("15.00", "USD")
    assert d.lines[0].description.endswith(", prorated 15 of 29 days")


def test_february_of_a_common_year_has_28_days() -> None:
    feb = BillingPeriod(2027, 2)
    d = draft(period=feb, plan=plan(fee="28.00"), subscription_started_on=date(2027, 2, 15))
    assert d.lines[0].amount == Money.of("14.00", "USD")
    assert draft(period=feb).lines[0].amount == Money.of("30.00", "USD")  # full month: full fee


def test_december_rolls_into_the_next_year() -> None:
    dec = BillingPeriod(2026, 12)
    assert days_active(dec, date(2026, 12, 31)) == 1
    assert days_active(dec, date(2026, 1, 1)) == 31


def test_subscription_starting_after_the_period_is_not_billable() -> None:
    with pytest.raises(NotBillableInPeriod):
        draft(subscription_started_on=date(2026, 12, 1))


def test_subscription_ended_before_the_period_is_not_billable() -> None:
    with pytest.raises(NotBillableInPeriod):
        draft(subscription_started_on=date(2026, 1, 1), subscription_ended_on=date(2026, 10, 31))


def test_subscription_ending_before_it_started_is_refused() -> None:
    with pytest.raises(InvalidSubscriptionDates):
        draft(subscription_started_on=date(2026, 11, 10), subscription_ended_on=date(2026, 11, 9))


def test_domain_errors_share_one_base() -> None:
    for error in (NotBillableInPeriod, CurrencyMismatchInPlan, InvalidSubscriptionDates):
        assert issubclass(error, InvoicingError)


@given(
    year=st.integers(2000, 2100),
    month=st.integers(1, 12),
    fee=st.decimals(min_value=0, max_value=100_000, places=2),
)
def test_proration_over_the_whole_period_is_the_full_fee(
    year: int, month: int, fee: Decimal
) -> None:
    period = BillingPeriod(year, month)
    d = draft(
        plan=plan(fee=str(fee)),
        period=period,
        subscription_started_on=period.first_day,
        subscription_ended_on=period.next.first_day - timedelta(days=1),
    )
    assert d.lines[0].amount == Money.of(fee, "USD")


@given(
    year=st.integers(2000, 2100),
    month=st.integers(1, 12),
    start=st.integers(1, 31),
    fee=st.decimals(min_value=0, max_value=100_000, places=2),
)
def test_split_month_prorations_add_up_to_within_a_cent_of_the_fee(
    year: int, month: int, start: int, fee: Decimal
) -> None:
    # A subscriber who moves plans mid-month: one part ends the day before the other starts.
    period = BillingPeriod(year, month)
    assume(1 < start <= period.days)
    switch = period.first_day.replace(day=start)
    first = draft(
        plan=plan(fee=str(fee)),
        period=period,
        subscription_started_on=date(1999, 1, 1),
        subscription_ended_on=switch.replace(day=start - 1),
    )
    second = draft(plan=plan(fee=str(fee)), period=period, subscription_started_on=switch)
    parts = first.lines[0].amount + second.lines[0].amount
    assert abs(parts.amount - fee) <= Decimal("0.01")
    assert first.lines[0].quantity + second.lines[0].quantity <= Decimal("1.0001")


# --- usage and overage ----------------------------------------------------------------------


def test_usage_exactly_at_the_allowance_bills_no_overage() -> None:
    d = draft(usage=UsageTotals(30 * GIGABYTE, 20 * GIGABYTE, ("t1",)))
    assert [line.kind for line in d.lines] == [LineKind.RECURRING]
    assert "(50 GB of 50 GB included used)" in d.lines[0].description


def test_one_byte_over_the_allowance_bills_one_started_unit() -> None:
    d = draft(usage=UsageTotals(50 * GIGABYTE, 1, ("trace-a", "trace-b")))
    recurring, usage = d.lines
    assert usage.kind is LineKind.USAGE
    assert usage.quantity == 1
    assert usage.unit == "GB"
    assert usage.unit_price == Money.of("2.00", "USD")
    assert usage.amount == Money.of("2.00", "USD")
    assert usage.source_trace_ids == ("trace-a", "trace-b")
    assert usage.description == "Data beyond 50 GB included: 1 B, billed per started 1 GB"
    assert recurring.source_trace_ids == ()
    assert d.total == Money.of("32.00", "USD")
    assert_consistent(d)


def test_overage_exactly_on_a_unit_boundary_is_not_rounded_up_further() -> None:
    d = draft(usage=UsageTotals(52 * GIGABYTE, 0))
    assert d.lines[1].quantity == 2
    d = draft(usage=UsageTotals(52 * GIGABYTE + 1, 0))
    assert d.lines[1].quantity == 3
    # "2 GB" alone would look like an over-charge: the exact byte count is shown too.
    assert "2 GB (2,000,000,001 bytes)" in d.lines[1].description
    assert d.lines[1].amount == Money.of("6.00", "USD")


def test_included_usage_counts_input_and_output() -> None:
    d = draft(usage=UsageTotals(40 * GIGABYTE, 11 * GIGABYTE))
    assert d.lines[1].quantity == 1
    assert "(50 GB of 50 GB included used)" in d.lines[0].description


def test_plan_with_nothing_included_bills_every_started_unit() -> None:
    d = draft(plan=plan(included=0), usage=UsageTotals(1, 0))
    assert d.lines[1].quantity == 1
    assert "included used" not in d.lines[0].description


def test_custom_overage_unit() -> None:
    d = draft(plan=plan(unit=500 * 10**6, overage="0.75"), usage=UsageTotals(51 * GIGABYTE, 0))
    assert d.lines[1].quantity == 2
    assert d.lines[1].unit == "500 MB"
    assert d.lines[1].amount == Money.of("1.50", "USD")


def test_negative_usage_is_refused() -> None:
    with pytest.raises(InvalidUsage):
        draft(usage=UsageTotals(-1, 0))


def test_currency_mismatch_in_plan_is_refused_even_without_overage() -> None:
    with pytest.raises(CurrencyMismatchInPlan):
        draft(plan=plan(overage_currency="EUR"))


@given(
    included=st.integers(0, 10**12),
    unit=st.integers(1, 10**10),
    used=st.integers(0, 10**13),
)
def test_overage_units_are_the_smallest_number_that_covers_the_excess(
    included: int, unit: int, used: int
) -> None:
    d = draft(plan=plan(included=included, unit=unit), usage=UsageTotals(used, 0))
    usage_lines = [line for line in d.lines if line.kind is LineKind.USAGE]
    if used <= included:
        assert usage_lines == []
    else:
        (line,) = usage_lines
        units = int(line.quantity)
        assert units * unit >= used - included > (units - 1) * unit
        assert line.amount.amount == line.unit_price.amount * units


@pytest.mark.parametrize(
    ("octets", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (12_345_678, "12.3 MB"),
        (12_300_000_000, "12.3 GB"),
        (50 * GIGABYTE, "50 GB"),
        (1_950_000_000, "2 GB"),
        (3 * 10**12, "3 TB"),
    ],
)
def test_format_bytes(octets: int, text: str) -> None:
    assert format_bytes(octets) == text


# --- currencies with 0 and 3 minor units ----------------------------------------------------


def test_yen_has_no_minor_unit() -> None:
    d = draft(
        plan=plan(fee="3000", currency="JPY", overage="110"),
        subscription_started_on=date(2026, 11, 21),  # 10 of 30 days -> 1000
        usage=UsageTotals(50 * GIGABYTE + 1, 0),
        tax=vat("0.10"),
    )
    assert [line.amount for line in d.lines] == [Money.of(1000, "JPY"), Money.of(110, "JPY")]
    assert d.taxes[0].amount == Money.of(111, "JPY")  # 111.0 exactly
    assert d.total == Money.of(1221, "JPY")
    assert_consistent(d)


def test_yen_proration_rounds_to_whole_yen() -> None:
    d = draft(
        plan=plan(fee="1000", currency="JPY", overage="100"),
        subscription_started_on=date(2026, 11, 30),
    )
    assert d.lines[0].amount == Money.of(33, "JPY")  # 33.33..


def test_kuwaiti_dinar_has_three_minor_units() -> None:
    d = draft(
        plan=plan(fee="9.500", currency="KWD", overage="0.250"),
        subscription_started_on=date(2026, 11, 16),  # 15 of 30 days -> 4.750
        usage=UsageTotals(52 * GIGABYTE, 0),
        tax=vat("0.05"),
        tax_rounding=TaxRounding.PER_LINE,
    )
    assert [line.amount for line in d.lines] == [Money.of("4.750", "KWD"), Money.of("0.500", "KWD")]
    # 4.750 * 0.05 = 0.2375 -> 0.238; 0.500 * 0.05 = 0.025
    assert d.taxes[0].amount == Money.of("0.263", "KWD")
    assert d.total == Money.of("5.513", "KWD")
    assert_consistent(d)


# --- tax ------------------------------------------------------------------------------------


def test_no_tax_rate_means_no_tax_lines() -> None:
    d = draft(tax=None)
    assert d.taxes == ()
    assert d.tax_total == Money.zero("USD")
    assert d.total == d.subtotal


def test_tax_line_names_the_tax_and_its_taxable_amount() -> None:
    d = draft(usage=UsageTotals(51 * GIGABYTE, 0), tax=vat("0.20"))
    (tax,) = d.taxes
    assert tax.tax_name == "VAT"
    assert tax.rate == Decimal("0.20")
    assert tax.taxable == Money.of("32.00", "USD")
    assert tax.amount == Money.of("6.40", "USD")
    assert d.total == Money.of("38.40", "USD")


def test_zero_rated_tax_still_shows_a_line() -> None:
    d = draft(tax=vat("0"))
    assert d.taxes[0].amount == Money.zero("USD")


def test_per_line_and_per_invoice_tax_can_differ_by_a_cent() -> None:
    # 0.25 * 10% = 0.025 per line -> 0.03 each, 0.06; on the invoice 0.50 * 10% = 0.05.
    amounts = [Money.of("0.25", "USD"), Money.of("0.25", "USD")]
    per_line = tax_on(amounts, vat("0.10"), TaxRounding.PER_LINE)
    per_invoice = tax_on(amounts, vat("0.10"), TaxRounding.PER_INVOICE)
    assert per_line.amount == Money.of("0.06", "USD")
    assert per_invoice.amount == Money.of("0.05", "USD")
    assert per_line.taxable == per_invoice.taxable == Money.of("0.50", "USD")


def test_the_tax_rounding_rule_is_applied_by_the_generator() -> None:
    # A 0.25 fee and one 0.25 overage unit at 10%: 0.03 + 0.03 per line, 0.05 on the sum.
    kwargs = {
        "plan": plan(fee="0.25", overage="0.25"),
        "usage": UsageTotals(50 * GIGABYTE + 1, 0),
        "tax": vat("0.10"),
    }
    assert draft(**kwargs, tax_rounding=TaxRounding.PER_LINE).tax_total == Money.of("0.06", "USD")
    assert draft(**kwargs).tax_total == Money.of("0.05", "USD")  # per invoice is the default


def test_half_even_with_three_lines_reaches_two_minor_units() -> None:
    # Each 0.15 * 10% = 0.015 -> 0.02 (to even), 0.06; the sum 0.045 -> 0.04 (to even).
    amounts = [Money.of("0.15", "USD")] * 3
    per_line = tax_on(amounts, vat("0.10"), TaxRounding.PER_LINE, Rounding.HALF_EVEN)
    per_invoice = tax_on(amounts, vat("0.10"), TaxRounding.PER_INVOICE, Rounding.HALF_EVEN)
    assert per_line.amount.amount - per_invoice.amount.amount == Decimal("0.02")


def max_tax_rounding_gap(n: int, rounding: Rounding) -> int:
    """How far apart, in minor units, per-line and per-invoice tax on n lines can be.

    Each rounding moves an amount by at most half a minor unit u, so the two taxes differ
    by at most n*u/2 (the lines) + u/2 (the invoice). For non-negative amounts, half-up
    moves each value by an error in (-u/2, u/2], so the bound is strict, and as the
    difference is a whole number of minor units it is at most floor(n/2). Half-even ties
    can go either way, making the bound inclusive: floor((n+1)/2). One line: never apart.
    """
    return n // 2 if rounding is Rounding.HALF_UP else (n + 1) // 2


currencies = st.sampled_from(["USD", "JPY", "KWD"])


@st.composite
def taxable_lines(draw: st.DrawFn) -> tuple[list[Money], Decimal]:
    currency = draw(currencies)
    places = MINOR_UNITS[currency]
    amounts = draw(
        st.lists(
            st.decimals(min_value=0, max_value=10**6, places=places),
            min_size=1,
            max_size=30,
        )
    )
    rate = draw(st.decimals(min_value=0, max_value=1, places=4))
    return [Money.of(a, currency) for a in amounts], rate


@given(lines=taxable_lines(), rounding=st.sampled_from(list(Rounding)))
def test_per_line_and_per_invoice_tax_differ_by_at_most_the_derived_bound(
    lines: tuple[list[Money], Decimal], rounding: Rounding
) -> None:
    amounts, rate = lines
    tax = vat(str(rate))
    per_line = tax_on(amounts, tax, TaxRounding.PER_LINE, rounding)
    per_invoice = tax_on(amounts, tax, TaxRounding.PER_INVOICE, rounding)
    unit = minor_unit_exponent(amounts[0].currency)
    gap = abs(per_line.amount.amount - per_invoice.amount.amount) / unit
    assert gap == gap.to_integral_value()
    assert gap <= max_tax_rounding_gap(len(amounts), rounding)
    if len(amounts) == 1:
        assert per_line == per_invoice


@given(lines=taxable_lines())
def test_per_line_tax_does_not_depend_on_the_order_of_lines(
    lines: tuple[list[Money], Decimal],
) -> None:
    amounts, rate = lines
    tax = vat(str(rate))
    forward = tax_on(amounts, tax, TaxRounding.PER_LINE)
    backward = tax_on(list(reversed(amounts)), tax, TaxRounding.PER_LINE)
    assert forward == backward


@given(
    currency=currencies,
    fee=st.integers(0, 10**7),
    overage=st.integers(0, 10**5),
    start_day=st.integers(1, 30),
    used=st.integers(0, 200 * GIGABYTE),
    rate=st.none() | st.decimals(min_value=0, max_value=1, places=4),
    tax_rounding=st.sampled_from(list(TaxRounding)),
    rounding=st.sampled_from(list(Rounding)),
)
def test_every_draft_is_internally_consistent(
    currency: str,
    fee: int,
    overage: int,
    start_day: int,
    used: int,
    rate: Decimal | None,
    tax_rounding: TaxRounding,
    rounding: Rounding,
) -> None:
    unit = minor_unit_exponent(currency)
    d = draft(
        plan=plan(fee=str(fee * unit), overage=str(overage * unit), currency=currency),
        subscription_started_on=date(2026, 11, start_day),
        usage=UsageTotals(used, 0),
        tax=None if rate is None else vat(str(rate)),
        tax_rounding=tax_rounding,
        rounding=rounding,
    )
    assert_consistent(d)
    assert len(d.taxes) == (0 if rate is None else 1)
    assert d.lines[0].amount <= d.lines[0].unit_price


def test_results_do_not_depend_on_the_callers_decimal_context() -> None:
    kwargs = {
        "plan": plan(fee="123456.78"),
        "subscription_started_on": date(2026, 11, 8),
        "usage": UsageTotals(77 * GIGABYTE, 0),
        "tax": vat("0.1925"),
    }
    expected = draft(**kwargs)
    with localcontext() as ctx:
        ctx.prec = 6
        got = draft(**kwargs)
    assert got == expected
