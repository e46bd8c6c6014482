"""Who may call what, through the real app: every route x {stranger, each role}, tokens that
stop working (disabled user, expired, revoked), TOTP, and the actor on every write.

The matrix walks the routes of the app as `ispbill run` builds it, so a route added later is
covered without touching this file (healthchecks' pattern: each view tried as each kind of
user and as a stranger).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import APIRouter

from accounts.application.staff import create_staff_user
from accounts.domain.events import staff_stream
from ispbill_app.bootstrap import Services, open_ledger, projections_running
from ispbill_app.settings import Settings
from ispbill_core.access import (
    ADMIN,
    AUDITOR,
    BILLING,
    PROFILE_WRITE,
    ROLES,
    SUPPORT,
)
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.accounts import customer_stream
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from ispbill_core.web import OPEN, UndeclaredPermission, check_routes_declare_permissions
from portal.entrypoints.app import create_app
from tests.fixtures.staff import TEST_PASSWORD
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.entrypoints.http import collector_import_router

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
USERS = {ADMIN: "ada", BILLING: "bill", SUPPORT: "sue", AUDITOR: "audrey"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


class NoBus:
    async def publish(self, topic: str, messages: Any) -> None:
        return None


class Api:
    def __init__(self, services: Services, clock: FixedClock) -> None:
        self.services = services
        self.clock = clock
        self.app = services.http_app()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://api"
        )
        self.tokens: dict[str, str] = {}

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.request(method, path, json=body, headers=headers)

    async def as_role(self, role: str, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.call(method, path, body, token=self.tokens[role])

    async def log_in(self, username: str, password: str = TEST_PASSWORD, **extra: Any) -> Any:
        return await self.call(
            "POST", "/api/v1/auth/token", {"username": username, "password": password, **extra}
        )


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    clock = FixedClock(NOW)
    services = Services(Settings(data_dir=tmp_path, ledger="sqlite"), None, clock=clock)
    services.require_keyring()
    services.store = await open_ledger(services.settings)
    # As in `ispbill run`: the collector's import route is served too.
    services.collector_imports = collector_import_router(InMemoryNasRegistry([]), NoBus(), clock)
    reads = projections_running(services)
    await reads.__aenter__()
    api = Api(services, clock)
    for role, username in USERS.items():
        await create_staff_user(services.store, clock, username, role, TEST_PASSWORD, "system:t")
        response = await api.log_in(username.upper())  # usernames are case-folded
        assert response.status_code == 201, response.text
        api.tokens[role] = response.json()["token"]
    yield api
    await api.client.aclose()
    await reads.__aexit__(None, None, None)
    await services.store.close()


def _concrete(path: str, role: str) -> str:
    """The route's path with every parameter filled: the caller's own username, otherwise an
    id nobody has (foreign and unknown ids must answer alike)."""
    path = path.replace("{username}", USERS[role])
    path = path.replace("{period}", "2026-11")
    return re.sub(r"\{[^}]+\}", "nobody-has-this-id", path)


def _routes(api: Api) -> dict[tuple[str, str], str]:
    return check_routes_declare_permissions(api.app.routes)


async def test_the_matrix_covers_every_route_the_app_serves(api: Api) -> None:
    routes = _routes(api)
    # the routes of every service are in it: a router left out of the app would be noticed
    for expected in [
        ("POST", "/api/v1/auth/token"),
        ("GET", "/api/v1/customers"),
        ("POST", "/api/v1/payments/manual"),
        ("POST", "/api/v1/bill-runs"),
        ("GET", "/api/v1/usage/unmatched"),
        ("GET", "/api/v1/sessions/live"),
        ("POST", "/api/v1/collector/imports/radius-detail"),
        ("GET", "/api/v1/collector/drops"),
        ("DELETE", "/api/v1/tokens/{token_id}"),
    ]:
        assert expected in routes
    # /docs is the Swagger UI page (no data), open when its assets are installed
    assert {path for (_, path), p in routes.items() if p == OPEN} - {"/docs"} == {
        "/healthz",
        "/api/v1/auth/token",
    }


async def test_the_openapi_document_states_each_permission_and_its_refusals(api: Api) -> None:
    document = (await api.call("GET", "/openapi.json")).json()
    for (method, path), permission in _routes(api).items():
        if path == "/docs":  # the Swagger UI page is not an operation of the API
            continue
        operation = document["paths"][path][method.lower()]
        if permission == OPEN:
            assert "security" not in operation and "x-permission" not in operation
            continue
        assert operation["x-permission"] == permission
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
        assert operation["security"] == [{"HTTPBearer": []}]


async def test_a_stranger_gets_401_on_every_route_but_the_open_ones(api: Api) -> None:
    for (method, path), permission in _routes(api).items():
        if permission == OPEN:
            continue
        body = {} if method in WRITES else None
        for token in (None, "isp_0123456789abcdef0123_forged", "garbage"):
            response = await api.call(method, _concrete(path, ADMIN), body, token=token)
            assert response.status_code == 401, (method, path, token, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_each_role_gets_403_exactly_where_its_role_lacks_the_permission(api: Api) -> None:
    for (method, path), permission in sorted(_routes(api).items()):
        if permission == OPEN:
            continue
        for role in ROLES:
            body = {} if method in WRITES else None
            response = await api.as_role(role, method, _concrete(path, role), body)
            where = (role, method, path, response.status_code, response.text[:200])
            if permission in ROLES[role]:
                assert response.status_code not in (401, 403), where
            else:
                assert response.status_code == 403, where
                assert response.json()["title"] == "Forbidden"


async def test_the_auditor_reads_everything_and_writes_nothing(api: Api) -> None:
    for (method, path), permission in _routes(api).items():
        if permission == OPEN:
            continue
        response = await api.as_role(
            AUDITOR, method, _concrete(path, AUDITOR), {} if method in WRITES else None
        )
        if method == "GET":
            assert response.status_code != 403, (method, path)
        elif permission != PROFILE_WRITE:  # its own password, TOTP and tokens only
            assert response.status_code == 403, (method, path, response.text)
    assert all(p.endswith(":read") for p in ROLES[AUDITOR] - {PROFILE_WRITE})


async def test_a_route_without_a_permission_stops_the_app_from_building() -> None:
    forgetful = APIRouter(prefix="/api/v1")

    @forgetful.get("/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    class Nobody:
        async def authenticate(self, token: str) -> Any:
            raise AssertionError("never called")

    with pytest.raises(UndeclaredPermission, match="/api/v1/forgotten"):
        create_app([forgetful], error_statuses={}, authenticator=Nobody())


async def test_someone_elses_token_is_not_found_like_an_unknown_one(api: Api) -> None:
    sues = await api.as_role(SUPPORT, "POST", "/api/v1/tokens", {"name": "script"})
    assert sues.status_code == 201, sues.text
    token_id = sues.json()["token_id"]
    foreign = await api.as_role(BILLING, "DELETE", f"/api/v1/tokens/{token_id}")
    unknown = await api.as_role(BILLING, "DELETE", "/api/v1/tokens/0123456789abcdef0123")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["title"] == unknown.json()["title"] == "NotFound"
    listed = (await api.as_role(BILLING, "GET", "/api/v1/tokens")).json()
    assert {t["username"] for t in listed} == {"bill"}
    assert token_id in {
        t["token_id"] for t in (await api.as_role(ADMIN, "GET", "/api/v1/tokens")).json()
    }
    assert sues.json()["token"] not in str(listed)
    # someone else's password: 403 whether that user exists or not
    for name in ("sue", "nobody"):
        other = await api.as_role(
            BILLING, "POST", f"/api/v1/staff/{name}/password", {"password": "x" * 12}
        )
        assert other.status_code == 403, other.text
    revoked = await api.as_role(ADMIN, "DELETE", f"/api/v1/tokens/{token_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True


async def test_a_disabled_users_token_stops_working_at_once(api: Api) -> None:
    assert (await api.as_role(SUPPORT, "GET", "/api/v1/customers")).status_code == 200
    disabled = await api.as_role(ADMIN, "PATCH", "/api/v1/staff/sue", {"disabled": True})
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    refused = await api.as_role(SUPPORT, "GET", "/api/v1/customers")
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    assert (await api.log_in("sue")).status_code == 401
    await api.as_role(ADMIN, "PATCH", "/api/v1/staff/sue", {"disabled": False})
    assert (await api.as_role(SUPPORT, "GET", "/api/v1/customers")).status_code == 200


async def test_a_role_change_applies_to_existing_tokens_at_once(api: Api) -> None:
    body = {
        "customer_id": "C1",
        "name": "Ann",
        "email": "ann@example.net",
        "tax_region": "metro",
        "billing_address": "1 Road",
    }
    demoted = await api.as_role(ADMIN, "PATCH", "/api/v1/staff/sue", {"role": AUDITOR})
    assert demoted.status_code == 200
    assert (await api.as_role(SUPPORT, "POST", "/api/v1/customers", body)).status_code == 403
    own = await api.as_role(ADMIN, "PATCH", "/api/v1/staff/ada", {"disabled": True})
    assert own.status_code == 403  # an admin does not lock itself out


async def test_an_expired_token_fails(api: Api) -> None:
    short = await api.log_in("bill", expires_in_days=1)
    token = short.json()["token"]
    assert (await api.call("GET", "/api/v1/auth/me", token=token)).status_code == 200
    api.clock.advance(timedelta(days=1))
    expired = await api.call("GET", "/api/v1/auth/me", token=token)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


async def test_a_revoked_token_fails(api: Api) -> None:
    me = (await api.as_role(BILLING, "GET", "/api/v1/auth/me")).json()
    assert me["username"] == "bill" and me["role"] == BILLING
    assert set(me["permissions"]) == ROLES[BILLING]
    revoked = await api.as_role(BILLING, "DELETE", f"/api/v1/tokens/{me['token_id']}")
    assert revoked.status_code == 200, revoked.text
    assert (await api.as_role(BILLING, "GET", "/api/v1/auth/me")).status_code == 401


async def test_a_scoped_token_does_only_what_its_scopes_allow(api: Api) -> None:
    scoped = await api.as_role(
        BILLING, "POST", "/api/v1/tokens", {"name": "export", "scopes": ["customers:read"]}
    )
    assert scoped.status_code == 201, scoped.text
    token = scoped.json()["token"]
    assert (await api.call("GET", "/api/v1/customers", token=token)).status_code == 200
    assert (await api.call("GET", "/api/v1/invoices", token=token)).status_code == 403
    # a narrow token mints nothing wider, and nobody gets more than their role
    wider = await api.call("POST", "/api/v1/tokens", {"name": "x"}, token=token)
    assert wider.status_code == 403
    beyond = await api.as_role(
        BILLING, "POST", "/api/v1/tokens", {"name": "x", "scopes": ["staff:admin"]}
    )
    assert beyond.status_code == 422


async def test_wrong_credentials_all_read_the_same_and_are_throttled(api: Api) -> None:
    for username, password in [("bill", "wrong-password"), ("nobody", TEST_PASSWORD)]:
        refused = await api.log_in(username, password)
        assert refused.status_code == 401
        assert refused.json()["title"] == "InvalidCredentials"
    for _ in range(9):
        assert (await api.log_in("bill", "wrong-password")).status_code == 401
    throttled = await api.log_in("bill")  # even with the right password, for a while
    assert throttled.status_code == 429, throttled.text


async def test_the_password_is_never_in_the_ledger_only_its_argon2id_hash(api: Api) -> None:
    changed = await api.as_role(
        BILLING,
        "POST",
        "/api/v1/staff/bill/password",
        {"password": "another-long-secret", "current_password": TEST_PASSWORD},
    )
    assert changed.status_code == 200, changed.text
    assert (await api.log_in("bill", "another-long-secret")).status_code == 201
    assert (await api.log_in("bill")).status_code == 401
    tokens = set(api.tokens.values())
    everything = await api.services.store.read_all(after=0, limit=10_000)
    for recorded in everything:
        text = recorded.model_dump_json()
        assert TEST_PASSWORD not in text and "another-long-secret" not in text
        assert not any(token in text for token in tokens)
    hashes = [
        e.data["password_hash"]
        for e in await api.services.store.read_stream(staff_stream("bill"))
        if "password_hash" in e.data
    ]
    assert len(hashes) == 2 and all(h.startswith("$argon2id$") for h in hashes)


async def test_totp_once_enabled_is_needed_to_log_in(api: Api) -> None:
    enabled = await api.as_role(SUPPORT, "POST", "/api/v1/staff/sue/totp")
    assert enabled.status_code == 201, enabled.text
    uri = enabled.json()["otpauth_uri"]
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP) and totp.name == "sue"
    needed = await api.log_in("sue")
    assert needed.status_code == 401 and needed.json()["title"] == "TotpRequired"
    wrong = await api.log_in("sue", totp=f"{(int(totp.at(NOW)) + 1) % 10**6:06d}")
    assert wrong.status_code == 401 and wrong.json()["title"] == "InvalidCredentials"
    right = await api.log_in("sue", totp=totp.at(NOW))
    assert right.status_code == 201, right.text
    stored = await api.services.store.read_stream(staff_stream("sue"))
    assert totp.secret not in str([e.data for e in stored])
    # only its user enables it
    other = await api.as_role(ADMIN, "POST", "/api/v1/staff/sue/totp")
    assert other.status_code == 403


async def test_writes_through_the_api_carry_the_callers_actor(api: Api) -> None:
    rule = {"region": "metro", "tax_name": "VAT", "rate": "0.15"}
    assert (await api.as_role(ADMIN, "POST", "/api/v1/tax-rates", rule)).status_code == 201
    customer = {
        "customer_id": "C7",
        "name": "Ann",
        "email": "ann@example.net",
        "tax_region": "metro",
        "billing_address": "1 Road",
    }
    created = await api.as_role(SUPPORT, "POST", "/api/v1/customers", customer)
    assert created.status_code == 201, created.text
    [event] = await api.services.store.read_stream(customer_stream("C7"))
    assert event.metadata.actor == "staff:sue"
    staff = await api.as_role(
        ADMIN,
        "POST",
        "/api/v1/staff",
        {"username": "Neil", "role": BILLING, "password": "a-long-password"},
    )
    assert staff.status_code == 201 and staff.json()["username"] == "neil"
    [made] = await api.services.store.read_stream(staff_stream("neil"))
    assert made.metadata.actor == "staff:ada"
    again = await api.as_role(
        ADMIN,
        "POST",
        "/api/v1/staff",
        {"username": "NEIL", "role": BILLING, "password": "a-long-password"},
    )
    assert again.status_code == 409
    bad = await api.as_role(
        ADMIN,
        "POST",
        "/api/v1/staff",
        {"username": "bad\nname", "role": BILLING, "password": "a-long-password"},
    )
    assert bad.status_code == 422 and "\n" not in bad.json()["detail"]


def test_create_admin_makes_the_first_admin_once(tmp_path: Path) -> None:
    import asyncio

    from ispbill_app.cli import main as cli_main

    password_file = tmp_path / "password"
    password_file.write_text("first-admin-password\n")
    args = ["staff", "create-admin", "--username", "Root", "--password-file", str(password_file)]
    data = ["--data-dir", str(tmp_path / "data")]
    assert cli_main([*args, *data]) == 0
    assert cli_main([*args, *data]) == 1  # that username exists (case-folded)

    async def created() -> list[Any]:
        store = await open_ledger(Settings(data_dir=tmp_path / "data", ledger="sqlite"))
        try:
            return await store.read_stream(staff_stream("root"))
        finally:
            await store.close()

    [event] = asyncio.run(created())
    assert event.data["role"] == ADMIN and event.metadata.actor == "system:cli"
    assert event.data["password_hash"].startswith("$argon2id$")
    assert "first-admin-password" not in event.model_dump_json()


async def test_the_demo_admin_is_made_once_with_its_password_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ispbill_app.bootstrap import demo_admin_file, ensure_demo_admin

    monkeypatch.setenv("ISPBILL_DEMO_ADMIN_PASSWORD", "demo-admin-password")
    services = Services(Settings(data_dir=tmp_path, ledger="sqlite"), None)
    services.store = await open_ledger(services.settings)
    try:
        assert await ensure_demo_admin(services) == "demo-admin-password"
        path = demo_admin_file(services.settings)
        assert path.read_text() == "demo-admin-password\n"
        assert path.stat().st_mode & 0o777 == 0o600
        monkeypatch.delenv("ISPBILL_DEMO_ADMIN_PASSWORD")
        # Started again: nobody new, the password read back for the demo loader.
        assert await ensure_demo_admin(services) == "demo-admin-password"
        [created] = await services.store.read_all(after=0, limit=10, types=["StaffUserCreated"])
        assert created.data["username"] == "admin" and created.metadata.actor == "system:demo"
    finally:
        await services.store.close()


async def test_a_role_without_the_permission_cannot_tell_an_existing_id_from_an_unknown_one(
    api: Api,
) -> None:
    nas = {"nas_id": "bng-1", "name": "BNG 1", "ip_address": "192.0.2.1", "secret": "s3cret-s3cret"}
    assert (await api.as_role(ADMIN, "POST", "/api/v1/nas", nas)).status_code == 201
    for method, body in [("DELETE", None), ("PUT", {})]:
        existing = await api.as_role(BILLING, method, "/api/v1/nas/bng-1", body)
        unknown = await api.as_role(BILLING, method, "/api/v1/nas/bng-404", body)
        assert existing.status_code == unknown.status_code == 403
        assert existing.json() == unknown.json()
    # with the permission, the unknown one is simply not found
    assert (await api.as_role(ADMIN, "DELETE", "/api/v1/nas/bng-404")).status_code == 404
