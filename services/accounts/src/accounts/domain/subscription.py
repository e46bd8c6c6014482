"""A subscription's lifecycle: its state folded from its stream, and the rules for each change.

Every change has an effective date (a day in the ISP's time zone). `today` is an argument: the
domain reads no clock. Rules shared by every change:

- nothing follows a termination (every command on a terminated subscription is refused);
- an effective date is not before the subscription's start, nor in an earlier billing period
  than today's (that period may be invoiced already, and issued invoices never change);
- changes of one kind are recorded in the order of their effective dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from accounts.domain.errors import (
    AlreadySuspended,
    BackdatedIntoClosedPeriod,
    InvalidHold,
    NotSuspended,
    OutOfOrder,
    PlanCurrencyDiffers,
    SamePlan,
    SameUsername,
    SubscriptionIsTerminated,
    SubscriptionNotStarted,
)
from ispbill_core.contracts.accounts import (
    RadiusUsernameChanged,
    SubscriptionChange,
    SubscriptionHoldPlaced,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
)
from ispbill_core.events import DomainEvent

#: Longest vacation hold, in days (both ends counted).
MAX_HOLD_DAYS = 366

PENDING, ACTIVE, SUSPENDED, ON_HOLD, TERMINATED = (
    "pending",
    "active",
    "suspended",
    "on_hold",
    "terminated",
)


def first_of_month(day: date) -> date:
    return day.replace(day=1)


def first_of_next_month(day: date) -> date:
    """The next billing cycle's first day: billing cycles are calendar months."""
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    type: str
    effective_on: date
    details: dict[str, Any]


