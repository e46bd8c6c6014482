"""Money: a Decimal amount in a currency, always quantized to the currency's minor unit."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from babel.core import get_global
from babel.numbers import get_currency_precision, get_territory_currencies, list_currencies
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

#: The day on which the currencies new input may name are those in use (CURRENCIES_IN_USE).
_IN_USE_ON = date(2026, 1, 1)


#: ISO 4217's codes for "no currency" and "testing": never an amount's currency.
_NOT_MONEY = frozenset({"XXX", "XTS"})
#: Where amounts were recorded with other digits than CLDR's before babel's data was used
#: (ISO 4217's, of the hand table kept until 2026-12): kept, so that they read back unchanged.
_RECORDED_DIGITS = {"IDR": 2}


def _minor_units() -> dict[str, int]:
    """Every currency code in the Unicode CLDR (babel's data), historic ones included, with
    its minor unit: an event recorded in a currency since withdrawn still reads back. The
    digits are CLDR's (what the currency is accounted in), which for a few differ from
    ISO 4217's table (HUF, IQD... have no minor unit in use and CLDR says 0); IDR keeps the 2
    it was recorded with before (`_RECORDED_DIGITS`)."""
    return {
        code: _RECORDED_DIGITS.get(code, get_currency_precision(code))
        for code in list_currencies()
        if len(code) == 3 and code.isascii() and code.isupper() and code not in _NOT_MONEY
    }


def _in_use(on: date) -> frozenset[str]:
    """Legal tender in some territory on `on` (CLDR): what a price or payment may be in."""
    territories = get_global("territory_currencies")
    return frozenset(
        code
        for territory in territories
        for code in get_territory_currencies(territory, start_date=on, tender=True)
        if code in MINOR_UNITS
    )


#: Minor units (decimal places) of every currency CLDR knows, from babel's data.
MINOR_UNITS: dict[str, int] = _minor_units()
#: The currencies new prices, plans and payments may be in: legal tender somewhere in 2026
#: (the OpenAPI document lists them). Amounts already recorded in others still read back.
CURRENCIES_IN_USE: frozenset[str] = _in_use(_IN_USE_ON)


class Rounding(StrEnum):
    """How a computed amount becomes a payable one."""

    HALF_UP = "half_up"
    HALF_EVEN = "half_even"

    @property
    def decimal_mode(self) -> str:
        return ROUND_HALF_UP if self is Rounding.HALF_UP else ROUND_HALF_EVEN


class CurrencyMismatch(ValueError):
    pass


def minor_unit_exponent(currency: str) -> Decimal:
    try:
        return Decimal(1).scaleb(-MINOR_UNITS[currency])
    except KeyError:
        raise ValueError(f"unknown currency {currency!r}") from None


def quantize(amount: Decimal, currency: str, rounding: Rounding = Rounding.HALF_UP) -> Decimal:
    return amount.quantize(minor_unit_exponent(currency), rounding=rounding.decimal_mode)


_MONEY_FIELDS = {"amount", "currency"}


_ZEROS: dict[str, Money] = {}


class Money(BaseModel):
    """An amount of a currency. Floats are refused: they cannot hold 0.10 exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: Decimal
    currency: str

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise TypeError("Money refuses float amounts; pass a str or Decimal")
        if isinstance(value, Decimal) and not value.is_finite():
            raise ValueError("Money must be finite")
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        minor_unit_exponent(value)
        return value

    @model_validator(mode="after")
    def _quantized(self) -> Money:
        q = quantize(self.amount, self.currency)
        if q != self.amount or not q.same_quantum(self.amount):
            object.__setattr__(self, "amount", q)
        return self

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        if isinstance(amount, float):
            raise TypeError("Money refuses float amounts; pass a str or Decimal")
        return cls(amount=Decimal(amount), currency=currency)

    @classmethod
    def exact(cls, amount: str | int | Decimal, currency: str) -> Money:
        """Money typed by a person: more decimals than the currency has is an error, not a
        rounding (a price of 29.999 USD is a typo to report, not 30.00 to charge)."""
        if isinstance(amount, float):
            raise TypeError("Money refuses float amounts; pass a str or Decimal")
        value = Decimal(amount)
        if not value.is_finite():
            raise ValueError(f"{amount!r} is not a finite amount")
        if value != quantize(value, currency):
            raise ValueError(f"{amount} has more decimals than {currency} allows")
        return cls(amount=value, currency=currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Zero of a currency; one shared (frozen) instance per currency: sums start from it
        tens of thousands of times in a bill run, and validating each cost a tenth of it."""
        if cls is not Money:
            return cls(amount=Decimal(0), currency=currency)
        found = _ZEROS.get(currency)
        if found is None:
            found = cls(amount=Decimal(0), currency=currency)
            _ZEROS[currency] = found  # only currencies that validated: a few hundred at most
        return found

    @classmethod
    def rounded(cls, amount: Decimal, currency: str, rounding: Rounding) -> Money:
        return cls(amount=quantize(amount, currency, rounding), currency=currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"{self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return self._of(self.amount + other.amount)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return self._of(self.amount - other.amount)

    def _of(self, amount: Decimal) -> Money:
        """Money of `amount` in this currency: a sum or difference of two quantized amounts
        has their exponent already, so it skips validation (a bill run adds money thousands
        of times a second); anything else (a context that rounded it) is validated."""
        if amount.is_finite() and amount.same_quantum(self.amount):
            return Money.model_construct(
                _fields_set=_MONEY_FIELDS, amount=amount, currency=self.currency
            )
        return Money(amount=amount, currency=self.currency)

    def __neg__(self) -> Money:
        return Money(amount=-self.amount, currency=self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def is_zero(self) -> bool:
        return self.amount == 0

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"
