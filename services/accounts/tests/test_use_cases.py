"""Accounts use cases on the real SQLite ledger: idempotent commands, unique usernames."""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from accounts.application import use_cases
from accounts.application.use_cases import (
    change_nas,
    define_plan,
    nases_in_service,
    register_customer,
    remove_nas,
    start_subscription,
)
from accounts.domain.commands import (
    ChangeNas,
    DefinePlan,
    RegisterCustomer,
    RegisterNas,
    StartSubscription,
)
from accounts.domain.errors import (
    AddressInUse,
    AlreadyExists,
    Conflict,
    NoTaxRule,
    NotFound,
    UsernameTaken,
)
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import (
    NasRegistered,
    NasRegisteredV1,
    NasRemoved,
    RadiusUsernameAssigned,
    customer_stream,
    nas_secret_context,
    nas_stream,
    plan_stream,
    radius_user_stream,
    subscription_stream,
)
from ispbill_core.contracts.invoicing import TaxRateSet, tax_region_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY, NO_STREAM
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.sealing import Keyring

pytestmark = pytest.mark.integration

PLAN = DefinePlan(
    plan_id="home-50",
    name="Home 50",
    currency="USD",
    monthly_fee="29.99",
    included_gb=50,
    overage_per_gb="1.50",
)
ALICE = RegisterCustomer(
    customer_id="c-1", name="Alice", email="alice@example.com", tax_region="BD"
)
BOB = RegisterCustomer(customer_id="c-2", name="Bob", email="bob@example.com", tax_region="BD")
NAS = RegisterNas(nas_id="nas-1", name="edge", ip_address="192.0.2.1", secret="s3cret!")
KEYRING = Keyring([os.urandom(64)])
register_nas = functools.partial(use_cases.register_nas, keyring=KEYRING)


def subscription(sub_id: str = "sub-1", username: str = "alice", **kw: object) -> StartSubscription:
    fields: dict[str, object] = {
        "subscription_id": sub_id,
        "customer_id": "c-1",
        "plan_id": "home-50",
        "radius_username": username,
        "started_on": date(2026, 1, 1),
    }
    fields.update(kw)
    return StartSubscription(**fields)


@pytest.fixture
async def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "ledger.db")
    yield s
    await s.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))


async def set_tax_rule(store, clock, region: str, rate: str = "0.15", name: str = "VAT") -> None:
    """What invoicing's POST /api/v1/tax-rates records (accounts may not import invoicing)."""
    rule = TaxRateSet(region=region, tax_name=name, rate=Decimal(rate))
    await store.append(
        tax_region_stream(region),
        [new_event(rule, id=uuid.uuid4(), occurred_at=clock.now(), actor="admin")],
        ANY,
    )


@pytest.fixture
async def catalogue(store, clock) -> None:
    await define_plan(store, clock, PLAN, "admin")
    await set_tax_rule(store, clock, "BD")
    await register_customer(store, clock, ALICE, "admin")
    await register_customer(store, clock, BOB, "admin")


async def test_each_command_records_one_event_in_its_own_stream(store, clock, catalogue) -> None:
    await register_nas(store, clock, NAS, "admin")
    started = await start_subscription(store, clock, subscription(), "clerk")
    assert started.radius_username == "alice"
    for stream in [
        plan_stream("home-50"),
        customer_stream("c-1"),
        nas_stream("nas-1"),
        subscription_stream("sub-1"),
        radius_user_stream("alice"),
        use_cases.radius_username_key_stream("alice"),
    ]:
        assert len(await store.read_stream(stream)) == 1, stream
    [claim] = await store.read_stream(radius_user_stream("alice"))
    assert claim.decode() == RadiusUsernameAssigned(
        username="alice", customer_id="c-1", subscription_id="sub-1"
    )
    assert claim.metadata.actor == "clerk"


async def test_repeating_the_same_command_is_a_no_op(store, clock, catalogue) -> None:
    head = (await store.read_all())[-1].global_position
    clock.advance(datetime(2026, 1, 2, tzinfo=UTC) - clock.now())  # a retry, a day later
    await define_plan(store, clock, PLAN, "admin")
    await register_customer(store, clock, ALICE, "admin")
    await register_nas(store, clock, NAS, "admin")
    await register_nas(store, clock, NAS, "admin")
    await start_subscription(store, clock, subscription(), "clerk")
    await start_subscription(store, clock, subscription(), "clerk")
    after = await store.read_all(after=head)
    # Only the first NAS registration and the first subscription (with its username) are new.
    assert sorted(e.stream for e in after) == sorted(
        [
            nas_stream("nas-1"),
            subscription_stream("sub-1"),
            radius_user_stream("alice"),
            use_cases.radius_username_key_stream("alice"),
        ]
    )


