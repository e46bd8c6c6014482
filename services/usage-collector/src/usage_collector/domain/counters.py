"""Interface byte counters read from a router, and the traffic between two readings.

SNMP octet counters (IF-MIB) only go up, modulo their width: ifInOctets/ifOutOctets are
32-bit and wrap at 2**32 (a few seconds at 10 Gbit/s), ifHCInOctets/ifHCOutOctets are 64-bit.
They also start again from zero when the agent restarts (reboot, line card reset), which
sysUpTime going backwards reveals. `counter_delta` tells the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CounterSample:
    """One reading of an interface's cumulative octet counters.

    `uptime_ticks` is the agent's sysUpTime (hundredths of a second) read with the counters,
    or None when it could not be read.
    """

    interface_key: str
    octets_in: int
    octets_out: int
    sampled_at: datetime
    uptime_ticks: int | None = None


@dataclass(frozen=True, slots=True)
class CounterReset:
    """The counters started again from zero between two samples (agent restart).

    The traffic since the restart is the current value of each counter; whatever was carried
    between the previous sample and the restart is lost (no agent can report it).
    """

    delta_in: int
    delta_out: int


def counter_delta(
    previous: CounterSample, current: CounterSample, *, bits: int = 64
) -> tuple[int, int] | CounterReset:
    """Octets (in, out) carried between `previous` and `current`, or a `CounterReset`.

    - no decrease: the plain difference;
    - the agent's uptime went backwards: a reset, the counters count from zero;
    - a decrease with the uptime going forwards: a wrap at 2**bits,
      delta = current + 2**bits - previous;
    - a decrease with the uptime unknown: a wrap if that reading means less than half the
      counter's range in one interval, else (a big drop, e.g. any drop of a 64-bit counter
      from a realistic value) a reset.

    A reset applies to the whole agent, so both directions then count from zero.
    """
    if previous.interface_key != current.interface_key:
        raise ValueError(
            f"samples of different interfaces: {previous.interface_key!r} "
            f"and {current.interface_key!r}"
        )
    if bits <= 0:
        raise ValueError(f"counter width must be positive, got {bits}")
    modulus = 2**bits
    for value in (previous.octets_in, previous.octets_out, current.octets_in, current.octets_out):
        if not 0 <= value < modulus:
            raise ValueError(f"counter value {value} out of range for a {bits}-bit counter")

    if _uptime_went_backwards(previous, current):
        return CounterReset(current.octets_in, current.octets_out)
    pairs = ((previous.octets_in, current.octets_in), (previous.octets_out, current.octets_out))
    uptime_unknown = current.uptime_ticks is None or previous.uptime_ticks is None
    if uptime_unknown and any(_is_big_drop(before, after, modulus) for before, after in pairs):
        return CounterReset(current.octets_in, current.octets_out)
    delta_in, delta_out = ((after - before) % modulus for before, after in pairs)
    return delta_in, delta_out


def _uptime_went_backwards(previous: CounterSample, current: CounterSample) -> bool:
    if previous.uptime_ticks is None or current.uptime_ticks is None:
        return False
    return current.uptime_ticks < previous.uptime_ticks


def _is_big_drop(before: int, after: int, modulus: int) -> bool:
    """A decrease that, read as a wrap, would mean half the counter's range or more."""
    return after < before and (after - before) % modulus >= modulus // 2
