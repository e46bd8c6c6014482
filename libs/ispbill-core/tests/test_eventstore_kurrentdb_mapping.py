"""The KurrentDB adapter's mapping to and from kurrentdbclient, checked without a server."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from kurrentdbclient import RecordedEvent as KurrentRecordedEvent

from ispbill_core.events import EventMetadata, NewEvent
from ispbill_core.eventstore import NO_STREAM, StoreUnavailable
from ispbill_core.eventstore.kurrentdb import KurrentDBEventStore, _decode, _encode, _type_filter

OCCURRED = datetime(2025, 3, 30, 1, 0, tzinfo=UTC)


def as_recorded(new: NewEvent, commit_position: int = 4242) -> KurrentRecordedEvent:
    stored = _encode(new.encoded(), datetime(2025, 3, 30, 1, 0, 1, tzinfo=UTC))
    return KurrentRecordedEvent(
        type=stored.type,
        data=stored.data,
        metadata=stored.metadata,
        content_type=stored.content_type,
        id=stored.id,
        stream_name="invoice-c1-2025-03",
        stream_position=3,
        commit_position=commit_position,
        prepare_position=commit_position,
    )


@pytest.mark.unit
def test_envelope_round_trips_through_the_server_format() -> None:
    new = NewEvent(
        id=uuid.uuid4(),
        type="InvoiceIssued",
        version=2,
        data={"total": "12.30", "lines": [{"name": "Fibre — März"}]},
        metadata=EventMetadata(occurred_at=OCCURRED, actor="clerk", correlation_id=uuid.uuid4()),
    )
    recorded = _decode(as_recorded(new))
    assert (recorded.id, recorded.type, recorded.version, recorded.data) == (
        new.id,
        "InvoiceIssued",
        2,
        new.data,
    )
    assert recorded.metadata.occurred_at == OCCURRED
    assert recorded.metadata.correlation_id == new.metadata.correlation_id
    assert recorded.metadata.recorded_at == datetime(2025, 3, 30, 1, 0, 1, tzinfo=UTC)
    assert (recorded.stream, recorded.stream_position, recorded.global_position) == (
        "invoice-c1-2025-03",
        3,
        4242,
    )


@pytest.mark.unit
def test_events_written_by_other_tools_still_decode() -> None:
    foreign = KurrentRecordedEvent(
        type="SomethingElse",
        data=b'{"a": 1}',
        metadata=b"",
        content_type="application/json",
        id=uuid.uuid4(),
        stream_name="elsewhere",
        stream_position=0,
        commit_position=10,
        prepare_position=10,
        recorded_at=OCCURRED,
    )
    recorded = _decode(foreign)
    assert (recorded.version, recorded.data, recorded.metadata.occurred_at) == (
        1,
        {"a": 1},
        OCCURRED,
    )


@pytest.mark.unit
def test_type_filter_matches_whole_type_names_only() -> None:
    (pattern,) = _type_filter({"UsageRated", "invoice.Issued"})
    # kurrentdbclient anchors the joined patterns as "^...$".
    regex = re.compile("^" + pattern + "$")
    assert regex.match("UsageRated") and regex.match("invoice.Issued")
    assert not regex.match("UsageRatedLate")
    assert not regex.match("XUsageRated")
    assert not regex.match("invoiceXIssued")


@pytest.mark.integration
async def test_unreachable_server_is_store_unavailable() -> None:
    store = KurrentDBEventStore("esdb://127.0.0.1:1?Tls=false&MaxDiscoverAttempts=1")
    new = NewEvent(
        id=uuid.uuid4(),
        type="UsageRated",
        version=1,
        data={},
        metadata=EventMetadata(occurred_at=OCCURRED),
    )
    try:
        with pytest.raises(StoreUnavailable):
            await store.append("customer-1", [new], NO_STREAM)
    finally:
        await store.close()


@pytest.mark.unit
async def test_closing_a_store_that_never_connected_is_fine() -> None:
    await KurrentDBEventStore("esdb://127.0.0.1:1?Tls=false").close()
