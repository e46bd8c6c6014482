"""NAS secrets through the REST API and the composition root: sealed, shown never, changeable,
and a lost key is noticed at start rather than after every NAS has been left out."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ispbill_app.bootstrap import Services, open_ledger
from ispbill_app.cli import main as cli_main
from ispbill_app.settings import Settings
from ispbill_core.contracts.accounts import NasRegisteredV1, nas_stream
from ispbill_core.events import EventMetadata, NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import NO_STREAM
from ispbill_core.sealing import KEY_ENV, KEY_FILE_ENV, Keyring, SealingError, new_key
from tests.fixtures.staff import staff_token

pytestmark = pytest.mark.integration

NAS = {
    "nas_id": "bng-1",
    "name": "BNG 1",
    "ip_address": "192.0.2.1",
    "secret": "first-secret",
    "vendor": "mikrotik",
}
CHANGE = {k: v for k, v in NAS.items() if k != "nas_id"} | {"require_message_authenticator": True}


@pytest.fixture(autouse=True)
def no_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


class Api:
    """The REST API as `ispbill run` serves it, projections running beside it."""

    def __init__(self, services: Services, token: str) -> None:
        self.services = services
        self.token = token
        self.client: httpx.AsyncClient | None = None
        self.projections: asyncio.Task[None] | None = None

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        if self.client is None:
            await self.services.open_read_models(run_projections=True)
            assert self.services.projector is not None
            self.projections = asyncio.create_task(self.services.projector.run())
            self.client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.services.http_app()),
                base_url="http://api",
                headers={"Authorization": f"Bearer {self.token}"},
            )
        return await self.client.request(method, f"/api/v1{path}", json=body)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.projections is not None:
            self.projections.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.projections


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


async def start(data: Path, keyring: Keyring | None = None) -> Api:
    """As `ispbill run` wires the API: the keyring first (the default key file, unless one is
    given), then the ledger, then the check that the keyring opens it."""
    services = Services(Settings(data_dir=data, ledger="sqlite"), None, keyring=keyring)
    services.require_keyring()
    services.store = await open_ledger(services.settings)
    try:
        await services.check_keyring_opens_the_ledger()
    except BaseException:
        await services.store.close()
        raise
    return Api(services, await staff_token(services.store))


@pytest.fixture
async def api(data: Path) -> AsyncIterator[Api]:
    started = await start(data)
    yield started
    await started.close()
    await started.services.store.close()


async def nas_events(api: Api) -> list[Any]:
    return await api.services.store.read_stream(nas_stream("bng-1"))


async def test_a_registered_secret_is_sealed_never_shown_and_not_in_the_ledger(api, data) -> None:
    created = await api.call("POST", "/nas", NAS)
    assert created.status_code == 201, created.text
    view = created.json()
    keyring = api.services.require_keyring()
    assert view["secret_storage"] == "sealed"
    assert view["secret_key_id"] == keyring.sealing_key_id
    assert "first-secret" not in created.text and "secret_sealed" not in view
    listed = (await api.call("GET", "/nas")).json()
    assert listed == [view]
    assert (await api.call("POST", "/nas", NAS)).json() == view  # a retry: nothing new
    assert len(await nas_events(api)) == 1
    await api.services.store.close()
    for path in data.glob("ledger.db*"):
        assert b"first-secret" not in path.read_bytes(), path


async def test_a_retry_after_the_key_was_rotated_is_still_a_no_op(api, data) -> None:
    assert (await api.call("POST", "/nas", NAS)).status_code == 201
    old = api.services.require_keyring()
    old_text = (data / "secrets.key").read_text().split("\n")[-2]
    rotated = Keyring.from_text(f"{new_key()},{old_text}")
    assert rotated.key_ids[1] == old.sealing_key_id
    later = Api(Services(api.services.settings, api.services.store, keyring=rotated), api.token)
    again = await later.call("POST", "/nas", NAS)
    assert again.status_code == 201, again.text
    assert again.json()["secret_key_id"] == old.sealing_key_id  # as recorded, not re-sealed
    other = await later.call("POST", "/nas", NAS | {"secret": "another-secret"})
    assert other.status_code == 409
    assert len(await nas_events(api)) == 1
    await later.close()


async def test_a_change_needs_every_field_and_is_taken_as_the_current_details(api) -> None:
    assert (await api.call("POST", "/nas", NAS)).status_code == 201
    partial = {k: v for k, v in CHANGE.items() if k != "require_message_authenticator"}
    refused = await api.call("PUT", "/nas/bng-1", partial)
    assert refused.status_code == 422 and "require_message_authenticator" in refused.text
    changed = await api.call("PUT", "/nas/bng-1", CHANGE | {"secret": "second-secret"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["require_message_authenticator"] is True
    assert (await api.call("GET", "/nas")).json() == [changed.json()]
    assert (await api.call("PUT", "/nas/bng-9", CHANGE)).status_code == 404
    assert len(await nas_events(api)) == 2


async def test_a_nas_registered_before_sealing_is_shown_plaintext_then_exposed(api) -> None:
    legacy = NasRegisteredV1(**{k: v for k, v in NAS.items()})
    recorded = new_event(legacy, id=deterministic_id("v1"), occurred_at=datetime.now(UTC))
    await api.services.store.append(nas_stream("bng-1"), [recorded], NO_STREAM)
    [shown] = (await api.call("GET", "/nas")).json()
    assert shown["secret_storage"] == "plaintext" and shown["secret_key_id"] is None
    assert "first-secret" not in str(shown)
    assert (await api.call("POST", "/nas", NAS)).status_code == 201  # what is recorded: no-op
    # Sealed now, but with the same secret that stays readable in the old event.
    assert (await api.call("PUT", "/nas/bng-1", CHANGE)).json()["secret_storage"] == "exposed"
    assert (await api.call("GET", "/nas")).json()[0]["secret_storage"] == "exposed"
    await api.call("PUT", "/nas/bng-1", CHANGE | {"secret": "a-new-secret"})
    assert (await api.call("GET", "/nas")).json()[0]["secret_storage"] == "sealed"


async def test_a_lost_key_file_stops_the_start_instead_of_replacing_the_key(data) -> None:
    first = await start(data)
    assert (await first.call("POST", "/nas", NAS)).status_code == 201
    await first.close()
    await first.services.store.close()
    key_file = data / "secrets.key"
    sealed_with = Keyring.from_file(key_file).sealing_key_id
    key_file.unlink()  # a restore of the data directory without its key file
    with pytest.raises(SealingError, match=f"sealed with key\\(s\\) {sealed_with}: put the key"):
        await start(data)
    assert not key_file.exists()  # not left behind for the next start to accept silently
    # Given the key again (here through the environment), it starts.
    restarted = await start(data, keyring=Keyring([os.urandom(64)]))
    await restarted.services.store.close()  # another key: starts, logs the NAS as left out


def test_secrets_new_key_and_check(data, capsys, monkeypatch) -> None:
    assert cli_main(["secrets", "new-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert len(base64.b64decode(key)) == 64
    assert cli_main(["secrets", "check", "--data-dir", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (data / "secrets.key").exists()  # a check never makes a key
    monkeypatch.setenv(KEY_ENV, key)
    assert cli_main(["secrets", "check", "--data-dir", str(data)]) == 0
    assert Keyring.from_text(key).sealing_key_id in capsys.readouterr().out


async def test_a_removed_nas_is_not_listed_and_its_address_is_free(api) -> None:
    assert (await api.call("POST", "/nas", NAS)).status_code == 201
    removed = await api.call("DELETE", "/nas/bng-1?reason=router%20replaced")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"nas_id": "bng-1", "reason": "router replaced"}
    assert (await api.call("DELETE", "/nas/bng-1")).status_code == 200  # twice: the same
    assert (await api.call("GET", "/nas")).json() == []
    assert (await api.call("PUT", "/nas/bng-1", CHANGE)).status_code == 404
    assert (await api.call("DELETE", "/nas/bng-9")).status_code == 404
    other = NAS | {"nas_id": "bng-2", "secret": "second-secret"}
    assert (await api.call("POST", "/nas", other)).status_code == 201
    taken = await api.call("POST", "/nas", NAS)
    assert taken.status_code == 409 and "address of NAS 'bng-2'" in taken.text


async def test_a_nas_event_that_does_not_decode_is_skipped_not_fatal(data, caplog) -> None:
    """One bad event neither hides the other NASes nor stops a start: the NAS projection parks
    it (listed on /parked) as the collector's registry skips it."""
    first = await start(data)
    assert (await first.call("POST", "/nas", NAS)).status_code == 201
    broken = NewEvent(
        id=deterministic_id("broken"),
        type="NasRegistered",
        version=2,
        data={"nas_id": "bng-9"},  # no address, no secret
        metadata=EventMetadata(occurred_at=datetime.now(UTC)),
    )
    await first.services.store.append(nas_stream("bng-9"), [broken], NO_STREAM)
    listed = await first.call("GET", "/nas")
    assert listed.status_code == 200 and [n["nas_id"] for n in listed.json()] == ["bng-1"]
    assert "PARKED event" in caplog.text
    parked = (await first.call("GET", "/parked")).json()
    assert [(p["consumer"], p["stream"]) for p in parked] == [("accounts.nas", "nas-bng-9")]
    await first.close()
    await first.services.store.close()
    key_file = data / "secrets.key"
    key_file.unlink()  # the lost-key safeguard still works with a bad event in the ledger
    with pytest.raises(SealingError, match="put the key file back"):
        await start(data)


