"""The pure invoice generator: a plan, a period and usage in; lines, taxes and totals out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

from invoicing.domain.errors import (
    CurrencyMismatchInPlan,
    InvalidSubscriptionDates,
    InvalidUsage,
    NotBillableInPeriod,
)
from invoicing.domain.service_days import ChargedSegment
from invoicing.domain.tax import Exemption, TaxRounding, TaxRule, apply_taxes, rule_of_rate
from ispbill_core.contracts.accounts import GIBIBYTE, PlanTerms
from ispbill_core.contracts.invoicing import InvoiceLine, LineKind, TaxLine, TaxRateSet
from ispbill_core.money import Money, Rounding
from ispbill_core.periods import BillingPeriod

__all__ = [
    "InvoiceDraft",
    "TaxRounding",
    "UsageTotals",
    "days_active",
    "draft_invoice",
    "draft_subscription_invoice",
    "format_bytes",
    "late_usage_line",
    "taxed_draft",
]

#: Digits kept while prorating, before the single rounding to the currency's minor unit.
#: Generous so that the only rounding that ever matters is the last one.
_PRECISION = 50

#: How many decimal places a prorated quantity (fraction of a month) shows on the invoice.
_QUANTITY_PLACES = Decimal("0.0001")


@dataclass(frozen=True)
class UsageTotals:
    """Octets a subscription moved in the period, and the RADIUS packets they came from."""

    input_octets: int
    output_octets: int
    trace_ids: tuple[str, ...] = ()
    #: the octets as they count against included data and overage (a plan's time bands: a
    #: free night band counts nothing); None: all of them count
    counted_octets: int | None = None

    @property
    def total_octets(self) -> int:
        return self.input_octets + self.output_octets

    @property
    def billable_octets(self) -> int:
        return self.total_octets if self.counted_octets is None else self.counted_octets


@dataclass(frozen=True)
class InvoiceDraft:
    """Everything an invoice says about money; number, dates and customer come later."""

    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Money
    taxes: tuple[TaxLine, ...]
    tax_total: Money
    total: Money


def draft_invoice(
    *,
    plan: PlanTerms,
    subscription_started_on: date,
    period: BillingPeriod,
    usage: UsageTotals,
    tax: TaxRateSet | Sequence[TaxRule] | None,
    tax_rounding: TaxRounding = TaxRounding.PER_INVOICE,
    rounding: Rounding = Rounding.HALF_UP,
    subscription_ended_on: date | None = None,
    exemptions: Sequence[Exemption] = (),
) -> InvoiceDraft:
    """Draft one period's invoice for one subscription.

    ``subscription_ended_on`` is the last day of service, inclusive: a subscription that
    ends on the 15th is billed for the 15th. ``tax``: the rules in force (invoicing.domain.tax),
    a single region rate, or None (untaxed: lines priced tax-inclusive stay at their price).
    """
    currency = plan.monthly_fee.currency
    if plan.overage_price.currency != currency:
        raise CurrencyMismatchInPlan(
            f"plan {plan.plan_id}: monthly fee in {currency}, "
            f"overage price in {plan.overage_price.currency}"
        )
    if usage.input_octets < 0 or usage.output_octets < 0 or usage.billable_octets < 0:
        raise InvalidUsage(
            f"negative usage: input {usage.input_octets}, output {usage.output_octets}"
        )

    active = days_active(period, subscription_started_on, subscription_ended_on)
    with localcontext() as ctx:
        # The same invoice whatever precision the caller's thread left its Decimal context at.
        ctx.prec = _PRECISION
        lines = [_recurring_line(plan, period, active, usage, rounding)]
        overage = _usage_line(plan, usage, rounding)
        if overage is not None:
            lines.append(overage)
    return taxed_draft(lines, _rules(tax), exemptions, tax_rounding, rounding)


def draft_subscription_invoice(
    *,
    segments: Sequence[ChargedSegment],
    usage_plan: PlanTerms | None,
    period: BillingPeriod,
    usage: UsageTotals,
    tax: TaxRateSet | Sequence[TaxRule] | None,
    tax_rounding: TaxRounding = TaxRounding.PER_INVOICE,
    rounding: Rounding = Rounding.HALF_UP,
    exemptions: Sequence[Exemption] = (),
) -> InvoiceDraft | None:
    """Draft one period's invoice for one subscription from its charged segments (see
    invoicing.domain.service_days): one recurring line per segment, each its plan version's
    fee times its days over the period's days; usage beyond the included data priced with
    `usage_plan`, the version in force on the period's last day of service. None when there
    is nothing to charge (no charged day, no usage beyond the included data)."""
    plans = [segment.plan for segment in segments]
    if usage_plan is not None:
        plans.append(usage_plan)
    if not plans:
        return None
    currency = plans[0].monthly_fee.currency
    for plan in plans:
        for price in (plan.monthly_fee, plan.overage_price):
            if price.currency != currency:
                raise CurrencyMismatchInPlan(
                    f"plan {plan.plan_id}: {price.currency} where the subscription bills in"
                    f" {currency}"
                )
    if usage.input_octets < 0 or usage.output_octets < 0 or usage.billable_octets < 0:
        raise InvalidUsage(
            f"negative usage: input {usage.input_octets}, output {usage.output_octets}"
        )
    charged = sum(segment.days for segment in segments)
    if charged > period.days:
        raise InvalidSubscriptionDates(f"{charged} days charged in a {period.days}-day period")
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        lines: list[InvoiceLine] = []
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            span = "" if len(segments) == 1 else f" ({segment.first} to {segment.last})"
            lines.append(
                _recurring_line(
                    segment.plan,
                    period,
                    segment.days,
                    usage if last else UsageTotals(0, 0),
                    rounding,
                    span=span,
                    show_included=last,
                )
            )
        overage = None if usage_plan is None else _usage_line(usage_plan, usage, rounding)
        if overage is not None:
            lines.append(overage)
        if not lines:
            return None
    return taxed_draft(lines, _rules(tax), exemptions, tax_rounding, rounding)


def taxed_draft(
    lines: Sequence[InvoiceLine],
    rules: Sequence[TaxRule] | None,
    exemptions: Sequence[Exemption] = (),
    tax_rounding: TaxRounding = TaxRounding.PER_INVOICE,
    rounding: Rounding = Rounding.HALF_UP,
) -> InvoiceDraft:
    """An invoice's money from its lines (one currency; a tax-inclusive line at its price):
    the taxes of `rules` (None: untaxed), then subtotal = the lines' taxable values and
    total = subtotal + taxes, exactly."""
    if not lines:
        raise ValueError("an invoice needs at least one line")
    currency = lines[0].amount.currency
    taxes: tuple[TaxLine, ...] = ()
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        if rules is not None:
            taxed = apply_taxes(lines, rules, exemptions, tax_rounding, rounding)
            lines, taxes = taxed.lines, taxed.taxes
        subtotal = _sum((line.amount for line in lines), currency)
        tax_total = _sum((t.amount for t in taxes), currency)
        total = subtotal + tax_total
    return InvoiceDraft(
        currency=currency,
        lines=tuple(lines),
        subtotal=subtotal,
        taxes=taxes,
        tax_total=tax_total,
        total=total,
    )


def _rules(tax: TaxRateSet | Sequence[TaxRule] | None) -> Sequence[TaxRule] | None:
    if tax is None:
        return None
    if isinstance(tax, TaxRateSet):
        return [rule_of_rate(tax)]
    return tax


def days_active(period: BillingPeriod, started_on: date, ended_on: date | None = None) -> int:
    """Days of the period on which the subscription was active (both ends inclusive)."""
    if ended_on is not None and ended_on < started_on:
        raise InvalidSubscriptionDates(f"ended on {ended_on}, before it started on {started_on}")
    first_day: date = period.first_day
    last_day: date = period.next.first_day - timedelta(days=1)
    first = max(started_on, first_day)
    last = last_day if ended_on is None else min(ended_on, last_day)
    if first > last:
        raise NotBillableInPeriod(
            f"subscription active {started_on} to {ended_on or 'open'} "
            f"has no day in period {period}"
        )
    return (last - first).days + 1


def format_bytes(octets: int) -> str:
    """Decimal (SI) units, one decimal place, as ISPs advertise them: 12.3 GB, 50 GB."""
    units = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"))
    for size, name in units:
        if octets >= size:
            value = (Decimal(octets) / Decimal(size)).quantize(
                Decimal("0.1"), rounding=ROUND_HALF_UP
            )
            text = f"{value:f}".removesuffix(".0")
            return f"{text} {name}"
    return f"{octets} B"


def _recurring_line(
    plan: PlanTerms,
    period: BillingPeriod,
    active: int,
    usage: UsageTotals,
    rounding: Rounding,
    *,
    span: str = "",
    show_included: bool = True,
) -> InvoiceLine:
    fee = plan.monthly_fee
    description = f"Plan {plan.name} — {period}{span}"
    if plan.included_bytes > 0 and show_included:
        used = min(usage.billable_octets, plan.included_bytes)
        description += (
            f" ({format_bytes(used)} of {format_bytes(plan.included_bytes)} included used)"
        )
    if active == period.days:
        quantity = Decimal(1)
        amount = fee
    else:
        description += f", prorated {active} of {period.days} days"
        # Multiply before dividing, and round only once, so 10 of 30 days of 30.00 is 10.00.
        exact = fee.amount * Decimal(active) / Decimal(period.days)
        quantity = (Decimal(active) / Decimal(period.days)).quantize(_QUANTITY_PLACES)
        amount = Money.rounded(exact, fee.currency, rounding)
    return InvoiceLine(
        kind=LineKind.RECURRING,
        description=description,
        quantity=quantity,
        unit="month",
        unit_price=fee,
        amount=amount,
        tax_inclusive=plan.prices_include_tax,
    )


def _usage_line(plan: PlanTerms, usage: UsageTotals, rounding: Rounding) -> InvoiceLine | None:
    over = usage.billable_octets - plan.included_bytes
    if over <= 0:
        return None
    unit_bytes = plan.overage_unit_bytes
    # Every started increment is billed: a whole unit by default, else a fraction of one
    # (1 / overage_increment of them per unit, a whole number by the catalog's rule).
    steps_per_unit = int(Decimal(1) / plan.overage_increment)
    steps = -(-(over * steps_per_unit) // unit_bytes)
    units = Decimal(steps) / Decimal(steps_per_unit)
    price = plan.overage_price
    unit_name = _unit_name(unit_bytes)
    # Exact bytes too: "2 GB" rounded for display must not look like 3 units over-billed.
    exact = f" ({over:,} bytes)" if over >= 1000 else ""
    started = f"1 {unit_name}"
    if steps_per_unit != 1:
        started = f"{plan.overage_increment} {unit_name}"
    return InvoiceLine(
        kind=LineKind.USAGE,
        description=(
            f"Data beyond {format_bytes(plan.included_bytes)} included: "
            f"{format_bytes(over)}{exact}, billed per started {started}"
        ),
        quantity=units,
        unit=unit_name,
        unit_price=price,
        amount=Money.rounded(price.amount * units, price.currency, rounding),
        tax_inclusive=plan.prices_include_tax,
        source_trace_ids=usage.trace_ids,
    )


def late_usage_line(
    plan: PlanTerms,
    period: BillingPeriod,
    billed: UsageTotals,
    now: UsageTotals,
    rounding: Rounding,
    *,
    invoice_number: str,
) -> InvoiceLine | None:
    """The adjustment for usage of `period` rated after its invoice: the period's usage
    charge on everything rated now (`now`) less its charge on what was billed (`billed`),
    both priced by `plan` (the version in force on the period's last day of service) exactly
    as the period's own invoice prices usage. Included data is the period's: late bytes that
    still fit in it cost nothing. None when the charge does not change (ADR 0032)."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        before = _usage_line(plan, billed, rounding)
        after = _usage_line(plan, now, rounding)
    if after is None:
        return None
    units = after.quantity - (before.quantity if before is not None else Decimal(0))
    amount = after.amount - (
        before.amount if before is not None else Money.zero(after.amount.currency)
    )
    if units == 0 and amount.is_zero():
        return None
    late = now.billable_octets - billed.billable_octets
    return InvoiceLine(
        kind=LineKind.USAGE_ADJUSTMENT,
        description=(
            f"Late usage of {period} (invoice {invoice_number}): {format_bytes(late)}"
            f" rated after it was issued; {after.quantity} {after.unit} beyond"
            f" {format_bytes(plan.included_bytes)} included in all, {units} not billed before"
        ),
        quantity=units,
        unit=after.unit,
        unit_price=after.unit_price,
        amount=amount,
        tax_inclusive=plan.prices_include_tax,
        source_trace_ids=tuple(t for t in now.trace_ids if t not in set(billed.trace_ids)),
        adjusts_invoice=invoice_number,
        adjusts_period=str(period),
    )


def _unit_name(unit_bytes: int) -> str:
    if unit_bytes == GIBIBYTE:
        return "GiB"
    return format_bytes(unit_bytes).removeprefix("1 ")


def _sum(amounts: Iterable[Money], currency: str) -> Money:
    total = Money.zero(currency)
    for amount in amounts:
        total = total + amount
    return total
