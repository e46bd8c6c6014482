"""The subscription lifecycle's rules, pure: each refusal is a named error."""

from __future__ import annotations

from datetime import date

import pytest

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
from accounts.domain.subscription import (
    ACTIVE,
    ON_HOLD,
    PENDING,
    SUSPENDED,
    TERMINATED,
    Subscription,
    first_of_next_month,
)
from ispbill_core.contracts.accounts import SubscriptionChange, SubscriptionStarted

pytestmark = pytest.mark.unit

TODAY = date(2026, 3, 10)
STARTED = SubscriptionStarted(
    subscription_id="s-1",
    customer_id="c-1",
    plan_id="home",
    radius_username="alice",
    started_on=date(2026, 1, 15),
)


def sub(*changes: SubscriptionChange, started: SubscriptionStarted = STARTED) -> Subscription:
    return Subscription.fold([(0, started), *((n + 1, c) for n, c in enumerate(changes))])


def change_plan(
    s: Subscription, plan_id: str, on: date, currency: str = "USD"
) -> SubscriptionChange:
    return s.change_plan(plan_id, on, TODAY, currency=currency, current_currency="USD")


def test_next_cycle_is_the_first_of_next_month() -> None:
    assert first_of_next_month(date(2026, 1, 31)) == date(2026, 2, 1)
    assert first_of_next_month(date(2026, 12, 1)) == date(2027, 1, 1)


def test_a_plan_change_is_in_force_from_its_date() -> None:
    s = sub()
    change = change_plan(s, "fast", date(2026, 4, 1))
    s.apply(1, change)
    assert s.plan_on(date(2026, 3, 31)) == "home"
    assert s.plan_on(date(2026, 4, 1)) == "fast"
    assert s.version == 1 and s.history[-1].effective_on == date(2026, 4, 1)


def test_a_change_to_the_plan_in_force_then_is_refused() -> None:
    with pytest.raises(SamePlan):
        change_plan(sub(), "home", TODAY)


def test_a_plan_in_another_currency_is_refused() -> None:
    with pytest.raises(PlanCurrencyDiffers):
        change_plan(sub(), "fast", TODAY, currency="EUR")


def test_plan_changes_are_recorded_in_date_order() -> None:
    s = sub()
    s.apply(1, change_plan(s, "fast", date(2026, 4, 1)))
    with pytest.raises(OutOfOrder):
        change_plan(s, "slow", date(2026, 3, 20))


def test_effective_dates_are_not_before_the_start_nor_in_an_earlier_period() -> None:
    future = STARTED.model_copy(update={"started_on": date(2026, 5, 1)})
    with pytest.raises(SubscriptionNotStarted):
        sub(started=future).suspend(date(2026, 4, 1), "r", TODAY)
    with pytest.raises(BackdatedIntoClosedPeriod):
        sub().suspend(date(2026, 2, 28), "r", TODAY)


def test_suspend_then_resume_and_the_rules_around_it() -> None:
    s = sub()
    with pytest.raises(NotSuspended):
        s.resume(TODAY, "r", TODAY)
    s.apply(1, s.suspend(TODAY, "abuse", TODAY))
    assert s.status_on(TODAY) == SUSPENDED
    with pytest.raises(AlreadySuspended):
        s.suspend(TODAY, "again", TODAY)
    with pytest.raises(OutOfOrder):
        s.resume(date(2026, 3, 9), "before it", TODAY)
    s.apply(2, s.resume(date(2026, 3, 12), "paid", TODAY))
    assert s.status_on(date(2026, 3, 11)) == SUSPENDED
    assert s.status_on(date(2026, 3, 12)) == ACTIVE


def test_holds_are_ordered_bounded_and_do_not_overlap() -> None:
    s = sub()
    with pytest.raises(InvalidHold):
        s.hold(date(2026, 3, 20), date(2026, 3, 19), "r", TODAY)
    with pytest.raises(InvalidHold):
        s.hold(date(2026, 3, 20), date(2027, 3, 21), "a year and a day", TODAY)
    s.apply(1, s.hold(date(2026, 3, 20), date(2026, 3, 25), "travel", TODAY))
    assert s.status_on(date(2026, 3, 25)) == ON_HOLD
    assert s.status_on(date(2026, 3, 26)) == ACTIVE
    with pytest.raises(InvalidHold):
        s.hold(date(2026, 3, 25), date(2026, 3, 28), "overlap", TODAY)


def test_nothing_follows_a_termination() -> None:
    s = sub()
    s.apply(1, s.terminate(date(2026, 3, 31), "moving", TODAY))
    assert s.status_on(date(2026, 3, 31)) == ACTIVE
    assert s.status_on(date(2026, 4, 1)) == TERMINATED
    for attempt in (
        lambda: s.suspend(TODAY, "r", TODAY),
        lambda: s.resume(TODAY, "r", TODAY),
        lambda: s.terminate(date(2026, 4, 1), "r", TODAY),
        lambda: s.hold(TODAY, TODAY, "r", TODAY),
        lambda: change_plan(s, "fast", TODAY),
        lambda: s.change_username("bob", TODAY),
    ):
        with pytest.raises(SubscriptionIsTerminated):
            attempt()


def test_a_termination_before_a_recorded_change_is_refused() -> None:
    s = sub()
    s.apply(1, s.hold(date(2026, 3, 20), date(2026, 3, 25), "travel", TODAY))
    with pytest.raises(OutOfOrder):
        s.terminate(date(2026, 3, 22), "r", TODAY)


def test_a_username_change_takes_effect_today_and_not_to_the_same_name() -> None:
    s = sub()
    with pytest.raises(SameUsername):
        s.change_username("alice", TODAY)
    change = s.change_username("alice2", TODAY)
    assert (change.old_username, change.new_username, change.effective_on) == (
        "alice",
        "alice2",
        TODAY,
    )
    s.apply(1, change)
    assert s.radius_username == "alice2"


def test_status_before_the_start_is_pending() -> None:
    assert sub().status_on(date(2026, 1, 14)) == PENDING
