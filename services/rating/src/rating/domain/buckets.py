"""Buckets: which (billing period, plan version, time band, suspended or not) each byte of a
delta belongs to. Pure: the delta's time span, the ISP's time zone, the subscription's
history and its plans' versions in; pieces out.

The rules (rating's README, "Buckets"):
- a delta covers the time from the session's previous record (or the session's start, for
  its first record) to this record's event time;
- the span is cut at every local midnight (a new period, plan version, plan, suspension or
  hold starts on a day) and at every edge of the plan's time bands that day;
- bytes are shared between the pieces in proportion to time, to the byte: piece k gets
  floor(n * t_k_end / T) - floor(n * t_k_start / T), microseconds from the span's start, so
  the pieces add up exactly to the delta and the same delta always splits the same way;
- adjacent pieces in the same bucket are one piece; a piece of zero bytes is dropped (unless
  the delta is zero, which rating never rates);
- a span longer than `MAX_SPAN` (a session silent for over a year, a NAS clock far off) is
  taken as the last `MAX_SPAN` of it: all of its bytes are still rated;
- a delta whose span is empty or backwards (a Stop older than the last interim) is one piece,
  at the record's time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from ispbill_core.contracts.accounts import PlanTerms, PlanVersionPublished
from ispbill_core.service_history import ServiceHistory, version_on
from ispbill_core.time_bands import STANDARD, band_at, band_edges

__all__ = ["MAX_SPAN", "Bucket", "Piece", "split_usage"]

MAX_SPAN = timedelta(days=366)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Bucket:
    period: str
    band: str = STANDARD
    plan_id: str | None = None
    plan_version: int | None = None
    suspended: bool = False


@dataclass(frozen=True)
class Piece:
    """Bytes of one bucket, used from `started_at` to `ended_at` (both inside the bucket)."""

    bucket: Bucket
    started_at: datetime
    ended_at: datetime
    input_octets: int
    output_octets: int


@dataclass(frozen=True)
class _Tariff:
    """What decides a bucket on a day, looked up once per day."""

    plan_id: str | None
    plan: PlanTerms | None
    suspended: bool


def split_usage(
    start: datetime,
    end: datetime,
    input_octets: int,
    output_octets: int,
    tz: ZoneInfo,
    history: ServiceHistory | None = None,
    plans: Mapping[str, Sequence[PlanTerms]] | None = None,
) -> list[Piece]:
    """The delta (input_octets, output_octets) used over [start, end], in buckets."""
    plans = plans or {}
    days: dict[date, _Tariff] = {}

    def tariff(day: date) -> _Tariff:
        found = days.get(day)
        if found is None:
            found = days[day] = _tariff_on(day, history, plans)
        return found

    def bucket_at(moment: datetime) -> Bucket:
        local = moment.astimezone(tz)
        on = tariff(local.date())
        plan = on.plan
        return Bucket(
            period=f"{local.year:04d}-{local.month:02d}",
            band=band_at(plan.time_bands, local.time()) if plan is not None else STANDARD,
            plan_id=on.plan_id,
            plan_version=_version_number(plan),
            suspended=on.suspended,
        )

    if end - start > MAX_SPAN:
        start = end - MAX_SPAN
    if end <= start:
        return [Piece(bucket_at(end), end, end, input_octets, output_octets)]
    first_day = start.astimezone(tz).date()
    last_day = end.astimezone(tz).date()
    cuts: set[datetime] = set()
    day = first_day
    while day <= last_day:
        cuts.add(_utc(day, time(0), tz))
        plan = tariff(day).plan
        if plan is not None and plan.time_bands:
            cuts.update(_utc(day, edge, tz) for edge in band_edges(plan.time_bands))
        day += timedelta(days=1)
    points = [start, *sorted(c for c in cuts if start < c < end), end]
    span = (end - start) // _MICROSECOND
    pieces: list[Piece] = []
    taken_in = taken_out = 0
    for a, b in pairwise(points):
        elapsed = (b - start) // _MICROSECOND
        upto_in = input_octets * elapsed // span
        upto_out = output_octets * elapsed // span
        piece_in, piece_out = upto_in - taken_in, upto_out - taken_out
        taken_in, taken_out = upto_in, upto_out
        bucket = bucket_at(a)
        last_moment = b if b == end else b - _MICROSECOND
        if pieces and pieces[-1].bucket == bucket:
            previous = pieces[-1]
            pieces[-1] = replace(
                previous,
                ended_at=last_moment,
                input_octets=previous.input_octets + piece_in,
                output_octets=previous.output_octets + piece_out,
            )
        else:
            pieces.append(Piece(bucket, a, last_moment, piece_in, piece_out))
    kept = [p for p in pieces if p.input_octets or p.output_octets]
    return kept or pieces[-1:]


def _utc(day: date, at: time, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as UTC (its first occurrence on a day clocks go back; on a day
    they go forward, a time in the gap is read with the offset before it, which lands after
    the gap)."""
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def _tariff_on(
    day: date, history: ServiceHistory | None, plans: Mapping[str, Sequence[PlanTerms]]
) -> _Tariff:
    if history is None:
        return _Tariff(None, None, False)
    plan_id = history.plan_on(day)
    versions = plans.get(plan_id)
    plan = version_on(versions, day) if versions else None
    suspended = any(
        since <= day and (back is None or day < back) for since, back in history.suspensions
    ) or any(first <= day <= last for first, last in history.holds)
    return _Tariff(plan_id, plan, suspended)


def _version_number(plan: PlanTerms | None) -> int | None:
    if plan is None:
        return None
    return plan.version if isinstance(plan, PlanVersionPublished) else 1
