"""The HTTP edge of the real app on a real uvicorn: bad input refused as problem details, bodies
bounded before they are read, errors that never echo a large input, slow clients cut off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger, projections_running, serve_http
from ispbill_app.settings import Settings
from ispbill_core.contracts.accounts import customer_stream
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV
from tests.fixtures.staff import staff_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LIMIT = 64 * 1024
IMPORT_LIMIT = 256 * 1024
PROBLEM = "application/problem+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Edge:
    def __init__(self, services: Services, port: int) -> None:
        self.services = services
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.token = ""
        self.client = httpx.AsyncClient(base_url=self.base, timeout=10)

    def log_in(self, token: str) -> None:
        self.token = token
        self.client.headers["Authorization"] = f"Bearer {token}"

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.client.post(f"/api/v1{path}", json=body)

    def raw(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock


@pytest.fixture
async def edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        ledger="sqlite",
        max_body_bytes=LIMIT,
        max_import_body_bytes=IMPORT_LIMIT,
        http_keep_alive_timeout=1,
        http_head_timeout=1,
        http_read_timeout=1,
    )
    services = Services(settings, None)
    services.require_keyring()
    services.store = await open_ledger(settings)
    try:
        async with (
            projections_running(services),
            serve_http(services.http_app(), "127.0.0.1", port, settings.http_timeouts),
        ):
            e = Edge(services, port)
            e.log_in(await staff_token(services.store))
            r = await e.post("/tax-rates", {"region": "metro", "tax_name": "VAT", "rate": "0.15"})
            assert r.status_code == 201, r.text
            yield e
            await e.client.aclose()
    finally:
        await services.store.close()


def assert_problem(r: httpx.Response, status: int, title: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank"
    if title is not None:
        assert body["title"] == title
    return dict(body)


CUSTOMER = {
    "customer_id": "c-1",
    "name": "Alice",
    "email": "alice@example.com",
    "tax_region": "metro",
}


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Alice\nBcc: everyone"},
        {"name": "Alice\u2028"},
        {"name": "\u202eecilA"},
        {"name": "Al\x00ice"},
        {"name": "Al\x85ice"},
        {"billing_address": "1 Road\r\nTown"},
        {"name": "A" * 201},
    ],
)
async def test_text_with_control_characters_is_refused_and_nothing_is_written(
    edge: Edge, change: dict[str, str]
) -> None:
    r = await edge.post("/customers", CUSTOMER | change)
    assert_problem(r, 422, "RequestValidationError")
    assert await edge.services.store.stream_version(customer_stream("c-1")) is None


async def test_a_customer_in_a_region_without_a_tax_rule_is_refused(edge: Edge) -> None:
    r = await edge.post("/customers", CUSTOMER | {"tax_region": "nowhere"})
    assert "no tax rule" in assert_problem(r, 422, "NoTaxRule")["detail"]
    assert await edge.services.store.stream_version(customer_stream("c-1")) is None
    untaxed = {"region": "nowhere", "tax_name": "untaxed", "rate": "0"}
    assert (await edge.post("/tax-rates", untaxed)).status_code == 201
    assert (await edge.post("/customers", CUSTOMER | {"tax_region": "nowhere"})).status_code == 201


@pytest.mark.parametrize(
    "amount",
    [
        "100000000000000000000000000",  # 10^26
        1e26,
        30,
        "30.00\n",
        "1e2",
        "\u09e9\u09e6",  # Bengali 30
        "NaN",
        "-Infinity",
        "+30",
        "30,00",
    ],
)
async def test_a_payment_that_is_not_a_plain_amount_is_refused_at_the_edge(
    edge: Edge, amount: object
) -> None:
    body = {"invoice": "INV-000001", "amount": amount, "reference": "BANK-1"}
    problem = assert_problem(await edge.post("/payments/manual", body), 422)
    assert problem["errors"][0]["loc"] == ["body", "amount"]


NAS = {"nas_id": "n", "name": "n", "secret": "secret1"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/bill-runs", {"period": "9999-12"}),
        ("/bill-runs", {"period": "0000-01"}),
        ("/bill-runs", {"period": "1999-12"}),
        (
            "/subscriptions",
            {"subscription_id": "s", "customer_id": "c", "plan_id": "p",
             "radius_username": "u", "started_on": "9999-12-31"},
        ),
        (
            "/subscriptions",
            {"subscription_id": "s", "customer_id": "c", "plan_id": "p",
             "radius_username": "u", "started_on": "0000-01-01"},
        ),
        ("/tax-rates", {"region": "r", "tax_name": "VAT", "rate": 0.15}),
        ("/tax-rates", {"region": "r", "tax_name": "VAT", "rate": "1.5"}),
        ("/nas", NAS | {"ip_address": "224.0.0.1"}),
        ("/nas", NAS | {"ip_address": "255.255.255.255"}),
        ("/nas", NAS | {"ip_address": "0.0.0.0"}),
        ("/nas", NAS | {"ip_address": "::"}),
        ("/nas", NAS | {"ip_address": "169.254.1.1"}),
        ("/nas", NAS | {"ip_address": "fe80::1%eth0"}),
    ],
)  # fmt: skip
async def test_dates_periods_rates_and_addresses_out_of_range_are_422_not_500(
    edge: Edge, path: str, body: dict[str, Any]
) -> None:
    assert_problem(await edge.post(path, body), 422)


@pytest.mark.parametrize(
    "url", ["/api/v1/invoices?period=9999-01", "/api/v1/usage/c-1/0000-01", "/api/v1/invoices/%0A"]
)
async def test_query_and_path_parameters_are_checked(edge: Edge, url: str) -> None:
    assert_problem(await edge.client.get(url), 422)


async def test_a_removal_reason_is_one_line(edge: Edge) -> None:
    nas = {"nas_id": "n-1", "name": "n", "ip_address": "127.0.0.9", "secret": "secret1"}
    assert (await edge.post("/nas", nas)).status_code == 201
    assert_problem(await edge.client.delete("/api/v1/nas/n-1", params={"reason": "a\nb"}), 422)
    r = await edge.client.delete("/api/v1/nas/n-1", params={"reason": "router replaced"})
    assert r.status_code == 200, r.text


async def test_unknown_routes_and_methods_are_problems(edge: Edge) -> None:
    assert_problem(await edge.client.get("/nowhere"), 404, "NotFound")
    r = await edge.client.delete("/healthz")
    assert_problem(r, 405, "MethodNotAllowed")
    assert r.headers["allow"] == "GET"
    r = await edge.client.post(
        "/api/v1/customers", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(r, 422)


async def test_an_error_never_echoes_a_large_input(edge: Edge) -> None:
    huge = "x" * 50_000
    for body in [
        CUSTOMER | {"name": huge + "\n"},
        CUSTOMER | {"email": huge + "@example.com"},
        {"invoice": "INV-1", "amount": "9" * 50_000, "reference": "R"},
        {"plan_id": huge},
    ]:
        path = "/payments/manual" if "amount" in body else "/customers"
        r = await edge.post(path, body)
        assert_problem(r, 422)
        assert len(r.content) < 4000, r.text
        assert "x" * 100 not in r.text and "9" * 100 not in r.text


async def test_a_body_over_the_limit_is_refused_by_its_length_before_it_is_sent(
    edge: Edge,
) -> None:
    """A client announcing 300 MB gets its 413 without sending a byte of the body."""

    def announce() -> bytes:
        with edge.raw() as sock:
            sock.sendall(
                b"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n"
            )
            return receive_all(sock)

    reply = await asyncio.to_thread(announce)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["title"] == "ContentTooLarge"


async def test_a_chunked_body_is_cut_off_at_the_limit(edge: Edge) -> None:
    """No length announced: the server counts what arrives and answers 413 once it passes the
    limit; the rest of the stream is never read."""
    chunk = b"0" * 16384

    def stream() -> tuple[bytes, int]:
        sent = 0
        with edge.raw() as sock:
            sock.sendall(
                b"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sock.settimeout(0.05)
            reply = b""
            try:
                while sent < 50 * LIMIT and not reply:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    with contextlib.suppress(TimeoutError):
                        reply = sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.settimeout(10)
            return reply or receive_all(sock), sent

    reply, sent = await asyncio.to_thread(stream)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 20 * LIMIT  # refused long before the client would have finished


async def test_the_detail_file_import_has_its_own_larger_limit(edge: Edge) -> None:
    padding = "p" * (LIMIT * 2)
    body = {"records": [], "nas": None, "dry_run": True, "padding": padding}
    r = await edge.post("/collector/imports/radius-detail", body)
    assert r.status_code != 413 and len(r.content) < 4000  # over 1 limit, under the other
    body["padding"] = "p" * (IMPORT_LIMIT + 1)
    assert_problem(await edge.post("/collector/imports/radius-detail", body), 413)
    assert_problem(await edge.post("/customers", {"padding": padding}), 413)


@pytest.mark.parametrize(
    "head",
    [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
     b"NOT HTTP AT ALL\r\n\r\n"],
)  # fmt: skip
async def test_a_head_the_server_cannot_parse_is_a_problem_too(edge: Edge, head: bytes) -> None:
    def send() -> bytes:
        with edge.raw() as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(head)
            return receive_all(sock)

    reply = await asyncio.to_thread(send)
    response_head, _, body = reply.partition(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"content-type: application/problem+json" in response_head.lower()
    assert json.loads(body)["status"] == 400


async def test_a_request_head_that_trickles_is_cut_off(edge: Edge) -> None:
    def trickle() -> bytes:
        with edge.raw() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            return receive_all(sock)

    start = time.monotonic()
    assert await asyncio.to_thread(trickle) == b""  # closed, nothing answered
    assert time.monotonic() - start < 5


async def test_a_connection_that_sends_nothing_is_closed(edge: Edge) -> None:
    def silent() -> bytes:
        with edge.raw() as sock:
            return receive_all(sock)

    start = time.monotonic()
    assert await asyncio.to_thread(silent) == b""
    assert time.monotonic() - start < 5


async def test_a_body_that_stalls_is_answered_408(edge: Edge) -> None:
    with edge.raw() as sock:
        sock.sendall(
            b"POST /api/v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"customer_id":'
        )
        reply = await asyncio.to_thread(receive_all, sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


async def test_an_idle_keep_alive_connection_is_closed(edge: Edge) -> None:
    def one_request() -> bytes:
        with edge.raw() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return receive_all(sock)

    start = time.monotonic()
    reply = await asyncio.to_thread(one_request)
    assert reply.startswith(b"HTTP/1.1 200")
    assert time.monotonic() - start < 5


async def test_swagger_ui_loads_nothing_from_another_host(edge: Edge) -> None:
    r = await edge.client.get("/docs")
    if r.status_code == 404:
        pytest.skip("Swagger UI assets not installed (make install-web)")
    assert r.status_code == 200
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""", r.text)
    assert urls, r.text
    for url in urls:
        assert not re.match(r"^(https?:)?//", url), url
        assert (await edge.client.get(url)).status_code == 200, url
    assert "http://" not in r.text and "https://" not in r.text
    assert (await edge.client.get("/redoc")).status_code == 404


def receive_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data
