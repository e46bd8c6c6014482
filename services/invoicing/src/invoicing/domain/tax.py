"""Tax, pure: which rules apply to a customer on a day, and what they charge on an invoice's
lines (ADR 0029).

Rules are set per region level ("BD", "BD.dhaka", "BD.dhaka.gulshan"): a customer pays every
tax in force on its region's levels, a deeper level's rule replacing a broader one's with the
same tax code. A customer whose levels have no rule in force is not taxed silently: the bill
run reports it (`NoTaxRuleInForce`). Taxes are computed in `sequence` order; a compound tax is
charged on the taxable value plus the taxes before it. Exclusive prices get the tax added,
rounded per line or once per invoice; tax-inclusive prices get it taken out, always per line,
so that each line's taxable value plus its taxes is the price to the minor unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, localcontext
from enum import StrEnum

from invoicing.domain.errors import InvoicingError
from ispbill_core.contracts.invoicing import (
    InvoiceLine,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxLine,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    tax_region_levels,
)
from ispbill_core.money import Money, Rounding

__all__ = [
    "LEGACY_TAX_CODE",
    "Exemption",
    "NoTaxRuleInForce",
    "TaxRounding",
    "TaxRule",
    "TaxedLines",
    "apply_taxes",
    "exemptions_in_force",
    "rule_of_rate",
    "rules_in_force",
]

#: The tax code a `TaxRateSet` (the simple form, one rate per region) is read as.
LEGACY_TAX_CODE = "rate"

_PRECISION = 50

AnyRuleEvent = TaxRuleSet | TaxRuleEnded | TaxRateSet
AnyExemptionEvent = TaxExemptionGranted | TaxExemptionRevoked
#: rounds to the invoice currency's minor unit
_Rounder = Callable[[Decimal], Decimal]


class TaxRounding(StrEnum):
    """Where tax on tax-exclusive prices is rounded: on every line then summed, or once on
    the invoice's sum of lines (tax-inclusive prices are always per line)."""

    PER_LINE = "per_line"
    PER_INVOICE = "per_invoice"


class NoTaxRuleInForce(InvoicingError):
    """No level of the customer's region has a tax rule in force on the tax point."""


@dataclass(frozen=True)
class TaxRule:
    """A tax in force for a customer: its code, rate and order, and which rule it is (the
    level it was set on and its `effective_from`; None: a `TaxRateSet`, from the beginning)."""

    tax_code: str
    name: str
    rate: Decimal
    region: str
    effective_from: date | None = None
    compound: bool = False
    sequence: int = 0


@dataclass(frozen=True)
class Exemption:
    certificate: str
    #: empty: every tax
    tax_codes: frozenset[str]
    valid_from: date
    valid_until: date | None = None

    def covers(self, tax_code: str) -> bool:
        return not self.tax_codes or tax_code in self.tax_codes


def rule_of_rate(rate: TaxRateSet) -> TaxRule:
    return TaxRule(tax_code=LEGACY_TAX_CODE, name=rate.tax_name, rate=rate.rate, region=rate.region)


def rules_in_force(
    history: Mapping[str, Sequence[AnyRuleEvent]], region: str, on: date
) -> list[TaxRule]:
    """The rules a customer of `region` pays on the day `on`, in computing order.

    `history`: each region level's rule events in ledger order (levels the customer's region
    is not under are ignored). On each level, a tax code's rule in force is its latest event
    (by `effective_from`, then ledger order) dated on or before `on`: a `TaxRuleSet`, or a
    `TaxRuleEnded` (none on this level). A `TaxRateSet` is the code "rate" from the
    beginning. Deeper levels replace broader ones code by code."""
    by_code: dict[str, TaxRule] = {}
    for level in tax_region_levels(region):
        latest: dict[str, tuple[date, int, AnyRuleEvent]] = {}
        for order, event in enumerate(history.get(level, ())):
            if isinstance(event, TaxRateSet):
                code, since = LEGACY_TAX_CODE, date.min
            else:
                code, since = event.tax_code, event.effective_from
            if since > on:
                continue
            known = latest.get(code)
            if known is None or (since, order) >= known[:2]:
                latest[code] = (since, order, event)
        for code, (_, _, event) in latest.items():
            if isinstance(event, TaxRuleEnded):
                continue  # this level's rule ended: a broader level's applies, if any
            if isinstance(event, TaxRateSet):
                by_code[code] = TaxRule(
                    tax_code=code, name=event.tax_name, rate=event.rate, region=level
                )
            else:
                by_code[code] = TaxRule(
                    tax_code=code,
                    name=event.name,
                    rate=event.rate,
                    region=level,
                    effective_from=event.effective_from,
                    compound=event.compound,
                    sequence=event.sequence,
                )
    if not by_code:
        raise NoTaxRuleInForce(
            f"no tax rule in force for region {region!r} on {on}: set one for it or a level"
            ' above it (a rate of "0" for a region that pays no tax)'
        )
    return sorted(by_code.values(), key=lambda r: (r.sequence, r.tax_code))


