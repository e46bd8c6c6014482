"""Which days of a billing period a subscription is charged for, and on which plan version.

Pure: the subscription's published events and the plans' versions in, day segments out.
Proration is by day (docs: services/invoicing/README.md, ADR 0016):

- charged from the start date; the termination date is the last day charged;
- a day suspended by staff (from the suspension's date up to the day before the resumption's)
  is not charged, nor a day of a vacation hold (both ends of the hold);
- each charged day is charged on the plan in force that day (a change is in force from its
  effective date) at that plan's version in force that day (a version is in force from its
  `effective_from`; PlanDefined, version 1, from the beginning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from invoicing.domain.errors import InvoicingError
from ispbill_core.contracts.accounts import (
    PlanTerms,
    PlanVersionPublished,
    RadiusUsernameChanged,
    SubscriptionHoldPlaced,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
)
from ispbill_core.events import DomainEvent
from ispbill_core.periods import BillingPeriod

__all__ = ["ChargedSegment", "ServiceHistory", "UnknownPlan", "charged_segments", "version_on"]


class UnknownPlan(InvoicingError):
    """A subscription names a plan the catalogue does not hold."""


@dataclass(frozen=True)
class ServiceHistory:
    """What a subscription's stream says about its service days."""

    subscription_id: str
    started_on: date
    plan_id: str
    #: (effective date, plan), in the order recorded
    plan_changes: tuple[tuple[date, str], ...] = ()
    #: (first day suspended, first day back, or None while suspended)
    suspensions: tuple[tuple[date, date | None], ...] = ()
    #: (first day, last day) of each vacation hold
    holds: tuple[tuple[date, date], ...] = ()
    #: last day of service, charged
    terminated_on: date | None = None

    @classmethod
    def of(cls, started: SubscriptionStarted, changes: Iterable[DomainEvent]) -> ServiceHistory:
        plan_changes: list[tuple[date, str]] = []
        suspensions: list[tuple[date, date | None]] = []
        holds: list[tuple[date, date]] = []
        terminated_on: date | None = None
        for event in changes:
            if isinstance(event, SubscriptionPlanChanged):
                plan_changes.append((event.effective_on, event.plan_id))
            elif isinstance(event, SubscriptionSuspended):
                suspensions.append((event.effective_on, None))
            elif isinstance(event, SubscriptionResumed) and suspensions:
                suspensions[-1] = (suspensions[-1][0], event.effective_on)
            elif isinstance(event, SubscriptionHoldPlaced):
                holds.append((event.hold_from, event.hold_until))
            elif isinstance(event, SubscriptionTerminated):
                terminated_on = event.effective_on
            elif not isinstance(event, RadiusUsernameChanged | SubscriptionResumed):
                raise InvoicingError(f"unexpected {event.event_type} in a subscription's stream")
        return cls(
            subscription_id=started.subscription_id,
            started_on=started.started_on,
            plan_id=started.plan_id,
            plan_changes=tuple(plan_changes),
            suspensions=tuple(suspensions),
            holds=tuple(holds),
            terminated_on=terminated_on,
        )

    def charged_on(self, day: date) -> bool:
        if day < self.started_on:
            return False
        if self.terminated_on is not None and day > self.terminated_on:
            return False
        if any(since <= day and (back is None or day < back) for since, back in self.suspensions):
            return False
        return not any(first <= day <= last for first, last in self.holds)

    def plan_on(self, day: date) -> str:
        plan = self.plan_id
        for effective_on, plan_id in self.plan_changes:
            if effective_on <= day:
                plan = plan_id
        return plan


def version_on(versions: Sequence[PlanTerms], day: date) -> PlanTerms:
    """The version in force on `day`: the latest whose effective date is not after it."""
    current = versions[0]
    for version in versions[1:]:
        if isinstance(version, PlanVersionPublished) and version.effective_from <= day:
            current = version
    return current


@dataclass(frozen=True)
class ChargedSegment:
    """Consecutive charged days, both ends inclusive, on one plan version."""

    first: date
    last: date
    plan: PlanTerms

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def charged_segments(
    history: ServiceHistory, plans: Mapping[str, Sequence[PlanTerms]], period: BillingPeriod
) -> tuple[ChargedSegment, ...]:
    """The period's charged days, grouped into runs of consecutive days on one plan version,
    in date order. Empty when no day of the period is charged."""
    segments: list[ChargedSegment] = []
    day = period.first_day
    end = period.next.first_day
    while day < end:
        if history.charged_on(day):
            plan_id = history.plan_on(day)
            versions = plans.get(plan_id)
            if not versions:
                raise UnknownPlan(
                    f"subscription {history.subscription_id} names unknown plan {plan_id}"
                )
            plan = version_on(versions, day)
            previous = segments[-1] if segments else None
            if (
                previous is not None
                and previous.last == day - timedelta(days=1)
                and previous.plan is plan
            ):
                segments[-1] = ChargedSegment(previous.first, day, plan)
            else:
                segments.append(ChargedSegment(day, day, plan))
        day += timedelta(days=1)
    return tuple(segments)


def last_plan_in(
    history: ServiceHistory, plans: Mapping[str, Sequence[PlanTerms]], period: BillingPeriod
) -> PlanTerms | None:
    """The plan version in force on the period's last day of service (for usage beyond the
    included data); None when the subscription had not started by the period's end."""
    last_day = period.next.first_day - timedelta(days=1)
    if history.terminated_on is not None:
        last_day = min(last_day, history.terminated_on)
    if last_day < history.started_on:
        return None
    versions = plans.get(history.plan_on(last_day))
    if not versions:
        raise UnknownPlan(f"subscription {history.subscription_id} names an unknown plan")
    return version_on(versions, last_day)
