"""counter_delta: plain increments, wraps at 2**bits, agent restarts (resets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usage_collector.domain.counters import CounterReset, CounterSample, counter_delta

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def sample(octets_in: int, octets_out: int, uptime: int | None = 100, key: str = "ether1"):
    return CounterSample(key, octets_in, octets_out, T0, uptime)


def test_plain_increase():
    assert counter_delta(sample(100, 50), sample(350, 60, uptime=200)) == (250, 10)


def test_no_traffic_is_zero():
    assert counter_delta(sample(7, 7), sample(7, 7, uptime=200)) == (0, 0)


def test_32_bit_wrap_with_uptime_going_forwards():
    previous = sample(2**32 - 10, 2**32 - 1)
    current = sample(5, 0, uptime=200)
    assert counter_delta(previous, current, bits=32) == (15, 1)


def test_64_bit_wrap_with_uptime_going_forwards():
    assert counter_delta(sample(2**64 - 1, 0), sample(9, 3, uptime=200)) == (10, 3)


def test_uptime_going_backwards_is_a_reset():
    result = counter_delta(sample(10_000, 20_000, uptime=5000), sample(300, 400, uptime=12))
    assert result == CounterReset(delta_in=300, delta_out=400)


def test_reset_even_when_counters_went_up():
    # the agent restarted and carried more than before since: still counted from zero
    result = counter_delta(sample(10, 20, uptime=5000), sample(300, 400, uptime=12))
    assert result == CounterReset(300, 400)


def test_unknown_uptime_and_big_drop_is_a_reset():
    assert counter_delta(sample(10**12, 10**12, None), sample(5, 10**12 + 1, None)) == (
        CounterReset(5, 10**12 + 1)
    )


def test_unknown_uptime_and_drop_near_the_top_is_a_wrap():
    previous = sample(2**32 - 100, 1000, None)
    assert counter_delta(previous, sample(50, 2000, None), bits=32) == (150, 1000)


def test_unknown_uptime_on_one_side_only_uses_the_drop_rule():
    previous = sample(10**12, 10, 100)
    assert isinstance(counter_delta(previous, sample(3, 20, None)), CounterReset)


def test_different_interfaces_are_rejected():
    with pytest.raises(ValueError, match="different interfaces"):
        counter_delta(sample(1, 1, key="a"), sample(2, 2, key="b"))


def test_values_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="out of range"):
        counter_delta(sample(2**32, 0), sample(0, 0), bits=32)


bits_st = st.sampled_from([32, 64])


@st.composite
def traffic(draw, *, max_fraction_bits: int):
    """(bits, start value, increments): each increment below 2**(bits - max_fraction_bits)."""
    bits = draw(bits_st)
    start = draw(st.integers(0, 2**bits - 1))
    limit = 2 ** (bits - max_fraction_bits) - 1
    increments = draw(
        st.lists(
            st.tuples(
                st.one_of(st.integers(0, 10_000), st.integers(0, limit)),
                st.one_of(st.integers(0, 10_000), st.integers(0, limit)),
            ),
            max_size=30,
        )
    )
    return bits, start, increments


def run(bits, start, increments, *, with_uptime: bool):
    modulus = 2**bits
    value_in = value_out = start
    uptime = 1000
    previous = CounterSample("ge-0/0/1", value_in, value_out, T0, uptime if with_uptime else None)
    total_in = total_out = 0
    for step, (inc_in, inc_out) in enumerate(increments, start=1):
        value_in, value_out = (value_in + inc_in) % modulus, (value_out + inc_out) % modulus
        uptime += 3000
        current = CounterSample(
            "ge-0/0/1",
            value_in,
            value_out,
            T0 + timedelta(minutes=step),
            uptime if with_uptime else None,
        )
        delta = counter_delta(previous, current, bits=bits)
        assert not isinstance(delta, CounterReset)
        total_in += delta[0]
        total_out += delta[1]
        previous = current
    return total_in, total_out


@given(traffic(max_fraction_bits=0))
def test_summed_deltas_reconstruct_the_total_across_wraps(case):
    bits, start, increments = case
    expected = (sum(i for i, _ in increments), sum(o for _, o in increments))
    assert run(bits, start, increments, with_uptime=True) == expected


@given(traffic(max_fraction_bits=1))
def test_without_uptime_wraps_below_half_the_range_are_still_wraps(case):
    bits, start, increments = case
    expected = (sum(i for i, _ in increments), sum(o for _, o in increments))
    assert run(bits, start, increments, with_uptime=False) == expected


@given(
    bits_st,
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 2**31), st.integers(0, 2**31)),
        min_size=1,
        max_size=30,
    ),
)
def test_summed_deltas_count_the_traffic_since_each_restart(bits, steps):
    """With restarts (uptime backwards) the counter starts from zero: nothing is double counted."""
    modulus = 2**bits
    value_in = value_out = 0
    uptime = 2**40  # halved on each restart: always goes backwards within 30 steps
    previous = CounterSample("lo", 0, 0, T0, uptime)
    total = [0, 0]
    expected = [0, 0]
    for restart, inc_in, inc_out in steps:
        if restart:
            value_in = value_out = 0
            uptime //= 2
        else:
            uptime += 100
        value_in, value_out = (value_in + inc_in) % modulus, (value_out + inc_out) % modulus
        expected[0] += inc_in
        expected[1] += inc_out
        current = CounterSample("lo", value_in, value_out, T0, uptime)
        delta = counter_delta(previous, current, bits=bits)
        if isinstance(delta, CounterReset):
            assert restart
            delta = (delta.delta_in, delta.delta_out)
        total[0] += delta[0]
        total[1] += delta[1]
        previous = current
    assert total == expected