async def test_a_secret_in_plain_text_for_another_nas_is_exposed_too(api) -> None:
    """One secret is often shared by a fleet; a v1 registration of any NAS gave it away."""
    legacy = NasRegisteredV1(nas_id="old-1", name="old", ip_address="192.0.2.77", secret="fleet-1")
    recorded = new_event(legacy, id=deterministic_id("fleet"), occurred_at=datetime.now(UTC))
    await api.services.store.append(nas_stream("old-1"), [recorded], NO_STREAM)
    created = await api.call("POST", "/nas", NAS | {"secret": "fleet-1"})
    assert created.json()["secret_storage"] == "exposed"
    other = await api.call("POST", "/nas", NAS | {"nas_id": "bng-2", "ip_address": "192.0.2.2"})
    assert other.json()["secret_storage"] == "sealed"


async def test_a_change_based_on_a_stale_read_is_refused_not_applied(api) -> None:
    """Two engineers read the NAS; the second one's change must not undo the first one's."""
    assert (await api.call("POST", "/nas", NAS)).status_code == 201
    [read] = (await api.call("GET", "/nas")).json()
    first = CHANGE | {"expected_version": read["version"], "require_message_authenticator": True}
    assert (await api.call("PUT", "/nas/bng-1", first)).status_code == 200
    stale = CHANGE | {"expected_version": read["version"], "require_message_authenticator": False}
    refused = await api.call("PUT", "/nas/bng-1", stale)
    assert refused.status_code == 409 and "changed since version 0" in refused.text
    [now] = (await api.call("GET", "/nas")).json()
    assert now["require_message_authenticator"] is True and now["version"] == 1
