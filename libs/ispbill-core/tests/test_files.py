"""Ledger files are their owner's alone, whatever the umask (stat, as an operator would)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ispbill_core.events import EventMetadata, NewEvent
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.files import open_private, private_directory, private_file
from ispbill_core.sealing import write_new_key_file

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def loosen(directory: Path) -> None:
    for p in directory.iterdir():
        p.chmod(0o644)


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def test_a_new_ledger_and_its_companions_are_0600_in_a_0700_directory(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    data = shared / "data" / "deeper"
    store = SQLiteEventStore(data / "ledger.db")
    try:
        event = NewEvent(
            id=uuid.uuid4(),
            type="Tested",
            version=1,
            data={"n": 1},
            metadata=EventMetadata(occurred_at=datetime(2026, 1, 1, tzinfo=UTC), actor="t"),
        )
        await store.append("s-1", [event], NO_STREAM)
        files = {p.name: mode(p) for p in data.iterdir()}
    finally:
        await store.close()
    assert {"ledger.db", "ledger.db-wal", "ledger.db-shm", "ledger.db-writers.lock"} <= set(files)
    assert files == {name: 0o600 for name in files}
    assert mode(data) == mode(data.parent) == 0o700
    assert mode(shared) == 0o755  # an existing parent is not the ledger's to change


async def test_an_existing_ledger_readable_by_others_is_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    store = SQLiteEventStore(path)
    await store.close()
    loosen(tmp_path)
    store = SQLiteEventStore(path)
    try:
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-writers.lock")) == 0o600
    finally:
        await store.close()


def test_the_helpers(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    assert mode(private_directory(existing)) == 0o700
    assert mode(private_directory(tmp_path / "a" / "b")) == 0o700
    assert mode(tmp_path / "a") == 0o700
    f = private_file(tmp_path / "a" / "f")
    assert mode(f) == 0o600 and f.read_bytes() == b""
    with open_private(tmp_path / "a" / "g", "w") as out:
        out.write("x")
    assert mode(tmp_path / "a" / "g") == 0o600
    with open_private(tmp_path / "a" / "g", "w") as out:  # "w" truncates, as open() does
        out.write("y")
    assert (tmp_path / "a" / "g").read_text() == "y"


def test_the_key_file_is_0600(tmp_path: Path) -> None:
    key = tmp_path / "new" / "secrets.key"
    assert write_new_key_file(key)
    assert mode(key) == 0o600
    assert mode(key.parent) == 0o700