@pytest.mark.parametrize(
    ("command", "changed"),
    [
        (define_plan, PLAN.model_copy(update={"monthly_fee": "39.99"})),
        (register_customer, ALICE.model_copy(update={"email": "alice@other.example"})),
        (register_nas, NAS.model_copy(update={"ip_address": "192.0.2.2"})),
    ],
)
async def test_the_same_id_with_other_details_already_exists(
    store, clock, catalogue, command, changed
) -> None:
    await register_nas(store, clock, NAS, "admin")
    with pytest.raises(AlreadyExists):
        await command(store, clock, changed, "admin")


async def test_the_same_subscription_id_with_another_plan_already_exists(
    store, clock, catalogue
) -> None:
    await define_plan(store, clock, PLAN.model_copy(update={"plan_id": "biz"}), "admin")
    await start_subscription(store, clock, subscription(), "clerk")
    with pytest.raises(AlreadyExists):
        await start_subscription(store, clock, subscription(plan_id="biz"), "clerk")
    [sub] = await store.read_stream(subscription_stream("sub-1"))
    assert sub.data["plan_id"] == "home-50"


async def test_a_refused_subscription_leaves_its_new_username_free(store, clock, catalogue) -> None:
    await start_subscription(store, clock, subscription(username="alice"), "clerk")
    with pytest.raises(AlreadyExists):
        await start_subscription(store, clock, subscription(username="alice2"), "clerk")
    # Nothing may have claimed "alice2" for sub-1: usage of that login would be billed to a
    # subscription that never had it. Another subscription can take it.
    assert await store.read_stream(radius_user_stream("alice2")) == []
    await start_subscription(store, clock, subscription("sub-2", "alice2"), "clerk")


async def test_the_same_username_for_two_subscriptions_is_taken(store, clock, catalogue) -> None:
    await start_subscription(store, clock, subscription("sub-1", "alice"), "clerk")
    with pytest.raises(UsernameTaken):
        await start_subscription(
            store, clock, subscription("sub-2", "alice", customer_id="c-2"), "clerk"
        )
    assert await store.stream_version(subscription_stream("sub-2")) is None


async def test_two_subscriptions_started_at_once_cannot_share_a_username(
    store, clock, catalogue
) -> None:
    results = await asyncio.gather(
        *(
            start_subscription(
                store, clock, subscription(f"sub-{i}", "shared", customer_id=cust), "clerk"
            )
            for i, cust in enumerate(["c-1", "c-2", "c-1", "c-2", "c-1"])
        ),
        return_exceptions=True,
    )
    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(started) == 1
    assert all(isinstance(r, UsernameTaken) for r in refused), refused
    [claim] = await store.read_stream(radius_user_stream("shared"))
    assert claim.data["subscription_id"] == started[0].subscription_id
    subs = [
        i
        for i in range(5)
        if await store.stream_version(subscription_stream(f"sub-{i}")) is not None
    ]
    assert subs == [int(started[0].subscription_id.removeprefix("sub-"))]


async def test_the_same_subscription_started_twice_at_once_is_recorded_once(
    store, clock, catalogue
) -> None:
    results = await asyncio.gather(
        *(start_subscription(store, clock, subscription(), "clerk") for _ in range(4))
    )
    assert len({r.subscription_id for r in results}) == 1
    assert len(await store.read_stream(subscription_stream("sub-1"))) == 1
    assert len(await store.read_stream(radius_user_stream("alice"))) == 1


async def test_a_subscription_for_an_unknown_customer_is_not_found(store, clock, catalogue) -> None:
    with pytest.raises(NotFound):
        await start_subscription(store, clock, subscription(customer_id="nobody"), "clerk")
    assert await store.read_stream(radius_user_stream("alice")) == []


async def test_a_subscription_to_an_unknown_plan_is_not_found(store, clock, catalogue) -> None:
    with pytest.raises(NotFound):
        await start_subscription(store, clock, subscription(plan_id="gold"), "clerk")
    assert await store.read_stream(radius_user_stream("alice")) == []
    assert await store.stream_version(subscription_stream("sub-1")) is None


def change(**kw: object) -> ChangeNas:
    fields: dict[str, object] = {
        "name": "edge",
        "ip_address": "192.0.2.1",
        "secret": "s3cret!",
        "vendor": "generic",
        "require_message_authenticator": False,
    }
    fields.update(kw)
    return ChangeNas(**fields)


