"""The HTTP edge: problem details, bounded request bodies, a deadline on reading them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Largest request body by default: 1 MiB (ISPBILL_MAX_BODY_BYTES); a command is a few hundred
#: bytes, a CSV import goes in batches.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Seconds to wait for the next chunk of a request body before answering 408: a client that
#: trickles a body holds a connection and a task (ISPBILL_HTTP_READ_TIMEOUT).
DEFAULT_BODY_READ_TIMEOUT = 30.0
#: Longest text of an input that an error may repeat.
ECHO_LIMIT = 80


#: Problem titles of the HTTP errors that are not a domain error's name.
TITLES = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "ContentTooLarge",
    415: "UnsupportedMediaType",
}


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An RFC 9457 problem document; `detail` cut to a few hundred characters, so that an
    error never carries a large input back."""
    return JSONResponse(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": shorten(detail, 500),
            **extra,
        },
        status_code=status,
        media_type="application/problem+json",
        headers=dict(headers or {}),
    )


class _TooLarge(HTTPException):
    """Raised by the body's receive: an HTTPException, so that FastAPI's body parsing lets it
    through (it turns any other error into a 400) and the app answers it as a problem."""

    def __init__(self, limit: int, path: str) -> None:
        super().__init__(
            413,
            f"the request body is over {limit} bytes, the most {path} accepts",
            headers={"Connection": "close"},
        )


class _TooSlow(HTTPException):
    def __init__(self, timeout: float) -> None:
        super().__init__(
            408, f"the request body stalled for {timeout:g} s", headers={"Connection": "close"}
        )


class BodyLimit:
    """Refuses a request body over its limit with 413, without reading it: at once when the
    Content-Length says so; otherwise (chunked, or a lying length) as soon as the bytes
    received pass the limit, before the application sees them. A body that stalls for
    `read_timeout` seconds is answered 408. `per_path` gives some paths their own limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        per_path: Mapping[str, int],
        read_timeout: float,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path)
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._refuse(scope, send, 400, "BadRequest", "invalid Content-Length")
                    return
                if declared > limit:
                    await self._too_large(scope, send, limit)
                    return
        received = 0
        response_started = False

        async def bounded_receive() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                raise _TooSlow(self.read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit, scope["path"])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except (_TooLarge, _TooSlow) as exc:
            # Raised where the app does not answer it itself (a route reading the stream).
            if not response_started:
                await self._refuse(scope, send, exc.status_code, TITLES[exc.status_code],
                                   exc.detail)  # fmt: skip

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        exc = _TooLarge(limit, scope["path"])
        await self._refuse(scope, send, 413, TITLES[413], exc.detail)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, title: str, detail: str) -> None:
        response = problem(status, title, detail, headers={"Connection": "close"})

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)
