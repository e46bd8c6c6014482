"""Customers, subscriptions' lifecycle, plan versions and top-ups through the REST API as the
composition root wires it: status codes, problem details, views with versions and history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger, projections_running
from ispbill_app.settings import Settings
from ispbill_core.clock import FixedClock
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from tests.fixtures.staff import staff_token

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("ISPBILL_TIMEZONE", "Asia/Dhaka")


class Api:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.client.request(method, f"/api/v1{path}", json=body)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.call(method, path, body)
        assert response.status_code == status, response.text
        return response.json()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    (tmp_path / "data").mkdir()
    settings = Settings(data_dir=tmp_path / "data", ledger="sqlite")
    services = Services(settings, None, clock=FixedClock(datetime(2026, 3, 10, 6, tzinfo=UTC)))
    services.require_keyring()
    services.store = await open_ledger(settings)
    reads = projections_running(services)
    await reads.__aenter__()
    token = await staff_token(services.store)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=services.http_app()),
        base_url="http://api",
        headers={"Authorization": f"Bearer {token}"},
    )
    api = Api(client)
    await api.ok("POST", "/tax-rates", {"region": "BD", "tax_name": "VAT", "rate": "0.15"}, 201)
    for plan_id, fee in (("home", "30.00"), ("fast", "50.00")):
        await api.ok(
            "POST",
            "/plans",
            {
                "plan_id": plan_id,
                "name": plan_id,
                "currency": "USD",
                "monthly_fee": fee,
                "included_gb": 50,
                "overage_per_gb": "1.00",
            },
            201,
        )
    await api.ok(
        "POST",
        "/customers",
        {
            "customer_id": "c-1",
            "name": "Alice",
            "email": "a@example.com",
            "tax_region": "BD",
            "phone": "+8801712345678",
            "tags": ["vip"],
        },
        201,
    )
    await api.ok(
        "POST",
        "/subscriptions",
        {
            "subscription_id": "s-1",
            "customer_id": "c-1",
            "plan_id": "home",
            "radius_username": "alice",
            "started_on": "2026-01-01",
        },
        201,
    )
    yield api
    await client.aclose()
    await reads.__aexit__(None, None, None)
    await services.store.close()


async def test_a_customer_is_read_and_patched_with_its_version(api) -> None:
    customer = await api.ok("GET", "/customers/c-1")
    assert customer["version"] == 0 and customer["account_type"] == "home"
    assert customer["tags"] == ["vip"] and customer["phone"] == "+8801712345678"
    changed = await api.ok(
        "PATCH",
        "/customers/c-1",
        {"service_address": "House 1, Road 2", "account_type": "corporate", "expected_version": 0},
    )
    assert changed["version"] == 1 and changed["name"] == "Alice"
    assert changed["account_type"] == "corporate"
    stale = await api.call("PATCH", "/customers/c-1", {"name": "Bob", "expected_version": 0})
    assert stale.status_code == 409
    assert stale.headers["content-type"] == "application/problem+json"
    assert (await api.call("GET", "/customers/nobody")).status_code == 404
    bad = await api.call("PATCH", "/customers/c-1", {"tags": ["NOT OK"]})
    assert bad.status_code == 422
    assert (await api.ok("GET", "/customers/c-1"))["version"] == 1


async def test_the_lifecycle_through_the_api_shows_in_the_history(api) -> None:
    view = await api.ok("GET", "/subscriptions/s-1")
    assert (view["status"], view["plan_id"], view["version"]) == ("active", "home", 0)
    view = await api.ok(
        "POST",
        "/subscriptions/s-1/plan-change",
        {"plan_id": "fast", "effective": "next_cycle", "expected_version": 0},
    )
    assert view["plan_id"] == "home" and view["scheduled_plan_id"] == "fast"
    view = await api.ok(
        "POST", "/subscriptions/s-1/suspend", {"reason": "abuse", "expected_version": 1}
    )
    assert view["status"] == "suspended"
    view = await api.ok(
        "POST",
        "/subscriptions/s-1/resume",
        {"reason": "sorted", "effective_on": "2026-03-12", "expected_version": 2},
    )
    view = await api.ok(
        "POST",
        "/subscriptions/s-1/hold",
        {"from": "2026-03-20", "until": "2026-03-25", "reason": "travel"},
    )
    view = await api.ok("POST", "/subscriptions/s-1/username", {"radius_username": "alice2"})
    assert view["radius_username"] == "alice2"
    view = await api.ok(
        "POST", "/subscriptions/s-1/terminate", {"effective_on": "2026-04-30", "reason": "moving"}
    )
    assert [(h["type"], h["effective_on"]) for h in view["history"]] == [
        ("SubscriptionStarted", "2026-01-01"),
        ("SubscriptionPlanChanged", "2026-04-01"),
        ("SubscriptionSuspended", "2026-03-10"),
        ("SubscriptionResumed", "2026-03-12"),
        ("SubscriptionHoldPlaced", "2026-03-20"),
        ("RadiusUsernameChanged", "2026-03-10"),
        ("SubscriptionTerminated", "2026-04-30"),
    ]
    assert view["version"] == 6 and view["terminated_on"] == "2026-04-30"
    assert view == await api.ok("GET", "/subscriptions/s-1")


async def test_lifecycle_refusals_are_problem_details(api) -> None:
    cases = [
        ("/plan-change", {"plan_id": "home"}, 422, "SamePlan"),
        ("/plan-change", {"plan_id": "nope"}, 404, "NotFound"),
        ("/plan-change", {"plan_id": "fast", "expected_version": 3}, 409, "Conflict"),
        ("/resume", {"reason": "x"}, 422, "NotSuspended"),
        ("/suspend", {"reason": "x", "effective_on": "2026-02-01"}, 422, None),
        ("/hold", {"from": "2026-03-20", "until": "2026-03-01", "reason": "x"}, 422, None),
        ("/terminate", {"effective_on": "9999-01-01", "reason": "x"}, 422, None),
        ("/suspend", {"reason": "line\nbreak"}, 422, None),
    ]
    for path, body, status, title in cases:
        response = await api.call("POST", f"/subscriptions/s-1{path}", body)
        assert response.status_code == status, (path, body, response.text)
        if title:
            assert response.json()["title"] == title
    assert (
        await api.call("POST", "/subscriptions/none/suspend", {"reason": "x"})
    ).status_code == 404
    assert (await api.ok("GET", "/subscriptions/s-1"))["version"] == 0


async def test_plan_versions_and_top_ups(api) -> None:
    body = {
        "effective_from": "2026-04-01",
        "name": "home",
        "currency": "USD",
        "monthly_fee": "35.00",
        "included_units": 60,
        "overage_price": "1.00",
        "time_bands": [{"name": "night", "start": "01:00", "end": "07:00", "multiplier": "0.5"}],
    }
    plan = await api.ok("POST", "/plans/home/versions", body, 201)
    assert [(v["version"], v["effective_from"]) for v in plan["versions"]] == [
        (1, None),
        (2, "2026-04-01"),
    ]
    assert plan == await api.ok("GET", "/plans/home")
    refused = await api.call("POST", "/plans/home/versions", body | {"monthly_fee": "1.00"})
    assert refused.status_code == 422 and refused.json()["title"] == "InvalidPlanVersion"
    assert (await api.call("GET", "/plans/none")).status_code == 404

    topup = {
        "product_id": "5gb",
        "name": "5 GB",
        "currency": "USD",
        "price": "3.00",
        "bytes": 5 * 10**9,
        "validity_days": 7,
    }
    await api.ok("POST", "/topups", topup, 201)
    await api.ok("POST", "/topups", topup, 201)
    assert (await api.call("POST", "/topups", topup | {"price": "4.00"})).status_code == 409
    [listed] = await api.ok("GET", "/topups")
    assert listed["price"] == {"amount": "3.00", "currency": "USD"}


async def test_a_top_up_bought_twice_with_one_purchase_id_is_recorded_once(api) -> None:
    product = {
        "product_id": "5gb",
        "name": "5 GB",
        "currency": "USD",
        "price": "3.00",
        "bytes": 5 * 10**9,
        "validity_days": 7,
    }
    await api.ok("POST", "/topups", product, 201)
    purchase = {"product_id": "5gb", "purchase_id": "order-1"}
    bought = await api.ok("POST", "/subscriptions/s-1/topups", purchase, 201)
    again = await api.ok("POST", "/subscriptions/s-1/topups", purchase, 201)
    assert again == bought and bought["bytes"] == 5 * 10**9
    assert bought["price"] == {"amount": "3.00", "currency": "USD"}
    valid_from = datetime.fromisoformat(bought["valid_from"])
    assert datetime.fromisoformat(bought["valid_until"]) - valid_from == timedelta(days=7)
    assert await api.ok("GET", "/subscriptions/s-1/topups") == [bought]
    cases = [
        ("/subscriptions/s-1/topups", {"product_id": "none", "purchase_id": "order-2"}, 404),
        ("/subscriptions/none/topups", purchase, 404),
        ("/subscriptions/s-1/topups", {"product_id": "5gb", "purchase_id": "a b"}, 422),
        ("/subscriptions/s-1/topups", {"product_id": "5gb"}, 422),
    ]
    for path, body, status in cases:
        response = await api.call("POST", path, body)
        assert response.status_code == status, (path, body, response.text)
    assert len(await api.ok("GET", "/subscriptions/s-1/topups")) == 1


async def test_a_subscription_says_which_source_bills_its_usage(api) -> None:
    assert (await api.ok("GET", "/subscriptions/s-1"))["usage_source"] == "radius"
    body = {
        "subscription_id": "s-2",
        "customer_id": "c-1",
        "plan_id": "home",
        "radius_username": "alice-static",
        "started_on": "2026-03-01",
        "usage_source": "router",
    }
    assert (await api.ok("POST", "/subscriptions", body, 201))["usage_source"] == "router"
    assert (await api.ok("GET", "/subscriptions/s-2"))["usage_source"] == "router"
    wrong = {**body, "subscription_id": "s-3", "radius_username": "x", "usage_source": "snmp"}
    assert (await api.call("POST", "/subscriptions", wrong)).status_code == 422


async def test_the_usage_discrepancy_report_answers_with_its_threshold(api) -> None:
    report = await api.ok("GET", "/usage/discrepancies")
    assert report == {
        "period": None,
        "threshold_pct": 5.0,
        "compared": 0,
        "flagged": 0,
        "discrepancies": [],
    }
    report = await api.ok("GET", "/usage/discrepancies?period=2026-03&threshold=2.5&all=true")
    assert (report["period"], report["threshold_pct"]) == ("2026-03", 2.5)
    for bad in ("period=2026-13", "threshold=-1", "threshold=1001"):
        assert (await api.call("GET", f"/usage/discrepancies?{bad}")).status_code == 422
