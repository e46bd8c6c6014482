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

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from ispbill_core.contracts.accounts import PlanTerms, PlanVersionPublished
from ispbill_core.service_history import ServiceHistory, version_on
from ispbill_core.time_bands import STANDARD, band_edges

__all__ = ["MAX_SPAN", "Bucket", "DayMemo", "Piece", "split_usage"]

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


@dataclass(frozen=True)
class _Day:
    """A local day's tariff and where a delta must be cut on it: its midnight and its band
    edges as UTC instants, sorted; the plan's bands as minutes of the day."""

    tariff: _Tariff
    cuts: tuple[datetime, ...]
    bands: tuple[tuple[int, int, str], ...]
    version: int | None

    def band(self, local: datetime) -> str:
        """As `time_bands.band_at`, on minutes parsed once."""
        minute = local.hour * 60 + local.minute
        for start, end, name in self.bands:
            if start == end or (
                start <= minute < end if start < end else (minute >= start or minute < end)
            ):
                return name
        return STANDARD


#: What a caller keeps between calls for one subscription's history and plans (and one time
#: zone): each local day's tariff and cuts, worked out once. `Tariffs` carries one.
DayMemo = dict[date, _Day]
_NO_HISTORY: dict[str, DayMemo] = {}


def split_usage(
    start: datetime,
    end: datetime,
    input_octets: int,
    output_octets: int,
    tz: ZoneInfo,
    history: ServiceHistory | None = None,
    plans: Mapping[str, Sequence[PlanTerms]] | None = None,
    *,
    memo: DayMemo | None = None,
) -> list[Piece]:
    """The delta (input_octets, output_octets) used over [start, end], in buckets. `memo`:
    the days already worked out for this `history`, `plans` and `tz` (kept by the caller
    beside them, dropped with them); without one, the days are worked out for this call."""
    plans = plans or {}
    if memo is None:
        memo = _NO_HISTORY.setdefault(tz.key, {}) if history is None else {}

    def on(day: date) -> _Day:
        found = memo.get(day)
        if found is None:
            found = memo[day] = _day(day, tz, history, plans)
            if history is None and len(memo) > 4096:
                memo.clear()
                memo[day] = found
        return found

    def bucket_at(moment: datetime) -> Bucket:
        local = moment.astimezone(tz)
        d = on(local.date())
        tariff = d.tariff
        return Bucket(
            period=f"{local.year:04d}-{local.month:02d}",
            band=d.band(local),
            plan_id=tariff.plan_id,
            plan_version=d.version,
            suspended=tariff.suspended,
        )

    if end - start > MAX_SPAN:
        start = end - MAX_SPAN
    if end <= start:
        return [Piece(bucket_at(end), end, end, input_octets, output_octets)]
    first_day = start.astimezone(tz).date()
    last_day = end.astimezone(tz).date()
    if first_day == last_day:
        cuts = on(first_day).cuts
        inside = [c for c in cuts[bisect_right(cuts, start) :] if c < end]
        if not inside:  # the usual interim: one piece
            return [Piece(bucket_at(start), start, end, input_octets, output_octets)]
        points = [start, *inside, end]
    else:
        found: set[datetime] = set()
        day = first_day
        while day <= last_day:
            found.update(on(day).cuts)
            day += timedelta(days=1)
        points = [start, *sorted(c for c in found if start < c < end), end]
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


def _day(
    day: date,
    tz: ZoneInfo,
    history: ServiceHistory | None,
    plans: Mapping[str, Sequence[PlanTerms]],
) -> _Day:
    tariff = _tariff_on(day, history, plans)
    plan = tariff.plan
    cuts = {_utc(day, time(0), tz)}
    bands: tuple[tuple[int, int, str], ...] = ()
    if plan is not None and plan.time_bands:
        cuts.update(_utc(day, edge, tz) for edge in band_edges(plan.time_bands))
        bands = tuple((_minutes(b.start), _minutes(b.end), b.name) for b in plan.time_bands)
    return _Day(tariff, tuple(sorted(cuts)), bands, _version_number(plan))


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


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
