"""A NAS registry folded from NasRegistered and NasRemoved events in the ledger, following new
ones live."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ispbill_core.contracts.accounts import (
    AnyNasRegistered,
    NasRegistered,
    NasRegisteredV1,
    NasRemoved,
)
from ispbill_core.events import RecordedEvent
from ispbill_core.eventstore import EventStore
from ispbill_core.sealing import Keyring, SealingError
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.application.nas_registry import NasRegistry, RegisteredNas

log = logging.getLogger(__name__)

NAS_EVENT_TYPES = frozenset({NasRegistered.event_type, NasRemoved.event_type})


class LedgerNasRegistry(NasRegistry):
    """`start()` reads every NasRegistered and NasRemoved so far, then a task follows the log
    for new ones.

    Lookups answer from memory, so the receive path never waits on the store. Secrets are
    opened with `keyring` as they are folded in; a NAS whose secret does not open is left out
    (its packets are dropped as from an unknown NAS) and logged as an error.
    """

    def __init__(self, store: EventStore, keyring: Keyring, *, page_size: int = 1000) -> None:
        self._store = store
        self._keyring = keyring
        self._page_size = page_size
        self._index = InMemoryNasRegistry()
        self._position = 0
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def position(self) -> int:
        """Global position of the last event folded in."""
        return self._position

    async def start(self) -> None:
        # Only each NAS's latest registration counts: earlier ones are neither opened nor
        # warned about (a NAS sealed since, or re-keyed, says nothing about its past).
        latest: dict[str, AnyNasRegistered | NasRemoved] = {}
        while True:
            batch = await self._store.read_all(
                after=self._position, limit=self._page_size, types=NAS_EVENT_TYPES
            )
            for event in batch:
                registered = self._decode(event)
                if registered is not None:
                    latest[registered.nas_id] = registered
            if len(batch) < self._page_size:
                break
        for registered in latest.values():
            if not isinstance(registered, NasRemoved):
                self._register(registered)
        self._follower = asyncio.create_task(self._follow(), name="nas-registry-follower")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    def lookup(self, source_ip: str) -> RegisteredNas | None:
        return self._index.lookup(source_ip)

    def lookup_id(self, nas_id: str) -> RegisteredNas | None:
        return self._index.lookup_id(nas_id)

    async def wait_for_position(self, position: int) -> None:
        """Return once events up to `position` are folded in; callers bound it with a timeout."""
        while self._position < position:
            self._changed.clear()
            await self._changed.wait()

    async def _follow(self) -> None:
        while True:
            try:
                async for event in self._store.subscribe(
                    after=self._position, types=NAS_EVENT_TYPES
                ):
                    self._apply(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Keep serving the NASes already known; try the store again shortly.
                log.exception("following the NAS registry events failed; retrying")
                await asyncio.sleep(1.0)

    def _apply(self, event: RecordedEvent) -> None:
        registered = self._decode(event)
        if isinstance(registered, NasRemoved):
            self._index.remove(registered.nas_id)
            log.info("NAS %s removed: its accounting is refused from now on", registered.nas_id)
        elif registered is not None:
            self._register(registered)

    def _decode(self, event: RecordedEvent) -> AnyNasRegistered | NasRemoved | None:
        self._position = max(self._position, event.global_position)
        self._changed.set()
        try:
            registered = event.decode()
            assert isinstance(registered, NasRegistered | NasRegisteredV1 | NasRemoved)
        except Exception:
            log.exception("skipping NAS registry event %s that does not decode", event.id)
            return None
        return registered

    def _register(self, registered: AnyNasRegistered) -> None:
        """The NAS's details from its latest registration; out when its secret does not open
        (details from an earlier registration are not kept: the NAS was changed since)."""
        try:
            nas = RegisteredNas.from_event(registered, self._keyring)
        except SealingError as exc:
            self._index.remove(registered.nas_id)
            log.error(
                "NAS %s left out, its packets dropped as from an unknown NAS: its secret does"
                " not open (%s). Give the collector the key that sealed it (ISPBILL_SECRETS_KEY,"
                " or the key file), or change the NAS's secret with PUT /api/v1/nas/%s.",
                registered.nas_id,
                exc,
                registered.nas_id,
            )
            return
        if isinstance(registered, NasRegisteredV1):
            log.warning(
                "NAS %s was registered before secrets were sealed: its secret is in plain text"
                " in the ledger. Change it on the NAS and with PUT /api/v1/nas/%s, which records"
                " the new one sealed.",
                nas.nas_id,
                nas.nas_id,
            )
        self._index.register(nas)
