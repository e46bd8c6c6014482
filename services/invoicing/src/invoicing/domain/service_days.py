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
from ispbill_core.contracts.accounts import PlanTerms, SubscriptionStarted
from ispbill_core.events import DomainEvent
from ispbill_core.periods import BillingPeriod
from ispbill_core.service_history import ServiceHistory as _CoreHistory
from ispbill_core.service_history import UnexpectedSubscriptionEvent, version_on

__all__ = ["ChargedSegment", "ServiceHistory", "UnknownPlan", "charged_segments", "version_on"]


class UnknownPlan(InvoicingError):
    """A subscription names a plan the catalogue does not hold."""


class ServiceHistory(_CoreHistory):
    """The shared history (ispbill_core.service_history); an event that does not belong in a
    subscription's stream is an InvoicingError here."""

    @classmethod
    def of(cls, started: SubscriptionStarted, changes: Iterable[DomainEvent]) -> ServiceHistory:
        try:
            history = super().of(started, changes)
        except UnexpectedSubscriptionEvent as error:
            raise InvoicingError(str(error)) from error
        assert isinstance(history, ServiceHistory)
        return history


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
