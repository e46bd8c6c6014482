"""Importing FreeRADIUS detail files: one fact per record, received live, imported, or both."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from ispbill_core.access import USAGE_IMPORT, Principal, Unauthenticated
from ispbill_core.bus import BusUnavailable
from ispbill_core.bus.ledger import LedgerPublisher
from ispbill_core.clock import FixedClock
from ispbill_core.contracts.usage_collector import (
    AccountingRecordReceived,
    AcctStatus,
    accounting_stream,
)
from ispbill_core.eventstore.sqlite import SQLiteEventStore
from ispbill_core.web import use_authenticator
from usage_collector.adapters.detail_file import DetailRecord, parse_detail, read_detail_file
from usage_collector.adapters.memory_nas_registry import InMemoryNasRegistry
from usage_collector.adapters.radius_dictionary import DictionaryAttributeDecoder
from usage_collector.application.import_detail import (
    ImportedRequest,
    SkipReason,
    UnknownNas,
    find_nas,
    import_accounting_requests,
    screen_imported_request,
)
from usage_collector.application.nas_registry import RegisteredNas
from usage_collector.application.publish_accounting_records import publish_accounting_records
from usage_collector.application.screen_accounting_request import (
    AcceptedRequest,
    screen_accounting_request,
)
from usage_collector.bootstrap import accounting_stream_for
from usage_collector.domain.accounting_record import AccountingRecord
from usage_collector.entrypoints.http import collector_import_router, encode_imported_request

FIXTURES = Path(__file__).parent / "fixtures" / "freeradius" / "radacct-utc"
NAS_FILE = FIXTURES / "127.0.0.1" / "detail-20260310"
OTHER_FILE = FIXTURES / "127.0.0.2" / "detail-20260310"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NAS = RegisteredNas(nas_id="nas-1", ip_address="127.0.0.1", secret=b"testing123")

#: The requests radclient sent to FreeRADIUS to write NAS_FILE (see fixtures/freeradius).
BOB = {
    "User-Name": "bob",
    "Acct-Session-Id": "mig-1",
    "NAS-IP-Address": "10.0.0.1",
    "NAS-Port": 7,
    "NAS-Port-Type": "Ethernet",
    "Service-Type": "Framed-User",
    "Framed-Protocol": "PPP",
    "Framed-IP-Address": "100.64.0.10",
    "Calling-Station-Id": "AA-BB-CC-00-11-22",
    "Acct-Authentic": "RADIUS",
}
SENT = [
    {**BOB, "Acct-Status-Type": "Start", "Acct-Session-Time": 0, "Event-Timestamp": 1773129600},
    {
        **BOB,
        "Acct-Status-Type": "Interim-Update",
        "Acct-Session-Time": 600,
        "Event-Timestamp": 1773130200,
        "Acct-Input-Octets": 500_000_000,
        "Acct-Input-Gigawords": 0,
        "Acct-Output-Octets": 3_000_000_000,
        "Acct-Output-Gigawords": 0,
        "Acct-Input-Packets": 400_000,
        "Acct-Output-Packets": 2_100_000,
    },
    {
        **BOB,
        "Acct-Status-Type": "Stop",
        "Acct-Session-Time": 1200,
        "Event-Timestamp": 1773130800,
        "Acct-Input-Octets": 1_200_000_000,
        "Acct-Input-Gigawords": 0,
        "Acct-Output-Octets": 7_500_000_000 % 2**32,
        "Acct-Output-Gigawords": 1,
        "Acct-Input-Packets": 900_000,
        "Acct-Output-Packets": 5_200_000,
        "Acct-Terminate-Cause": "User-Request",
        "Acct-Delay-Time": 2,
    },
]


def requests_of(*paths: Path) -> list[ImportedRequest]:
    found = []
    for path in paths:
        for item in read_detail_file(path):
            assert isinstance(item, DetailRecord), item
            found.append(as_request(item))
    return found


def as_request(record: DetailRecord) -> ImportedRequest:
    return ImportedRequest(record.ref, record.attributes, record.nas_addresses, record.received_at)


def live(requests, attributes: dict, received_at: datetime) -> AccountingRecord:
    """The record the live collector makes of the same request arriving from the NAS."""
    datagram = requests.build(secret=NAS.secret, **attributes)
    accepted = screen_accounting_request(
        datagram,
        "127.0.0.1",
        received_at,
        registry=InMemoryNasRegistry([NAS]),
        decode_attributes=DictionaryAttributeDecoder(),
    )
    assert isinstance(accepted, AcceptedRequest), accepted
    return accepted.record


@pytest.fixture
async def ledger(tmp_path):
    store = SQLiteEventStore(tmp_path / "ledger.db")
    yield store
    await store.close()


async def recorded(store) -> list[AccountingRecordReceived]:
    return [e.decode() for e in await store.read_stream(accounting_stream("nas-1"))]


# --- the use case ------------------------------------------------------------------------------


@pytest.mark.integration
async def test_a_file_imported_twice_is_recorded_once(ledger):
    publisher = LedgerPublisher(ledger, accounting_stream_for)
    registry = InMemoryNasRegistry([NAS])
    first = await import_accounting_requests(
        requests_of(NAS_FILE), registry=registry, publisher=publisher, now=NOW
    )
    assert (first.received, first.imported, first.repeated) == (4, 3, 0)
    assert first.skipped_by_reason == {"invalid_record": 1}
    (failed,) = first.skipped
    assert failed.ref == f"{NAS_FILE}:78"
    assert failed.detail == "Acct-Status-Type 'Failed' is not accounted"

    again = await import_accounting_requests(
        requests_of(NAS_FILE), registry=registry, publisher=publisher, now=NOW
    )
    assert again.imported == 3  # handed to the bus, where each is a no-op
    records = await recorded(ledger)
    assert [r.status for r in records] == [
        AcctStatus.START,
        AcctStatus.INTERIM_UPDATE,
        AcctStatus.STOP,
    ]
    stop = records[-1]
    assert (stop.nas_id, stop.nas_ip, stop.username) == ("nas-1", "127.0.0.1", "bob")
    assert stop.output_octets == 7_500_000_000 and stop.input_octets == 1_200_000_000
    assert stop.event_time == datetime(2026, 3, 10, 8, 20, tzinfo=UTC)
    assert stop.received_at == datetime(2026, 3, 10, 8, 20, 3, tzinfo=UTC)
    assert stop.delay_time == 2 and stop.terminate_cause == "User-Request"


@pytest.mark.integration
async def test_records_received_live_then_imported_are_recorded_once(ledger, requests):
    publisher = LedgerPublisher(ledger, accounting_stream_for)
    # ispbill received the Start and the Interim-Update itself, a little later than FreeRADIUS.
    seen_live = [live(requests, a, NOW) for a in SENT[:2]]
    await publish_accounting_records(publisher, [(r, None) for r in seen_live])

    report = await import_accounting_requests(
        requests_of(NAS_FILE),
        registry=InMemoryNasRegistry([NAS]),
        publisher=publisher,
        now=NOW,
    )
    assert report.imported == 3
    records = await recorded(ledger)
    assert len(records) == 3
    assert [str(r.record_id) for r in records[:2]] == [r.record_id for r in seen_live]
    assert str(records[2].record_id) == live(requests, SENT[2], NOW).record_id


@pytest.mark.unit
def test_without_event_timestamp_the_live_and_the_imported_record_agree_too(requests):
    received = datetime(2026, 3, 10, 8, 20, 7, tzinfo=UTC)
    attributes = {**SENT[2], "Acct-Delay-Time": 4}
    del attributes["Event-Timestamp"]
    text = (
        "Tue Mar 10 08:20:07 2026\n"
        "\tPacket-Src-IP-Address = 127.0.0.1\n"
        + "".join(
            f'\t{k} = "{v}"\n'
            if k in {"User-Name", "Acct-Session-Id", "Calling-Station-Id"}
            else f"\t{k} = {v}\n"
            for k, v in attributes.items()
        )
        + f"\tTimestamp = {int(received.timestamp())}\n\n"
    )
    (record,) = parse_detail(io.BytesIO(text.encode()), source="detail")
    assert isinstance(record, DetailRecord)
    imported = screen_imported_request(as_request(record), InMemoryNasRegistry([NAS]), now=NOW)
    assert isinstance(imported, AccountingRecord)
    assert imported.record_id == live(requests, attributes, received).record_id
    assert imported.event_time == received - timedelta(seconds=4)


@pytest.mark.unit
async def test_records_of_an_unknown_nas_are_reported_by_address(requests):
    publisher = requests.recording_publisher()
    report = await import_accounting_requests(
        requests_of(OTHER_FILE), registry=InMemoryNasRegistry([NAS]), publisher=publisher, now=NOW
    )
    assert report.imported == 0 and publisher.calls == []
    assert report.unknown_nas == {"127.0.0.2": 1}
    (skipped,) = report.skipped
    assert skipped.reason is SkipReason.UNKNOWN_NAS
    assert skipped.detail == "no NAS registered at its addresses (127.0.0.2, 10.9.9.9)"


@pytest.mark.unit
async def test_any_registered_address_of_a_record_names_its_nas(requests):
    publisher = requests.recording_publisher()
    # The NAS said it is 10.9.9.9 (NAS-IP-Address); ispbill knows it by that address.
    elsewhere = RegisteredNas(nas_id="nas-9", ip_address="10.9.9.9", secret=b"s")
    report = await import_accounting_requests(
        requests_of(OTHER_FILE),
        registry=InMemoryNasRegistry([NAS, elsewhere]),
        publisher=publisher,
        now=NOW,
    )
    assert report.imported == 1
    assert publisher.events[0].data["nas_id"] == "nas-9"


@pytest.mark.unit
async def test_nas_named_for_the_import_by_address_or_by_id(requests):
    elsewhere = RegisteredNas(nas_id="nas-9", ip_address="10.9.9.9", secret=b"s")
    registry = InMemoryNasRegistry([NAS, elsewhere])
    assert await find_nas("127.0.0.1", registry) == NAS
    assert await find_nas("::ffff:127.0.0.1", registry) == NAS
    with pytest.raises(UnknownNas, match=r"no NAS registered at 127\.0\.0\.9"):
        await find_nas("127.0.0.9", registry)
    with pytest.raises(UnknownNas, match="no NAS registered with the id 'nas-7'"):
        await find_nas("nas-7", registry)
    by_id = await find_nas("nas-9", registry)
    assert by_id == elsewhere

    publisher = requests.recording_publisher()
    report = await import_accounting_requests(
        requests_of(OTHER_FILE), registry=registry, publisher=publisher, now=NOW, nas=by_id
    )
    assert report.imported == 1 and publisher.events[0].data["nas_id"] == "nas-9"


@pytest.mark.unit
async def test_a_dry_run_screens_and_publishes_nothing(requests):
    publisher = requests.recording_publisher()
    doubled = requests_of(NAS_FILE, NAS_FILE)
    report = await import_accounting_requests(
        doubled,
        registry=InMemoryNasRegistry([NAS]),
        publisher=publisher,
        now=NOW,
        dry_run=True,
    )
    assert publisher.calls == []
    assert (report.received, report.imported, report.repeated) == (8, 3, 3)
    assert report.skipped_by_reason == {"invalid_record": 2}


@pytest.mark.unit
async def test_a_record_received_after_now_is_skipped(requests):
    report = await import_accounting_requests(
        requests_of(NAS_FILE),
        registry=InMemoryNasRegistry([NAS]),
        publisher=requests.recording_publisher(),
        now=datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert report.skipped_by_reason == {"received_in_the_future": 4}


# --- the REST endpoint -----------------------------------------------------------------------


PATH = "/api/v1/collector/imports/radius-detail"


class FailingBus:
    async def publish(self, topic, messages):
        raise BusUnavailable("broker down")


class Importer:
    """Stands for the accounts service's token check: one token that may import usage."""

    async def authenticate(self, token: str) -> Principal:
        if token != "importer-token":
            raise Unauthenticated("unknown token")
        return Principal("ops", "admin", "t1", frozenset({USAGE_IMPORT}))


