"""Who may call which gRPC method, through the app's one gRPC server: every method of every
service the app serves (bootstrap.grpc_services) x {no token, a bad token, each staff role, a
token scoped below every read}. Walks the services as served, so a method or a service added
later is covered without touching this file (as test_access.py walks the REST routes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from accounts.application.staff import create_staff_user, issue_token
from ispbill_app.bootstrap import Services, grpc_services, open_ledger, projections_running
from ispbill_app.settings import Settings
from ispbill_core.access import PROFILE_READ, ROLES, SUPPORT, bearer_metadata
from ispbill_core.clock import FixedClock
from ispbill_core.grpc_access import method_names
from ispbill_core.grpc_server import serve_grpc
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from tests.fixtures.staff import TEST_PASSWORD, staff_token

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 6, tzinfo=UTC)
DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Services, int]]:
    settings = Settings(data_dir=tmp_path, ledger="sqlite", host="127.0.0.1", grpc_port=0)
    services = Services(settings, None, clock=FixedClock(NOW))
    services.require_keyring()
    services.store = await open_ledger(settings)
    async with projections_running(services):
        server, port = await serve_grpc(
            grpc_services(services), authenticator=services.authenticator, port=0
        )
        try:
            yield services, port
        finally:
            await server.stop(grace=None)
    await services.store.close()


async def status_of(port: int, method: str, token: str | None) -> grpc.StatusCode:
    """The status of `method` called with an empty request (its fields' defaults)."""
    metadata = bearer_metadata(token) if token is not None else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)  # raw bytes in and out
        try:
            await call(b"", metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


def every_method(services: Services) -> dict[str, str]:
    table: dict[str, str] = {}
    for service in grpc_services(services):
        for method in method_names(service.descriptor):
            table[method] = service.permissions[method]  # KeyError: a method without one
    return table


async def test_the_matrix_covers_every_service_the_app_serves(served: Any) -> None:
    services, _ = served
    names = {s.name for s in grpc_services(services)}
    assert names == {
        "ispbill.v1.AccountsService",
        "ispbill.v1.InvoiceService",
        "ispbill.v1.UsageService",
    }
    assert "/ispbill.v1.UsageService/ListLiveSessions" in every_method(services)


async def test_each_role_is_refused_exactly_where_its_role_lacks_the_permission(
    served: Any,
) -> None:
    services, port = served
    tokens = {
        role: await staff_token(services.store, f"u-{role}", role, clock=services.clock)
        for role in ROLES
    }
    for method, permission in sorted(every_method(services).items()):
        for role, token in tokens.items():
            code = await status_of(port, method, token)
            if permission in ROLES[role]:
                assert code not in DENIED, (role, method, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (role, method, code)


async def test_a_stranger_is_unauthenticated_on_every_method(served: Any) -> None:
    services, port = served
    for method in every_method(services):
        for token in (None, "garbage", "isp_0123456789abcdef0123_forged"):
            assert await status_of(port, method, token) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_scoped_below_the_permission_is_denied_on_every_method(
    served: Any,
) -> None:
    services, port = served
    user = await create_staff_user(
        services.store, services.clock, "scoped", SUPPORT, TEST_PASSWORD, "system:tests"
    )
    issued = await issue_token(
        services.store,
        services.clock,
        user,
        name="profile only",
        expires_in_days=30,
        scopes=[PROFILE_READ],
        actor="system:tests",
    )
    for method, permission in every_method(services).items():
        assert permission != PROFILE_READ
        assert await status_of(port, method, issued.token) == grpc.StatusCode.PERMISSION_DENIED
