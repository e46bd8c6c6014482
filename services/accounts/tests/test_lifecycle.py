"""Lifecycle, customer and catalog use cases on the real SQLite ledger: events with effective
dates, optimistic concurrency, idempotent retries, usernames released and claimed again."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from accounts.application import lifecycle
from accounts.application.use_cases import define_plan, register_customer, start_subscription
from accounts.domain.commands import (
    ChangeCustomer,
    ChangePlan,
    ChangeUsername,
    DefinePlan,
    DefineTopUpProduct,
    PlaceHold,
    PublishPlanVersion,
    RegisterCustomer,
    ResumeSubscription,
    StartSubscription,
    SuspendSubscription,
    TerminateSubscription,
)
from accounts.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidPlanVersion,
    InvalidTopUp,
    NotFound,
    SamePlan,
    SubscriptionIsTerminated,
    UsernameTaken,
)
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    CustomerDetailsChanged,
    PlanVersionPublished,
    RadiusUsernameAssigned,
    RadiusUsernameReleased,
    SubscriptionPlanChanged,
    customer_stream,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import TaxRateSet, tax_region_stream
from ispbill_core.events import new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.sqlite import SQLiteEventStore

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Dhaka")


def plan(plan_id: str, currency: str = "USD", fee: str = "30.00") -> DefinePlan:
    return DefinePlan(
        plan_id=plan_id,
        name=plan_id.title(),
        currency=currency,
        monthly_fee=fee,
        included_gb=50,
        overage_per_gb="1.50",
    )


def start(sub_id: str = "s-1", username: str = "alice", **kw: object) -> StartSubscription:
    fields: dict[str, object] = {
        "subscription_id": sub_id,
        "customer_id": "c-1",
        "plan_id": "home",
        "radius_username": username,
        "started_on": date(2026, 1, 1),
    }
    return StartSubscription(**(fields | kw))


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@pytest.fixture
def clock() -> FixedClock:
    # 20:00 UTC on 9 March is already 10 March in Dhaka: "today" is the ISP's day
    return FixedClock(datetime(2026, 3, 9, 20, 0, tzinfo=UTC))


@pytest.fixture
async def catalogue(store, clock) -> None:
    for p in (plan("home"), plan("fast", fee="50.00"), plan("euro", "EUR")):
        await define_plan(store, clock, p, "admin")
    for region in ("BD", "EU"):
        rule = TaxRateSet(region=region, tax_name="VAT", rate=Decimal("0.15"))
        await store.append(
            tax_region_stream(region),
            [new_event(rule, id=uuid.uuid4(), occurred_at=clock.now(), actor="admin")],
            ANY,
        )
    await register_customer(
        store,
        clock,
        RegisterCustomer(customer_id="c-1", name="Alice", email="a@example.com", tax_region="BD"),
        "admin",
    )
    await start_subscription(store, clock, start(), "clerk")


async def types_in(store: SQLiteEventStore, stream: str) -> list[str]:
    return [r.type for r in await store.read_stream(stream)]


async def test_a_plan_change_now_is_dated_today_in_the_isps_time_zone(
    store, clock, catalogue
) -> None:
    sub = await lifecycle.change_plan(
        store, clock, TZ, "s-1", ChangePlan(plan_id="fast", expected_version=0), "clerk"
    )
    assert sub.version == 1 and sub.plan_on(date(2026, 3, 10)) == "fast"
    [_, recorded] = await store.read_stream(subscription_stream("s-1"))
    change = recorded.decode()
    assert isinstance(change, SubscriptionPlanChanged)
    assert change.effective_on == date(2026, 3, 10) and change.from_plan_id == "home"
    assert recorded.metadata.actor == "clerk"


async def test_next_cycle_is_the_first_of_next_month(store, clock, catalogue) -> None:
    sub = await lifecycle.change_plan(
        store, clock, TZ, "s-1", ChangePlan(plan_id="fast", effective="next_cycle"), "clerk"
    )
    assert sub.history[-1].effective_on == date(2026, 4, 1)
    assert sub.plan_on(date(2026, 3, 31)) == "home"


async def test_a_retry_of_a_recorded_command_is_a_no_op_and_a_stale_one_a_conflict(
    store, clock, catalogue
) -> None:
    cmd = SuspendSubscription(reason="abuse", expected_version=0)
    await lifecycle.suspend_subscription(store, clock, TZ, "s-1", cmd, "clerk")
    again = await lifecycle.suspend_subscription(store, clock, TZ, "s-1", cmd, "clerk")
    assert again.version == 1
    assert await types_in(store, subscription_stream("s-1")) == [
        "SubscriptionStarted",
        "SubscriptionSuspended",
    ]
    with pytest.raises(Conflict):  # based on version 0, but something else followed it
        await lifecycle.change_plan(
            store, clock, TZ, "s-1", ChangePlan(plan_id="fast", expected_version=0), "clerk"
        )
    with pytest.raises(Conflict):
        await lifecycle.resume_subscription(
            store, clock, TZ, "s-1", ResumeSubscription(reason="x", expected_version=5), "clerk"
        )
    await lifecycle.resume_subscription(
        store, clock, TZ, "s-1", ResumeSubscription(reason="paid", expected_version=1), "clerk"
    )


async def test_rules_refuse_before_anything_is_written(store, clock, catalogue) -> None:
    with pytest.raises(SamePlan):
        await lifecycle.change_plan(store, clock, TZ, "s-1", ChangePlan(plan_id="home"), "c")
    with pytest.raises(NotFound):
        await lifecycle.change_plan(store, clock, TZ, "s-1", ChangePlan(plan_id="nope"), "c")
    with pytest.raises(NotFound):
        await lifecycle.change_plan(store, clock, TZ, "s-9", ChangePlan(plan_id="fast"), "c")
    assert await types_in(store, subscription_stream("s-1")) == ["SubscriptionStarted"]


async def test_hold_and_termination_show_in_the_history(store, clock, catalogue) -> None:
    hold = PlaceHold.model_validate(
        {"from": "2026-03-20", "until": "2026-03-25", "reason": "travel"}
    )
    await lifecycle.place_hold(store, clock, TZ, "s-1", hold, "clerk")
    end = TerminateSubscription(effective_on=date(2026, 3, 31), reason="moving")
    sub = await lifecycle.terminate_subscription(store, clock, TZ, "s-1", end, "clerk")
    assert [(h.type, h.effective_on) for h in sub.history] == [
        ("SubscriptionStarted", date(2026, 1, 1)),
        ("SubscriptionHoldPlaced", date(2026, 3, 20)),
        ("SubscriptionTerminated", date(2026, 3, 31)),
    ]
    with pytest.raises(SubscriptionIsTerminated):
        await lifecycle.suspend_subscription(
            store, clock, TZ, "s-1", SuspendSubscription(reason="x"), "clerk"
        )


async def test_a_username_change_claims_the_new_and_releases_the_old_for_reuse(
    store, clock, catalogue
) -> None:
    sub = await lifecycle.change_username(
        store, clock, TZ, "s-1", ChangeUsername(radius_username="alice-new"), "clerk"
    )
    assert sub.radius_username == "alice-new"
    [claim] = await store.read_stream(radius_user_stream("alice-new"))
    assert claim.decode() == RadiusUsernameAssigned(
        username="alice-new", customer_id="c-1", subscription_id="s-1"
    )
    old = [r.decode() for r in await store.read_stream(radius_user_stream("alice"))]
    assert old[-1] == RadiusUsernameReleased(
        username="alice", subscription_id="s-1", released_on=date(2026, 3, 10)
    )
    # several subscriptions per customer; the released username is reused
    await start_subscription(store, clock, start("s-2", "alice"), "clerk")
    assert await types_in(store, radius_user_stream("alice")) == [
        "RadiusUsernameAssigned",
        "RadiusUsernameReleased",
        "RadiusUsernameAssigned",
    ]
    with pytest.raises(UsernameTaken):
        await lifecycle.change_username(
            store, clock, TZ, "s-2", ChangeUsername(radius_username="alice-new"), "clerk"
        )


async def test_a_username_change_retried_records_nothing_more(store, clock, catalogue) -> None:
    cmd = ChangeUsername(radius_username="alice-new", expected_version=0)
    await lifecycle.change_username(store, clock, TZ, "s-1", cmd, "clerk")
    head = await store.head_position()
    await lifecycle.change_username(store, clock, TZ, "s-1", cmd, "clerk")
    assert await store.head_position() == head


async def test_a_customer_edit_records_every_detail_and_keeps_the_rest(
    store, clock, catalogue
) -> None:
    version, details = await lifecycle.change_customer(
        store,
        clock,
        "c-1",
        ChangeCustomer(
            phone="+8801712345678",
            account_type="business",
            tags=["vip", "dhaka"],
            expected_version=0,
        ),
        "clerk",
    )
    assert version == 1
    assert isinstance(details, CustomerDetailsChanged)
    assert (details.name, details.phone, details.account_type, details.tags) == (
        "Alice",
        "+8801712345678",
        "business",
        ("vip", "dhaka"),
    )
    assert await lifecycle.load_customer(store, "c-1") == (1, details)
    # the same edit again (a retry based on version 0) records nothing
    await lifecycle.change_customer(
        store,
        clock,
        "c-1",
        ChangeCustomer(
            phone="+8801712345678",
            account_type="business",
            tags=["vip", "dhaka"],
            expected_version=0,
        ),
        "clerk",
    )
    assert len(await store.read_stream(customer_stream("c-1"))) == 2
    with pytest.raises(Conflict):
        await lifecycle.change_customer(
            store, clock, "c-1", ChangeCustomer(name="Bob", expected_version=0), "clerk"
        )


def test_customer_fields_are_validated_in_the_command() -> None:
    for bad in (
        {"phone": "01712345678"},
        {"tags": ["Not A Slug"]},
        {"tags": [f"t{n}" for n in range(21)]},
        {"account_type": "government"},
        {"email": "not-an-email"},
    ):
        with pytest.raises(ValidationError):
            ChangeCustomer.model_validate(bad)


def version_cmd(on: date, **kw: object) -> PublishPlanVersion:
    fields: dict[str, object] = {
        "effective_from": on,
        "name": "Home",
        "currency": "USD",
        "monthly_fee": "35.00",
        "unit": "GiB",
        "included_units": 100,
        "overage_price": "1.00",
        "overage_increment": "0.1",
        "time_bands": [{"name": "night", "start": "23:00", "end": "07:00", "multiplier": "free"}],
        "fair_usage": [{"after_bytes": 10**11, "rate_limit": "2M/2M"}],
        "download_bps": 50_000_000,
        "upload_bps": 10_000_000,
    }
    return PublishPlanVersion.model_validate(fields | kw)


async def test_plan_versions_are_published_in_order(store, clock, catalogue) -> None:
    published = await lifecycle.publish_plan_version(
        store, clock, TZ, "home", version_cmd(date(2026, 4, 1)), "admin"
    )
    assert isinstance(published, PlanVersionPublished)
    assert published.version == 2 and published.included_bytes == 100 * 2**30
    # a retry is a no-op
    again = await lifecycle.publish_plan_version(
        store, clock, TZ, "home", version_cmd(date(2026, 4, 1)), "admin"
    )
    assert again == published
    assert len(await lifecycle.plan_versions(store, "home")) == 2
    with pytest.raises(InvalidPlanVersion):  # not after version 2's date
        await lifecycle.publish_plan_version(
            store, clock, TZ, "home", version_cmd(date(2026, 3, 31), monthly_fee="1.00"), "a"
        )
    with pytest.raises(InvalidPlanVersion):  # another currency
        await lifecycle.publish_plan_version(
            store, clock, TZ, "home", version_cmd(date(2026, 5, 1), currency="EUR"), "a"
        )
    with pytest.raises(InvalidPlanVersion):  # into a period that may be invoiced
        await lifecycle.publish_plan_version(
            store, clock, TZ, "fast", version_cmd(date(2026, 2, 28)), "a"
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"overage_increment": "0.3"},
        {"overage_increment": "2"},
        {"monthly_fee": "1.234"},
        {"time_bands": [{"name": "x", "start": "10:00", "end": "10:00", "multiplier": "2"}]},
        {
            "time_bands": [
                {"name": "x", "start": "10:00", "end": "11:00", "multiplier": "2"},
                {"name": "x", "start": "12:00", "end": "13:00", "multiplier": "2"},
            ]
        },
        {
            "fair_usage": [
                {"after_bytes": 20, "rate_limit": "1M/1M"},
                {"after_bytes": 10, "rate_limit": "1M/1M"},
            ]
        },
    ],
)
def test_plan_version_terms_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidPlanVersion):
        version_cmd(date(2026, 4, 1), **bad).to_event("home", 2)


@pytest.mark.parametrize(
    "bad",
    [
        {"effective_from": "1999-12-31"},
        {"monthly_fee": "-1"},  # refused by the input policy, before any rule
        {"unit": "TB"},
        {"time_bands": [{"name": "x", "start": "25:00", "end": "07:00", "multiplier": "1"}]},
        {"fair_usage": [{"after_bytes": 10, "rate_limit": "fast"}]},
        {"download_bps": 0},
    ],
)
def test_plan_version_shapes_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        version_cmd(date(2026, 4, 1), **bad)


async def test_top_up_products(store, clock) -> None:
    cmd = DefineTopUpProduct(
        product_id="10gb",
        name="10 GB",
        currency="USD",
        price="5.00",
        bytes=10**10,
        validity_days=30,
    )
    first = await lifecycle.define_topup_product(store, clock, cmd, "admin")
    assert await lifecycle.define_topup_product(store, clock, cmd, "admin") == first
    with pytest.raises(AlreadyExists):
        await lifecycle.define_topup_product(
            store, clock, cmd.model_copy(update={"price": "6.00"}), "admin"
        )
    with pytest.raises(InvalidTopUp):
        cmd.model_copy(update={"price": "-1"}).to_event()
    with pytest.raises(ValidationError):
        DefineTopUpProduct.model_validate(cmd.model_dump() | {"validity_days": 0})
