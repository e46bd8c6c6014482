"""The OpenAPI document tells the truth: schemathesis runs every operation of the real app (a real
uvicorn on loopback, an SQLite ledger of its own, projections running) with all its checks,
authenticated as an admin, and finds nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger, projections_running, serve_http
from ispbill_app.settings import Settings
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from tests.fixtures.staff import staff_token

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

#: The staff user the run acts as: a name no generated path parameter will hit, so no generated
#: PATCH or password change disables or locks out the user whose token the run uses.
ACTOR = "schemathesis-admin-7f3c9d2e41"

#: What the run creates first, so that lookups by these ids find something.
SEED: list[tuple[str, dict[str, Any]]] = [
    ("/tax-rates", {"region": "metro", "tax_name": "VAT", "rate": "0.15"}),
    (
        "/plans",
        {"plan_id": "home-50", "name": "Home 50", "currency": "USD", "monthly_fee": "30.00",
         "included_gb": 100, "overage_per_gb": "0.50"},
    ),
    (
        "/customers",
        {"customer_id": "c-1", "name": "Alice", "email": "alice@example.com",
         "tax_region": "metro"},
    ),
    (
        "/subscriptions",
        {"subscription_id": "s-1", "customer_id": "c-1", "plan_id": "home-50",
         "radius_username": "alice", "started_on": "2026-01-01"},
    ),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The app on a real uvicorn, in a thread with its own event loop (schemathesis is
    synchronous and calls it over HTTP from the test's thread)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token: Future[str] = Future()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="schemathesis-app", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            settings_ = Settings(data_dir=self.data_dir, ledger="sqlite")
            services = Services(settings_, None)
            services.require_keyring()
            services.store = await open_ledger(settings_)
            try:
                async with (
                    projections_running(services),
                    serve_http(services.http_app(), "127.0.0.1", self.port),
                ):
                    self.token.set_result(await staff_token(services.store, ACTOR))
                    await self._stop.wait()
            finally:
                await services.store.close()
        except BaseException as exc:
            if not self.token.done():
                self.token.set_exception(exc)
            raise

    def start(self) -> str:
        self._thread.start()
        return self.token.result(timeout=60)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(KEY_ENV, raising=False)
        mp.delenv(KEY_FILE_ENV, raising=False)
        server = Server(tmp_path_factory.mktemp("schemathesis") / "data")
        token = server.start()
        try:
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=f"{server.base}/api/v1", headers=auth, timeout=10) as c:
                for path, body in SEED:
                    r = c.post(path, json=body)
                    assert r.status_code == 201, (path, r.text)
            yield server, token
        finally:
            server.stop()


#: Every check on; the few exclusions, each with its reason.
CONFIG = Path(__file__).with_name("schemathesis.toml")
#: The format the document names that schemathesis does not know (`unicast-ip`).
HOOKS = "tests.contract.schemathesis_hooks"
ROOT = Path(__file__).resolve().parents[2]

#: Examples per operation and mode: enough to hit every constraint the document states, few
#: enough that the whole run stays within a couple of minutes on two cores.
MAX_EXAMPLES = 10


def test_schemathesis_finds_nothing(server: tuple[Server, str], tmp_path: Path) -> None:
    srv, token = server
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG),
        "run", f"{srv.base}/openapi.json",
        "--checks", "all",
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", "8",
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "10",
        "--suppress-health-check", "all",
        "--no-color",
        "--report", "json",
        "--report-json-path", str(report),
    ]  # fmt: skip
    env = os.environ | {"SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path, env=env
    )
    (tmp_path / "schemathesis.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