async def post(publisher, json: dict, token: str | None = "importer-token") -> httpx.Response:
    app = FastAPI()
    use_authenticator(app, Importer())
    app.include_router(
        collector_import_router(InMemoryNasRegistry([NAS]), publisher, FixedClock(NOW))
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://collector", headers=headers
    ) as client:
        return await client.post(PATH, json=json)


def body(*paths: Path, **extra) -> dict:
    records = [
        encode_imported_request(r.ref, r.attributes, r.nas_addresses, r.received_at)
        for path in paths
        for r in read_detail_file(path)
        if isinstance(r, DetailRecord)
    ]
    return {"records": records, **extra}


@pytest.mark.unit
async def test_the_endpoint_imports_and_answers_each_skipped_record(requests):
    publisher = requests.recording_publisher()
    response = await post(publisher, body(NAS_FILE, OTHER_FILE))
    assert response.status_code == 200, response.text
    result = response.json()
    assert {k: result[k] for k in ("received", "imported", "repeated", "dry_run")} == {
        "received": 5,
        "imported": 3,
        "repeated": 0,
        "dry_run": False,
    }
    assert result["skipped"] == {"invalid_record": 1, "unknown_nas": 1}
    assert result["unknown_nas"] == {"127.0.0.2": 1}
    assert [s["ref"] for s in result["skipped_records"]] == [
        f"{NAS_FILE}:78",
        f"{OTHER_FILE}:1",
    ]
    assert len(publisher.calls) == 1 and len(publisher.events) == 3