async def test_a_nas_gets_new_details_and_a_new_secret_sealed(store, clock) -> None:
    await register_nas(store, clock, NAS, "admin")
    moved = change(ip_address="192.0.2.9", secret="n3w-secret", require_message_authenticator=True)
    event = await change_nas(store, clock, "nas-1", moved, "netops", keyring=KEYRING)
    history = await store.read_stream(nas_stream("nas-1"))
    assert [e.decode() for e in history][-1] == event
    assert len(history) == 2 and history[-1].metadata.actor == "netops"
    assert event.ip_address == "192.0.2.9" and event.require_message_authenticator
    assert KEYRING.open(event.secret_sealed, nas_secret_context("nas-1")) == b"n3w-secret"
    # The same change again (a retry) records nothing.
    await change_nas(store, clock, "nas-1", moved, "netops", keyring=KEYRING)
    assert len(await store.read_stream(nas_stream("nas-1"))) == 2


async def test_changing_a_nas_that_is_not_registered_is_not_found(store, clock) -> None:
    with pytest.raises(NotFound, match="NAS 'nas-7' is not registered"):
        await change_nas(store, clock, "nas-7", change(), "netops", keyring=KEYRING)
    assert await store.read_stream(nas_stream("nas-7")) == []


async def test_a_change_made_meanwhile_is_not_overwritten(store, clock) -> None:
    """Between this change's read of the NAS and its write, another clerk changed it."""
    await register_nas(store, clock, NAS, "admin")

    class ChangedMeanwhile:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def read_stream(self, stream: str, **kw: object) -> object:
            history = await store.read_stream(stream, **kw)
            await change_nas(store, clock, "nas-1", change(secret="theirs!"), "b", keyring=KEYRING)
            return history

    with pytest.raises(Conflict, match="changed meanwhile"):
        await change_nas(
            ChangedMeanwhile(), clock, "nas-1", change(secret="mine!!"), "a", keyring=KEYRING
        )
    history = await store.read_stream(nas_stream("nas-1"))
    assert len(history) == 2
    assert KEYRING.open(history[-1].decode().secret_sealed, "nas:nas-1") == b"theirs!"


async def test_a_nas_registered_before_sealing_is_sealed_by_a_change(store, clock) -> None:
    legacy = NasRegisteredV1(nas_id="nas-1", name="edge", ip_address="192.0.2.1", secret="old")
    recorded = new_event(legacy, id=deterministic_id("legacy"), occurred_at=clock.now())
    await store.append(nas_stream("nas-1"), [recorded], NO_STREAM)
    event = await change_nas(
        store, clock, "nas-1", change(secret="n3w-secret"), "a", keyring=KEYRING
    )
    assert isinstance(event, NasRegistered)
    [_, latest] = await store.read_stream(nas_stream("nas-1"))
    assert latest.decode() == event


async def test_a_second_nas_at_an_address_in_use_is_refused(store, clock) -> None:
    await register_nas(store, clock, NAS, "admin")
    head = await store.head_position()
    for address in ["192.0.2.1", "::ffff:192.0.2.1"]:
        other = NAS.model_copy(update={"nas_id": "nas-2", "ip_address": address})
        with pytest.raises(AddressInUse, match=r"192\.0\.2\.1 is the address of NAS 'nas-1'"):
            await register_nas(store, clock, RegisterNas(**other.model_dump()), "admin")
    assert await store.head_position() == head


async def test_a_nas_moves_only_to_a_free_address_and_frees_its_old_one(store, clock) -> None:
    await register_nas(store, clock, NAS, "admin")
    second = RegisterNas(nas_id="nas-2", name="core", ip_address="192.0.2.2", secret="s3cret!")
    await register_nas(store, clock, second, "admin")
    with pytest.raises(AddressInUse):
        await change_nas(
            store, clock, "nas-2", change(ip_address="192.0.2.1"), "a", keyring=KEYRING
        )
    await change_nas(store, clock, "nas-1", change(ip_address="192.0.2.9"), "a", keyring=KEYRING)
    moved = await change_nas(
        store, clock, "nas-2", change(ip_address="192.0.2.1"), "a", keyring=KEYRING
    )
    assert moved.ip_address == "192.0.2.1"


async def test_the_first_registration_again_after_a_change_is_refused(store, clock) -> None:
    """Not a no-op answering with details that are no longer the NAS's."""
    await register_nas(store, clock, NAS, "admin")
    await change_nas(store, clock, "nas-1", change(ip_address="192.0.2.9"), "a", keyring=KEYRING)
    with pytest.raises(AlreadyExists, match="change it with PUT"):
        await register_nas(store, clock, NAS, "admin")
    assert len(await store.read_stream(nas_stream("nas-1"))) == 2


