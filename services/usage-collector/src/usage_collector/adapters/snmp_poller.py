"""Poll a router's interface byte counters over SNMP (v2c) and publish them.

Reads IF-MIB by numeric OID (no MIB files needed): ifName, ifHCInOctets/ifHCOutOctets (64-bit)
or, for interfaces without them, ifInOctets/ifOutOctets (32-bit), and sysUpTime to tell a
counter wrap from an agent restart (`usage_collector.domain.counters`). The previous sample of
each interface is kept in memory; the first sample of an interface has delta 0.

Samples are published as `RouterCountersSampled` on `ROUTER_COUNTERS_TOPIC`, keyed
"<router_id>/<interface_key>", with one `publish` call per poll. The previous samples only
move forward once that call has returned, so a failed publish loses no traffic: the next poll
measures from the last published sample.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ispbill_core.clock import Clock
from ispbill_core.contracts.usage_collector import (
    ROUTER_COUNTERS_TOPIC,
    RouterCountersSampled,
)
from ispbill_core.events import NewEvent, new_event
from usage_collector.application.ports import AccountingPublisher
from usage_collector.domain.counters import CounterReset, CounterSample, counter_delta

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_NAME = "1.3.6.1.2.1.31.1.1.1.1"
IF_HC_IN_OCTETS = "1.3.6.1.2.1.31.1.1.1.6"
IF_HC_OUT_OCTETS = "1.3.6.1.2.1.31.1.1.1.10"
IF_IN_OCTETS = "1.3.6.1.2.1.2.2.1.10"
IF_OUT_OCTETS = "1.3.6.1.2.1.2.2.1.16"

_EVENT_NAMESPACE = uuid.UUID("5b0f3f0e-8f7c-4b8e-9a51-3c1f0c7d2a61")


class SnmpPollError(RuntimeError):
    """The agent did not answer, or answered with an SNMP error."""


@dataclass(frozen=True, slots=True)
class InterfaceCounters:
    """One row of the interface table as read: counters of `bits` width."""

    if_index: int
    if_name: str | None
    octets_in: int
    octets_out: int
    bits: int

    @property
    def key(self) -> str:
        return self.if_name or str(self.if_index)


@dataclass(frozen=True, slots=True)
class RouterReading:
    uptime_ticks: int | None
    interfaces: list[InterfaceCounters] = field(default_factory=list)


CounterReader = Callable[[], Awaitable[RouterReading]]


class SnmpCounterPoller:
    """Reads one router's counters on each `poll_once` and publishes what moved.

    `interfaces` maps ifName (or ifIndex as a string) to a subscriber hint; when it is not
    empty only those interfaces are sampled, otherwise every interface is (hint None).
    `reader` replaces the SNMP read (tests); by default the agent at host:port is queried.
    """

    def __init__(
        self,
        host: str,
        port: int,
        community: str,
        *,
        interfaces: Mapping[str, str],
        publisher: AccountingPublisher,
        clock: Clock,
        router_id: str,
        timeout: float = 1.0,
        retries: int = 2,
        max_repetitions: int = 25,
        reader: CounterReader | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.community = community
        self.interfaces = dict(interfaces)
        self.publisher = publisher
        self.clock = clock
        self.router_id = router_id
        self.timeout = timeout
        self.retries = retries
        self.max_repetitions = max_repetitions
        self._reader = reader or self.read_snmp
        self._previous: dict[str, tuple[CounterSample, int]] = {}
        self._engine = None

    async def poll_once(self) -> list[RouterCountersSampled]:
        reading = await self._reader()
        sampled_at = self.clock.now()
        events: list[RouterCountersSampled] = []
        updates: dict[str, tuple[CounterSample, int]] = {}
        for row in reading.interfaces:
            key = row.key
            if self.interfaces and key not in self.interfaces:
                continue
            sample = CounterSample(
                interface_key=key,
                octets_in=row.octets_in,
                octets_out=row.octets_out,
                sampled_at=sampled_at,
                uptime_ticks=reading.uptime_ticks,
            )
            delta_in, delta_out, reset = 0, 0, False
            previous = self._previous.get(key)
            if previous is not None and previous[1] == row.bits:
                delta = counter_delta(previous[0], sample, bits=row.bits)
                if isinstance(delta, CounterReset):
                    delta_in, delta_out, reset = delta.delta_in, delta.delta_out, True
                else:
                    delta_in, delta_out = delta
            events.append(
                RouterCountersSampled(
                    router_id=self.router_id,
                    interface_key=key,
                    subscriber_hint=self.interfaces.get(key),
                    octets_in=row.octets_in,
                    octets_out=row.octets_out,
                    delta_in=delta_in,
                    delta_out=delta_out,
                    sampled_at=sampled_at,
                    counter_bits=row.bits,
                    counter_reset=reset,
                    previous_sampled_at=previous[0].sampled_at if previous is not None else None,
                )
            )
            updates[key] = (sample, row.bits)
        if events:
            await self.publisher.publish(ROUTER_COUNTERS_TOPIC, [self._message(e) for e in events])
        self._previous.update(updates)
        return events

    def _message(self, event: RouterCountersSampled) -> tuple[str, NewEvent]:
        key = f"{self.router_id}/{event.interface_key}"
        event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{key}@{event.sampled_at.isoformat()}")
        envelope = new_event(
            event, id=event_id, occurred_at=event.sampled_at, actor=f"router:{self.router_id}"
        )
        return key, envelope

    # --- SNMP ------------------------------------------------------------------------------

    async def read_snmp(self) -> RouterReading:
        """One reading of sysUpTime and the interface table from the agent."""
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

        if self._engine is None:
            self._engine = SnmpEngine()
        uptime = await self._get_uptime()
        names = await self._walk(IF_NAME)
        hc_in = await self._walk(IF_HC_IN_OCTETS)
        hc_out = await self._walk(IF_HC_OUT_OCTETS)
        lo_in = await self._walk(IF_IN_OCTETS)
        lo_out = await self._walk(IF_OUT_OCTETS)
        rows: list[InterfaceCounters] = []
        for if_index in sorted(set(hc_in) | set(lo_in)):
            name = names.get(if_index)
            name_text = str(name) if name is not None and str(name) else None
            if if_index in hc_in and if_index in hc_out:
                octets_in, octets_out, bits = int(hc_in[if_index]), int(hc_out[if_index]), 64
            elif if_index in lo_in and if_index in lo_out:
                octets_in, octets_out, bits = int(lo_in[if_index]), int(lo_out[if_index]), 32
            else:
                continue
            rows.append(InterfaceCounters(if_index, name_text, octets_in, octets_out, bits))
        return RouterReading(uptime_ticks=uptime, interfaces=rows)

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    async def _target(self):
        from pysnmp.hlapi.v3arch.asyncio import UdpTransportTarget

        return await UdpTransportTarget.create(
            (self.host, self.port), timeout=self.timeout, retries=self.retries
        )

    def _auth(self):
        from pysnmp.hlapi.v3arch.asyncio import CommunityData

        # SNMPv2c: what router fleets expose for counters; loopback/management network only
        return CommunityData(self.community, mpModel=1)  # noqa: S508

    async def _get_uptime(self) -> int | None:
        from pysnmp.hlapi.v3arch.asyncio import ContextData, ObjectIdentity, ObjectType, get_cmd
        from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

        error_indication, error_status, _error_index, var_binds = await get_cmd(
            self._engine,
            self._auth(),
            await self._target(),
            ContextData(),
            ObjectType(ObjectIdentity(SYS_UPTIME)),
            lookupMib=False,
        )
        if error_indication:
            raise SnmpPollError(f"{self.host}:{self.port}: {error_indication}")
        if error_status:
            return None
        value = var_binds[0][1]
        if isinstance(value, NoSuchObject | NoSuchInstance | EndOfMibView):
            return None
        return int(value)

    async def _walk(self, column: str) -> dict[int, object]:
        """index -> value of one table column (single-index tables such as ifTable)."""
        from pysnmp.hlapi.v3arch.asyncio import (
            ContextData,
            ObjectIdentity,
            ObjectType,
            bulk_walk_cmd,
        )
        from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

        prefix = tuple(int(part) for part in column.split("."))
        values: dict[int, object] = {}
        async for error_indication, error_status, error_index, var_binds in bulk_walk_cmd(
            self._engine,
            self._auth(),
            await self._target(),
            ContextData(),
            0,
            self.max_repetitions,
            ObjectType(ObjectIdentity(column)),
            lookupMib=False,
            lexicographicMode=False,
        ):
            if error_indication:
                raise SnmpPollError(f"{self.host}:{self.port}: {error_indication}")
            if error_status:
                raise SnmpPollError(
                    f"{self.host}:{self.port}: {error_status.prettyPrint()} at {error_index}"
                )
            for name, value in var_binds:
                oid = tuple(name)
                if oid[: len(prefix)] != prefix or len(oid) != len(prefix) + 1:
                    continue
                if isinstance(value, NoSuchObject | NoSuchInstance | EndOfMibView):
                    continue
                values[oid[-1]] = value
        return values
