"""Wiring of the collector: the ledger-backed NAS registry and the accounting server."""

from __future__ import annotations

from dataclasses import dataclass

from ispbill_core.clock import Clock, SystemClock
from ispbill_core.contracts.usage_collector import accounting_stream
from ispbill_core.eventstore import EventStore
from ispbill_core.sealing import Keyring
from usage_collector.adapters.ledger_nas_registry import LedgerNasRegistry
from usage_collector.application.ports import AccountingPublisher
from usage_collector.entrypoints.radius import AccountingServer

RADIUS_ACCOUNTING_PORT = 1813


def accounting_stream_for(topic: str, key: str) -> str:
    """For the embedded bus (LedgerPublisher): the message key "<nas>/<session>" -> NAS stream."""
    nas_id, _, _ = key.partition("/")
    return accounting_stream(nas_id)


@dataclass
class UsageCollector:
    nas_registry: LedgerNasRegistry
    accounting_server: AccountingServer

    async def start(self) -> None:
        # NASes first: a request from a NAS we have not loaded yet would be dropped as unknown.
        await self.nas_registry.start()
        await self.accounting_server.start()

    async def stop(self) -> None:
        await self.accounting_server.stop()
        await self.nas_registry.stop()


def bootstrap(
    store: EventStore,
    publisher: AccountingPublisher,
    *,
    keyring: Keyring,
    host: str = "127.0.0.1",
    port: int = RADIUS_ACCOUNTING_PORT,
    clock: Clock | None = None,
    reuse_port: bool = False,
) -> UsageCollector:
    """The collector over a ledger (NAS registry) and a bus (records); call start() and stop().

    `keyring` opens the NAS secrets sealed in the ledger. `reuse_port=True` binds with
    SO_REUSEPORT, for several collector processes on one port.
    """
    registry = LedgerNasRegistry(store, keyring)
    server = AccountingServer(
        host, port, registry, publisher, clock or SystemClock(), reuse_port=reuse_port
    )
    return UsageCollector(nas_registry=registry, accounting_server=server)