@pytest.mark.unit
async def test_octets_travel_as_hex_and_come_back_as_bytes(requests):
    publisher = requests.recording_publisher()
    records = [
        encode_imported_request(
            "x:1",
            {**{k: [v] for k, v in SENT[0].items()}, "User-Name": [b"\xffbob"], "Class": [b"\x00"]},
            ["127.0.0.1"],
            NOW,
        )
    ]
    assert records[0]["attributes"]["Class"] == [{"hex": "00"}]
    response = await post(publisher, {"records": records})
    assert response.status_code == 200, response.text
    assert publisher.events[0].data["username"] == "\\xffbob"


@pytest.mark.unit
async def test_a_body_that_does_not_fit_the_schema_is_a_422_naming_the_record(requests):
    bad = body(NAS_FILE)
    bad["records"][2]["received_at"] = "2026-03-10T08:20:03"  # no zone
    bad["records"][3]["attributes"]["Class"] = [{"hex": "zz"}]
    response = await post(requests.recording_publisher(), bad)
    assert response.status_code == 422
    locations = [e["loc"][:3] for e in response.json()["detail"]]
    assert ["body", "records", 2] in locations and ["body", "records", 3] in locations


@pytest.mark.unit
async def test_an_unknown_nas_for_the_whole_import_is_a_422(requests):
    response = await post(requests.recording_publisher(), body(NAS_FILE, nas="127.0.0.7"))
    assert response.status_code == 422
    assert response.json()["detail"] == "no NAS registered at 127.0.0.7"


@pytest.mark.unit
async def test_a_bus_that_is_down_is_a_503_and_the_batch_can_be_sent_again(requests):
    response = await post(FailingBus(), body(NAS_FILE))
    assert response.status_code == 503
    assert "broker down" in response.json()["detail"]


@pytest.mark.unit
async def test_a_dry_run_through_the_endpoint(requests):
    publisher = requests.recording_publisher()
    response = await post(publisher, body(NAS_FILE, dry_run=True))
    assert response.json()["dry_run"] is True and response.json()["imported"] == 3
    assert publisher.calls == []
