"""The pure session fold: cumulative RADIUS counters in, usage deltas out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import deterministic_id
from rating.domain.sessions import (
    SESSION_START_TOLERANCE,
    SessionState,
    advance,
    derived_start,
    same_session,
    session_key,
)

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 10, 8, 0, 0, tzinfo=UTC)
GIGAWORD = 2**32


def record(
    status: AcctStatus,
    seconds: int,
    input_octets: int | None,
    output_octets: int | None,
    *,
    start: datetime = START,
    acct_session_id: str = "s-1",
) -> AccountingRecordReceived:
    event_time = start + timedelta(seconds=seconds)
    return AccountingRecordReceived(
        # Content-derived, as the collector derives it: a retransmission has the same id.
        record_id=deterministic_id(
            "test-record", acct_session_id, start, status, seconds, input_octets, output_octets
        ),
        nas_id="nas-1",
        nas_ip="192.0.2.1",
        status=status,
        acct_session_id=acct_session_id,
        username="alice",
        event_time=event_time,
        received_at=event_time,
        session_time=seconds,
        input_octets=input_octets,
        output_octets=output_octets,
    )


def fold(state: SessionState, records: list[AccountingRecordReceived]) -> tuple[int, int]:
    """Apply records the way the use case does; return the summed deltas."""
    total_in = total_out = 0
    for r in records:
        outcome = advance(state, r)
        if outcome is None:
            continue
        state.apply(
            outcome.input_octets,
            outcome.output_octets,
            r.event_time,
            r.record_id,
            (outcome.input_delta, outcome.output_delta),
            outcome.closes,
        )
        total_in += outcome.input_delta
        total_out += outcome.output_delta
    return total_in, total_out


@st.composite
def sessions(draw: st.DrawFn) -> list[AccountingRecordReceived]:
    """One session in NAS order: a Start, interims with growing cumulative counters, maybe a
    Stop. Increments go far past 2**32, as Gigawords-extended counters do."""
    steps = draw(st.integers(min_value=0, max_value=12))
    increments = st.integers(min_value=0, max_value=3 * GIGAWORD)
    records = [record(AcctStatus.START, 0, 0, 0)]
    seconds = 0
    cum_in = cum_out = 0
    for _ in range(steps):
        seconds += draw(st.integers(min_value=1, max_value=600))
        cum_in += draw(increments)
        cum_out += draw(increments)
        records.append(record(AcctStatus.INTERIM_UPDATE, seconds, cum_in, cum_out))
    if draw(st.booleans()):
        seconds += draw(st.integers(min_value=1, max_value=600))
        cum_in += draw(increments)
        cum_out += draw(increments)
        records.append(record(AcctStatus.STOP, seconds, cum_in, cum_out))
    return records


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[AccountingRecordReceived], list]:
    """A session and a delivery of it: every record at least once, in any order, with
    retransmissions."""
    records = draw(sessions())
    extra = draw(st.lists(st.sampled_from(records), max_size=len(records) * 2))
    delivered = draw(st.permutations(records + extra))
    return records, delivered


@settings(max_examples=300, deadline=None)
@given(deliveries())
def test_deltas_add_up_to_the_final_counters_whatever_the_order_and_duplicates(case) -> None:
    records, delivered = case
    state = SessionState()
    total_in, total_out = fold(state, delivered)
    assert total_in == max(r.input_octets or 0 for r in records)
    assert total_out == max(r.output_octets or 0 for r in records)
    assert state.input_octets == total_in
    assert state.output_octets == total_out


@settings(max_examples=200, deadline=None)
@given(deliveries())
def test_delivering_everything_again_adds_nothing(case) -> None:
    _records, delivered = case
    state = SessionState()
    fold(state, delivered)
    assert fold(state, delivered) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(sessions())
def test_in_order_delivery_yields_each_step_as_its_delta(records) -> None:
    state = SessionState()
    previous_in = previous_out = 0
    for r in records:
        outcome = advance(state, r)
        assert outcome is not None
        assert outcome.input_delta == (r.input_octets or 0) - previous_in
        assert outcome.output_delta == (r.output_octets or 0) - previous_out
        previous_in, previous_out = r.input_octets or 0, r.output_octets or 0
        state.apply(
            outcome.input_octets,
            outcome.output_octets,
            r.event_time,
            r.record_id,
            (outcome.input_delta, outcome.output_delta),
            outcome.closes,
        )


def test_a_duplicate_record_is_counted_once() -> None:
    interim = record(AcctStatus.INTERIM_UPDATE, 60, 1_000, 2_000)
    state = SessionState()
    assert fold(state, [interim, interim, interim]) == (1_000, 2_000)
    assert advance(state, interim) is None


def test_an_older_interim_after_a_newer_one_adds_nothing() -> None:
    newer = record(AcctStatus.INTERIM_UPDATE, 120, 5_000, 7_000)
    older = record(AcctStatus.INTERIM_UPDATE, 60, 3_000, 4_000)
    state = SessionState()
    assert fold(state, [newer]) == (5_000, 7_000)
    assert advance(state, older) is None
    assert (state.input_octets, state.output_octets) == (5_000, 7_000)


def test_gigaword_sized_counters_give_exact_deltas() -> None:
    # Acct-Input-Gigawords=3, Acct-Input-Octets=17 then Gigawords=5, Octets=1.
    first = record(AcctStatus.INTERIM_UPDATE, 60, 3 * GIGAWORD + 17, 2 * GIGAWORD)
    second = record(AcctStatus.INTERIM_UPDATE, 120, 5 * GIGAWORD + 1, 2 * GIGAWORD + 10)
    state = SessionState()
    fold(state, [first])
    outcome = advance(state, second)
    assert outcome is not None
    assert outcome.input_delta == 2 * GIGAWORD - 16
    assert outcome.output_delta == 10
    assert outcome.input_octets == 5 * GIGAWORD + 1


def test_a_stop_closes_the_session_and_counts_its_final_usage() -> None:
    state = SessionState()
    fold(state, [record(AcctStatus.START, 0, 0, 0), record(AcctStatus.INTERIM_UPDATE, 60, 10, 20)])
    stop = record(AcctStatus.STOP, 90, 15, 30)
    outcome = advance(state, stop)
    assert outcome is not None
    assert outcome.closes
    assert (outcome.input_delta, outcome.output_delta) == (5, 10)
    fold(state, [stop])
    assert state.closed


def test_a_stop_older_than_the_last_interim_still_closes_without_counting_twice() -> None:
    state = SessionState()
    fold(state, [record(AcctStatus.INTERIM_UPDATE, 120, 100, 100)])
    # A Stop whose event time (clock jitter) is before the last interim: it still closes.
    outcome = advance(state, record(AcctStatus.STOP, 100, 90, 110))
    assert outcome is not None
    assert outcome.closes
    assert (outcome.input_delta, outcome.output_delta) == (0, 10)


def test_a_start_without_counters_adds_nothing() -> None:
    outcome = advance(SessionState(), record(AcctStatus.START, 0, None, None))
    assert outcome is not None
    assert (outcome.input_delta, outcome.output_delta) == (0, 0)
    assert not outcome.closes


def test_records_within_the_start_tolerance_belong_to_the_session() -> None:
    interim = record(AcctStatus.INTERIM_UPDATE, 300, 1, 1)
    assert derived_start(interim) == START
    assert same_session(START + SESSION_START_TOLERANCE, interim)
    assert not same_session(START + SESSION_START_TOLERANCE + timedelta(seconds=1), interim)


def test_a_reused_session_id_with_another_start_has_another_key() -> None:
    later = START + timedelta(days=3)
    first = session_key("nas-1", "s-1", START)
    second = session_key("nas-1", "s-1", later)
    assert first != second
    reused = record(AcctStatus.START, 0, 0, 0, start=later)
    assert not same_session(START, reused)
