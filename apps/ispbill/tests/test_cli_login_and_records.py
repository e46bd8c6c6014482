"""`ispbill login`/`logout` and the records commands, against a stand-in server over real HTTP.

The stand-in implements only what docs in /work/notes/interfaces.md agree on: POST
/api/v1/auth/token (password, then TOTP when the account has one) and the lifecycle routes,
and it records every request it is sent, so a test sees what the CLI really put on the wire.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ispbill_app import credentials
from ispbill_app.cli import main as cli_main

pytestmark = pytest.mark.integration

USERS = {"alice": ("correct horse", None), "bob": ("battery staple", "123456")}


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def stand_in_app(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()
    tokens: dict[str, str] = {}

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Any:
        body = await request.body()
        seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "auth": request.headers.get("authorization"),
                "body": json.loads(body) if body else None,
            }
        )
        if request.url.path != "/api/v1/auth/token":
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in tokens:
                return problem(401, "Unauthorized", "a valid bearer token is needed")
        return await call_next(request)

    @app.post("/api/v1/auth/token", status_code=201)
    async def token(request: Request) -> Any:
        body = await request.json()
        user = USERS.get(body["username"])
        if user is None or user[0] != body["password"]:
            return problem(401, "Unauthorized", "wrong username or password")
        if user[1] is not None and not body.get("totp"):
            return problem(401, "TotpRequired", "this account needs a TOTP code")
        if user[1] is not None and body["totp"] != user[1]:
            return problem(401, "Unauthorized", "wrong TOTP code")
        issued = f"tok-{body['username']}-{len(tokens)}"
        tokens[issued] = body["username"]
        return {
            "token": issued,
            "token_id": f"id-{len(tokens)}",
            "username": body["username"],
            "role": "admin",
            "expires_at": "2099-01-01T00:00:00Z",
        }

    @app.get("/api/v1/customers")
    async def customers() -> Any:
        return [{"customer_id": "C1", "name": "Ann", "email": "a@example.com"}]

    @app.get("/api/v1/customers/{customer_id}")
    async def customer(customer_id: str) -> Any:
        return {"customer_id": customer_id, "name": "Ann", "version": 3}

    @app.patch("/api/v1/customers/{customer_id}")
    async def change_customer(customer_id: str, request: Request) -> Any:
        return {"customer_id": customer_id, **(await request.json()), "version": 4}

    @app.get("/api/v1/subscriptions/{subscription_id}")
    async def subscription(subscription_id: str) -> Any:
        return {
            "subscription_id": subscription_id,
            "status": "active",
            "version": 7,
            "plan_id": "home-25",
            "history": [{"event": "started", "effective": "2026-01-01"}],
        }

    @app.post("/api/v1/subscriptions/{subscription_id}/{action}")
    async def act(subscription_id: str, action: str) -> Any:
        return {"subscription_id": subscription_id, "status": action, "version": 8, "history": []}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stand_in() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(stand_in_app(seen), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(5)


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "config" / "ispbill"
    monkeypatch.setenv(credentials.CONFIG_DIR_ENV, str(where))
    monkeypatch.delenv(credentials.TOKEN_ENV, raising=False)
    monkeypatch.delenv("ISPBILL_SERVER", raising=False)
    return where


def login(server: str, username: str, stdin: str, monkeypatch: pytest.MonkeyPatch) -> int:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli_main(["login", "--server", server, "--username", username, "--password-stdin"])


def test_login_keeps_a_token_only_its_owner_can_read_and_the_cli_sends_it(
    stand_in, config_dir, monkeypatch, capsys
) -> None:
    server, seen = stand_in
    umask = os.umask(0o022)  # the usual one: the modes below must not come from it
    try:
        assert login(server, "alice", "correct horse\n", monkeypatch) == 0
    finally:
        os.umask(umask)
    assert "logged in" in capsys.readouterr().out
    path = config_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert set(stored) == {server}
    assert stored[server]["username"] == "alice" and stored[server]["token"].startswith("tok-")
    [request] = [r for r in seen if r["path"] == "/api/v1/auth/token"][-1:]
    assert request["body"]["password"] == "correct horse" and request["body"]["totp"] is None
    assert request["auth"] is None

    assert cli_main(["--server", server, "customers", "list", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["customer_id"] == "C1"
    assert seen[-1]["auth"] == f"Bearer {stored[server]['token']}"

    assert cli_main(["--server", server, "logout"]) == 0
    assert json.loads(path.read_text()) == {}
    assert cli_main(["--server", server, "customers", "list"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "ispbill login" in err


def test_a_totp_code_is_asked_when_the_server_says_totp_required(
    stand_in, config_dir, monkeypatch, capsys
) -> None:
    server, seen = stand_in
    assert login(server, "bob", "battery staple\n123456\n", monkeypatch) == 0
    asked = [r["body"]["totp"] for r in seen if r["path"] == "/api/v1/auth/token"][-2:]
    assert asked == [None, "123456"]
    assert json.loads((config_dir / "credentials.json").read_text())[server]["username"] == "bob"


def test_a_wrong_password_stores_nothing_and_says_why(
    stand_in, config_dir, monkeypatch, capsys
) -> None:
    server, _ = stand_in
    assert login(server, "alice", "wrong\n", monkeypatch) == 1
    assert "wrong username or password (HTTP 401)" in capsys.readouterr().err
    assert not (config_dir / "credentials.json").exists()
    assert login(server, "bob", "battery staple\n000000\n", monkeypatch) == 1
    assert "wrong TOTP code" in capsys.readouterr().err


def test_the_environment_token_wins_and_an_expired_one_is_not_sent(
    stand_in, config_dir, monkeypatch, capsys
) -> None:
    server, seen = stand_in
    credentials.store(server, "stored-token", "alice", "2000-01-01T00:00:00Z")
    assert credentials.token_for(server) is None  # expired
    credentials.store(server, "stored-token", "alice", "2099-01-01T00:00:00Z")
    assert credentials.token_for(server) == "stored-token"
    assert credentials.token_for("http://elsewhere:8080") is None
    monkeypatch.setenv(credentials.TOKEN_ENV, "from-env")
    cli_main(["--server", server, "customers", "list"])
    assert seen[-1]["auth"] == "Bearer from-env"


@pytest.fixture
def logged_in(stand_in, monkeypatch, capsys) -> tuple[str, list[dict[str, Any]]]:
    server, seen = stand_in
    assert login(server, "alice", "correct horse\n", monkeypatch) == 0
    capsys.readouterr()
    return server, seen


@pytest.mark.parametrize(
    ("args", "method", "path", "body"),
    [
        (
            ["subscriptions", "change-plan", "S1", "--plan", "biz-100",
             "--effective", "next_cycle"],
            "POST", "/api/v1/subscriptions/S1/plan-change",
            {"plan_id": "biz-100", "effective": "next_cycle", "expected_version": 7},
        ),
        (
            ["subscriptions", "change-plan", "S1", "--plan", "biz-100", "--effective",
             "2026-03-15", "--expected-version", "5"],
            "POST", "/api/v1/subscriptions/S1/plan-change",
            {"plan_id": "biz-100", "effective": "2026-03-15", "expected_version": 5},
        ),
        (
            ["subscriptions", "suspend", "S1", "--reason", "fraud check",
             "--effective-on", "2026-03-01"],
            "POST", "/api/v1/subscriptions/S1/suspend",
            {"reason": "fraud check", "expected_version": 7, "effective_on": "2026-03-01"},
        ),
        (
            ["subscriptions", "resume", "S1"],
            "POST", "/api/v1/subscriptions/S1/resume", {"reason": "", "expected_version": 7},
        ),
        (
            ["subscriptions", "hold", "S1", "--from", "2026-07-01", "--until", "2026-07-31",
             "--reason", "vacation"],
            "POST", "/api/v1/subscriptions/S1/hold",
            {"from": "2026-07-01", "until": "2026-07-31", "reason": "vacation"},
        ),
        (
            ["subscriptions", "terminate", "S1", "--effective-on", "2026-04-30",
             "--reason", "moved away"],
            "POST", "/api/v1/subscriptions/S1/terminate",
            {"effective_on": "2026-04-30", "reason": "moved away"},
        ),
        (
            ["subscriptions", "change-username", "S1", "--username", "ann2"],
            "POST", "/api/v1/subscriptions/S1/username", {"radius_username": "ann2"},
        ),
        (
            ["customers", "change", "C1", "--phone", "+8801712345678", "--tag", "vip",
             "--tag", "north", "--account-type", "business"],
            "PATCH", "/api/v1/customers/C1",
            {"phone": "+8801712345678", "account_type": "business", "tags": ["vip", "north"],
             "expected_version": 3},
        ),
        (
            ["customers", "change", "C1", "--no-tags", "--expected-version", "9"],
            "PATCH", "/api/v1/customers/C1", {"tags": [], "expected_version": 9},
        ),
    ],
)  # fmt: skip
def test_lifecycle_commands_send_the_agreed_requests(
    logged_in, capsys, args, method, path, body
) -> None:
    server, seen = logged_in
    assert cli_main(["--server", server, *args, "--format", "json"]) == 0, capsys.readouterr()
    sent = seen[-1]
    assert (sent["method"], sent["path"], sent["body"]) == (method, path, body)
    assert sent["auth"].startswith("Bearer tok-alice")
    json.loads(capsys.readouterr().out)  # the server's view, as JSON


def test_bad_dates_and_empty_changes_are_refused_before_any_request(logged_in, capsys) -> None:
    server, seen = logged_in
    before = len(seen)
    code = cli_main(["--server", server, "subscriptions", "terminate", "S1",
                     "--effective-on", "2026-02-30", "--reason", "x"])  # fmt: skip
    assert code == 2 and "is not a date" in capsys.readouterr().err
    assert cli_main(["--server", server, "customers", "change", "C1"]) == 2
    assert "at least one detail" in capsys.readouterr().err
    assert len(seen) == before


def test_show_prints_a_subscription_and_its_history(logged_in, capsys) -> None:
    server, _ = logged_in
    assert cli_main(["--server", server, "subscriptions", "show", "S1"]) == 0
    out = capsys.readouterr().out
    assert "active" in out and "2026-01-01" in out and "started" in out
