"""Poll MikroTik routers over the RouterOS API (librouteros) for subscribers' byte counters.

Two kinds of counters are read, each mapped to a RADIUS username:

- PPPoE server interfaces: RouterOS creates a dynamic interface `<pppoe-USERNAME>` (type
  `pppoe-in`) for each session. Its rx-byte is what the router received from the subscriber
  (the subscriber's upload, `octets_in`), tx-byte what it sent (download, `octets_out`).
  Other interfaces are read only when mapped by name in the configuration.
- Simple queues: `bytes` is "upload/download" as seen from the queue's target, so upload is
  `octets_in` and download `octets_out`. The username is the configured mapping of the queue's
  name, else of its target address, else (by default) the queue's name itself. Dynamic queues
  (made by PPP profiles, hotspot, DHCP) are left out by default: their traffic is the PPPoE
  interface's, and reading both would count it twice.

RouterOS counters are 64-bit, so a decrease is never a wrap: it is a reset, counted from zero
(`usage_collector.domain.counters` classifies it so when no uptime is given). A PPPoE session
that reconnects gets a new interface with a new `.id` and zeroed counters, an item that appears
after the first poll started from zero when it was created, and a router whose uptime says it
restarted since the last poll reset everything; all of these are counted from zero and flagged
`counter_reset`, never as negative usage. The first poll of a router is a baseline (delta 0).

Samples are published as `RouterCountersSampled` on `ROUTER_COUNTERS_TOPIC` (the SNMP poller's
topic), keyed "<router_id>/<interface_key>", with one `publish` call per poll; the previous
samples only move forward once that call has returned, so a failed publish loses no traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from ispbill_core.clock import Clock
from ispbill_core.contracts.usage_collector import (
    ROUTER_COUNTERS_TOPIC,
    CounterSource,
    RouterCountersSampled,
)
from ispbill_core.events import NewEvent, new_event
from usage_collector.application.ports import AccountingPublisher
from usage_collector.domain.counters import CounterReset, CounterSample, counter_delta

log = logging.getLogger(__name__)

API_PORT = 8728
API_SSL_PORT = 8729
PPPOE_SERVER_INTERFACE_TYPE = "pppoe-in"
QUEUE_KEY_PREFIX = "queue:"
COUNTER_BITS = 64

_PPPOE_INTERFACE_NAME = re.compile(r"^<pppoe-(.+)>$")
_UPTIME_UNITS = re.compile(r"(\d+)([wdhms])")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
#: how far a router's uptime may trail the time between two polls before it counts as a restart
_RESTART_SLACK_SECONDS = 60.0
#: `print stats` shows the byte counters; .proplist keeps the answer to what is used
_INTERFACE_PROPS = "=.proplist=.id,name,type,rx-byte,tx-byte"
_EVENT_NAMESPACE = uuid.UUID("0b6c4e8e-2f43-4a55-9d0e-6a0f1d7b9c31")


# --- errors ---------------------------------------------------------------------------------


class RouterOsPollError(RuntimeError):
    """A poll of one router failed; the message starts with the router's id."""

    def __init__(self, router_id: str, message: str) -> None:
        super().__init__(f"router {router_id}: {message}")
        self.router_id = router_id


class RouterOsLoginError(RouterOsPollError):
    """The router refused the credentials."""


class RouterOsConnectionError(RouterOsPollError):
    """Could not connect, timed out, or the connection broke (it is reopened on the next poll)."""


