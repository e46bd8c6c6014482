"""Durable timers: deadlines kept in the ledger's own database, fired by the runtime.

A timer is a row (id, kind, due time, JSON payload) in the database the ledger lives in (the
SQLite file; the PostgreSQL schema; beside a KurrentDB ledger, the PostgreSQL database of the
read models). Scheduling the same id again moves its deadline (and drops any lease on it), so
a deadline is idempotent per id. A runner (`runner.TimerRunner`) claims the due timers of the
kinds it handles with a lease: while the lease runs no other runner gets them, and a runner
that dies mid-fire loses them when the lease runs out, so they fire again (handlers must be
idempotent). A fired timer is completed (removed) or postponed; one whose handler fails for
good is parked with its reason, as events are (docs/adr/0027-durable-timers.md).

"Now" is always an argument (the runner's Clock): nothing here reads the time.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import to_json

from ispbill_core.events import utc

#: How long a claim keeps other runners off a timer: longer than any handler should take.
DEFAULT_LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Timer:
    """A deadline: at `due_at`, hand `payload` to the handler of `kind`."""

    timer_id: str
    kind: str
    due_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "due_at", utc(self.due_at))

    def payload_json(self) -> str:
        # pydantic-core's encoder: a fifth of json.dumps' time, and rating writes a timer
        # per session per batch
        return to_json(dict(self.payload)).decode()


@dataclass(frozen=True)
class FireAgain:
    """What a handler returns to be fired again at `at`, with a new payload when given."""

    at: datetime
    payload: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class DueTimer(Timer):
    """A timer claimed by one runner: `claim` names its lease (empty for a parked timer handed
    back by hand); `attempts` counts the claims since it was last scheduled."""

    attempts: int = 1
    claim: str = ""


class Timers(abc.ABC):
    """The timer port. Times are aware datetimes; adapters keep them to the microsecond."""

    async def schedule(
        self, timer_id: str, due_at: datetime, kind: str, payload: Mapping[str, Any]
    ) -> None:
        """Create the timer, or move it: its new deadline, kind and payload replace the old,
        its attempts start again from 0 and a lease on it is dropped (the runner firing the
        old deadline then completes nothing)."""
        await self.schedule_many([Timer(timer_id, kind, due_at, payload)])

    @abc.abstractmethod
    async def schedule_many(self, timers: Sequence[Timer], *, cancel: Collection[str] = ()) -> None:
        """`schedule` for each timer (the last one wins for an id given twice) and `cancel`
        for each id in `cancel`, in one transaction and a statement or two, however many."""

    async def cancel(self, timer_id: str) -> None:
        """Remove the timer if it exists (a no-op otherwise)."""
        await self.schedule_many([], cancel=[timer_id])

    @abc.abstractmethod
    async def claim_due(
        self,
        now: datetime,
        *,
        limit: int = 100,
        kinds: Collection[str] | None = None,
        lease: timedelta = DEFAULT_LEASE,
    ) -> list[DueTimer]:
        """Up to `limit` timers due at `now` (of `kinds`, when given) that no lease holds,
        earliest first, leased to the caller until `now + lease`. Concurrent callers get
        disjoint timers."""

    @abc.abstractmethod
    async def complete(self, timer: DueTimer) -> bool:
        """Remove a fired timer, if it is still under this claim (not rescheduled, not
        reclaimed after its lease ran out). Whether it was removed."""

    @abc.abstractmethod
    async def postpone(
        self, timer: DueTimer, until: datetime, *, payload: Mapping[str, Any] | None = None
    ) -> bool:
        """Move a fired timer to `until` (with a new `payload`, when given) and release it, if
        it is still under this claim (attempts are kept: a backoff can grow with them).
        Whether it was moved."""

    @abc.abstractmethod
    async def get(self, timer_id: str) -> DueTimer | None:
        """The timer as stored (attempts, and its claim when leased), or None."""

    async def close(self) -> None:  # noqa: B027 - adapters without resources need not override
        pass


def payload_of(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def unique_by_id(timers: Sequence[Timer]) -> list[Timer]:
    """The last timer given for each id, in id order (one upsert cannot touch a row twice,
    and writers that lock rows in one order cannot deadlock each other)."""
    last = {t.timer_id: t for t in timers}
    return [last[k] for k in sorted(last)]