async def test_a_removed_nas_frees_its_address_and_can_be_registered_again(store, clock) -> None:
    await register_nas(store, clock, NAS, "admin")
    with pytest.raises(NotFound):
        await remove_nas(store, clock, "nas-7", "", "netops")
    removed = await remove_nas(store, clock, "nas-1", "router replaced", "netops")
    assert removed == NasRemoved(nas_id="nas-1", reason="router replaced")
    await remove_nas(store, clock, "nas-1", "again", "netops")  # a retry: nothing new
    with pytest.raises(NotFound):
        await change_nas(store, clock, "nas-1", change(), "netops", keyring=KEYRING)
    assert await nases_in_service(store) == {}
    # Its address is free for the router that replaces it...
    new = RegisterNas(nas_id="nas-2", name="new", ip_address="192.0.2.1", secret="an0ther")
    await register_nas(store, clock, new, "admin")
    # ... and the old id can come back, elsewhere.
    back = RegisterNas(**NAS.model_dump() | {"ip_address": "192.0.2.3"})
    await register_nas(store, clock, back, "admin")
    history = [e.decode() for e in await store.read_stream(nas_stream("nas-1"))]
    assert [type(e) for e in history] == [NasRegistered, NasRemoved, NasRegistered]
    assert sorted(await nases_in_service(store)) == ["nas-1", "nas-2"]


async def test_a_nas_from_before_sealing_at_an_ipv4_mapped_address_is_the_same_nas(
    store, clock
) -> None:
    """Registered when addresses were kept as given: the same details again are a no-op."""
    legacy = NasRegisteredV1(
        nas_id="nas-1", name="edge", ip_address="::ffff:c000:201", secret="s3cret!"
    )
    recorded = new_event(legacy, id=deterministic_id("mapped"), occurred_at=clock.now())
    await store.append(nas_stream("nas-1"), [recorded], NO_STREAM)
    assert await register_nas(store, clock, NAS, "admin") == legacy
    assert len(await store.read_stream(nas_stream("nas-1"))) == 1


async def test_a_customer_in_a_region_without_a_tax_rule_is_refused(store, clock) -> None:
    with pytest.raises(NoTaxRule, match="'XX' has no tax rule"):
        await register_customer(store, clock, ALICE.model_copy(update={"tax_region": "XX"}), "a")
    assert await store.stream_version(customer_stream("c-1")) is None
    # The explicit "untaxed" rule (a rate of 0) is a rule: the customer may be registered.
    await set_tax_rule(store, clock, "XX", rate="0", name="untaxed")
    await register_customer(store, clock, ALICE.model_copy(update={"tax_region": "XX"}), "a")
    assert await store.stream_version(customer_stream("c-1")) == 0


@pytest.mark.parametrize("other", ["Alice", "ALICE", "alicE"])
async def test_radius_usernames_are_unique_regardless_of_case(
    store, clock, catalogue, other: str
) -> None:
    await start_subscription(store, clock, subscription(), "clerk")
    with pytest.raises(UsernameTaken, match="regardless of case"):
        await start_subscription(
            store,
            clock,
            subscription("sub-2", other, customer_id="c-2"),
            "clerk",
        )
    assert await store.stream_version(subscription_stream("sub-2")) is None
    assert await store.stream_version(radius_user_stream(other)) is None


async def test_a_legacy_claim_without_a_key_still_collides(store, clock, catalogue) -> None:
    """A claim from before case folding: only its exact-case stream exists."""
    claim = RadiusUsernameAssigned(username="Carol", customer_id="c-1", subscription_id="old-1")
    await store.append(
        radius_user_stream("Carol"),
        [new_event(claim, id=uuid.uuid4(), occurred_at=clock.now(), actor="admin")],
        NO_STREAM,
    )
    for spelling in ["Carol", "carol", "CAROL"]:
        with pytest.raises(UsernameTaken):
            await start_subscription(
                store,
                clock,
                subscription("sub-2", spelling, customer_id="c-2"),
                "clerk",
            )


async def test_a_refused_claim_reserves_nothing(store, clock, catalogue) -> None:
    claim = RadiusUsernameAssigned(username="dave", customer_id="c-1", subscription_id="old-1")
    await store.append(
        radius_user_stream("dave"),
        [new_event(claim, id=uuid.uuid4(), occurred_at=clock.now(), actor="admin")],
        NO_STREAM,
    )
    with pytest.raises(UsernameTaken):
        await start_subscription(store, clock, subscription("sub-2", "dave"), "clerk")
    assert await store.stream_version(use_cases.radius_username_key_stream("dave")) is None