class RouterOsCommandError(RouterOsPollError):
    """The router answered a command with !trap (e.g. a user without the read policy)."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouterOsRouter:
    """One router to poll, its credentials, and how its counters map to usernames.

    `interfaces` maps interface names to usernames (overriding the PPPoE name, and adding
    non-PPPoE interfaces such as a customer's Ethernet port). `queues` maps simple-queue names
    and `queue_targets` target addresses ("10.0.0.5" or "10.0.0.5/32") to usernames.
    """

    router_id: str
    host: str
    username: str
    password: str = field(repr=False)
    port: int | None = None
    tls: bool = False
    tls_verify: bool = True
    tls_ca_file: str | None = None
    login_method: Literal["plain", "token"] = "plain"
    timeout: float = 10.0
    poll_timeout: float = 120.0
    pppoe: bool = True
    simple_queues: bool = True
    dynamic_queues: bool = False
    queue_name_is_username: bool = True
    interfaces: Mapping[str, str] = field(default_factory=dict)
    queues: Mapping[str, str] = field(default_factory=dict)
    queue_targets: Mapping[str, str] = field(default_factory=dict)

    @property
    def api_port(self) -> int:
        if self.port is not None:
            return self.port
        return API_SSL_PORT if self.tls else API_PORT

    def ssl_context(self) -> ssl.SSLContext | None:
        """api-ssl: verified against `tls_ca_file` (or the system CAs) unless `tls_verify` is off.

        A router whose api-ssl service has no certificate only offers anonymous ciphers; those
        are not enabled here, give the service a certificate instead.
        """
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca_file)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


# --- what a poll reads, and how it maps to subscribers (pure) -------------------------------


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One interface or simple queue as read, with the username it maps to.

    `item_id` is the router's `.id` of the item: a new id under the same key is a new item
    (a PPPoE session that reconnected) whose counters started from zero.
    """

    key: str
    item_id: str
    source: CounterSource
    octets_in: int
    octets_out: int
    username: str | None


@dataclass(frozen=True, slots=True)
class RouterOsReading:
    uptime_seconds: int | None
    rows: list[CounterRow] = field(default_factory=list)
    malformed: int = 0


def username_from_pppoe_interface(name: str) -> str | None:
    """`<pppoe-alice>` -> "alice" (the name RouterOS gives a PPPoE server session)."""
    match = _PPPOE_INTERFACE_NAME.match(name)
    return match.group(1) if match else None


def normalize_target(target: str) -> str:
    """One queue target as a mapping key: a single host without its /32 or /128."""
    text = target.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text  # an interface name such as <pppoe-alice> or ether5
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def parse_uptime(text: str) -> int | None:
    """RouterOS uptime in seconds: "1w2d3h4m5s" (v7), "2d03:04:05" or "03:04:05" (v6)."""
    text = text.strip()
    clock = re.fullmatch(r"(.*?)(\d+):(\d{2}):(\d{2})", text)
    seconds = 0
    if clock:
        prefix, hours, minutes, secs = clock.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + int(secs)
        text = prefix
    if text and _UPTIME_UNITS.sub("", text):
        return None  # something that is not a count and a unit
    if not text and not clock:
        return None
    return seconds + sum(int(n) * _UNIT_SECONDS[u] for n, u in _UPTIME_UNITS.findall(text))


def parse_queue_bytes(value: str) -> tuple[int, int]:
    """A simple queue's `bytes`, "upload/download" -> (upload, download)."""
    upload, _, download = value.partition("/")
    if not upload.isdigit() or not download.isdigit():
        raise ValueError(f"not an upload/download byte pair: {value!r}")
    return int(upload), int(download)


class SubscriberMapping:
    """Decides which interfaces and queues of a router are read, and whose they are."""

    def __init__(self, router: RouterOsRouter) -> None:
        self.router = router
        self.targets = {normalize_target(k): v for k, v in router.queue_targets.items()}

    def interface_username(self, name: str, type_: str) -> tuple[bool, str | None]:
        """(read it?, username) for an interface."""
        if name in self.router.interfaces:
            return True, self.router.interfaces[name]
        if self.router.pppoe and type_ == PPPOE_SERVER_INTERFACE_TYPE:
            return True, username_from_pppoe_interface(name)
        return False, None

    def queue_username(self, name: str, target: str, *, dynamic: bool) -> tuple[bool, str | None]:
        """(read it?, username) for a simple queue: name mapping, target mapping, then name."""
        if not self.router.simple_queues or (dynamic and not self.router.dynamic_queues):
            return False, None
        if name in self.router.queues:
            return True, self.router.queues[name]
        entries = [normalize_target(t) for t in target.split(",") if t.strip()]
        owners = {self.targets[t] for t in entries if t in self.targets}
        if len(owners) == 1:
            return True, owners.pop()
        if len(owners) > 1:
            log.warning("simple queue %r: targets map to several users %s", name, sorted(owners))
            return True, None
        if self.router.queue_name_is_username:
            return True, username_from_pppoe_interface(name) or name
        return True, None


def _text(value: object) -> str:
    """librouteros turns "123" into 123 and "true"/"yes" into True; names want the text back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag(value: object) -> bool:
    return value is True or value in ("true", "yes")


def interface_rows(
    items: Sequence[Mapping[str, Any]], mapping: SubscriberMapping
) -> tuple[list[CounterRow], int]:
    """`/interface/print stats` items -> rows to sample, and how many were malformed."""
    rows: list[CounterRow] = []
    malformed = 0
    for item in items:
        name = _text(item.get("name", ""))
        wanted, username = mapping.interface_username(name, _text(item.get("type", "")))
        if not wanted:
            continue
        try:
            octets_in, octets_out = int(item["rx-byte"]), int(item["tx-byte"])
            item_id = _text(item[".id"])
        except (KeyError, TypeError, ValueError):
            malformed += 1
            log.warning("interface %r: no usable .id/rx-byte/tx-byte in %r", name, dict(item))
            continue
        if octets_in < 0 or octets_out < 0:
            malformed += 1
            continue
        rows.append(
            CounterRow(
                name, item_id, CounterSource.ROUTEROS_INTERFACE, octets_in, octets_out, username
            )
        )
    return rows, malformed


def queue_rows(
    items: Sequence[Mapping[str, Any]], mapping: SubscriberMapping
) -> tuple[list[CounterRow], int]:
    """`/queue/simple/print` items -> rows to sample, and how many were malformed."""
    rows: list[CounterRow] = []
    malformed = 0
    for item in items:
        name = _text(item.get("name", ""))
        wanted, username = mapping.queue_username(
            name, _text(item.get("target", "")), dynamic=_flag(item.get("dynamic"))
        )
        if not wanted:
            continue
        try:
            upload, download = parse_queue_bytes(_text(item["bytes"]))
            item_id = _text(item[".id"])
        except (KeyError, ValueError):
            malformed += 1
            log.warning("simple queue %r: no usable .id/bytes in %r", name, dict(item))
            continue
        rows.append(
            CounterRow(
                QUEUE_KEY_PREFIX + name,
                item_id,
                CounterSource.ROUTEROS_SIMPLE_QUEUE,
                upload,
                download,
                username,
            )
        )
    return rows, malformed


# --- deltas (pure) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreviousSample:
    item_id: str
    sample: CounterSample


def router_restarted(
    previous: tuple[int, datetime] | None, uptime_seconds: int | None, now: datetime
) -> bool:
    """Did the router boot since the previous poll? (uptime went back, or is shorter than
    the time since that poll: it booted after it)."""
    if previous is None or uptime_seconds is None:
        return False
    previous_uptime, previous_at = previous
    if uptime_seconds < previous_uptime:
        return True
    elapsed = (now - previous_at).total_seconds()
    return uptime_seconds + _RESTART_SLACK_SECONDS < elapsed


def row_delta(
    previous: PreviousSample | None,
    row: CounterRow,
    sample: CounterSample,
    *,
    baseline: bool,
    restarted: bool,
) -> tuple[int, int, bool]:
    """(delta_in, delta_out, counter_reset) of one row.

    `baseline`: this is the router's first poll, so an item seen for the first time may have
    carried traffic before anyone looked (delta 0). Later, a new item, a new `.id` under the
    same key, or a router restart means counters that started from zero.
    """
    if previous is None:
        if baseline:
            return 0, 0, False
        return row.octets_in, row.octets_out, True
    if restarted or previous.item_id != row.item_id:
        return row.octets_in, row.octets_out, True
    delta = counter_delta(previous.sample, sample, bits=COUNTER_BITS)
    if isinstance(delta, CounterReset):
        return delta.delta_in, delta.delta_out, True
    return delta[0], delta[1], False


def reconnect_delay(failures: int, *, min_backoff: float, max_backoff: float) -> float:
    """Seconds to wait after `failures` failed polls in a row: doubling, capped."""
    if failures <= 0:
        return 0.0
    return float(min(max_backoff, min_backoff * 2.0 ** min(failures - 1, 32)))


# --- the poller -----------------------------------------------------------------------------


@dataclass
class RouterOsPollCounters:
    """What one router's poller has done; `as_dict` for logs and the counters endpoint."""

    polls: int = 0
    polls_failed: int = 0
    connections: int = 0
    login_failures: int = 0
    connection_failures: int = 0
    command_failures: int = 0
    publish_failures: int = 0
    malformed_items: int = 0
    samples_published: int = 0
    counter_resets: int = 0
    unmapped_samples: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


RouterReader = Callable[[], Awaitable[RouterOsReading]]


class RouterOsCounterPoller:
    """Reads one router's PPPoE interfaces and simple queues on each `poll_once`.

    The API connection is kept open between polls and reopened on the next poll after any
    connection failure. `reader` replaces the API read (tests).
    """

    def __init__(
        self,
        router: RouterOsRouter,
        *,
        publisher: AccountingPublisher,
        clock: Clock,
        reader: RouterReader | None = None,
    ) -> None:
        self.router = router
        self.publisher = publisher
        self.clock = clock
        self.mapping = SubscriberMapping(router)
        self.counters = RouterOsPollCounters()
        self._reader = reader or self.read_router
        self._api: Any = None
        self._previous: dict[str, PreviousSample] = {}
        self._previous_uptime: tuple[int, datetime] | None = None
        self._baseline_taken = False
        self._last_poll_at: datetime | None = None

    @property
    def router_id(self) -> str:
        return self.router.router_id

    async def poll_once(self) -> list[RouterCountersSampled]:
        """Read, compute deltas, publish once; raises `RouterOsPollError` or the bus's error."""
        self.counters.polls += 1
        try:
            return await self._poll()
        except Exception:
            self.counters.polls_failed += 1
            raise

    async def _poll(self) -> list[RouterCountersSampled]:
        reading = await self._reader()
        sampled_at = self.clock.now()
        self.counters.malformed_items += reading.malformed
        restarted = router_restarted(self._previous_uptime, reading.uptime_seconds, sampled_at)
        if restarted:
            log.info("router %s restarted since the last poll: counters from zero", self.router_id)
        events: list[RouterCountersSampled] = []
        updates: dict[str, PreviousSample] = {}
        for row in reading.rows:
            if row.key in updates:
                continue  # RouterOS names are unique per menu; keep the first if not
            sample = CounterSample(row.key, row.octets_in, row.octets_out, sampled_at)
            previous = self._previous.get(row.key)
            delta_in, delta_out, reset = row_delta(
                previous,
                row,
                sample,
                baseline=not self._baseline_taken,
                restarted=restarted,
            )
            events.append(
                RouterCountersSampled(
                    router_id=self.router_id,
                    interface_key=row.key,
                    octets_in=row.octets_in,
                    octets_out=row.octets_out,
                    delta_in=delta_in,
                    delta_out=delta_out,
                    sampled_at=sampled_at,
                    counter_bits=COUNTER_BITS,
                    counter_reset=reset,
                    source=row.source,
                    username=row.username,
                    # an item new since the last poll (a PPPoE session) counted from then on
                    previous_sampled_at=(
                        previous.sample.sampled_at if previous is not None else self._last_poll_at
                    ),
                )
            )
            updates[row.key] = PreviousSample(row.item_id, sample)
        if events:
            try:
                await self.publisher.publish(
                    ROUTER_COUNTERS_TOPIC, [self._message(e) for e in events]
                )
            except Exception:
                self.counters.publish_failures += 1
                raise
        # items no longer on the router are forgotten: if one comes back, it is a new item
        self._previous = updates
        if reading.uptime_seconds is not None:
            self._previous_uptime = (reading.uptime_seconds, sampled_at)
        self._baseline_taken = True
        self._last_poll_at = sampled_at
        self.counters.samples_published += len(events)
        self.counters.counter_resets += sum(e.counter_reset for e in events)
        self.counters.unmapped_samples += sum(e.username is None for e in events)
        return events

    def _message(self, event: RouterCountersSampled) -> tuple[str, NewEvent]:
        key = f"{self.router_id}/{event.interface_key}"
        event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{key}@{event.sampled_at.isoformat()}")
        envelope = new_event(
            event, id=event_id, occurred_at=event.sampled_at, actor=f"router:{self.router_id}"
        )
        return key, envelope

    # --- the loop ----------------------------------------------------------------------------

    async def run(
        self,
        interval: float,
        *,
        stop: asyncio.Event | None = None,
        min_backoff: float = 1.0,
        max_backoff: float | None = None,
        jitter: float = 0.1,
    ) -> None:
        """Poll every `interval` seconds until `stop` is set (or the task is cancelled).

        A failed poll is logged with the router's id and counted, and retried after a
        doubling delay from `min_backoff` up to `max_backoff` (default: `interval`), shortened
        at random by up to `jitter` so that routers behind one failed link do not reconnect
        in step. The loop itself never ends on a poll's error.
        """
        await poll_periodically(
            self,
            interval,
            stop=stop,
            min_backoff=min_backoff,
            max_backoff=max_backoff,
            jitter=jitter,
        )

    # --- the RouterOS API --------------------------------------------------------------------

    async def read_router(self) -> RouterOsReading:
        """One reading of uptime, interfaces (with stats) and simple queues over the API."""
        from librouteros.exceptions import LibRouterosError, MultiTrapError, TrapError
        from librouteros.query import Key

        api = await self._connection()
        try:
            async with asyncio.timeout(self.router.poll_timeout):
                resource = [
                    item async for item in api.path("system", "resource").select(Key("uptime"))
                ]
                interfaces: list[Mapping[str, Any]] = []
                if self.router.pppoe or self.router.interfaces:
                    interfaces = [
                        item
                        async for item in api.rawCmd(
                            "/interface/print",
                            "=stats=",
                            "=.proplist=.id,name,type,rx-byte,tx-byte",
                        )
                    ]
                queues: list[Mapping[str, Any]] = []
                if self.router.simple_queues:
                    keys = (Key(".id"), Key("name"), Key("target"), Key("bytes"), Key("dynamic"))
                    queues = [item async for item in api.path("queue", "simple").select(*keys)]
        except (TrapError, MultiTrapError) as exc:
            # a complete answer: the connection is still in step, keep it
            self.counters.command_failures += 1
            raise RouterOsCommandError(self.router_id, f"command refused: {exc}") from None
        except (OSError, TimeoutError, LibRouterosError) as exc:
            self.counters.connection_failures += 1
            await self._disconnect()
            raise RouterOsConnectionError(
                self.router_id, f"connection lost while reading: {_describe(exc)}"
            ) from None
        uptime = parse_uptime(_text(resource[0]["uptime"])) if resource else None
        rows, bad_interfaces = interface_rows(interfaces, self.mapping)
        more_rows, bad_queues = queue_rows(queues, self.mapping)
        return RouterOsReading(uptime, rows + more_rows, bad_interfaces + bad_queues)

    async def _connection(self) -> Any:
        if self._api is not None:
            return self._api
        from librouteros import async_connect
        from librouteros.exceptions import LibRouterosError, MultiTrapError, TrapError
        from librouteros.login import async_plain, async_token

        router = self.router
        try:
            self._api = await async_connect(
                router.host,
                router.username,
                router.password,
                port=router.api_port,
                timeout=router.timeout,
                ssl_wrapper=router.ssl_context(),
                login_method=async_token if router.login_method == "token" else async_plain,
            )
        except (TrapError, MultiTrapError) as exc:
            self.counters.login_failures += 1
            raise RouterOsLoginError(
                self.router_id, f"login as {router.username!r} refused: {exc}"
            ) from None
        except (OSError, TimeoutError, LibRouterosError) as exc:
            self.counters.connection_failures += 1
            raise RouterOsConnectionError(
                self.router_id,
                f"cannot connect to {router.host}:{router.api_port}: {_describe(exc)}",
            ) from None
        self.counters.connections += 1
        log.info(
            "router %s: logged in to %s:%s as %s%s",
            self.router_id,
            router.host,
            router.api_port,
            router.username,
            " (api-ssl)" if router.tls else "",
        )
        return self._api

    async def _disconnect(self) -> None:
        api, self._api = self._api, None
        if api is None:
            return
        with contextlib.suppress(Exception):
            await api.close()

    async def close(self) -> None:
        """Say /quit and close the connection (the router answers with !fatal, unread)."""
        if self._api is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._api.protocol.writeSentence("/quit"), 1.0)
        await self._disconnect()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PeriodicPoller(Protocol):
    """What `poll_periodically` drives: this module's poller, or the SNMP one."""

    @property
    def router_id(self) -> str: ...

    async def poll_once(self) -> Sequence[object]: ...

    async def close(self) -> None: ...


