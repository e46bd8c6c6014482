"""How an ISP bills: its time zone, series and number format, payment terms and rounding."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from zoneinfo import ZoneInfo

from invoicing.domain.tax import TaxRounding
from ispbill_core.money import Rounding

#: What a number may look like: what an invoice reference in a URL accepts.
_NUMBER = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")
DEFAULT_NUMBER_FORMAT = "{series}-{seq:06d}"


@dataclass(frozen=True)
class BillingSettings:
    timezone: ZoneInfo
    series: str = "INV"
    credit_note_series: str = "CN"
    payment_terms_days: int = 14
    tax_rounding: TaxRounding = TaxRounding.PER_INVOICE
    rounding: Rounding = Rounding.HALF_UP
    #: How a number is written (ISPBILL_NUMBER_FORMAT): `{series}`, `{year}`, `{seq}` (with a
    #: width: `{seq:06d}`). With `{year}`, each series counts from 1 again every year (its own
    #: gapless stream per year): an invoice's year is its billed period's, a credit note's the
    #: day it is issued (ISP's time zone).
    number_format: str = DEFAULT_NUMBER_FORMAT
    #: How many periods before the billed one a bill run looks at for usage rated after their
    #: invoice (ISPBILL_LATE_USAGE_PERIODS; 0: none): billed as adjustment lines (ADR 0032).
    late_usage_periods: int = 3
    #: When a period's scheduled bill run fires: this wall time on the next period's first day
    #: in `timezone` (ISPBILL_BILL_RUN_AT, "02:00"; "off": no scheduled bill runs).
    bill_run_at: time | None = time(2, 0)

    def __post_init__(self) -> None:
        if not 0 <= self.late_usage_periods <= 24:
            raise ValueError(f"late usage periods {self.late_usage_periods}: 0 to 24")
        for series in (self.series, self.credit_note_series):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", series):
                raise ValueError(f"series {series!r}: letters, digits, '_', '.', '-', 1-32")
        if self.series == self.credit_note_series:
            raise ValueError(
                f"invoices and credit notes share the series {self.series!r}: their numbers"
                " would collide"
            )
        for field in ("{seq", "{series"):
            if field not in self.number_format:
                raise ValueError(f"number format {self.number_format!r} has no {field}}}")
        try:
            sample = self.number_format.format(series=self.series, year=2026, seq=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"number format {self.number_format!r}: {exc} (fields: series, year, seq)"
            ) from None
        if not _NUMBER.fullmatch(sample):
            raise ValueError(
                f"number format {self.number_format!r} makes {sample!r}: letters, digits and"
                " _ . : / - only, at most 100 characters"
            )

    @property
    def yearly(self) -> bool:
        return "{year" in self.number_format

    def series_key(self, series: str, year: int) -> str:
        """The series' stream name part: per year when the format has `{year}`."""
        return f"{series}-{year:04d}" if self.yearly else series

    def number(self, series: str, year: int, sequence: int) -> str:
        return self.number_format.format(series=series, year=year, seq=sequence)

    def invoice_number(self, sequence: int, year: int = 0) -> str:
        return self.number(self.series, year, sequence)

    def credit_note_number(self, sequence: int, year: int = 0) -> str:
        return self.number(self.credit_note_series, year, sequence)
