"""Billing periods: calendar months cut in the ISP's time zone, daylight saving included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispbill_core.periods import BillingPeriod

pytestmark = pytest.mark.unit

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
ZONES = [LONDON, NEW_YORK, ZoneInfo("Asia/Dhaka"), ZoneInfo("Australia/Lord_Howe"), UTC]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_parse_and_format() -> None:
    assert BillingPeriod.parse("2025-03") == BillingPeriod(2025, 3)
    assert str(BillingPeriod(2025, 3)) == "2025-03"
    assert str(BillingPeriod(987, 1)) == "0987-01"


@pytest.mark.parametrize(
    "text", ["2025-13", "2025-00", "2025-1", "25-01", "2025/03", "", "2025-03 "]
)
def test_parse_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        BillingPeriod.parse(text)


def test_next_days_and_order() -> None:
    assert BillingPeriod(2025, 12).next == BillingPeriod(2026, 1)
    assert BillingPeriod(2024, 2).days == 29
    assert BillingPeriod(2025, 2).days == 28
    assert BillingPeriod(2025, 1) < BillingPeriod(2025, 2) < BillingPeriod(2026, 1)


@pytest.mark.parametrize(
    ("period", "tz", "start", "end", "hours"),
    [
        # Clocks go forward on 30 March: March is an hour short.
        ("2025-03", LONDON, "2025-03-01T00:00", "2025-03-31T23:00", 31 * 24 - 1),
        # Back on 26 October: October is an hour long, and starts in BST.
        ("2025-10", LONDON, "2025-09-30T23:00", "2025-11-01T00:00", 31 * 24 + 1),
        ("2025-03", NEW_YORK, "2025-03-01T05:00", "2025-04-01T04:00", 31 * 24 - 1),
        ("2025-11", NEW_YORK, "2025-11-01T04:00", "2025-12-01T05:00", 30 * 24 + 1),
        ("2025-07", NEW_YORK, "2025-07-01T04:00", "2025-08-01T04:00", 31 * 24),
    ],
)
def test_bounds_are_local_midnights_in_utc_across_dst(
    period: str, tz: ZoneInfo, start: str, end: str, hours: int
) -> None:
    lo, hi = BillingPeriod.parse(period).bounds(tz)
    assert (lo, hi) == (at(start), at(end))
    assert lo.tzinfo is UTC and hi.tzinfo is UTC
    assert hi - lo == timedelta(hours=hours)


@pytest.mark.parametrize(
    ("moment", "tz", "period"),
    [
        ("2025-03-31T22:59:59", LONDON, "2025-03"),
        ("2025-03-31T23:00:00", LONDON, "2025-04"),  # 00:00 BST on 1 April
        ("2025-10-31T23:59:59", LONDON, "2025-10"),  # 23:59 GMT on 31 October
        ("2025-12-01T04:59:59", NEW_YORK, "2025-11"),
        ("2025-12-01T05:00:00", NEW_YORK, "2025-12"),
        ("2025-01-01T03:00:00", NEW_YORK, "2024-12"),
    ],
)
def test_containing_uses_the_isp_time_zone(moment: str, tz: ZoneInfo, period: str) -> None:
    assert str(BillingPeriod.containing(at(moment), tz)) == period


def test_containing_accepts_any_aware_datetime_and_refuses_naive() -> None:
    paris = datetime(2025, 4, 1, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))  # 23:30 BST 31 March
    assert BillingPeriod.containing(paris, LONDON) == BillingPeriod(2025, 3)
    with pytest.raises(ValueError):
        BillingPeriod.containing(datetime(2025, 4, 1), LONDON)


moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)


@given(moment=moments, tz=st.sampled_from(ZONES))
def test_the_containing_period_contains_the_moment(moment: datetime, tz: ZoneInfo) -> None:
    start, end = BillingPeriod.containing(moment, tz).bounds(tz)
    assert start <= moment < end


@given(
    year=st.integers(min_value=1990, max_value=2060),
    month=st.integers(min_value=1, max_value=12),
    tz=st.sampled_from(ZONES),
)
def test_consecutive_periods_tile_time(year: int, month: int, tz: ZoneInfo) -> None:
    period = BillingPeriod(year, month)
    start, end = period.bounds(tz)
    assert end == period.next.bounds(tz)[0]
    # At most one DST hour (half an hour on Lord Howe) off the calendar length.
    assert abs((end - start) - timedelta(days=period.days)) <= timedelta(hours=1)
