"""Money: a Decimal amount in a currency, always quantized to the currency's minor unit."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

#: ISO 4217 minor units of the currencies ISPs bill in; extend as customers need.
MINOR_UNITS: dict[str, int] = {
    "USD": 2, "EUR": 2, "GBP": 2, "BDT": 2, "INR": 2, "PKR": 2, "NPR": 2, "LKR": 2,
    "IDR": 2, "PHP": 2, "NGN": 2, "KES": 2, "ZAR": 2, "BRL": 2, "MXN": 2, "CAD": 2,
    "AUD": 2, "CHF": 2, "PLN": 2, "TRY": 2, "AED": 2, "SAR": 2, "EGP": 2, "MYR": 2,
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "UGX": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}  # fmt: skip


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
        if q != self.amount or q.as_tuple().exponent != self.amount.as_tuple().exponent:
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
        return cls(amount=Decimal(0), currency=currency)

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
        return Money(amount=self.amount + other.amount, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(amount=self.amount - other.amount, currency=self.currency)

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
