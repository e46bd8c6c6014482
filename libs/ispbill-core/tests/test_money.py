"""Money: Decimal only, quantized to the currency's minor unit, one currency at a time."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ispbill_core.money import (
    MINOR_UNITS,
    CurrencyMismatch,
    Money,
    Rounding,
    minor_unit_exponent,
    quantize,
)

pytestmark = pytest.mark.unit

currencies = st.sampled_from(sorted(MINOR_UNITS))
amounts = st.decimals(
    min_value=Decimal("-1000000000"),
    max_value=Decimal("1000000000"),
    allow_nan=False,
    allow_infinity=False,
    places=6,
)


def test_float_amounts_are_refused() -> None:
    with pytest.raises(TypeError):
        Money.of(0.1, "USD")  # type: ignore[arg-type]
    # TypeError is not one pydantic wraps: it surfaces as itself.
    with pytest.raises(TypeError):
        Money(amount=0.1, currency="USD")


def test_non_finite_amounts_are_refused() -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValidationError):
            Money(amount=Decimal(value), currency="USD")


def test_unknown_currency_is_refused() -> None:
    with pytest.raises(ValidationError):
        Money.of("1", "XXX")
    with pytest.raises(ValidationError):
        Money.of("1", "ZZZ")
    with pytest.raises(ValueError):
        minor_unit_exponent("XXX")


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("10", "USD", "10.00"),
        ("0.1", "EUR", "0.10"),
        ("1.005", "USD", "1.01"),
        ("2.5", "JPY", "3"),
        ("1234.5", "KRW", "1235"),
        ("1.2345", "KWD", "1.235"),
        ("0.0005", "BHD", "0.001"),
        ("-1.005", "GBP", "-1.01"),
    ],
)
def test_amounts_are_quantized_to_the_minor_unit(amount: str, currency: str, expected: str) -> None:
    money = Money.of(amount, currency)
    assert money.amount == Decimal(expected)
    assert str(money.amount) == expected  # the exponent too, not just the value


@pytest.mark.parametrize(
    ("amount", "currency", "half_up", "half_even"),
    [
        ("2.5", "JPY", "3", "2"),
        ("3.5", "JPY", "4", "4"),
        ("0.125", "USD", "0.13", "0.12"),
        ("0.135", "USD", "0.14", "0.14"),
        ("-0.125", "EUR", "-0.13", "-0.12"),
        ("1.0005", "KWD", "1.001", "1.000"),
    ],
)
def test_rounding_mode_only_matters_at_ties(
    amount: str, currency: str, half_up: str, half_even: str
) -> None:
    up = Money.rounded(Decimal(amount), currency, Rounding.HALF_UP)
    even = Money.rounded(Decimal(amount), currency, Rounding.HALF_EVEN)
    assert (str(up.amount), str(even.amount)) == (half_up, half_even)


def test_currencies_do_not_mix() -> None:
    usd, eur = Money.of("1", "USD"), Money.of("1", "EUR")
    with pytest.raises(CurrencyMismatch):
        _ = usd + eur
    with pytest.raises(CurrencyMismatch):
        _ = usd - eur
    with pytest.raises(CurrencyMismatch):
        _ = usd < eur
    with pytest.raises(TypeError):
        _ = usd + Decimal("1")  # type: ignore[operator]


def test_arithmetic_and_comparisons() -> None:
    a, b = Money.of("10.10", "USD"), Money.of("0.20", "USD")
    assert a + b == Money.of("10.30", "USD")
    assert a - b == Money.of("9.90", "USD")
    assert -b == Money.of("-0.20", "USD")
    assert b < a and b <= a and a > b and a >= b
    assert Money.zero("JPY").is_zero()
    assert str(Money.of("3", "KWD")) == "3.000 KWD"


def test_money_is_immutable() -> None:
    money = Money.of("1", "USD")
    with pytest.raises(ValidationError):
        money.amount = Decimal("2")  # type: ignore[misc]


@given(amount=amounts, currency=currencies, rounding=st.sampled_from(Rounding))
def test_quantize_lands_on_the_minor_unit_within_half_of_it(
    amount: Decimal, currency: str, rounding: Rounding
) -> None:
    q = quantize(amount, currency, rounding)
    assert q.as_tuple().exponent == -MINOR_UNITS[currency]
    assert abs(q - amount) <= minor_unit_exponent(currency) / 2


@given(amount=amounts, currency=currencies)
def test_half_up_and_half_even_differ_only_on_exact_ties(amount: Decimal, currency: str) -> None:
    up = quantize(amount, currency, Rounding.HALF_UP)
    even = quantize(amount, currency, Rounding.HALF_EVEN)
    if up != even:
        assert abs(amount - up) == abs(amount - even) == minor_unit_exponent(currency) / 2


@given(amount=amounts, currency=currencies)
def test_quantizing_twice_changes_nothing(amount: Decimal, currency: str) -> None:
    money = Money.of(amount, currency)
    assert Money.of(money.amount, currency) == money


@given(xs=st.lists(amounts, min_size=1, max_size=30), currency=currencies)
def test_sums_of_money_are_exact(xs: list[Decimal], currency: str) -> None:
    """Adding quantized amounts never rounds: the total is the sum of what was shown."""
    parts = [Money.of(x, currency) for x in xs]
    total = Money.zero(currency)
    for part in parts:
        total = total + part
    assert total.amount == sum((p.amount for p in parts), Decimal(0))
    for part in reversed(parts):
        total = total - part
    assert total.is_zero()


@given(amount=amounts, currency=currencies)
def test_money_round_trips_through_json(amount: Decimal, currency: str) -> None:
    money = Money.of(amount, currency)
    assert Money.model_validate_json(money.model_dump_json()) == money


@pytest.mark.unit
def test_exact_refuses_more_decimals_than_the_currency_has() -> None:
    assert Money.exact("29.99", "USD").amount == Decimal("29.99")
    assert Money.exact("1000", "JPY").amount == Decimal("1000")
    with pytest.raises(ValueError, match="more decimals than USD"):
        Money.exact("29.999", "USD")
    with pytest.raises(ValueError, match="more decimals than JPY"):
        Money.exact("10.5", "JPY")
    with pytest.raises(TypeError):
        Money.exact(29.99, "USD")  # type: ignore[arg-type]


def test_minor_units_come_from_cldr_and_withdrawn_currencies_still_read_back() -> None:
    from ispbill_core.money import CURRENCIES_IN_USE, MINOR_UNITS

    assert (MINOR_UNITS["BDT"], MINOR_UNITS["JPY"], MINOR_UNITS["KWD"]) == (2, 0, 3)
    assert MINOR_UNITS["LYD"] == 3 and MINOR_UNITS["XOF"] == 0  # beyond the old hand table
    assert "LYD" in CURRENCIES_IN_USE and "DEM" not in CURRENCIES_IN_USE
    # a Deutsche Mark amount recorded long ago still decodes
    assert Money.of("1.50", "DEM").amount == Decimal("1.50")
    assert len(CURRENCIES_IN_USE) > 140


def test_the_currencies_of_the_old_hand_table_keep_their_digits() -> None:
    """Amounts recorded before babel's data was used read back unchanged (a babel upgrade
    that changed one of these would change recorded amounts: this test stops it)."""
    from ispbill_core.money import MINOR_UNITS

    two = "USD EUR GBP BDT INR PKR NPR LKR IDR PHP NGN KES ZAR BRL MXN CAD AUD CHF PLN TRY"
    two += " AED SAR EGP MYR"
    recorded = {
        **{code: 2 for code in two.split()},
        **{code: 0 for code in ("JPY", "KRW", "VND", "CLP", "UGX")},
        **{code: 3 for code in ("KWD", "BHD", "OMR", "JOD", "TND")},
    }
    assert len(recorded) == 34
    assert {code: MINOR_UNITS[code] for code in recorded} == recorded
