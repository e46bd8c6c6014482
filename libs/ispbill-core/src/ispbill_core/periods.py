"""Billing periods: calendar months cut in the ISP's own time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from ispbill_core.events import utc

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


@dataclass(frozen=True, order=True)
class BillingPeriod:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> BillingPeriod:
        match = _PERIOD.match(text)
        if not match:
            raise ValueError(f"billing period must look like YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def containing(cls, moment: datetime, tz: ZoneInfo) -> BillingPeriod:
        local = utc(moment).astimezone(tz)
        return cls(local.year, local.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def next(self) -> BillingPeriod:
        return BillingPeriod(self.year + self.month // 12, self.month % 12 + 1)

    @property
    def previous(self) -> BillingPeriod:
        if self.month == 1:
            return BillingPeriod(self.year - 1, 12)
        return BillingPeriod(self.year, self.month - 1)

    @property
    def days(self) -> int:
        return (self.next.first_day - self.first_day).days

    def bounds(self, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end) in UTC: local midnight of the first day to that of the next month."""
        start = datetime.combine(self.first_day, time(0), tzinfo=tz)
        end = datetime.combine(self.next.first_day, time(0), tzinfo=tz)
        return utc(start), utc(end)
