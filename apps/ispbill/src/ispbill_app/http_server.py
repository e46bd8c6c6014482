"""The HTTP server's own limits: uvicorn with a deadline on a request's head."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class HttpTimeouts:
    """Seconds a client may keep a connection without making progress (documented in the
    README, "Limits").

    keep_alive: idle between two requests (uvicorn's timeout_keep_alive).
    head: from the first byte of a request (or the connection) to the end of its headers;
    uvicorn has no such deadline of its own, so one slow client could hold connections open
    forever by trickling header bytes (slowloris).
    body: between two chunks of a request body (the app's BodyLimit answers 408)."""

    keep_alive: float = 5.0
    head: float = 10.0
    body: float = 30.0


class DeadlinedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive whole
    within `head_timeout` seconds of the connection or of the first byte after a response."""

    head_timeout = HttpTimeouts.head

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_deadline is None and self._waiting_for_head():
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._waiting_for_head() and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        previous = self.cycle
        self._arm()
        super().data_received(data)
        if self.cycle is not previous and self.cycle is not None:
            self._disarm()  # a request head arrived: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle now: the keep-alive timeout applies until the next byte arrives.
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """What uvicorn answers itself to a request it cannot parse (a malformed head, or one
        over h11's 16 KiB): a problem document like every other error, not plain text."""
        body = json.dumps(
            {"type": "about:blank", "title": "BadRequest", "status": 400, "detail": msg[:200]}
        ).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


def protocol_with(timeouts: HttpTimeouts) -> type[DeadlinedH11Protocol]:
    return type("Deadlined", (DeadlinedH11Protocol,), {"head_timeout": timeouts.head})