async def poll_periodically(
    poller: PeriodicPoller,
    interval: float,
    *,
    stop: asyncio.Event | None = None,
    min_backoff: float = 1.0,
    max_backoff: float | None = None,
    jitter: float = 0.1,
    expected: tuple[type[Exception], ...] = (),
) -> None:
    """Call `poller.poll_once()` every `interval` seconds until `stop` is set; see `run`.

    Failures of the kinds in `expected` (and the RouterOS poller's, and network errors) are
    logged as warnings without a traceback; anything else is logged with its traceback.
    """
    expected = (RouterOsPollError, OSError, TimeoutError, *expected)
    if interval <= 0:
        raise ValueError(f"poll interval must be positive, got {interval}")
    stop = stop or asyncio.Event()
    cap = interval if max_backoff is None else max_backoff
    loop = asyncio.get_running_loop()
    failures = 0
    try:
        while not stop.is_set():
            started = loop.time()
            try:
                await poller.poll_once()
            except Exception as exc:
                failures += 1
                delay = reconnect_delay(failures, min_backoff=min_backoff, max_backoff=cap)
                delay *= 1 - jitter * random.random()
                # the router's own error already names it; others (the bus, SNMP) do not
                what = (
                    str(exc)
                    if isinstance(exc, RouterOsPollError)
                    else f"router {poller.router_id}: poll failed: {_describe(exc)}"
                )
                log.log(
                    logging.WARNING if isinstance(exc, expected) else logging.ERROR,
                    "%s (failure %d in a row; retry in %.1fs)",
                    what,
                    failures,
                    delay,
                    exc_info=not isinstance(exc, expected),
                )
            else:
                if failures:
                    log.info(
                        "router %s: polling again after %d failures", poller.router_id, failures
                    )
                failures = 0
                delay = max(0.0, interval - (loop.time() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        await poller.close()
