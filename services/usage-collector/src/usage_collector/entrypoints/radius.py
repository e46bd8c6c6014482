"""The RADIUS accounting listener: UDP in, one durable publish per batch, then the responses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracer,
    ProxyTracer,
    Span,
    Status,
    StatusCode,
)

from ispbill_core.clock import Clock
from ispbill_core.telemetry import spans_are_exported
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.nas_registry import NasRegistry, normalise_ip
from usage_collector.application.ports import AccountingPublisher, AttributeDecoder
from usage_collector.application.publish_accounting_records import publish_accounting_records
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    DroppedRequest,
    DropReason,
    StatusServerRequest,
    screen_accounting_request,
)
from usage_collector.domain.radius_packet import MAX_LENGTH

log = logging.getLogger(__name__)
tracer = trace.get_tracer("ispbill.usage_collector")

#: Bursts (a NAS reboot makes every session stop at once) must wait in the kernel, not be lost.
DEFAULT_RECEIVE_BUFFER = 16 * 1024 * 1024
#: Responses of a whole batch leave in one tight loop; room for them avoids EAGAIN.
DEFAULT_SEND_BUFFER = 4 * 1024 * 1024

Address = tuple[Any, ...]
#: A screened request waiting for the publish: what to publish, its span, where to answer, and
#: the traceparent that rides on the event.
_Pending = tuple[AcceptedRequest, Span | None, Address, str | None]


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
    #: Status-Server requests (RFC 5997) answered.
    status_server: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DropsBySource:
    """Dropped datagrams per source address and reason: which NAS has the wrong secret, which
    router sends accounting without being registered (its usage is not billed).

    At most `limit` addresses are kept, so a flood from spoofed sources cannot exhaust memory;
    drops from addresses beyond them are counted under "other". Only the drop path touches it.
    """

    OTHER = "other"

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._by_source: dict[str, dict[str, Any]] = {}

    def count(self, source: str, reason: str, nas_id: str | None, at: datetime) -> None:
        seen = at.isoformat(timespec="seconds")
        entry = self._by_source.get(source)
        if entry is None:
            if len(self._by_source) >= self.limit:
                source = self.OTHER
            entry = self._by_source.get(source)
            if entry is None:
                entry = self._by_source[source] = {
                    "nas_id": None if source == self.OTHER else nas_id,
                    "first_seen": seen,
                    "reasons": {},
                }
        reasons = entry["reasons"]
        reasons[reason] = reasons.get(reason, 0) + 1
        entry["last_seen"] = seen
        if nas_id is not None and source != self.OTHER:  # "other" is many addresses, no one NAS
            entry["nas_id"] = nas_id

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """{source: {nas_id (None: no NAS there), first_seen, last_seen, reasons: {reason: n}}}"""
        return {
            source: {**entry, "reasons": dict(entry["reasons"])}
            for source, entry in self._by_source.items()
        }


class AccountingServer:
    """RFC 2866 accounting server whose Accounting-Response means "durable on the bus".

    The socket is non-blocking and read with `loop.add_reader`: each wakeup drains up to
    `max_batch` datagrams with recvfrom in a tight loop (the nearest Python has to recvmmsg),
    and screens each at once, so that screening overlaps the publish in flight. One worker
    takes every screened request waiting (up to `max_batch`), publishes their records with one
    publisher call and only then sends their responses, again in a tight loop. While a publish
    is in flight the next batch fills up, so batches grow with load (group commit). A failed
    publish sends nothing: the NAS retransmits.

    With `reuse_port=True` the socket is bound with SO_REUSEPORT, so several processes can
    serve one port; the kernel spreads NASes over them by source address and port, so the
    requests of one NAS socket (and so of one session) stay in one process, in order.
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
        send_buffer: int = DEFAULT_SEND_BUFFER,
        stop_timeout: float = 5.0,
        reuse_port: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.host = host
        self.port = port
        self.counters = AccountingCounters()
        self.drops = DropsBySource()
        self._registry = nas_registry
        self._publisher = publisher
        self._clock = clock
        self._decode = decode_attributes or DictionaryAttributeDecoder()
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._receive_buffer = receive_buffer
        self._send_buffer = send_buffer
        self._stop_timeout = stop_timeout
        self._reuse_port = reuse_port
        self._pending: deque[_Pending] = deque()
        #: Responses the kernel had no room for; sent when the socket is writable again.
        self._unsent: deque[tuple[bytes, Address, bool]] = deque()
        self._wakeup = asyncio.Event()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False
        #: Whether a tracer provider is set (start() looks); without one no span is made at all.
        self._traced = False
        self.receive_buffer_size: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); with port 0 the kernel's choice, known after start()."""
        if self._sock is None:
            return self.host, self.port
        sockname = self._sock.getsockname()
        return sockname[0], sockname[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sock = await self._bind(loop)
        self._loop = loop
        self._stopping = False
        self._traced = tracing_is_on()
        self._worker = asyncio.create_task(self._run(), name="radius-accounting-worker")
        loop.add_reader(self._sock.fileno(), self._read_ready)
        log.info(
            "RADIUS accounting listening on %s:%s%s",
            *self.address,
            " (SO_REUSEPORT)" if self._reuse_port else "",
        )

    async def stop(self) -> None:
        """Stop receiving; let the batches screened so far finish (bounded), close the socket."""
        self._stopping = True
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._wakeup.set()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), self._stop_timeout)
            except TimeoutError:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
            self._worker = None
        while self._pending:
            _, span, _, _ = self._pending.popleft()
            if span is not None:
                _end_unacknowledged(span, "stopped before it was published")
        if self._sock is not None:
            if self._loop is not None and self._unsent:
                self._loop.remove_writer(self._sock.fileno())
            self._unsent.clear()
            self._sock.close()
            self._sock = None

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if self._reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setblocking(False)
                sock.bind(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._set_buffers(sock)
            return sock
        raise error or OSError(f"cannot resolve {self.host!r} to bind to")

    def _set_buffers(self, sock: socket.socket) -> None:
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
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)

    # -- receiving: called by the event loop whenever the socket is readable ---------------
    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None or self._stopping:
            return
        recvfrom = sock.recvfrom
        counters = self.counters
        pending = self._pending
        datagrams: list[tuple[bytes, Address]] = []
        for _ in range(self._max_batch):
            try:
                datagrams.append(recvfrom(MAX_LENGTH))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors for responses to a NAS that went away; nothing to do but note them.
                log.debug("RADIUS socket error: %s", exc)
                break
        if not datagrams:
            return
        counters.received += len(datagrams)
        # One clock read per wakeup: these datagrams were all waiting in the socket together.
        received_at = self._clock.now()
        room = self._max_pending - len(pending)
        if len(datagrams) > room:
            counters.dropped_overload += len(datagrams) - max(room, 0)
            datagrams = datagrams[: max(room, 0)]
        if self._traced:
            started_ns = time.time_ns()
            for data, address in datagrams:
                accepted = self._screen_traced(data, address, received_at, started_ns)
                if accepted is not None:
                    pending.append(accepted)
        else:
            # The hot path: no span, nothing per datagram but screening it.
            registry = self._registry
            decode = self._decode
            for data, address in datagrams:
                try:
                    result = screen_accounting_request(
                        data, address[0], received_at, registry=registry, decode_attributes=decode
                    )
                except Exception as exc:
                    log.exception("screening a datagram from %s failed", address[0])
                    result = DroppedRequest(DropReason.MALFORMED, f"unexpected: {exc!r}")
                if isinstance(result, AcceptedRequest):
                    pending.append((result, None, address, None))
                elif isinstance(result, StatusServerRequest):
                    self._answer_status_server(result, address)
                else:
                    self._count_drop(result, str(address[0]), None)
        if pending:
            self._wakeup.set()

    def _screen_traced(
        self, data: bytes, address: Address, received_at: datetime, started_ns: int
    ) -> _Pending | None:
        source = str(address[0])
        try:
            result = screen_accounting_request(
                data, source, received_at, registry=self._registry, decode_attributes=self._decode
            )
        except Exception as exc:
            log.exception("screening a datagram from %s failed", source)
            result = DroppedRequest(DropReason.MALFORMED, f"unexpected: {exc!r}")
        if isinstance(result, DroppedRequest):
            self._count_drop(result, source, started_ns)
            return None
        if isinstance(result, StatusServerRequest):
            self._answer_status_server(result, address)
            return None
        record = result.record
        # One span per datagram, started when it was read; attributes given at once, as a
        # sampler sees them and as a non-recording span ignores them at no further cost.
        span = tracer.start_span(
            "radius.accounting",
            start_time=started_ns,
            attributes={
                "net.peer.ip": source,
                "radius.nas_id": record.nas_id,
                "radius.acct_session_id": record.acct_session_id,
                "radius.acct_status_type": record.status.value,
            },
        )
        return result, span, address, _traceparent(span)

    def _answer_status_server(self, request: StatusServerRequest, address: Address) -> None:
        """Alive: answered at once, behind any responses still waiting for the socket."""
        self.counters.status_server += 1
        self._send([(request.response, address)], acks=False)

    def _count_drop(self, dropped: DroppedRequest, source: str, started_ns: int | None) -> None:
        name = dropped.reason.value
        setattr(self.counters, name, getattr(self.counters, name) + 1)
        try:
            shown = normalise_ip(source)
        except ValueError:
            shown = source
        self.drops.count(shown, name, dropped.nas_id, self._clock.now())
        if started_ns is not None:
            attributes = {"net.peer.ip": source, "radius.drop_reason": name}
            if dropped.nas_id is not None:
                attributes["radius.nas_id"] = dropped.nas_id
            span = tracer.start_span(
                "radius.accounting", start_time=started_ns, attributes=attributes
            )
            if span.is_recording():
                span.set_status(Status(StatusCode.ERROR, dropped.detail))
            span.end()
        log.debug("dropped RADIUS datagram: %s (%s)", name, dropped.detail)

    # -- publishing and answering ------------------------------------------------------------
    async def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [pending.popleft() for _ in range(min(self._max_batch, len(pending)))]
            try:
                await self._publish_and_answer(batch)
            except asyncio.CancelledError:
                for _, span, _, _ in batch:
                    if span is not None:
                        _end_unacknowledged(span, "stopped while publishing")
                raise
            except Exception:
                # A bug must cost one batch (unacknowledged, so retransmitted), not the server.
                log.exception("RADIUS accounting batch of %d failed", len(batch))

    async def _publish_and_answer(self, batch: list[_Pending]) -> None:
        try:
            await publish_accounting_records(
                self._publisher, [(request.record, tp) for request, _, _, tp in batch]
            )
        except Exception as exc:
            self.counters.publish_failures += 1
            log.warning("publishing %d accounting records failed: %r", len(batch), exc)
            for _, span, _, _ in batch:
                if span is not None:
                    if span.is_recording():
                        span.record_exception(exc)
                    _end_unacknowledged(span, "publish failed; not acknowledged")
            return
        self.counters.batches_published += 1
        self._send([(request.response, address) for request, _, address, _ in batch])
        if self._traced:
            for _, span, _, _ in batch:
                if span is not None:
                    span.end()

    def _send(self, responses: list[tuple[bytes, Address]], *, acks: bool = True) -> None:
        """Send in order; what the kernel has no room for waits for the socket to be writable.
        `acks`: the responses acknowledge records (counted as acked) or not (Status-Server)."""
        sock = self._sock
        if sock is None:
            return
        if self._unsent:  # keep the order: behind the responses already waiting
            self._unsent.extend((response, address, acks) for response, address in responses)
            return
        sendto = sock.sendto
        sent = 0
        for index, (response, address) in enumerate(responses):
            try:
                sendto(response, address)
            except (BlockingIOError, InterruptedError):
                self._unsent.extend((r, a, acks) for r, a in responses[index:])
                assert self._loop is not None
                self._loop.add_writer(sock.fileno(), self._send_unsent)
                break
            except OSError as exc:
                log.warning("sending an Accounting-Response to %s failed: %s", address[0], exc)
                continue
            sent += 1
        if acks:
            self.counters.acked += sent

    def _send_unsent(self) -> None:
        sock = self._sock
        unsent = self._unsent
        sent = 0
        while sock is not None and unsent:
            response, address, acks = unsent[0]
            try:
                sock.sendto(response, address)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("sending an Accounting-Response to %s failed: %s", address[0], exc)
            else:
                sent += acks
            unsent.popleft()
        self.counters.acked += sent
        if not unsent and sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())


def tracing_is_on() -> bool:
    """Whether spans go anywhere: a provider with an exporter is set (telemetry.setup_tracing).

    Without one, a span is a no-op or recorded and dropped, but making it still cost 2 us or
    more per datagram; the server then makes none, and records carry no traceparent.
    """
    if isinstance(tracer, NoOpTracer):
        return False
    if isinstance(tracer, ProxyTracer):  # the API's: it follows the global provider
        return spans_are_exported()
    return True


def _traceparent(span: Span) -> str | None:
    """The W3C traceparent of `span`, as the propagator would write it, without a context."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def _end_unacknowledged(span: Span, why: str) -> None:
    if span.is_recording():
        span.set_status(Status(StatusCode.ERROR, why))
    span.end()