@dataclass
class Subscription:
    """A subscription as its stream tells it; `version` is the position of its last event."""

    started: SubscriptionStarted
    version: int
    radius_username: str
    plan_changes: list[SubscriptionPlanChanged] = field(default_factory=list)
    #: (first day suspended, first day back or None) in order
    suspensions: list[tuple[date, date | None]] = field(default_factory=list)
    holds: list[tuple[date, date]] = field(default_factory=list)
    terminated_on: date | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    @classmethod
    def fold(cls, events: Sequence[tuple[int, DomainEvent]]) -> Subscription:
        """From (stream position, event) pairs, SubscriptionStarted first."""
        position, started = events[0]
        assert isinstance(started, SubscriptionStarted)
        sub = cls(started=started, version=position, radius_username=started.radius_username)
        sub.history.append(
            HistoryEntry(
                position,
                started.event_type,
                started.started_on,
                started.model_dump(mode="json", exclude={"subscription_id", "started_on"}),
            )
        )
        for position, event in events[1:]:
            assert isinstance(event, SubscriptionChange)
            sub.apply(position, event)
        return sub

    def apply(self, position: int, event: SubscriptionChange) -> None:
        self.version = position
        if isinstance(event, SubscriptionPlanChanged):
            self.plan_changes.append(event)
            effective = event.effective_on
        elif isinstance(event, SubscriptionSuspended):
            self.suspensions.append((event.effective_on, None))
            effective = event.effective_on
        elif isinstance(event, SubscriptionResumed):
            since, _ = self.suspensions[-1]
            self.suspensions[-1] = (since, event.effective_on)
            effective = event.effective_on
        elif isinstance(event, SubscriptionHoldPlaced):
            self.holds.append((event.hold_from, event.hold_until))
            effective = event.hold_from
        elif isinstance(event, SubscriptionTerminated):
            self.terminated_on = event.effective_on
            effective = event.effective_on
        else:
            self.radius_username = event.new_username
            effective = event.effective_on
        details = event.model_dump(mode="json", exclude={"subscription_id"})
        self.history.append(HistoryEntry(position, event.event_type, effective, details))

    @property
    def subscription_id(self) -> str:
        return self.started.subscription_id

    @property
    def customer_id(self) -> str:
        return self.started.customer_id

    def plan_on(self, day: date) -> str:
        """The plan in force on `day` (the latest change effective by then)."""
        plan = self.started.plan_id
        for change in self.plan_changes:
            if change.effective_on <= day:
                plan = change.plan_id
        return plan

    @property
    def latest_plan(self) -> str:
        """The plan once every recorded change is in force (a next-cycle change included)."""
        return self.plan_changes[-1].plan_id if self.plan_changes else self.started.plan_id

    @property
    def suspended(self) -> bool:
        """Whether the latest suspension is not resumed yet (whatever its date)."""
        return bool(self.suspensions) and self.suspensions[-1][1] is None

    def status_on(self, day: date) -> str:
        if day < self.started.started_on:
            return PENDING
        if self.terminated_on is not None and day > self.terminated_on:
            return TERMINATED
        for since, back in self.suspensions:
            if since <= day and (back is None or day < back):
                return SUSPENDED
        if any(start <= day <= end for start, end in self.holds):
            return ON_HOLD
        return ACTIVE

    def _latest_effective(self) -> date:
        dates = [self.started.started_on]
        dates += [c.effective_on for c in self.plan_changes]
        dates += [d for s in self.suspensions for d in s if d is not None]
        dates += [end for _, end in self.holds]
        return max(dates)

    def _check_effective(self, day: date, today: date) -> None:
        if self.terminated_on is not None:
            raise SubscriptionIsTerminated(
                f"subscription {self.subscription_id!r} is terminated (last day"
                f" {self.terminated_on}); nothing follows a termination"
            )
        if day < self.started.started_on:
            raise SubscriptionNotStarted(
                f"effective {day}, before the subscription starts on {self.started.started_on}"
            )
        if day < first_of_month(today):
            raise BackdatedIntoClosedPeriod(
                f"effective {day}, before this billing period (from {first_of_month(today)}):"
                " an earlier period may be invoiced already"
            )

    def change_plan(
        self,
        plan_id: str,
        effective_on: date,
        today: date,
        *,
        currency: str,
        current_currency: str,
        reason: str = "",
    ) -> SubscriptionPlanChanged:
        self._check_effective(effective_on, today)
        if self.plan_changes and effective_on < self.plan_changes[-1].effective_on:
            raise OutOfOrder(
                f"a plan change effective {self.plan_changes[-1].effective_on} is recorded"
                f" already; a change effective {effective_on} would come before it"
            )
        current = self.plan_on(effective_on)
        if plan_id == current:
            raise SamePlan(f"subscription is on plan {plan_id!r} on {effective_on} already")
        if currency != current_currency:
            raise PlanCurrencyDiffers(
                f"plan {plan_id!r} bills in {currency}, the subscription's in {current_currency}"
            )
        return SubscriptionPlanChanged(
            subscription_id=self.subscription_id,
            from_plan_id=current,
            plan_id=plan_id,
            effective_on=effective_on,
            reason=reason,
        )

    def _check_suspension_order(self, effective_on: date) -> None:
        if self.suspensions:
            since, back = self.suspensions[-1]
            latest = back if back is not None else since
            if effective_on < latest:
                raise OutOfOrder(
                    f"a suspension or resumption effective {latest} is recorded already"
                )

    def suspend(self, effective_on: date, reason: str, today: date) -> SubscriptionSuspended:
        self._check_effective(effective_on, today)
        if self.suspended:
            raise AlreadySuspended(
                f"subscription {self.subscription_id!r} is suspended since"
                f" {self.suspensions[-1][0]}"
            )
        self._check_suspension_order(effective_on)
        return SubscriptionSuspended(
            subscription_id=self.subscription_id, effective_on=effective_on, reason=reason
        )

    def resume(self, effective_on: date, reason: str, today: date) -> SubscriptionResumed:
        self._check_effective(effective_on, today)
        if not self.suspended:
            raise NotSuspended(f"subscription {self.subscription_id!r} is not suspended")
        self._check_suspension_order(effective_on)
        return SubscriptionResumed(
            subscription_id=self.subscription_id, effective_on=effective_on, reason=reason
        )

    def hold(
        self, hold_from: date, hold_until: date, reason: str, today: date
    ) -> SubscriptionHoldPlaced:
        self._check_effective(hold_from, today)
        if hold_until < hold_from:
            raise InvalidHold(f"hold until {hold_until} is before its start {hold_from}")
        if (hold_until - hold_from).days + 1 > MAX_HOLD_DAYS:
            raise InvalidHold(f"a hold lasts at most {MAX_HOLD_DAYS} days")
        for start, end in self.holds:
            if start <= hold_until and hold_from <= end:
                raise InvalidHold(f"overlaps the hold from {start} to {end}")
        return SubscriptionHoldPlaced(
            subscription_id=self.subscription_id,
            hold_from=hold_from,
            hold_until=hold_until,
            reason=reason,
        )

    def terminate(self, effective_on: date, reason: str, today: date) -> SubscriptionTerminated:
        self._check_effective(effective_on, today)
        latest = self._latest_effective()
        if effective_on < latest:
            raise OutOfOrder(
                f"a change effective {latest} is recorded already; terminate on or after it"
            )
        return SubscriptionTerminated(
            subscription_id=self.subscription_id, effective_on=effective_on, reason=reason
        )

    def change_username(self, new_username: str, today: date) -> RadiusUsernameChanged:
        self._check_effective(max(today, self.started.started_on), today)
        if new_username == self.radius_username:
            raise SameUsername(f"the subscription's username is {new_username!r} already")
        return RadiusUsernameChanged(
            subscription_id=self.subscription_id,
            customer_id=self.customer_id,
            old_username=self.radius_username,
            new_username=new_username,
            # a subscription that has not started yet takes the new username from its start
            effective_on=max(today, self.started.started_on),
        )
