"""Silent sessions: the rule (pure), and the timer that closes them on the SQLite ledger."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import SubscriptionStarted
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.contracts.usage_collector import (
    AccountingRecordReceived,
    AcctStatus,
    accounting_stream,
)
from ispbill_core.events import deterministic_id
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.queries import all_events_of
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.projections.sqlite import SQLiteReadModels
from ispbill_core.timers.runner import TimerRunner
from ispbill_core.timers.sqlite import SQLiteTimers
from rating.application.rate_accounting_record import session_index_stream
from rating.application.rate_batch import RatingCache
from rating.application.silent_sessions import (
    BACKLOG_RECHECK,
    SILENT_SESSION_TIMER,
    ledger_backlog,
    silence_timer_id,
)
from rating.bootstrap import Rating
from rating.domain.events import SessionCountersRecorded
from rating.domain.sessions import SessionState
from rating.domain.silent_sessions import (
    SILENT_TIMEOUT,
    Sighting,
    SilentSessionSettings,
    judge_silence,
    silence_watches,
)
from tests.fixtures.radius import START, UTC_SETTINGS, claim, message, nas_event, record

SILENT = SilentSessionSettings(interim_interval=timedelta(seconds=300), intervals=3)
SILENT_AFTER = timedelta(seconds=900)


def sighting(
    status: AcctStatus, seconds: int, *, acct: str = "s-1", heard_later: int = 0
) -> Sighting:
    at = START + timedelta(seconds=seconds)
    return Sighting("nas-1", acct, status, at + timedelta(seconds=heard_later), at)


# -- the rule --------------------------------------------------------------------------------
@pytest.mark.unit
def test_silent_after_is_the_interval_times_the_number_of_intervals() -> None:
    assert SILENT.silent_after == SILENT_AFTER
    assert SilentSessionSettings().silent_after == timedelta(seconds=900)  # the defaults
    assert not SilentSessionSettings(intervals=0).enabled
    with pytest.raises(ValueError):
        SilentSessionSettings(intervals=-1)
    with pytest.raises(ValueError):
        SilentSessionSettings(interim_interval=timedelta(0))


@pytest.mark.unit
def test_a_batch_sets_one_deadline_per_session_past_the_newest_record_heard() -> None:
    watches, stopped = silence_watches(
        [
            sighting(AcctStatus.START, 0),
            sighting(AcctStatus.INTERIM_UPDATE, 300, heard_later=7),  # heard 7 s after its time
            sighting(AcctStatus.INTERIM_UPDATE, 0, acct="s-2"),
            sighting(AcctStatus.INTERIM_UPDATE, 120, acct="s-2"),
            sighting(AcctStatus.INTERIM_UPDATE, 60, acct="s-2"),  # out of order: older
        ],
        SILENT,
    )
    assert stopped == []
    assert [(w.acct_session_id, w.due_at, w.heard_until) for w in watches] == [
        ("s-1", START + timedelta(seconds=307) + SILENT_AFTER, START + timedelta(seconds=300)),
        ("s-2", START + timedelta(seconds=120) + SILENT_AFTER, START + timedelta(seconds=120)),
    ]


@pytest.mark.unit
def test_a_stop_ends_the_watch_and_nas_records_are_not_sessions() -> None:
    watches, stopped = silence_watches(
        [
            sighting(AcctStatus.INTERIM_UPDATE, 300),
            sighting(AcctStatus.STOP, 400),
            sighting(AcctStatus.STOP, 100, acct="s-2"),
            sighting(AcctStatus.START, 500, acct="s-2"),  # the id reused after its Stop
            Sighting("nas-1", "", AcctStatus.ACCOUNTING_ON, START, START),
        ],
        SILENT,
    )
    assert stopped == [("nas-1", "s-1")]
    assert [w.acct_session_id for w in watches] == ["s-2"]


def counters(seconds: int, in_: int, out: int, **changes: object) -> SessionCountersRecorded:
    entry = SessionCountersRecorded(
        session_key="nas-1-s-1-1773129600",
        record_id=deterministic_id("r", seconds),
        status="interim-update",
        username="alice",
        customer_id="c-1",
        subscription_id="sub-1",
        event_time=START + timedelta(seconds=seconds),
        input_octets=in_,
        output_octets=out,
        input_delta=in_,
        output_delta=out,
    )
    return entry.model_copy(update=changes)


def folded(*entries: SessionCountersRecorded) -> SessionState:
    state = SessionState()
    for e in entries:
        state.apply(
            e.input_octets,
            e.output_octets,
            e.event_time,
            e.record_id,
            (e.input_delta, e.output_delta),
            e.closed,
        )
    return state


@pytest.mark.unit
def test_a_silent_session_closes_at_its_last_totals_with_no_usage() -> None:
    last = counters(600, 100, 200)
    silence = judge_silence(
        last.session_key,
        folded(counters(0, 0, 0), last),
        last,
        heard_until=START + timedelta(seconds=600),
    )
    assert silence.heard_since is False
    assert silence.closing is not None
    assert silence.closing.model_dump(exclude={"record_id"}) == {
        "session_key": last.session_key,
        "status": SILENT_TIMEOUT,
        "username": "alice",
        "customer_id": "c-1",
        "subscription_id": "sub-1",
        "event_time": START + timedelta(seconds=600),
        "input_octets": 100,
        "output_octets": 200,
        "input_delta": 0,
        "output_delta": 0,
        "closed": True,
        "framed_ip_address": None,
        "terminate_cause": None,
    }


@pytest.mark.unit
def test_a_closed_a_newer_or_an_unrated_session_is_not_closed_by_silence() -> None:
    last = counters(600, 100, 200)
    at = START + timedelta(seconds=600)
    closed = counters(700, 100, 200, closed=True, status="stop")
    assert judge_silence("k", folded(last, closed), closed, heard_until=at) == (None, False)
    newer = counters(900, 150, 250)
    assert judge_silence("k", folded(last, newer), newer, heard_until=at) == (None, True)
    assert judge_silence("k", SessionState(), None, heard_until=at) == (None, False)


# -- on the ledger ---------------------------------------------------------------------------
@dataclass
class Rig:
    store: SQLiteEventStore
    timers: SQLiteTimers
    clock: FixedClock
    rating: Rating
    runner: TimerRunner
    cache: RatingCache

    async def rate(self, *records: AccountingRecordReceived) -> None:
        await self.rating.rate_batch([message(r) for r in records], self.cache)

    async def history(self, acct: str = "s-1") -> list[list[SessionCountersRecorded]]:
        index = await self.store.read_stream(session_index_stream("nas-1", acct))
        out = []
        for opened in index:
            stream = f"session-{opened.data['session_key']}"
            out.append([e.decode() for e in await self.store.read_stream(stream)])  # type: ignore[misc]
        return out

    async def fire_at(self, at: datetime) -> int:
        self.clock.set(at)
        return await self.runner.run_once()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await claim(
        store,
        SubscriptionStarted(
            subscription_id="sub-1",
            customer_id="c-1",
            plan_id="home",
            radius_username="alice",
            started_on=date(2026, 1, 1),
        ),
    )
    timers = SQLiteTimers(store)
    clock = FixedClock(START)
    rating = Rating(store, UTC_SETTINGS, SILENT, timers)
    runner = TimerRunner(timers, rating.timer_handlers(), clock, parking=SQLiteReadModels(store))
    try:
        yield Rig(store, timers, clock, rating, runner, RatingCache())
    finally:
        await store.close()


def summary(history: list[SessionCountersRecorded]) -> list[tuple[object, ...]]:
    return [
        (
            e.status,
            e.event_time,
            e.input_octets,
            e.output_octets,
            e.input_delta,
            e.output_delta,
            e.closed,
        )
        for e in history
    ]


@pytest.mark.integration
async def test_golden_a_silent_session_is_closed_at_its_last_totals_and_a_late_interim_counts_once(
    rig: Rig,
) -> None:
    await rig.rate(
        record(AcctStatus.START, 0, 0, 0), record(AcctStatus.INTERIM_UPDATE, 300, 100, 200)
    )
    deadline = START + timedelta(seconds=300) + SILENT_AFTER
    timer = await rig.timers.get(silence_timer_id("nas-1", "s-1"))
    assert timer is not None and (timer.kind, timer.due_at) == (SILENT_SESSION_TIMER, deadline)

    assert await rig.fire_at(deadline - timedelta(seconds=1)) == 0  # not silent yet
    assert await rig.fire_at(deadline) == 1
    # the NAS comes back: an interim sent before it went quiet, and one after
    late = record(AcctStatus.INTERIM_UPDATE, 600, 150, 260)
    await rig.rate(late)
    await rig.rate(late)  # delivered twice
    await rig.rate(record(AcctStatus.INTERIM_UPDATE, 1500, 400, 300))
    assert await rig.fire_at(deadline + timedelta(hours=2)) == 1  # closes nothing twice

    [history] = await rig.history()
    t = START.__add__
    assert summary(history) == [
        ("start", t(timedelta(0)), 0, 0, 0, 0, False),
        ("interim-update", t(timedelta(seconds=300)), 100, 200, 100, 200, False),
        (SILENT_TIMEOUT, t(timedelta(seconds=300)), 100, 200, 0, 0, True),
        ("interim-update", t(timedelta(seconds=600)), 150, 260, 50, 60, False),
        ("interim-update", t(timedelta(seconds=1500)), 400, 300, 250, 40, False),
    ]
    closing = (await rig.store.read_stream(f"session-{history[0].session_key}"))[2]
    assert closing.metadata.occurred_at == deadline  # when the timer decided, by its clock
    assert closing.id == deterministic_id(
        "session-closed-silent", history[0].session_key, history[1].record_id
    )
    usage = await all_events_of(rig.store, UsageRated)
    assert (sum(u.input_octets for u in usage), sum(u.output_octets for u in usage)) == (400, 300)
    assert await rig.timers.get(silence_timer_id("nas-1", "s-1")) is None


@pytest.mark.integration
async def test_a_session_heard_from_before_its_deadline_is_not_closed(rig: Rig) -> None:
    await rig.rate(record(AcctStatus.START, 0, 0, 0))
    await rig.rate(record(AcctStatus.INTERIM_UPDATE, 300, 10, 10))
    await rig.rate(record(AcctStatus.INTERIM_UPDATE, 600, 20, 20))
    assert await rig.fire_at(START + SILENT_AFTER + timedelta(seconds=599)) == 0
    [history] = await rig.history()
    assert not any(e.closed for e in history)
    assert await rig.fire_at(START + SILENT_AFTER + timedelta(seconds=600)) == 1
    [history] = await rig.history()
    assert [e.status for e in history][-1] == SILENT_TIMEOUT


@pytest.mark.integration
async def test_a_stop_removes_the_sessions_deadline(rig: Rig) -> None:
    await rig.rate(record(AcctStatus.START, 0, 0, 0), record(AcctStatus.INTERIM_UPDATE, 300, 1, 1))
    assert await rig.timers.get(silence_timer_id("nas-1", "s-1")) is not None
    await rig.rate(record(AcctStatus.STOP, 400, 2, 2))
    assert await rig.timers.get(silence_timer_id("nas-1", "s-1")) is None


@pytest.mark.integration
async def test_a_stale_deadline_finds_a_newer_record_and_watches_again(rig: Rig) -> None:
    """A deadline set for older records (a redelivered batch, a record rated while the timer
    fired) closes nothing when a newer record was rated: it looks again later."""
    await rig.rate(record(AcctStatus.START, 0, 0, 0), record(AcctStatus.INTERIM_UPDATE, 600, 5, 5))
    await rig.timers.schedule(
        silence_timer_id("nas-1", "s-1"),
        START + SILENT_AFTER,
        SILENT_SESSION_TIMER,
        {"nas_id": "nas-1", "acct_session_id": "s-1", "heard_until": START.isoformat()},
    )
    assert await rig.fire_at(START + SILENT_AFTER) == 1
    [history] = await rig.history()
    assert not any(e.closed for e in history)
    again = await rig.timers.get(silence_timer_id("nas-1", "s-1"))
    assert again is not None and again.due_at == START + 2 * SILENT_AFTER
    # watched again for the newest record: silent since, it is closed the next time
    assert again.payload["heard_until"] == (START + timedelta(seconds=600)).isoformat()
    assert await rig.fire_at(START + 2 * SILENT_AFTER) == 1
    [history] = await rig.history()
    assert [e.status for e in history][-1] == SILENT_TIMEOUT


@pytest.mark.integration
async def test_every_open_session_of_a_reused_id_is_closed_and_a_closed_one_left(
    rig: Rig,
) -> None:
    later = START + timedelta(hours=1)
    await rig.rate(
        record(AcctStatus.START, 0, 0, 0),
        record(AcctStatus.INTERIM_UPDATE, 300, 7, 7),
        record(AcctStatus.START, 0, 0, 0, acct_session_id="s-2"),
        record(AcctStatus.STOP, 60, 1, 1, acct_session_id="s-2"),
        # the NAS reused s-1 for a new session without a Stop or a reboot for the first
        record(AcctStatus.START, 0, 0, 0, start=later),
    )
    assert await rig.fire_at(later + SILENT_AFTER) == 1
    first, second = await rig.history()
    assert [e.status for e in first][-1] == SILENT_TIMEOUT
    assert [e.status for e in second][-1] == SILENT_TIMEOUT
    [stopped] = await rig.history("s-2")
    assert [e.status for e in stopped] == ["start", "stop"]


@pytest.mark.integration
async def test_a_deadline_waits_while_records_heard_before_it_are_not_rated(rig: Rig) -> None:
    """The embedded runtime: records wait in the ledger for the `rating` subscriber. While one
    received before a deadline is still unrated, the session may be in it: the deadline waits."""
    backlogged = dataclasses.replace(
        rig.rating, backlog=ledger_backlog(rig.store, rig.store, "rating")
    )
    runner = TimerRunner(rig.timers, backlogged.timer_handlers(), rig.clock)
    await rig.rate(record(AcctStatus.START, 0, 0, 0))
    deadline = START + SILENT_AFTER
    # an interim heard just before the deadline, not rated yet (the checkpoint is behind it)
    waiting = record(AcctStatus.INTERIM_UPDATE, 890, 3, 3)
    await rig.store.append(accounting_stream("nas-1"), [message(waiting)], ANY)
    rig.clock.set(deadline)
    assert await runner.run_once() == 1
    [history] = await rig.history()
    assert not any(e.closed for e in history)
    timer = await rig.timers.get(silence_timer_id("nas-1", "s-1"))
    assert timer is not None and timer.due_at == deadline + BACKLOG_RECHECK
    # rated (the subscriber's checkpoint moves past it): the deadline moves with it
    await rig.rate(waiting)
    await rig.store.save_checkpoint("rating", await rig.store.head_position())
    timer = await rig.timers.get(silence_timer_id("nas-1", "s-1"))
    assert timer is not None and timer.due_at == START + timedelta(seconds=890) + SILENT_AFTER


@pytest.mark.integration
async def test_a_held_deadline_asks_about_its_first_time_not_its_recheck(rig: Rig) -> None:
    """Rating a little behind all the time (a record received after the deadline always
    waiting) must not hold a deadline back for ever: once what was received before the
    deadline is rated, the session is closed at the recheck."""
    backlogged = dataclasses.replace(
        rig.rating, backlog=ledger_backlog(rig.store, rig.store, "rating")
    )
    runner = TimerRunner(rig.timers, backlogged.timer_handlers(), rig.clock)
    await rig.rate(record(AcctStatus.START, 0, 0, 0))
    deadline = START + SILENT_AFTER
    before = record(AcctStatus.START, 0, 0, 0, acct_session_id="other")
    await rig.store.append(accounting_stream("nas-1"), [message(before)], ANY)
    rig.clock.set(deadline)
    assert await runner.run_once() == 1  # held: `before` was received before the deadline
    await rig.rate(before)
    await rig.store.save_checkpoint("rating", await rig.store.head_position())
    # another record, received after the deadline, waits as the recheck comes
    after = record(
        AcctStatus.START, 0, 0, 0, acct_session_id="third", start=deadline + timedelta(seconds=5)
    )
    await rig.store.append(accounting_stream("nas-1"), [message(after)], ANY)
    rig.clock.set(deadline + BACKLOG_RECHECK)
    assert await runner.run_once() >= 1
    [history] = await rig.history()
    assert [e.status for e in history][-1] == SILENT_TIMEOUT


@pytest.mark.integration
async def test_accounting_on_closes_first_and_the_deadline_then_closes_nothing(rig: Rig) -> None:
    await rig.rate(record(AcctStatus.START, 0, 0, 0))
    await rig.rate(nas_event(AcctStatus.ACCOUNTING_ON, START + timedelta(minutes=5)))
    assert await rig.fire_at(START + SILENT_AFTER) == 1
    [history] = await rig.history()
    assert [e.status for e in history] == ["start", "accounting-on"]


@pytest.mark.integration
async def test_switched_off_no_deadline_is_set(rig: Rig) -> None:
    off = dataclasses.replace(rig.rating, silent=SilentSessionSettings(intervals=0))
    await off.rate_batch([message(record(AcctStatus.START, 0, 0, 0))])
    assert await rig.timers.get(silence_timer_id("nas-1", "s-1")) is None


@pytest.mark.unit
def test_the_deadline_follows_the_clock_that_heard_the_record_not_the_nas() -> None:
    """A NAS whose clock is an hour behind: its event times are an hour old when heard."""
    r = record(AcctStatus.INTERIM_UPDATE, 300, 1, 1)
    skewed = r.model_copy(update={"received_at": r.event_time + timedelta(hours=1)})
    [watch], _ = silence_watches(
        [Sighting("nas-1", "s-1", skewed.status, skewed.received_at, skewed.event_time)], SILENT
    )
    assert watch.due_at == skewed.received_at + SILENT_AFTER
