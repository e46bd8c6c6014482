"""AccountsService beside InvoiceService on the app's one gRPC server, over a real loopback
channel: a SQLite ledger written through the REST API, projections running, staff tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from accounts.application.staff import create_staff_user, issue_token
from accounts.entrypoints.grpc_server import METHOD_PERMISSIONS
from ispbill.v1 import accounts_pb2, accounts_pb2_grpc, invoices_pb2, invoices_pb2_grpc
from ispbill_app.bootstrap import Services, open_ledger, projections_running, start_grpc
from ispbill_app.settings import Settings
from ispbill_core.access import (
    ADMIN,
    AUDITOR,
    BILLING,
    CUSTOMERS_READ,
    PROFILE_READ,
    ROLES,
    SUBSCRIPTIONS_READ,
    SUPPORT,
    bearer_metadata,
)
from ispbill_core.clock import FixedClock
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from tests.fixtures.staff import TEST_PASSWORD, staff_token

pytestmark = pytest.mark.integration

#: "today" in the ISP's time zone (Asia/Dhaka): 2026-03-10
NOW = datetime(2026, 3, 10, 6, tzinfo=UTC)
NOW_CLOCK = FixedClock(NOW)


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@dataclass
class Running:
    services: Services
    port: int
    #: the admin's token, also what the seed was written with
    token: str

    def channel(self, token: str | None = None) -> grpc.aio.Channel:
        interceptors = [] if token is None else [SendsToken(token)]
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", interceptors=interceptors)


class SendsToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(
            metadata=[*(details.metadata or ()), *bearer_metadata(self.token)]
        )
        return await continuation(details, request)


async def seed(client: httpx.AsyncClient) -> None:
    """Two plans, five customers, three subscriptions; s-1 goes through its whole lifecycle."""

    async def ok(path: str, body: Any, status: int = 201) -> Any:
        response = await client.post(f"/api/v1{path}", json=body)
        assert response.status_code == status, response.text
        return response.json()

    for region in ("BD", "IN"):
        await ok("/tax-rates", {"region": region, "tax_name": "VAT", "rate": "0.15"})
    for plan_id, fee in (("home", "30.00"), ("fast", "50.00")):
        plan = {"plan_id": plan_id, "name": plan_id, "currency": "USD", "monthly_fee": fee}
        await ok("/plans", {**plan, "included_gb": 50, "overage_per_gb": "1.00"})
    customers = [
        ("c-1", "Alice Rahman", "BD", "home", ["vip"]),
        ("c-2", "Bob Karim", "BD", "business", []),
        ("c-3", "Carol Ahmed", "IN", "corporate", ["vip", "fibre"]),
        ("c-4", "Dave Das", "IN", "home", []),
        ("c-5", "Eve Alam", "BD", "home", ["fibre"]),
    ]
    for customer_id, name, region, account_type, tags in customers:
        await ok(
            "/customers",
            {
                "customer_id": customer_id,
                "name": name,
                "email": f"{customer_id}@example.com",
                "tax_region": region,
                "phone": "+8801712345678",
                "account_type": account_type,
                "tags": tags,
            },
        )
    for subscription_id, customer_id, started_on in (
        ("s-1", "c-1", "2026-01-01"),
        ("s-2", "c-1", "2026-04-01"),
        ("s-3", "c-2", "2026-02-01"),
    ):
        await ok(
            "/subscriptions",
            {
                "subscription_id": subscription_id,
                "customer_id": customer_id,
                "plan_id": "home",
                "radius_username": f"user-{subscription_id}",
                "started_on": started_on,
            },
        )
    await ok("/subscriptions/s-1/plan-change", {"plan_id": "fast", "effective": "next_cycle"}, 200)
    await ok("/subscriptions/s-1/suspend", {"reason": "abuse"}, 200)
    await ok("/subscriptions/s-1/resume", {"reason": "sorted", "effective_on": "2026-03-12"}, 200)
    await ok(
        "/subscriptions/s-1/hold",
        {"from": "2026-03-20", "until": "2026-03-25", "reason": "travel"},
        200,
    )
    await ok("/subscriptions/s-1/username", {"radius_username": "alice2"}, 200)
    await ok(
        "/subscriptions/s-1/terminate", {"effective_on": "2026-04-30", "reason": "moving"}, 200
    )
    response = await client.patch("/api/v1/customers/c-1", json={"service_address": "House 1"})
    assert response.status_code == 200, response.text


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    (tmp_path / "data").mkdir()
    settings = Settings(
        data_dir=tmp_path / "data",
        ledger="sqlite",
        host="127.0.0.1",
        grpc_port=0,
        timezone=ZoneInfo("Asia/Dhaka"),
    )
    services = Services(settings, None, clock=NOW_CLOCK)
    services.require_keyring()
    services.store = await open_ledger(settings)
    async with projections_running(services):
        token = await staff_token(services.store, clock=NOW_CLOCK)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=services.http_app()),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            await seed(client)
        server, port = await start_grpc(services)
        try:
            yield Running(services, port, token)
        finally:
            await server.stop(grace=None)
    await services.store.close()


@pytest.fixture
async def stub(running: Running) -> AsyncIterator[accounts_pb2_grpc.AccountsServiceAsyncStub]:
    async with running.channel(running.token) as channel:
        # The async stub type exists only in the .pyi; the overloads need grpc's own types.
        yield cast(
            "accounts_pb2_grpc.AccountsServiceAsyncStub",
            accounts_pb2_grpc.AccountsServiceStub(channel),
        )


async def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


# --- customers ---------------------------------------------------------------------------------


async def test_get_customer_returns_its_current_details_and_version(stub: Any) -> None:
    response = await stub.GetCustomer(accounts_pb2.GetCustomerRequest(customer_id="c-1"))
    customer = response.customer
    assert customer.customer_id == "c-1"
    assert customer.name == "Alice Rahman"
    assert customer.email == "c-1@example.com"
    assert customer.tax_region == "BD"
    assert customer.phone == "+8801712345678"
    assert customer.service_address == "House 1"  # the change, read from the stream
    assert customer.account_type == accounts_pb2.ACCOUNT_TYPE_HOME
    assert list(customer.tags) == ["vip"]
    assert customer.version == 1


async def test_get_unknown_customer_is_not_found(stub: Any) -> None:
    call = stub.GetCustomer(accounts_pb2.GetCustomerRequest(customer_id="nobody"))
    assert await refused(call) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 65, "-leading", "a\nb", "c-1\n"])
async def test_get_customer_with_a_malformed_id_is_invalid_argument(stub: Any, bad_id: str) -> None:
    call = stub.GetCustomer(accounts_pb2.GetCustomerRequest(customer_id=bad_id))
    assert await refused(call) == grpc.StatusCode.INVALID_ARGUMENT


async def list_customer_ids(stub: Any, **filters: Any) -> list[str]:
    response = await stub.ListCustomers(accounts_pb2.ListCustomersRequest(**filters))
    assert response.next_page_token == ""
    return [c.customer_id for c in response.customers]


async def test_list_customers_filters(stub: Any) -> None:
    assert await list_customer_ids(stub) == ["c-1", "c-2", "c-3", "c-4", "c-5"]
    assert await list_customer_ids(stub, query="ALAM") == ["c-5"]  # case-insensitive
    assert await list_customer_ids(stub, query="c-2@example") == ["c-2"]
    assert await list_customer_ids(stub, tax_region="IN") == ["c-3", "c-4"]
    assert await list_customer_ids(stub, account_type=accounts_pb2.ACCOUNT_TYPE_HOME) == [
        "c-1",
        "c-4",
        "c-5",
    ]
    assert await list_customer_ids(stub, tag="vip") == ["c-1", "c-3"]
    assert await list_customer_ids(stub, tag="fibre", tax_region="BD") == ["c-5"]
    assert await list_customer_ids(stub, query="nobody at all") == []
    # a listed customer carries the same details as GetCustomer
    listed = await stub.ListCustomers(accounts_pb2.ListCustomersRequest(query="alice"))
    got = await stub.GetCustomer(accounts_pb2.GetCustomerRequest(customer_id="c-1"))
    assert list(listed.customers) == [got.customer]


async def test_list_customers_pages_through_every_customer_once(stub: Any) -> None:
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await stub.ListCustomers(
            accounts_pb2.ListCustomersRequest(page_size=2, page_token=token)
        )
        assert len(response.customers) <= 2
        seen += [c.customer_id for c in response.customers]
        pages += 1
        token = response.next_page_token
        if not token:
            break
    assert seen == ["c-1", "c-2", "c-3", "c-4", "c-5"]
    assert pages == 3
    # filtered pages
    first = await stub.ListCustomers(accounts_pb2.ListCustomersRequest(tag="vip", page_size=1))
    assert [c.customer_id for c in first.customers] == ["c-1"]
    second = await stub.ListCustomers(
        accounts_pb2.ListCustomersRequest(tag="vip", page_size=1, page_token=first.next_page_token)
    )
    assert [c.customer_id for c in second.customers] == ["c-3"]
    assert second.next_page_token == ""


@pytest.mark.parametrize(
    "request_",
    [
        accounts_pb2.ListCustomersRequest(page_size=-1),
        accounts_pb2.ListCustomersRequest(page_token="not a token!"),
        accounts_pb2.ListCustomersRequest(page_token="e30"),  # "{}"
        accounts_pb2.ListCustomersRequest(query=""),
        accounts_pb2.ListCustomersRequest(query="x" * 101),
        accounts_pb2.ListCustomersRequest(query="line\nbreak"),
        accounts_pb2.ListCustomersRequest(tax_region="no such region!"),
        accounts_pb2.ListCustomersRequest(tag="NOT A TAG"),
        accounts_pb2.ListCustomersRequest(tag="vip\n"),
        accounts_pb2.ListCustomersRequest(account_type=cast(Any, 42)),
    ],
)
async def test_list_customers_refuses_bad_filters_and_paging(stub: Any, request_: Any) -> None:
    assert await refused(stub.ListCustomers(request_)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_customer_page_token_is_bound_to_its_filters(stub: Any) -> None:
    first = await stub.ListCustomers(accounts_pb2.ListCustomersRequest(page_size=1))
    call = stub.ListCustomers(
        accounts_pb2.ListCustomersRequest(tag="vip", page_size=1, page_token=first.next_page_token)
    )
    assert await refused(call) == grpc.StatusCode.INVALID_ARGUMENT


# --- subscriptions -----------------------------------------------------------------------------


async def test_get_subscription_has_status_plan_today_and_history(stub: Any) -> None:
    response = await stub.GetSubscription(
        accounts_pb2.GetSubscriptionRequest(subscription_id="s-1")
    )
    sub = response.subscription
    assert (sub.subscription_id, sub.customer_id) == ("s-1", "c-1")
    # today is 2026-03-10 in Dhaka: suspended from today, the plan change waits for April
    assert sub.status == accounts_pb2.SUBSCRIPTION_STATUS_SUSPENDED
    assert sub.plan_id == "home"
    assert sub.HasField("scheduled_plan_id") and sub.scheduled_plan_id == "fast"
    assert sub.radius_username == "alice2"
    assert sub.started_on == "2026-01-01"
    assert sub.terminated_on == "2026-04-30"
    assert sub.version == 6
    kind = accounts_pb2.SubscriptionChangeKind
    assert [(kind.Name(h.kind), h.effective_on) for h in sub.history] == [
        ("SUBSCRIPTION_CHANGE_KIND_STARTED", "2026-01-01"),
        ("SUBSCRIPTION_CHANGE_KIND_PLAN_CHANGED", "2026-04-01"),
        ("SUBSCRIPTION_CHANGE_KIND_SUSPENDED", "2026-03-10"),
        ("SUBSCRIPTION_CHANGE_KIND_RESUMED", "2026-03-12"),
        ("SUBSCRIPTION_CHANGE_KIND_HOLD_PLACED", "2026-03-20"),
        ("SUBSCRIPTION_CHANGE_KIND_RADIUS_USERNAME_CHANGED", "2026-03-10"),
        ("SUBSCRIPTION_CHANGE_KIND_TERMINATED", "2026-04-30"),
    ]
    started, changed, suspended, _, hold, renamed, terminated = sub.history
    assert [h.version for h in sub.history] == list(range(7))
    assert (started.plan_id, started.radius_username) == ("home", "user-s-1")
    assert (changed.from_plan_id, changed.plan_id) == ("home", "fast")
    assert (suspended.type, suspended.reason) == ("SubscriptionSuspended", "abuse")
    assert (hold.hold_until, hold.reason) == ("2026-03-25", "travel")
    assert (renamed.old_radius_username, renamed.radius_username) == ("user-s-1", "alice2")
    assert terminated.reason == "moving"


async def test_get_subscription_statuses_and_not_found(stub: Any) -> None:
    async def get(subscription_id: str) -> Any:
        request = accounts_pb2.GetSubscriptionRequest(subscription_id=subscription_id)
        return (await stub.GetSubscription(request)).subscription

    pending, active = await get("s-2"), await get("s-3")
    assert pending.status == accounts_pb2.SUBSCRIPTION_STATUS_PENDING
    assert active.status == accounts_pb2.SUBSCRIPTION_STATUS_ACTIVE
    assert not active.HasField("terminated_on") and not active.HasField("scheduled_plan_id")
    assert len(active.history) == 1
    missing = stub.GetSubscription(accounts_pb2.GetSubscriptionRequest(subscription_id="s-9"))
    assert await refused(missing) == grpc.StatusCode.NOT_FOUND
    malformed = stub.GetSubscription(accounts_pb2.GetSubscriptionRequest(subscription_id=""))
    assert await refused(malformed) == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_subscriptions_by_customer_and_in_pages(stub: Any) -> None:
    response = await stub.ListSubscriptions(accounts_pb2.ListSubscriptionsRequest())
    assert [s.subscription_id for s in response.subscriptions] == ["s-1", "s-2", "s-3"]
    assert response.next_page_token == ""
    first = response.subscriptions[0]
    # the same as of today as GetSubscription, without the history
    got = await stub.GetSubscription(accounts_pb2.GetSubscriptionRequest(subscription_id="s-1"))
    expected = accounts_pb2.Subscription()
    expected.CopyFrom(got.subscription)
    expected.ClearField("history")
    expected.ClearField("scheduled_plan_id")
    assert first == expected

    mine = await stub.ListSubscriptions(accounts_pb2.ListSubscriptionsRequest(customer_id="c-1"))
    assert [s.subscription_id for s in mine.subscriptions] == ["s-1", "s-2"]
    none = await stub.ListSubscriptions(accounts_pb2.ListSubscriptionsRequest(customer_id="c-5"))
    assert list(none.subscriptions) == [] and none.next_page_token == ""

    page1 = await stub.ListSubscriptions(
        accounts_pb2.ListSubscriptionsRequest(customer_id="c-1", page_size=1)
    )
    assert [s.subscription_id for s in page1.subscriptions] == ["s-1"]
    page2 = await stub.ListSubscriptions(
        accounts_pb2.ListSubscriptionsRequest(
            customer_id="c-1", page_size=1, page_token=page1.next_page_token
        )
    )
    assert [s.subscription_id for s in page2.subscriptions] == ["s-2"]
    assert page2.next_page_token == ""
    # the token of one customer's list is no good for all of them
    other = stub.ListSubscriptions(
        accounts_pb2.ListSubscriptionsRequest(page_size=1, page_token=page1.next_page_token)
    )
    assert await refused(other) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "request_",
    [
        accounts_pb2.ListSubscriptionsRequest(page_size=-5),
        accounts_pb2.ListSubscriptionsRequest(page_token="%%%"),
        # {"after":"x","filters":{"customer_id":null}}: the right filters, a cursor not a number
        accounts_pb2.ListSubscriptionsRequest(
            page_token="eyJhZnRlciI6IngiLCJmaWx0ZXJzIjp7ImN1c3RvbWVyX2lkIjpudWxsfX0"
        ),
        # the same with a cursor past what the database holds
        accounts_pb2.ListSubscriptionsRequest(
            page_token="eyJhZnRlciI6MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMCwiZmlsdGVycyI6eyJjdXN0b21lcl9pZCI6bnVsbH19"
        ),
        accounts_pb2.ListSubscriptionsRequest(customer_id=""),
        accounts_pb2.ListSubscriptionsRequest(customer_id="not an id"),
    ],
)
async def test_list_subscriptions_refuses_bad_input(stub: Any, request_: Any) -> None:
    assert await refused(stub.ListSubscriptions(request_)) == grpc.StatusCode.INVALID_ARGUMENT


# --- access ------------------------------------------------------------------------------------


def every_call(stub: Any) -> list[Any]:
    calls = [
        stub.GetCustomer(accounts_pb2.GetCustomerRequest(customer_id="c-1")),
        stub.ListCustomers(accounts_pb2.ListCustomersRequest()),
        stub.GetSubscription(accounts_pb2.GetSubscriptionRequest(subscription_id="s-1")),
        stub.ListSubscriptions(accounts_pb2.ListSubscriptionsRequest()),
    ]
    assert len(calls) == len(METHOD_PERMISSIONS)
    return calls


async def scoped_token(running: Running, username: str, scopes: list[str]) -> str:
    """A token of a new support user, scoped down to `scopes`."""
    store, clock = running.services.store, running.services.clock
    user = await create_staff_user(store, clock, username, SUPPORT, TEST_PASSWORD, "system:tests")
    issued = await issue_token(
        store,
        clock,
        user,
        name="scoped",
        expires_in_days=30,
        scopes=scopes,
        actor="system:tests",
    )
    return issued.token


@pytest.mark.parametrize("role", [ADMIN, BILLING, SUPPORT, AUDITOR])
async def test_every_staff_role_reads_accounts(running: Running, role: str) -> None:
    assert {CUSTOMERS_READ, SUBSCRIPTIONS_READ} <= ROLES[role]
    token = await staff_token(running.services.store, f"u-{role}", role, clock=NOW_CLOCK)
    async with running.channel(token) as channel:
        for call in every_call(accounts_pb2_grpc.AccountsServiceStub(channel)):
            await call


@pytest.mark.parametrize("token", [None, "not-a-token", "isp_0000_bogus"])
async def test_no_or_a_bad_token_is_unauthenticated(running: Running, token: str | None) -> None:
    async with running.channel(token) as channel:
        for call in every_call(accounts_pb2_grpc.AccountsServiceStub(channel)):
            assert await refused(call) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_without_the_permission_is_denied(running: Running) -> None:
    # No staff role lacks customers:read, so the edge is a token scoped down below it.
    profile_only = await scoped_token(running, "scoped-profile", [PROFILE_READ])
    async with running.channel(profile_only) as channel:
        for call in every_call(accounts_pb2_grpc.AccountsServiceStub(channel)):
            assert await refused(call) == grpc.StatusCode.PERMISSION_DENIED

    customers_only = await scoped_token(running, "scoped-customers", [CUSTOMERS_READ])
    async with running.channel(customers_only) as channel:
        get_customer, list_customers, get_sub, list_subs = every_call(
            accounts_pb2_grpc.AccountsServiceStub(channel)
        )
        await get_customer
        await list_customers
        assert await refused(get_sub) == grpc.StatusCode.PERMISSION_DENIED
        assert await refused(list_subs) == grpc.StatusCode.PERMISSION_DENIED


# --- one server: both services, health, reflection -------------------------------------------


async def test_invoice_service_is_served_on_the_same_port(running: Running) -> None:
    async with running.channel(running.token) as channel:
        invoices = invoices_pb2_grpc.InvoiceServiceStub(channel)
        listed = await invoices.ListInvoices(invoices_pb2.ListInvoicesRequest())
        assert list(listed.invoices) == []  # no bill run yet, but answered


@pytest.mark.parametrize("service", ["", "ispbill.v1.AccountsService", "ispbill.v1.InvoiceService"])
async def test_health_is_serving_for_both_services(running: Running, service: str) -> None:
    async with running.channel() as channel:  # health checks are open
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_both_services_without_a_token(running: Running) -> None:
    async with running.channel() as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        responses = [response async for response in call]
    (listed,) = responses
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "ispbill.v1.AccountsService",
        "ispbill.v1.InvoiceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_reflection_describes_the_methods_as_grpcurl_does(running: Running) -> None:
    def describe() -> tuple[list[str], list[str]]:
        # grpc_reflection's own client is synchronous: run it off the server's event loop.
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            found = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            accounts = found.FindServiceByName("ispbill.v1.AccountsService")
            request = found.FindMessageTypeByName("ispbill.v1.ListCustomersRequest")
            return [m.name for m in accounts.methods], [f.name for f in request.fields]

    methods, fields = await asyncio.to_thread(describe)
    assert methods == ["GetCustomer", "ListCustomers", "GetSubscription", "ListSubscriptions"]
    assert fields == ["query", "tax_region", "account_type", "tag", "page_size", "page_token"]
