"""Which days of a period are charged, on which plan version: the pure rules and properties."""

from __future__ import annotations

import itertools
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invoicing.domain.errors import InvoicingError
from invoicing.domain.service_days import (
    ServiceHistory,
    UnknownPlan,
    charged_segments,
    last_plan_in,
    version_on,
)
from ispbill_core.contracts.accounts import (
    GIGABYTE,
    PlanDefined,
    PlanTerms,
    PlanVersionPublished,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
)
from ispbill_core.contracts.rating import UsageRated
from ispbill_core.money import Money
from ispbill_core.periods import BillingPeriod

pytestmark = pytest.mark.unit

MARCH = BillingPeriod(2026, 3)


def plan(plan_id: str, fee: str = "31.00") -> PlanDefined:
    return PlanDefined(
        plan_id=plan_id,
        name=plan_id,
        monthly_fee=Money.of(fee, "USD"),
        included_bytes=GIGABYTE,
        overage_price=Money.of("1.00", "USD"),
    )


def version(plan_id: str, n: int, effective_from: date, fee: str) -> PlanVersionPublished:
    return PlanVersionPublished(
        **plan(plan_id, fee).model_dump(), version=n, effective_from=effective_from
    )


PLANS: dict[str, list[PlanTerms]] = {"a": [plan("a")], "b": [plan("b", "62.00")]}
STARTED = SubscriptionStarted(
    subscription_id="s",
    customer_id="c",
    plan_id="a",
    radius_username="u",
    started_on=date(2026, 1, 1),
)


def test_version_on_picks_the_latest_in_force() -> None:
    versions: list[PlanTerms] = [
        plan("a"),
        version("a", 2, date(2026, 3, 10), "40.00"),
        version("a", 3, date(2026, 4, 1), "50.00"),
    ]
    assert version_on(versions, date(2026, 3, 9)) is versions[0]
    assert version_on(versions, date(2026, 3, 10)) is versions[1]
    assert version_on(versions, date(2030, 1, 1)) is versions[2]


def test_a_plan_change_splits_the_month_at_its_effective_date() -> None:
    history = ServiceHistory.of(
        STARTED,
        [
            SubscriptionPlanChanged(
                subscription_id="s", from_plan_id="a", plan_id="b", effective_on=date(2026, 3, 11)
            )
        ],
    )
    segments = charged_segments(history, PLANS, MARCH)
    assert [(s.first.day, s.last.day, s.plan.plan_id) for s in segments] == [
        (1, 10, "a"),
        (11, 31, "b"),
    ]


def test_resumption_day_is_charged_and_suspension_day_is_not() -> None:
    history = ServiceHistory.of(
        STARTED,
        [
            SubscriptionSuspended(subscription_id="s", effective_on=date(2026, 3, 5), reason="r"),
            SubscriptionResumed(subscription_id="s", effective_on=date(2026, 3, 7), reason="r"),
        ],
    )
    assert not history.charged_on(date(2026, 3, 5))
    assert not history.charged_on(date(2026, 3, 6))
    assert history.charged_on(date(2026, 3, 7))
    assert sum(s.days for s in charged_segments(history, PLANS, MARCH)) == 29


def test_termination_day_is_charged_and_the_next_is_not() -> None:
    history = ServiceHistory.of(
        STARTED,
        [SubscriptionTerminated(subscription_id="s", effective_on=date(2026, 3, 3), reason="r")],
    )
    assert history.charged_on(date(2026, 3, 3)) and not history.charged_on(date(2026, 3, 4))
    assert last_plan_in(history, PLANS, MARCH) is PLANS["a"][0]


def test_an_unknown_plan_is_a_named_error() -> None:
    history = ServiceHistory.of(STARTED.model_copy(update={"plan_id": "zz"}), [])
    with pytest.raises(UnknownPlan):
        charged_segments(history, PLANS, MARCH)


def test_an_event_that_is_no_lifecycle_change_is_refused() -> None:
    other = UsageRated(
        customer_id="c",
        subscription_id="s",
        period="2026-03",
        session_key="k",
        record_id="00000000-0000-0000-0000-000000000000",  # type: ignore[arg-type]
        input_octets=0,
        output_octets=0,
        occurred_at="2026-03-01T00:00:00Z",  # type: ignore[arg-type]
    )
    with pytest.raises(InvoicingError):
        ServiceHistory.of(STARTED, [other])


days = st.dates(min_value=date(2025, 12, 1), max_value=date(2026, 5, 31))


@st.composite
def histories(draw: st.DrawFn) -> ServiceHistory:
    started_on = draw(days)
    changes = sorted(draw(st.lists(days, max_size=3)))
    suspension_dates = sorted(draw(st.lists(days, max_size=4)))
    suspensions: list[tuple[date, date | None]] = []
    for i in range(0, len(suspension_dates), 2):
        pair = suspension_dates[i : i + 2]
        suspensions.append((pair[0], pair[1] if len(pair) == 2 else None))
    holds = []
    for first in draw(st.lists(days, max_size=2)):
        holds.append((first, first + timedelta(days=draw(st.integers(0, 40)))))
    terminated = draw(st.none() | days)
    return ServiceHistory(
        subscription_id="s",
        started_on=started_on,
        plan_id="a",
        plan_changes=tuple((d, draw(st.sampled_from(["a", "b"]))) for d in changes),
        suspensions=tuple(suspensions),
        holds=tuple(holds),
        terminated_on=terminated if terminated is None or terminated >= started_on else None,
    )


periods = st.sampled_from([BillingPeriod(2026, m) for m in (1, 2, 3, 4)])
versions = st.lists(st.dates(date(2026, 1, 1), date(2026, 5, 1)), max_size=3, unique=True)


@given(histories(), periods, versions)
def test_segments_never_overlap_nor_exceed_the_month(
    history: ServiceHistory, period: BillingPeriod, version_dates: list[date]
) -> None:
    plans: dict[str, list[PlanTerms]] = {
        "a": [plan("a")]
        + [version("a", n + 2, d, "40.00") for n, d in enumerate(sorted(version_dates))],
        "b": [plan("b", "62.00")],
    }
    segments = charged_segments(history, plans, period)
    last_day = period.next.first_day - timedelta(days=1)
    assert sum(s.days for s in segments) <= period.days
    for segment in segments:
        assert period.first_day <= segment.first <= segment.last <= last_day
        # every day of a segment is charged, on that segment's plan version
        day = segment.first
        while day <= segment.last:
            assert history.charged_on(day)
            assert version_on(plans[history.plan_on(day)], day) is segment.plan
            day += timedelta(days=1)
    for earlier, later in itertools.pairwise(segments):
        assert earlier.last < later.first
    # and every charged day of the period is in a segment
    charged = sum(
        history.charged_on(period.first_day + timedelta(days=n)) for n in range(period.days)
    )
    assert charged == sum(s.days for s in segments)
