"""Usage and sessions through the app as `ispbill run` builds it: the REST routes and gRPC
UsageService answer the same questions from rating's read models, refuse bad input as problems
(REST) or INVALID_ARGUMENT (gRPC), and page with cursors. SQLite ledger, projections running,
accounting rated as the rating subscriber rates it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import grpc
import httpx
import pytest

from ispbill.v1 import usage_pb2, usage_pb2_grpc
from ispbill_app.bootstrap import Services, open_ledger, projections_running, start_grpc
from ispbill_app.settings import Settings
from ispbill_core.access import ADMIN, AUDITOR, BILLING, ROLES, SUPPORT, USAGE_READ, bearer_metadata
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import AccountingRecordReceived, AcctStatus
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from rating.application.rate_accounting_record import RatingSettings
from rating.application.rate_batch import rate_accounting_batch
from rating.entrypoints.grpc_server import METHOD_PERMISSIONS
from tests.fixtures.staff import staff_token

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Dhaka")
#: 23:00 on 10 March in Dhaka
START = datetime(2026, 3, 10, 17, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 11, 6, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def accounting(
    status: AcctStatus,
    seconds: int,
    input_octets: int,
    output_octets: int,
    *,
    session: str,
    username: str,
    nas_id: str = "bng-1",
    start: datetime = START,
    framed_ip: str | None = None,
    cause: str | None = None,
) -> AccountingRecordReceived:
    at = start + timedelta(seconds=seconds)
    return AccountingRecordReceived(
        record_id=deterministic_id("usage-reads", nas_id, session, status, seconds),
        nas_id=nas_id,
        nas_ip="192.0.2.1",
        status=status,
        acct_session_id=session,
        username=username,
        event_time=at,
        received_at=at,
        session_time=seconds,
        input_octets=input_octets,
        output_octets=output_octets,
        framed_ip_address=framed_ip,
        terminate_cause=cause,
    )


S, INTERIM, STOP = AcctStatus.START, AcctStatus.INTERIM_UPDATE, AcctStatus.STOP
TRAFFIC = [
    # alice: 23:00 to 01:00 in Dhaka, 12 MB, stopped by her router
    accounting(S, 0, 0, 0, session="a", username="alice", framed_ip="100.64.0.1"),
    accounting(INTERIM, 3600, 1_000_000, 4_000_000, session="a", username="alice"),
    accounting(STOP, 7200, 3_000_000, 9_000_000, session="a", username="alice",
               framed_ip="100.64.0.1", cause="User-Request"),
    # alice again from 01:30, still online
    accounting(S, 0, 0, 0, session="a2", username="alice", start=START + timedelta(hours=2.5),
               framed_ip="100.64.0.9"),
    accounting(INTERIM, 600, 100, 200, session="a2", username="alice",
               start=START + timedelta(hours=2.5), framed_ip="100.64.0.9"),
    # bob: on the other NAS, online
    accounting(S, 0, 0, 0, session="b", username="bob", nas_id="bng-2", framed_ip="100.64.1.1"),
    accounting(INTERIM, 900, 500_000, 700_000, session="b", username="bob", nas_id="bng-2"),
    # carol, another customer
    accounting(INTERIM, 900, 4_000_000, 0, session="c", username="carol", nas_id="bng-2"),
]  # fmt: skip


async def seed(client: httpx.AsyncClient, services: Services) -> None:
    async def ok(path: str, body: Any) -> None:
        response = await client.post(f"/api/v1{path}", json=body)
        assert response.status_code == 201, response.text

    await ok("/tax-rates", {"region": "BD", "tax_name": "VAT", "rate": "0.15"})
    plan = {"plan_id": "home", "name": "Home", "currency": "USD", "monthly_fee": "30.00"}
    await ok("/plans", {**plan, "included_gb": 50, "overage_per_gb": "1.00"})
    for customer_id in ("c-1", "c-2"):
        await ok(
            "/customers",
            {
                "customer_id": customer_id,
                "name": f"Customer {customer_id}",
                "email": f"{customer_id}@example.com",
                "tax_region": "BD",
            },
        )
    for subscription_id, customer_id, username in (
        ("s-1", "c-1", "alice"),
        ("s-2", "c-1", "bob"),
        ("s-3", "c-2", "carol"),
    ):
        await ok(
            "/subscriptions",
            {
                "subscription_id": subscription_id,
                "customer_id": customer_id,
                "plan_id": "home",
                "radius_username": username,
                "started_on": "2026-01-01",
            },
        )
    messages = [new_event(r, id=r.record_id, occurred_at=r.received_at) for r in TRAFFIC]
    await rate_accounting_batch(services.store, RatingSettings(timezone=TZ), messages)


@dataclass
class Running:
    services: Services
    client: httpx.AsyncClient
    port: int
    token: str

    def channel(self, token: str | None = None) -> grpc.aio.Channel:
        interceptors = [] if token is None else [SendsToken(token)]
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", interceptors=interceptors)

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(f"/api/v1{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()


class SendsToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        details = details._replace(
            metadata=[*(details.metadata or ()), *bearer_metadata(self.token)]
        )
        return await continuation(details, request)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    (tmp_path / "data").mkdir()
    settings = Settings(
        data_dir=tmp_path / "data", ledger="sqlite", host="127.0.0.1", grpc_port=0, timezone=TZ
    )
    services = Services(settings, None, clock=FixedClock(NOW))
    services.require_keyring()
    services.store = await open_ledger(settings)
    async with projections_running(services):
        token = await staff_token(services.store, clock=services.clock)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=services.http_app()),
            base_url="http://api",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            await seed(client, services)
            server, port = await start_grpc(services)
            try:
                yield Running(services, client, port, token)
            finally:
                await server.stop(grace=None)
    await services.store.close()


@pytest.fixture
async def stub(running: Running) -> AsyncIterator[Any]:
    async with running.channel(running.token) as channel:
        yield cast("usage_pb2_grpc.UsageServiceAsyncStub", usage_pb2_grpc.UsageServiceStub(channel))


async def refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


# --- REST --------------------------------------------------------------------------------------


async def test_daily_usage_per_local_day(running: Running) -> None:
    days = await running.get(
        "/usage/daily", subscription_id="s-1", **{"from": "2026-03-01"}, to="2026-03-31"
    )
    assert [(d["day"], d["total_octets"]) for d in days] == [
        ("2026-03-10", 5_000_000),  # 23:00-24:00 in Dhaka
        ("2026-03-11", 7_000_300),  # 00:00-01:00, and the second session
    ]
    assert days[0]["bands"] == [
        {
            "band": "",
            "input_octets": 1_000_000,
            "output_octets": 4_000_000,
            "total_octets": 5_000_000,
            "counted_octets": 5_000_000,
        }
    ]
    assert days[0]["period"] == "2026-03" and days[0]["suspended"] is False


async def test_a_customers_period_by_subscription_and_bucket(running: Running) -> None:
    period = await running.get("/usage/c-1/2026-03/buckets")
    assert (period["customer_id"], period["period"]) == ("c-1", "2026-03")
    assert [(s["subscription_id"], s["total_octets"]) for s in period["subscriptions"]] == [
        ("s-1", 12_000_300),
        ("s-2", 1_200_000),
    ]
    assert period["total_octets"] == period["counted_octets"] == 13_200_300
    [bucket] = period["subscriptions"][0]["buckets"]
    assert (bucket["band"], bucket["plan_id"], bucket["plan_version"], bucket["suspended"]) == (
        "",
        "home",
        1,
        False,
    )
    # the same total as the sum of the customer's usage stream
    assert (await running.get("/usage/c-1/2026-03"))["total_octets"] == 13_200_300


async def test_top_users(running: Running) -> None:
    top = await running.get("/usage/top", period="2026-03", limit=2)
    assert [(t["rank"], t["subscription_id"], t["total_octets"]) for t in top] == [
        (1, "s-1", 12_000_300),
        (2, "s-3", 4_000_000),
    ]
    assert len(await running.get("/usage/top", period="2026-03")) == 3


async def test_live_sessions_filtered_and_paged(running: Running) -> None:
    live = await running.get("/sessions/live")
    assert [(s["username"], s["nas_id"], s["framed_ip_address"]) for s in live] == [
        ("carol", "bng-2", None),
        ("bob", "bng-2", "100.64.1.1"),
        ("alice", "bng-1", "100.64.0.9"),
    ]
    alice = live[2]
    assert alice["started_at"] == "2026-03-10T19:30:00Z"
    assert alice["last_update"] == "2026-03-10T19:40:00Z"
    assert (alice["input_octets"], alice["output_octets"], alice["customer_id"]) == (
        100,
        200,
        "c-1",
    )
    assert [s["username"] for s in await running.get("/sessions/live", nas_id="bng-1")] == ["alice"]
    assert [s["username"] for s in await running.get("/sessions/live", username="bob")] == ["bob"]
    page = await running.get("/sessions/live", limit=2)
    rest = await running.get("/sessions/live", limit=2, before=page[-1]["cursor"])
    assert [s["username"] for s in page + rest] == ["carol", "bob", "alice"]


async def test_a_customers_session_log(running: Running) -> None:
    log = await running.get("/customers/c-1/sessions")
    assert [(s["username"], s["acct_session_id"], s["open"]) for s in log] == [
        ("alice", "a2", True),
        ("bob", "b", True),
        ("alice", "a", False),
    ]
    stopped = log[2]
    assert stopped["started_at"] == "2026-03-10T17:00:00Z"
    assert stopped["stopped_at"] == "2026-03-10T19:00:00Z"
    assert stopped["duration_seconds"] == 7200
    assert (stopped["total_octets"], stopped["nas_id"], stopped["framed_ip_address"]) == (
        12_000_000,
        "bng-1",
        "100.64.0.1",
    )
    assert (stopped["closed_by"], stopped["terminate_cause"]) == ("stop", "User-Request")
    # local days in Dhaka: a2 started at 01:30 on the 11th
    eleventh = await running.get("/customers/c-1/sessions", **{"from": "2026-03-11"})
    assert [s["acct_session_id"] for s in eleventh] == ["a2"]
    tenth = await running.get("/customers/c-1/sessions", **{"from": "2026-03-10"}, to="2026-03-10")
    assert [s["acct_session_id"] for s in tenth] == ["b", "a"]
    mine = await running.get("/customers/c-1/sessions", subscription_id="s-2")
    assert [s["acct_session_id"] for s in mine] == ["b"]
    page = await running.get("/customers/c-1/sessions", limit=2)
    rest = await running.get("/customers/c-1/sessions", limit=2, before=page[-1]["cursor"])
    assert [s["acct_session_id"] for s in page + rest] == ["a2", "b", "a"]
    assert await running.get("/customers/nobody/sessions") == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/usage/daily", {"subscription_id": "s-1", "from": "2026-03-02", "to": "2026-03-01"}),
        ("/usage/daily", {"subscription_id": "s-1", "from": "2025-01-01", "to": "2026-03-01"}),
        ("/usage/daily", {"subscription_id": "s-1", "from": "2026-03-01"}),
        ("/usage/daily", {"subscription_id": "s 1", "from": "2026-03-01", "to": "2026-03-02"}),
        ("/usage/daily", {"subscription_id": "s-1", "from": "1999-12-31", "to": "2000-01-02"}),
        ("/usage/daily", {"subscription_id": "s-1", "from": "2026-02-30", "to": "2026-03-02"}),
        ("/usage/top", {"period": "2026-13"}),
        ("/usage/top", {"period": "2026-03", "limit": 101}),
        ("/usage/top", {"period": "2026-03", "limit": 0}),
        ("/usage/top", {}),
        ("/usage/c-1/1999-01/buckets", {}),
        ("/sessions/live", {"limit": 501}),
        ("/sessions/live", {"before": -1}),
        ("/sessions/live", {"nas_id": "bng 1"}),
        ("/sessions/live", {"username": "has space"}),
        ("/sessions/live", {"username": "x" * 254}),
        ("/customers/c-1/sessions", {"from": "2026-03-11", "to": "2026-03-10"}),
        ("/customers/c-1/sessions", {"before": "not-a-cursor"}),
        ("/customers/c-1/sessions", {"before": "1" * 19 + ".1"}),
        ("/customers/c-1/sessions", {"subscription_id": "-bad"}),
    ],
)
async def test_bad_input_is_a_problem_that_does_not_echo_it(
    running: Running, path: str, params: dict[str, Any]
) -> None:
    response = await running.client.get(f"/api/v1{path}", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["title"] == "RequestValidationError"
    assert "x" * 100 not in response.text


# --- gRPC --------------------------------------------------------------------------------------


async def test_grpc_answers_what_rest_answers(running: Running, stub: Any) -> None:
    days = await stub.GetDailyUsage(
        usage_pb2.GetDailyUsageRequest(
            subscription_id="s-1", first_day="2026-03-01", last_day="2026-03-31"
        )
    )
    rest_days = await running.get(
        "/usage/daily", subscription_id="s-1", **{"from": "2026-03-01"}, to="2026-03-31"
    )
    assert [(d.day, d.octets.total_octets, d.octets.counted_octets) for d in days.days] == [
        (d["day"], d["total_octets"], d["counted_octets"]) for d in rest_days
    ]
    assert [b.band for b in days.days[0].bands] == [""]

    period = await stub.GetPeriodUsage(
        usage_pb2.GetPeriodUsageRequest(customer_id="c-1", period="2026-03")
    )
    assert period.octets.total_octets == 13_200_300
    assert [(s.subscription_id, s.octets.total_octets) for s in period.subscriptions] == [
        ("s-1", 12_000_300),
        ("s-2", 1_200_000),
    ]
    assert period.subscriptions[0].buckets[0].plan_id == "home"

    top = await stub.ListTopUsers(usage_pb2.ListTopUsersRequest(period="2026-03"))
    assert [(u.rank, u.subscription_id, u.customer_id) for u in top.users] == [
        (1, "s-1", "c-1"),
        (2, "s-3", "c-2"),
        (3, "s-2", "c-1"),
    ]
    one = await stub.ListTopUsers(usage_pb2.ListTopUsersRequest(period="2026-03", limit=1))
    assert [u.subscription_id for u in one.users] == ["s-1"]


async def test_grpc_live_sessions_page_through_each_once(stub: Any) -> None:
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListLiveSessions(
            usage_pb2.ListLiveSessionsRequest(page_size=2, page_token=token)
        )
        seen += [s.username for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["carol", "bob", "alice"]
    bng2 = await stub.ListLiveSessions(usage_pb2.ListLiveSessionsRequest(nas_id="bng-2"))
    assert [s.username for s in bng2.sessions] == ["carol", "bob"] and not bng2.next_page_token
    bob = bng2.sessions[1]
    assert (bob.framed_ip_address, bob.customer_id, bob.total_octets) == (
        "100.64.1.1",
        "c-1",
        1_200_000,
    )
    assert bob.started_at.ToDatetime(tzinfo=UTC) == START
    # a token is bound to its filters
    first = await stub.ListLiveSessions(usage_pb2.ListLiveSessionsRequest(page_size=1))
    other = stub.ListLiveSessions(
        usage_pb2.ListLiveSessionsRequest(nas_id="bng-2", page_token=first.next_page_token)
    )
    assert await refused(other) == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_session_log(stub: Any) -> None:
    log = await stub.ListSessions(usage_pb2.ListSessionsRequest(customer_id="c-1"))
    assert [(s.acct_session_id, s.open) for s in log.sessions] == [
        ("a2", True),
        ("b", True),
        ("a", False),
    ]
    stopped = log.sessions[2]
    assert stopped.HasField("stopped_at") and not log.sessions[0].HasField("stopped_at")
    assert stopped.stopped_at.ToDatetime(tzinfo=UTC) == START + timedelta(hours=2)
    assert (stopped.duration_seconds, stopped.closed_by, stopped.terminate_cause) == (
        7200,
        "stop",
        "User-Request",
    )
    page1 = await stub.ListSessions(usage_pb2.ListSessionsRequest(customer_id="c-1", page_size=2))
    page2 = await stub.ListSessions(
        usage_pb2.ListSessionsRequest(
            customer_id="c-1", page_size=2, page_token=page1.next_page_token
        )
    )
    assert [s.acct_session_id for s in [*page1.sessions, *page2.sessions]] == ["a2", "b", "a"]
    assert page1.next_page_token and not page2.next_page_token
    tenth = await stub.ListSessions(
        usage_pb2.ListSessionsRequest(
            customer_id="c-1", first_day="2026-03-10", last_day="2026-03-10"
        )
    )
    assert [s.acct_session_id for s in tenth.sessions] == ["b", "a"]


def daily_request(first: str, last: str, subscription_id: str = "s-1") -> Any:
    return usage_pb2.GetDailyUsageRequest(
        subscription_id=subscription_id, first_day=first, last_day=last
    )


def log_request(**fields: Any) -> Any:
    return usage_pb2.ListSessionsRequest(customer_id="c-1", **fields)


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetDailyUsage", daily_request("2026-03-02", "2026-03-01")),
        ("GetDailyUsage", daily_request("2025-01-01", "2026-03-01")),
        ("GetDailyUsage", daily_request("20260301", "2026-03-02")),
        ("GetDailyUsage", daily_request("2026-03-01", "2026-03-02", subscription_id="")),
        ("GetPeriodUsage", usage_pb2.GetPeriodUsageRequest(customer_id="c-1", period="2026-3")),
        ("GetPeriodUsage", usage_pb2.GetPeriodUsageRequest(customer_id="c 1", period="2026-03")),
        ("ListTopUsers", usage_pb2.ListTopUsersRequest(period="2026-03", limit=101)),
        ("ListTopUsers", usage_pb2.ListTopUsersRequest(period="2026-03", limit=-1)),
        ("ListTopUsers", usage_pb2.ListTopUsersRequest(period="")),
        ("ListLiveSessions", usage_pb2.ListLiveSessionsRequest(page_size=-1)),
        ("ListLiveSessions", usage_pb2.ListLiveSessionsRequest(page_token="%%%")),
        ("ListLiveSessions", usage_pb2.ListLiveSessionsRequest(nas_id="")),
        ("ListLiveSessions", usage_pb2.ListLiveSessionsRequest(username="a b")),
        ("ListSessions", usage_pb2.ListSessionsRequest(customer_id="")),
        ("ListSessions", log_request(first_day="2026-03-11", last_day="2026-03-10")),
        ("ListSessions", log_request(first_day="2100-01-01")),
        ("ListSessions", log_request(page_token="e30")),
    ],
)  # fmt: skip
async def test_grpc_refuses_bad_input(stub: Any, method: str, request_: Any) -> None:
    assert await refused(getattr(stub, method)(request_)) == grpc.StatusCode.INVALID_ARGUMENT


def every_call(stub: Any) -> list[Any]:
    calls = [
        stub.GetDailyUsage(
            usage_pb2.GetDailyUsageRequest(
                subscription_id="s-1", first_day="2026-03-01", last_day="2026-03-31"
            )
        ),
        stub.GetPeriodUsage(usage_pb2.GetPeriodUsageRequest(customer_id="c-1", period="2026-03")),
        stub.ListTopUsers(usage_pb2.ListTopUsersRequest(period="2026-03")),
        stub.ListLiveSessions(usage_pb2.ListLiveSessionsRequest()),
        stub.ListSessions(usage_pb2.ListSessionsRequest(customer_id="c-1")),
    ]
    assert len(calls) == len(METHOD_PERMISSIONS)
    return calls


@pytest.mark.parametrize("role", [ADMIN, BILLING, SUPPORT, AUDITOR])
async def test_every_staff_role_reads_usage_over_grpc(running: Running, role: str) -> None:
    assert USAGE_READ in ROLES[role]
    token = await staff_token(
        running.services.store, f"u-{role}", role, clock=running.services.clock
    )
    async with running.channel(token) as channel:
        for call in every_call(usage_pb2_grpc.UsageServiceStub(channel)):
            await call


@pytest.mark.parametrize("token", [None, "not-a-token", f"isp_{uuid.uuid4().hex}"])
async def test_grpc_without_a_good_token_is_unauthenticated(
    running: Running, token: str | None
) -> None:
    async with running.channel(token) as channel:
        for call in every_call(usage_pb2_grpc.UsageServiceStub(channel)):
            assert await refused(call) == grpc.StatusCode.UNAUTHENTICATED
