"""A subscription's service history, as its stream tells it: start, plan changes, suspensions,
vacation holds, termination; and which plan version is in force on a day. Pure; shared by
rating (which bucket a byte goes to) and invoicing (which days are charged)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

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

__all__ = ["ServiceHistory", "UnexpectedSubscriptionEvent", "version_on"]


class UnexpectedSubscriptionEvent(ValueError):
    """A subscription's stream holds an event that is not part of its lifecycle."""


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
    #: what measures its usage for billing: "radius" or "router" (SubscriptionStarted)
    usage_source: str = "radius"

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
                raise UnexpectedSubscriptionEvent(
                    f"unexpected {event.event_type} in a subscription's stream"
                )
        return cls(
            subscription_id=started.subscription_id,
            started_on=started.started_on,
            plan_id=started.plan_id,
            plan_changes=tuple(plan_changes),
            suspensions=tuple(suspensions),
            holds=tuple(holds),
            terminated_on=terminated_on,
            usage_source=started.usage_source,
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
