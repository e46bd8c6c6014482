"""Tax rules and their arithmetic (invoicing.domain.tax, ADR 0029): golden cases worked out
by hand, and properties over any lines, rules and rounding."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoicing.domain.generator import taxed_draft
from invoicing.domain.tax import (
    Exemption,
    NoTaxRuleInForce,
    TaxRounding,
    TaxRule,
    apply_taxes,
    exemptions_in_force,
    rules_in_force,
)
from ispbill_core.contracts.invoicing import (
    InvoiceLine,
    LineKind,
    TaxExemptionGranted,
    TaxExemptionRevoked,
    TaxRateSet,
    TaxRuleEnded,
    TaxRuleSet,
    tax_region_levels,
)
from ispbill_core.money import Money, Rounding

pytestmark = pytest.mark.unit

VAT = TaxRule(tax_code="VAT", name="VAT", rate=Decimal("0.15"), region="BD", sequence=1)
SD = TaxRule(tax_code="SD", name="Supplementary duty", rate=Decimal("0.10"), region="BD")
VAT_ON_SD = TaxRule(
    tax_code="VAT", name="VAT", rate=Decimal("0.15"), region="BD", compound=True, sequence=1
)


def line(amount: str, currency: str = "BDT", *, inclusive: bool = False) -> InvoiceLine:
    price = Money.of(amount, currency)
    return InvoiceLine(
        kind=LineKind.RECURRING,
        description="Plan",
        quantity=Decimal(1),
        unit="month",
        unit_price=price,
        amount=price,
        tax_inclusive=inclusive,
    )


def amounts(taxed) -> dict[str, str]:
    return {t.tax_code: str(t.amount.amount) for t in taxed.taxes}


# -- the arithmetic, by hand --------------------------------------------------------------


def test_an_exclusive_price_gets_the_tax_added() -> None:
    draft = taxed_draft([line("1000.00")], [VAT])
    assert (str(draft.subtotal.amount), str(draft.tax_total.amount)) == ("1000.00", "150.00")
    assert draft.total == Money.of("1150.00", "BDT")


def test_an_inclusive_price_has_the_tax_taken_out_and_the_customer_pays_the_price() -> None:
    # 1000 / 1.15 = 869.5652...; the tax 130.4347... rounds to 130.43; the value is what is left
    draft = taxed_draft([line("1000.00", inclusive=True)], [VAT])
    (taxed_line,) = draft.lines
    assert taxed_line.amount == Money.of("869.57", "BDT")
    assert taxed_line.gross_amount == Money.of("1000.00", "BDT")
    assert draft.taxes[0].amount == Money.of("130.43", "BDT")
    assert draft.taxes[0].taxable == Money.of("869.57", "BDT")
    assert draft.total == Money.of("1000.00", "BDT")


def test_vat_compounds_on_a_supplementary_duty() -> None:
    # SD 10 % of 1000 = 100; VAT 15 % of (1000 + 100) = 165
    draft = taxed_draft([line("1000.00")], [SD, VAT_ON_SD])
    assert amounts(draft) == {"SD": "100.00", "VAT": "165.00"}
    assert [t.taxable.amount for t in draft.taxes] == [Decimal("1000.00"), Decimal("1100.00")]
    assert draft.total == Money.of("1265.00", "BDT")


def test_two_taxes_not_compounded_are_each_on_the_value() -> None:
    draft = taxed_draft([line("1000.00")], [SD, VAT])
    assert amounts(draft) == {"SD": "100.00", "VAT": "150.00"}


def test_an_inclusive_price_with_a_compound_tax_comes_apart_exactly() -> None:
    # 1 + 0.10 + 0.15 x 1.10 = 1.265, and 1265 / 1.265 = 1000
    draft = taxed_draft([line("1265.00", inclusive=True)], [SD, VAT_ON_SD])
    assert draft.lines[0].amount == Money.of("1000.00", "BDT")
    assert amounts(draft) == {"SD": "100.00", "VAT": "165.00"}
    assert draft.total == Money.of("1265.00", "BDT")


def test_rounding_per_line_and_per_invoice_differ_as_documented() -> None:
    lines = [line("0.10", "USD") for _ in range(3)]
    vat = TaxRule(tax_code="VAT", name="VAT", rate=Decimal("0.15"), region="US")
    # per line: 0.015 rounds to 0.02, three times; per invoice: 0.045 rounds to 0.05
    per_line = taxed_draft(lines, [vat], tax_rounding=TaxRounding.PER_LINE)
    per_invoice = taxed_draft(lines, [vat], tax_rounding=TaxRounding.PER_INVOICE)
    assert per_line.tax_total == Money.of("0.06", "USD")
    assert per_invoice.tax_total == Money.of("0.05", "USD")


def test_two_taxes_with_both_rounding_modes() -> None:
    lines = [line("0.10", "USD") for _ in range(3)]
    sd = TaxRule(tax_code="SD", name="SD", rate=Decimal("0.05"), region="US")
    vat = TaxRule(
        tax_code="VAT", name="VAT", rate=Decimal("0.15"), region="US", compound=True, sequence=1
    )
    # per line: SD 0.005 -> 0.01; VAT on 0.11 = 0.0165 -> 0.02; three lines
    per_line = taxed_draft(lines, [sd, vat], tax_rounding=TaxRounding.PER_LINE)
    assert amounts(per_line) == {"SD": "0.03", "VAT": "0.06"}
    assert per_line.taxes[1].taxable == Money.of("0.33", "USD")
    # per invoice: SD 0.015 -> 0.02; VAT on 0.32 = 0.048 -> 0.05
    per_invoice = taxed_draft(lines, [sd, vat], tax_rounding=TaxRounding.PER_INVOICE)
    assert amounts(per_invoice) == {"SD": "0.02", "VAT": "0.05"}
    assert per_invoice.taxes[1].taxable == Money.of("0.32", "USD")
    assert per_invoice.total == Money.of("0.37", "USD")


def test_an_exempt_customer_is_shown_the_tax_at_zero_with_the_certificate() -> None:
    exempt = Exemption(certificate="NBR-EX-42", tax_codes=frozenset({"VAT"}), valid_from=date.min)
    draft = taxed_draft([line("1000.00")], [SD, VAT_ON_SD], [exempt])
    sd, vat = draft.taxes
    assert (sd.amount, sd.exemption_certificate) == (Money.of("100.00", "BDT"), None)
    assert (vat.amount, vat.exemption_certificate) == (Money.zero("BDT"), "NBR-EX-42")
    assert draft.total == Money.of("1100.00", "BDT")


def test_an_exemption_of_every_tax_leaves_an_inclusive_price_whole() -> None:
    exempt = Exemption(certificate="EMBASSY-7", tax_codes=frozenset(), valid_from=date.min)
    draft = taxed_draft([line("1000.00", inclusive=True)], [VAT], [exempt])
    assert draft.lines[0].amount == Money.of("1000.00", "BDT")
    assert draft.tax_total == Money.zero("BDT")


def test_a_zero_rate_rule_shows_a_zero_tax_line() -> None:
    untaxed = TaxRule(tax_code="rate", name="untaxed", rate=Decimal(0), region="X")
    draft = taxed_draft([line("30.00", "USD")], [untaxed])
    assert [(t.tax_name, t.amount) for t in draft.taxes] == [("untaxed", Money.zero("USD"))]


def test_lines_in_two_currencies_are_refused() -> None:
    with pytest.raises(Exception, match="USD"):
        apply_taxes([line("1.00", "BDT"), line("1.00", "USD")], [VAT])


# -- which rules apply ---------------------------------------------------------------------


def rule(region: str, code: str, rate: str, since: date, **kw) -> TaxRuleSet:
    return TaxRuleSet(
        region=region, tax_code=code, name=code, rate=Decimal(rate), effective_from=since, **kw
    )


HISTORY: dict[str, list] = {
    "BD": [
        rule("BD", "VAT", "0.15", date(2020, 1, 1)),
        rule("BD", "VAT", "0.16", date(2027, 1, 1)),
    ],
    "BD.dhaka": [
        rule("BD.dhaka", "SD", "0.05", date(2020, 1, 1)),
        TaxRuleEnded(region="BD.dhaka", tax_code="SD", effective_from=date(2027, 2, 1)),
    ],
    "BD.ctg": [rule("BD.ctg", "VAT", "0.075", date(2020, 1, 1))],
    "BD.dhaka.gulshan": [],
}


def test_levels_of_a_region() -> None:
    assert tax_region_levels("BD.dhaka.gulshan") == ["BD", "BD.dhaka", "BD.dhaka.gulshan"]
    assert tax_region_levels("metro") == ["metro"]


def test_a_customer_pays_every_level_of_its_region() -> None:
    found = rules_in_force(HISTORY, "BD.dhaka.gulshan", date(2026, 12, 31))
    assert [(r.tax_code, r.rate, r.region) for r in found] == [
        ("SD", Decimal("0.05"), "BD.dhaka"),
        ("VAT", Decimal("0.15"), "BD"),
    ]


def test_a_deeper_level_replaces_a_broader_one_with_the_same_code() -> None:
    found = rules_in_force(HISTORY, "BD.ctg", date(2026, 12, 31))
    assert [(r.tax_code, r.rate, r.region) for r in found] == [("VAT", Decimal("0.075"), "BD.ctg")]


def test_a_rule_applies_from_its_effective_date_and_an_end_stops_it() -> None:
    january = rules_in_force(HISTORY, "BD.dhaka", date(2027, 1, 31))
    assert [(r.tax_code, r.rate) for r in january] == [
        ("SD", Decimal("0.05")),
        ("VAT", Decimal("0.16")),
    ]
    assert january[1].effective_from == date(2027, 1, 1)
    february = rules_in_force(HISTORY, "BD.dhaka", date(2027, 2, 28))
    assert [(r.tax_code, r.rate) for r in february] == [("VAT", Decimal("0.16"))]


def test_a_region_without_a_rule_in_force_is_an_error_not_untaxed() -> None:
    with pytest.raises(NoTaxRuleInForce, match="'XX'"):
        rules_in_force(HISTORY, "XX", date(2026, 12, 31))
    with pytest.raises(NoTaxRuleInForce):
        rules_in_force(HISTORY, "BD", date(2019, 12, 31))  # before the first rule


def test_a_rule_set_later_for_the_same_day_replaces_the_earlier() -> None:
    history = {
        "BD": [
            rule("BD", "VAT", "0.15", date(2027, 1, 1)),
            rule("BD", "VAT", "0.05", date(2027, 1, 1)),
        ]
    }
    assert rules_in_force(history, "BD", date(2027, 1, 1))[0].rate == Decimal("0.05")


def test_tax_rate_set_is_one_rate_from_the_beginning_the_latest_winning() -> None:
    history = {
        "metro": [
            TaxRateSet(region="metro", tax_name="VAT", rate=Decimal("0.15")),
            TaxRateSet(region="metro", tax_name="GST", rate=Decimal("0.10")),
        ]
    }
    (only,) = rules_in_force(history, "metro", date(2000, 1, 1))
    assert (only.name, only.rate, only.effective_from) == ("GST", Decimal("0.10"), None)


def test_exemptions_in_force_follow_their_dates_and_revocations() -> None:
    grant = TaxExemptionGranted(
        customer_id="c-1",
        certificate="EX-1",
        tax_codes=("VAT",),
        valid_from=date(2026, 1, 1),
        valid_until=date(2026, 12, 31),
    )
    assert exemptions_in_force([grant], date(2025, 12, 31)) == []
    assert [e.certificate for e in exemptions_in_force([grant], date(2026, 6, 30))] == ["EX-1"]
    assert exemptions_in_force([grant], date(2027, 1, 1)) == []
    revoked = TaxExemptionRevoked(
        customer_id="c-1", certificate="EX-1", effective_from=date(2026, 7, 1)
    )
    assert len(exemptions_in_force([grant, revoked], date(2026, 6, 30))) == 1
    assert exemptions_in_force([grant, revoked], date(2026, 7, 31)) == []
    # granted again after the revocation: in force again
    assert len(exemptions_in_force([grant, revoked, grant], date(2026, 7, 31))) == 1


# -- properties ----------------------------------------------------------------------------

rates = st.decimals(min_value=0, max_value=Decimal("0.3"), places=4)
rule_sets = st.lists(st.tuples(rates, st.booleans(), st.booleans()), min_size=1, max_size=3).map(
    lambda specs: [
        TaxRule(
            tax_code=f"T{i}", name=f"T{i}", rate=rate, region="R", compound=compound, sequence=i
        )
        for i, (rate, compound, _) in enumerate(specs)
    ]
)
currencies = st.sampled_from(["BDT", "USD", "JPY", "KWD"])


@st.composite
def invoices(draw):
    currency = draw(currencies)
    exponent = Money.zero(currency).amount.as_tuple().exponent
    cents = draw(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=8))
    inclusive = draw(st.lists(st.booleans(), min_size=len(cents), max_size=len(cents)))
    lines = [
        line(str(Decimal(c).scaleb(exponent)), currency, inclusive=inc)
        for c, inc in zip(cents, inclusive, strict=True)
    ]
    return lines, draw(rule_sets), draw(st.sampled_from(list(TaxRounding)))


@settings(max_examples=300, deadline=None)
@given(invoices(), st.booleans())
def test_total_is_lines_plus_taxes_exactly_and_inclusive_prices_hold(case, exempt_first) -> None:
    lines, rules, mode = case
    exemptions = (
        [Exemption(certificate="C", tax_codes=frozenset({"T0"}), valid_from=date.min)]
        if exempt_first
        else []
    )
    draft = taxed_draft(lines, rules, exemptions, mode)
    currency = draft.currency
    assert draft.subtotal == sum((ln.amount for ln in draft.lines), Money.zero(currency))
    assert draft.tax_total == sum((t.amount for t in draft.taxes), Money.zero(currency))
    assert draft.total == draft.subtotal + draft.tax_total
    for money in [
        draft.total,
        *(t.amount for t in draft.taxes),
        *(ln.amount for ln in draft.lines),
    ]:
        assert money == Money.rounded(money.amount, currency, Rounding.HALF_UP)
    if all(ln.tax_inclusive for ln in lines):
        # the customer pays the prices, to the minor unit
        assert draft.total == sum((ln.amount for ln in lines), Money.zero(currency))
    for ln in draft.lines:
        if ln.tax_inclusive:
            assert ln.gross_amount is not None and ln.amount <= ln.gross_amount
    if exempt_first:
        assert draft.taxes[0].amount.is_zero() and draft.taxes[0].exemption_certificate == "C"
    assert all(t.amount.amount >= 0 for t in draft.taxes)


@settings(max_examples=200, deadline=None)
@given(invoices())
def test_each_exclusive_tax_is_within_its_roundings_of_the_exact_tax(case) -> None:
    lines, rules, mode = case
    lines = [ln.model_copy(update={"tax_inclusive": False}) for ln in lines]
    draft = taxed_draft(lines, rules, (), mode)
    unit = Decimal(1).scaleb(Money.zero(draft.currency).amount.as_tuple().exponent)
    roundings = len(lines) if mode is TaxRounding.PER_LINE else 1
    for tax in draft.taxes:
        exact = tax.taxable.amount * tax.rate
        assert abs(tax.amount.amount - exact) <= roundings * unit / 2
