"""LedgerNasRegistry: folds NasRegistered from the ledger at start, and follows new ones live."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime

import pytest

from ispbill_core.contracts.accounts import (
    NasRegisteredV1,
    NasRemoved,
    nas_registration,
    nas_stream,
)
from ispbill_core.events import DomainEvent, deterministic_id, new_event
from ispbill_core.eventstore import ANY
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.sealing import Keyring
from usage_collector.adapters.ledger_nas_registry import LedgerNasRegistry

pytestmark = pytest.mark.integration

AT = datetime(2025, 1, 1, tzinfo=UTC)


KEYRING = Keyring([os.urandom(64)])


async def register(
    store: SQLiteEventStore,
    nas_id: str,
    ip: str,
    secret: str,
    *,
    keyring: Keyring = KEYRING,
    **kw,
) -> int:
    event = nas_registration(
        keyring, nas_id=nas_id, name=nas_id, ip_address=ip, secret=secret, **kw
    )
    return await record(store, event, nas_id, ip, secret)


async def record(
    store: SQLiteEventStore, event: DomainEvent, nas_id: str, ip: str, secret: str
) -> int:
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
    registry = LedgerNasRegistry(store, KEYRING, page_size=1)  # page through, one event at a time
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
    registry = LedgerNasRegistry(store, KEYRING)
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
    registry = LedgerNasRegistry(store, KEYRING)
    await registry.start()
    try:
        assert registry.lookup("192.0.2.1") is None
        moved = registry.lookup("192.0.2.5")
        assert moved is not None and moved.secret == b"new"
    finally:
        await registry.stop()


async def test_a_secret_is_in_the_ledger_only_sealed(store, tmp_path) -> None:
    await register(store, "edge-1", "192.0.2.1", "do-not-leak-this-secret")
    await store.close()
    for path in tmp_path.iterdir():  # the database, its WAL: nowhere in plain text
        assert b"do-not-leak-this-secret" not in path.read_bytes(), path


async def test_a_nas_registered_before_sealing_still_works(store, caplog) -> None:
    legacy = NasRegisteredV1(nas_id="old-1", name="old", ip_address="192.0.2.7", secret="plain")
    await record(store, legacy, "old-1", "192.0.2.7", "plain")
    registry = LedgerNasRegistry(store, KEYRING)
    with caplog.at_level(logging.WARNING):
        await registry.start()
    try:
        nas = registry.lookup("192.0.2.7")
        assert nas is not None and nas.secret == b"plain"
        assert "in plain text in the ledger" in caplog.text
    finally:
        await registry.stop()


async def test_a_nas_whose_secret_does_not_open_is_left_out_and_logged(store, caplog) -> None:
    other_key = Keyring([os.urandom(64)])
    await register(store, "edge-1", "192.0.2.1", "s1", keyring=other_key)
    await register(store, "edge-2", "192.0.2.2", "s2")
    registry = LedgerNasRegistry(store, KEYRING)
    with caplog.at_level(logging.ERROR):
        await registry.start()
    try:
        assert registry.lookup("192.0.2.1") is None
        assert registry.lookup("192.0.2.2") is not None
        assert f"sealed with key {other_key.sealing_key_id}" in caplog.text
        assert "NAS edge-1 left out" in caplog.text
    finally:
        await registry.stop()


async def test_an_old_key_after_the_new_one_still_opens_its_secrets(store) -> None:
    old, new = os.urandom(64), os.urandom(64)
    await register(store, "edge-1", "192.0.2.1", "s1", keyring=Keyring([old]))
    await register(store, "edge-2", "192.0.2.2", "s2", keyring=Keyring([new, old]))
    registry = LedgerNasRegistry(store, Keyring([new, old]))
    await registry.start()
    try:
        one, two = registry.lookup("192.0.2.1"), registry.lookup("192.0.2.2")
        assert one is not None and one.secret == b"s1"
        assert two is not None and two.secret == b"s2"
        assert registry.lookup_id("edge-2") == two
    finally:
        await registry.stop()


async def test_only_the_latest_registration_of_a_nas_counts(store, caplog) -> None:
    """Sealed since (no plain-text warning), then re-keyed with a key this collector lacks:
    the NAS is out, not served with the details of an earlier registration."""
    legacy = NasRegisteredV1(nas_id="edge-1", name="e", ip_address="192.0.2.1", secret="plain")
    await record(store, legacy, "edge-1", "192.0.2.1", "plain")
    await register(store, "edge-1", "192.0.2.1", "sealed-now")
    await register(store, "edge-2", "192.0.2.2", "s2")
    await register(store, "edge-2", "192.0.2.2", "s2-new", keyring=Keyring([os.urandom(64)]))
    registry = LedgerNasRegistry(store, KEYRING)
    with caplog.at_level(logging.WARNING):
        await registry.start()
    try:
        one = registry.lookup("192.0.2.1")
        assert one is not None and one.secret == b"sealed-now"
        assert "plain text" not in caplog.text  # the plain-text registration was superseded
        assert registry.lookup("192.0.2.2") is None and registry.lookup_id("edge-2") is None
        assert caplog.text.count("left out") == 1
    finally:
        await registry.stop()


async def test_a_live_change_the_collector_cannot_open_takes_the_nas_out(store) -> None:
    await register(store, "edge-1", "192.0.2.1", "s1")
    registry = LedgerNasRegistry(store, KEYRING)
    await registry.start()
    try:
        assert registry.lookup("192.0.2.1") is not None
        position = await register(
            store, "edge-1", "192.0.2.1", "s1-new", keyring=Keyring([os.urandom(64)])
        )
        await asyncio.wait_for(registry.wait_for_position(position), 5)
        assert registry.lookup("192.0.2.1") is None  # not the old secret: the NAS was re-keyed
    finally:
        await registry.stop()


async def test_a_removed_nas_is_refused_at_start_and_live_and_back_when_registered(store) -> None:
    async def remove(nas_id: str) -> int:
        removal = NasRemoved(nas_id=nas_id, reason="decommissioned")
        at = await store.head_position()
        await store.append(
            nas_stream(nas_id),
            [new_event(removal, id=deterministic_id("rm", str(at)), occurred_at=AT)],
            ANY,
        )
        return await store.head_position()

    await register(store, "edge-1", "192.0.2.1", "s1")
    await register(store, "edge-2", "192.0.2.2", "s2")
    await remove("edge-1")
    registry = LedgerNasRegistry(store, KEYRING)
    await registry.start()
    try:
        assert registry.lookup("192.0.2.1") is None and registry.lookup("192.0.2.2") is not None
        position = await remove("edge-2")
        await asyncio.wait_for(registry.wait_for_position(position), 5)
        assert registry.lookup("192.0.2.2") is None and registry.lookup_id("edge-2") is None
        position = await register(store, "edge-2", "192.0.2.2", "s2-again")
        await asyncio.wait_for(registry.wait_for_position(position), 5)
        back = registry.lookup("192.0.2.2")
        assert back is not None and back.secret == b"s2-again"
    finally:
        await registry.stop()
