"""LedgerNasRegistry: folds NasRegistered from the ledger at start, and follows new ones live."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ispbill_core.contracts.accounts import NasRegistered, nas_stream
from ispbill_core.events import deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from usage_collector.adapters.ledger_nas_registry import LedgerNasRegistry

pytestmark = pytest.mark.integration

AT = datetime(2025, 1, 1, tzinfo=UTC)


async def register(store: SQLiteEventStore, nas_id: str, ip: str, secret: str, **kw) -> int:
    event = NasRegistered(nas_id=nas_id, name=nas_id, ip_address=ip, secret=secret, **kw)
    await store.append(
        nas_stream(nas_id),
        [new_event(event, id=deterministic_id("nas", nas_id, ip, secret), occurred_at=AT)],
        ANY,
    )
    return (await store.read_all(after=0, limit=10_000))[-1].global_position


@pytest.fixture
async def store(tmp_path):
    store = SQLiteEventStore(tmp_path / "ledger.db")
    yield store
    await store.close()


async def test_known_nases_are_loaded_at_start(store) -> None:
    await register(store, "edge-1", "192.0.2.1", "s1")
    await register(store, "edge-2", "192.0.2.2", "s2", require_message_authenticator=True)
    registry = LedgerNasRegistry(store, page_size=1)  # page through, one event at a time
    await registry.start()
    try:
        one = registry.lookup("192.0.2.1")
        two = registry.lookup("192.0.2.2")
        assert one is not None and one.nas_id == "edge-1" and one.secret == b"s1"
        assert two is not None and two.require_message_authenticator
        assert registry.lookup("192.0.2.3") is None
    finally:
        await registry.stop()


async def test_a_nas_registered_later_is_picked_up_live(store) -> None:
    registry = LedgerNasRegistry(store)
    await registry.start()
    try:
        assert registry.lookup("192.0.2.9") is None
        position = await register(store, "edge-9", "192.0.2.9", "s9")
        await asyncio.wait_for(registry.wait_for_position(position), 5)
        nas = registry.lookup("192.0.2.9")
        assert nas is not None and nas.nas_id == "edge-9"
    finally:
        await registry.stop()


async def test_re_registration_moves_the_nas_and_changes_its_secret(store) -> None:
    await register(store, "edge-1", "192.0.2.1", "old")
    await register(store, "edge-1", "192.0.2.5", "new")
    registry = LedgerNasRegistry(store)
    await registry.start()
    try:
        assert registry.lookup("192.0.2.1") is None
        moved = registry.lookup("192.0.2.5")
        assert moved is not None and moved.secret == b"new"
    finally:
        await registry.stop()
