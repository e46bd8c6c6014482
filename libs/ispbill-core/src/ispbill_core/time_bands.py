"""A plan's time bands: which band a local time of day falls in, and how many bytes of a band
count against the quota. Pure; shared by rating (buckets, quota) and invoicing (overage).

Rules (rating's README, "Buckets"):
- a band covers [start, end) in the ISP's local time; an end before the start wraps past
  midnight (22:00-06:00 is a night band); an end equal to the start covers the whole day;
- where bands overlap, the first one listed in the plan wins;
- bytes in a band count `multiplier` times against the included data and overage, rounded
  down to a whole byte; a "free" band's bytes count zero; bytes outside every band count once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import time
from decimal import ROUND_FLOOR, Decimal

from ispbill_core.contracts.accounts import TimeBand

__all__ = ["STANDARD", "band_at", "band_edges", "counted_octets"]

#: the name of the time outside every band
STANDARD = ""


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def _covers(band: TimeBand, minute: int) -> bool:
    start, end = _minutes(band.start), _minutes(band.end)
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def band_at(bands: Sequence[TimeBand], moment: time) -> str:
    """The band a local time of day falls in (STANDARD when none)."""
    if not bands:
        return STANDARD
    minute = moment.hour * 60 + moment.minute
    for band in bands:
        if _covers(band, minute):
            return band.name
    return STANDARD


def band_edges(bands: Sequence[TimeBand]) -> list[time]:
    """The local times of day where a band starts or ends (where a delta must be cut)."""
    return sorted({time.fromisoformat(edge) for b in bands for edge in (b.start, b.end)})


def counted_octets(bands: Sequence[TimeBand], band: str, octets: int) -> int:
    """How many of `octets` used in `band` count against the quota and the overage."""
    if band == STANDARD:
        return octets
    for candidate in bands:
        if candidate.name == band:
            if candidate.multiplier == "free":
                return 0
            counted = (Decimal(octets) * candidate.multiplier).to_integral_value(ROUND_FLOOR)
            return max(0, int(counted))
    return octets  # a band the plan version no longer has counts as standard time
