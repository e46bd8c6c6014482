"""How an ISP bills: its time zone, series, payment terms and rounding rules."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from invoicing.domain.generator import TaxRounding
from ispbill_core.money import Rounding


@dataclass(frozen=True)
class BillingSettings:
    timezone: ZoneInfo
    series: str = "INV"
    credit_note_series: str = "CN"
    payment_terms_days: int = 14
    tax_rounding: TaxRounding = TaxRounding.PER_INVOICE
    rounding: Rounding = Rounding.HALF_UP

    def invoice_number(self, sequence: int) -> str:
        return f"{self.series}-{sequence:06d}"

    def credit_note_number(self, sequence: int) -> str:
        return f"{self.credit_note_series}-{sequence:06d}"