def exemptions_in_force(events: Iterable[AnyExemptionEvent], on: date) -> list[Exemption]:
    """The customer's exemptions valid on `on`: each certificate's latest grant, unless it was
    revoked from `on` or earlier."""
    grants: dict[str, TaxExemptionGranted] = {}
    revoked: dict[str, date] = {}
    for event in events:
        if isinstance(event, TaxExemptionGranted):
            grants[event.certificate] = event
            revoked.pop(event.certificate, None)  # granted again after a revocation
        else:
            known = revoked.get(event.certificate)
            revoked[event.certificate] = (
                event.effective_from if known is None else min(known, event.effective_from)
            )
    found = []
    for certificate, grant in grants.items():
        if grant.valid_from > on or (grant.valid_until is not None and on > grant.valid_until):
            continue
        if certificate in revoked and revoked[certificate] <= on:
            continue
        found.append(
            Exemption(
                certificate=certificate,
                tax_codes=frozenset(grant.tax_codes),
                valid_from=grant.valid_from,
                valid_until=grant.valid_until,
            )
        )
    return sorted(found, key=lambda e: e.certificate)


@dataclass(frozen=True)
class TaxedLines:
    """The lines with their taxable values (tax-inclusive ones with the tax taken out) and the
    invoice's tax summary, one entry per tax and rate."""

    lines: tuple[InvoiceLine, ...]
    taxes: tuple[TaxLine, ...]


@dataclass
class _Total:
    rule: TaxRule
    exemption: str | None
    taxable: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)


def apply_taxes(
    lines: Sequence[InvoiceLine],
    rules: Sequence[TaxRule],
    exemptions: Sequence[Exemption] = (),
    mode: TaxRounding = TaxRounding.PER_INVOICE,
    rounding: Rounding = Rounding.HALF_UP,
) -> TaxedLines:
    """Tax `lines` (all in one currency; a tax-inclusive line's `amount` is its price) with
    `rules` in computing order, none for the taxes an exemption covers (shown at zero, with
    the certificate). Exclusive lines: per line, each tax rounded on each line; per invoice,
    each tax rounded once on the sum of the lines. Inclusive lines: each tax worked out
    exactly from the price and rounded per line; the line's taxable value is the price less
    them."""
    if not lines:
        return TaxedLines((), ())
    currency = lines[0].amount.currency
    ordered = sorted(rules, key=lambda r: (r.sequence, r.tax_code))
    totals = [
        _Total(rule, next((e.certificate for e in exemptions if e.covers(rule.tax_code)), None))
        for rule in ordered
    ]

    def rounded(value: Decimal) -> Decimal:
        return Money.rounded(value, currency, rounding).amount

    out: list[InvoiceLine] = []
    exclusive_net = Decimal(0)
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        for line in lines:
            if line.amount.currency != currency:
                raise InvoicingError(
                    f"a line in {line.amount.currency} on an invoice in {currency}"
                )
            if line.tax_inclusive:
                out.append(_extract(line, totals, rounded))
                continue
            out.append(line)
            exclusive_net += line.amount.amount
            if mode is TaxRounding.PER_LINE:
                _charge(line.amount.amount, totals, rounded)
        if mode is TaxRounding.PER_INVOICE and any(not line.tax_inclusive for line in lines):
            _charge(exclusive_net, totals, rounded)
    taxes = tuple(
        TaxLine(
            tax_name=t.rule.name,
            rate=t.rule.rate,
            taxable=Money.exact(t.taxable, currency),
            amount=Money.exact(t.amount, currency),
            tax_code=t.rule.tax_code,
            region=t.rule.region,
            effective_from=t.rule.effective_from,
            compound=t.rule.compound,
            exemption_certificate=t.exemption,
        )
        for t in totals
    )
    return TaxedLines(tuple(out), taxes)


def _charge(net: Decimal, totals: Sequence[_Total], rounded: _Rounder) -> None:
    """Exclusive: each tax on `net` (plus the taxes before it, when compound), rounded."""
    before = Decimal(0)
    for total in totals:
        base = net + before if total.rule.compound else net
        amount = Decimal(0) if total.exemption else rounded(base * total.rule.rate)
        total.taxable += base
        total.amount += amount
        before += amount


def _extract(line: InvoiceLine, totals: Sequence[_Total], rounded: _Rounder) -> InvoiceLine:
    """Inclusive: the exact taxable value is price / (1 + what the taxes add to one unit);
    each tax on it is rounded, and the taxable value is what the price leaves."""
    gross = line.amount.amount
    per_unit = []  # each tax on a taxable value of 1, exactly
    before = Decimal(0)
    for total in totals:
        base = 1 + before if total.rule.compound else Decimal(1)
        amount = Decimal(0) if total.exemption else base * total.rule.rate
        per_unit.append(amount)
        before += amount
    exact_net = gross / (1 + before)
    amounts = [rounded(exact_net * unit) for unit in per_unit]
    net = gross - sum(amounts, Decimal(0))
    before = Decimal(0)
    for total, amount in zip(totals, amounts, strict=True):
        total.taxable += net + before if total.rule.compound else net
        total.amount += amount
        before += amount
    currency = line.amount.currency
    return line.model_copy(
        update={"amount": Money.exact(net, currency), "gross_amount": line.amount}
    )
