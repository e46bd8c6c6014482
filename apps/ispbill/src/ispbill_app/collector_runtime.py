"""The collector's pieces the composition root adds around the RADIUS server: where each
bus topic lands in the embedded ledger, and the router-counter pollers (SNMP, RouterOS API)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from ispbill_core.clock import Clock
from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    ROUTER_COUNTERS_TOPIC,
    accounting_stream,
    router_counters_stream,
)
from usage_collector.application.ports import AccountingPublisher

log = logging.getLogger("ispbill.collector")


def embedded_stream_for(topic: str, key: str) -> str:
    """LedgerPublisher's topic -> stream mapping for everything the collector publishes.

    Keys are "<nas_id>/<acct_session_id>" and "<router_id>/<interface_key>": one stream per
    NAS and per router keeps each one's order, as a Kafka partition would.
    """
    owner, _, _ = key.partition("/")
    if topic == ACCOUNTING_TOPIC:
        return accounting_stream(owner)
    if topic == ROUTER_COUNTERS_TOPIC:
        return router_counters_stream(owner)
    raise ValueError(f"no ledger stream for topic {topic!r}")


class ConfiguredPollers:
    """The pollers of ISPBILL_POLLERS (a TOML or JSON file), or none when it is unset.

    The file is read at start-up so that a mistake in it stops the process with every
    problem listed, rather than leaving a router silently unpolled.
    """

    def __init__(
        self, path: str, publisher: AccountingPublisher, clock: Clock, *, only_on_host: str = ""
    ) -> None:
        from usage_collector.pollers import CounterPollers, PollerConfigError, load_poller_config

        self._pollers: CounterPollers | None = None
        if not path:
            return
        if only_on_host and only_on_host != socket.gethostname():
            # Several collectors (replicas) share one config; each router must be polled by
            # one of them, or every sample and its deltas would be published once per replica.
            log.info("router pollers run on %s, not on %s", only_on_host, socket.gethostname())
            return
        try:
            config = load_poller_config(Path(path))
        except (PollerConfigError, OSError) as exc:
            raise SystemExit(f"ISPBILL_POLLERS: {exc}") from exc
        self._pollers = CounterPollers(config, publisher, clock)

    def counters(self) -> dict[str, dict[str, int]]:
        return {} if self._pollers is None else self._pollers.counters()

    async def run(self) -> None:
        if self._pollers is None:
            return
        stop = asyncio.Event()
        try:
            await self._pollers.run(stop)
        finally:
            stop.set()
