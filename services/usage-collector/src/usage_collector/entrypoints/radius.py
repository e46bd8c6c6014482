"""The RADIUS accounting listener: UDP in, one durable publish per batch, then the responses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from ispbill_core.clock import Clock
from ispbill_core.telemetry import current_traceparent
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.nas_registry import NasRegistry
from usage_collector.application.ports import AccountingPublisher, AttributeDecoder
from usage_collector.application.publish_accounting_records import publish_accounting_records
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    DropReason,
    screen_accounting_request,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ispbill.usage_collector")

#: Bursts (a NAS reboot makes every session stop at once) must wait in the kernel, not be lost.
DEFAULT_RECEIVE_BUFFER = 16 * 1024 * 1024

Address = tuple[Any, ...]


@dataclass
class AccountingCounters:
    received: int = 0
    acked: int = 0
    dropped_unknown_nas: int = 0
    dropped_bad_authenticator: int = 0
    dropped_missing_message_authenticator: int = 0
    dropped_malformed: int = 0
    #: Authentic, but not a record we keep: no Acct-Status-Type, no Acct-Session-Id, Failed...
    dropped_invalid_record: int = 0
    #: More datagrams waiting than max_pending while the bus was slow.
    dropped_overload: int = 0
    #: Failed publish calls; none of that batch was acknowledged.
    publish_failures: int = 0
    batches_published: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Datagram:
    data: bytes
    address: Address
    received_at: datetime


class _AccountingProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: AccountingServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._server._enqueue(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for responses to a NAS that went away; nothing to do but note them.
        log.debug("RADIUS socket error: %s", exc)


class AccountingServer:
    """RFC 2866 accounting server whose Accounting-Response means "durable on the bus".

    Datagrams are queued as they arrive; one worker takes everything queued (up to
    `max_batch`), screens each, publishes the accepted records with one publisher call and
    only then sends their responses. While a publish is in flight the next batch fills up, so
    batches grow with load (group commit). A failed publish sends nothing: the NAS retransmits.
    The worker is the seam where a recvmmsg-style reader can later hand over whole batches.
    """

    def __init__(
        self,
        host: str,
        port: int,
        nas_registry: NasRegistry,
        publisher: AccountingPublisher,
        clock: Clock,
        *,
        decode_attributes: AttributeDecoder | None = None,
        max_batch: int = 1024,
        max_pending: int = 100_000,
        receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.counters = AccountingCounters()
        self._registry = nas_registry
        self._publisher = publisher
        self._clock = clock
        self._decode = decode_attributes or DictionaryAttributeDecoder()
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._receive_buffer = receive_buffer
        self._stop_timeout = stop_timeout
        self._pending: deque[_Datagram] = deque()
        self._wakeup = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        self.receive_buffer_size: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 the kernel's choice, known after start()."""
        if self._transport is None:
            return self.host, self.port
        sockname = self._transport.get_extra_info("sockname")
        return sockname[0], sockname[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _AccountingProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self._set_receive_buffer(transport.get_extra_info("socket"))
        self._stopping = False
        self._worker = asyncio.create_task(self._run(), name="radius-accounting-worker")
        log.info("RADIUS accounting listening on %s:%s", *self.address)

    async def stop(self) -> None:
        """Stop receiving; let the batch in flight finish (bounded), then close the socket."""
        self._stopping = True
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), self._stop_timeout)
            except TimeoutError:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
            self._worker = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _set_receive_buffer(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        for option in (force, socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, self._receive_buffer)
                break
            except OSError:
                continue  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF is capped by rmem_max
        self.receive_buffer_size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _enqueue(self, data: bytes, address: Address) -> None:
        self.counters.received += 1
        if self._stopping:
            return
        if len(self._pending) >= self._max_pending:
            self.counters.dropped_overload += 1
            return
        self._pending.append(_Datagram(data, address, self._clock.now()))
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [
                self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))
            ]
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must cost one batch (unacknowledged, so retransmitted), not the server.
                log.exception("RADIUS accounting batch of %d failed", len(batch))

    async def _process(self, batch: list[_Datagram]) -> None:
        accepted: list[tuple[AcceptedRequest, Span, Address, str | None]] = []
        for datagram in batch:
            span = tracer.start_span(
                "radius.accounting", attributes={"net.peer.ip": str(datagram.address[0])}
            )
            result = self._screen(datagram)
            if isinstance(result, DroppedRequest):
                self._count_drop(result, span)
                span.end()
                continue
            record = result.record
            span.set_attributes(
                {
                    "radius.nas_id": record.nas_id,
                    "radius.acct_session_id": record.acct_session_id,
                    "radius.acct_status_type": record.status.value,
                }
            )
            with trace.use_span(span, end_on_exit=False):
                traceparent = current_traceparent()
            accepted.append((result, span, datagram.address, traceparent))
        if not accepted:
            return
        try:
            await publish_accounting_records(
                self._publisher, [(request.record, tp) for request, _, _, tp in accepted]
            )
        except Exception as exc:
            self.counters.publish_failures += 1
            log.warning("publishing %d accounting records failed: %r", len(accepted), exc)
            for _, span, _, _ in accepted:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, "publish failed; not acknowledged"))
                span.end()
            return
        self.counters.batches_published += 1
        for request, span, address, _ in accepted:
            self._send(request.response, address)
            span.end()

    def _screen(self, datagram: _Datagram) -> AcceptedRequest | DroppedRequest:
        try:
            return screen_accounting_request(
                datagram.data,
                str(datagram.address[0]),
                datagram.received_at,
                registry=self._registry,
                decode_attributes=self._decode,
            )
        except Exception as exc:
            log.exception("screening a datagram from %s failed", datagram.address[0])
            return DroppedRequest(DropReason.MALFORMED, f"unexpected: {exc!r}")

    def _count_drop(self, dropped: DroppedRequest, span: Span) -> None:
        name = dropped.reason.value
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        if dropped.nas_id is not None:
            span.set_attribute("radius.nas_id", dropped.nas_id)
        span.set_attribute("radius.drop_reason", dropped.reason.value)
        span.set_status(Status(StatusCode.ERROR, dropped.detail))
        log.debug("dropped RADIUS datagram: %s (%s)", dropped.reason.value, dropped.detail)

    def _send(self, response: bytes, address: Address) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(response, address)
            self.counters.acked += 1
        except OSError as exc:
            log.warning("sending an Accounting-Response to %s failed: %s", address[0], exc)
