"""Publish a batch of accepted records in one durable call: the bus write behind every ack."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from json.encoder import encode_basestring

from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    AccountingRecordReceived,
)
from ispbill_core.events import EncodedEvent, timestamp_json
from usage_collector.application.ports import AccountingPublisher
from usage_collector.domain.accounting_record import AccountingRecord

_TYPE = AccountingRecordReceived.event_type
_VERSION = AccountingRecordReceived.event_version
#: Timestamps of records received together repeat; their JSON text is cached (bounded).
_TIMESTAMPS: dict[datetime, str] = {}
_TIMESTAMPS_MAX = 4096


def accounting_message(
    record: AccountingRecord, traceparent: str | None = None
) -> tuple[str, EncodedEvent]:
    """(key, event): keyed by NAS and session so one session stays on one partition, in order.

    The key is `accounting_key(nas_id, acct_session_id)`. The event id is the record id, so a
    retransmitted request is a no-op in an idempotent bus or ledger rather than a second
    record. The event is written straight to JSON, the same JSON as `record.to_event()` dumps
    (tests/test_accounting_event.py holds them equal), without a pydantic model per record:
    on the receive path that cost more than all the rest.
    """
    (
        record_id,
        nas_id,
        nas_ip,
        status,
        session_id,
        username,
        event_time,
        received_at,
        delay_time,
        session_time,
        input_octets,
        output_octets,
        input_packets,
        output_packets,
        framed_ip_address,
        calling_station_id,
        terminate_cause,
    ) = record
    timestamps = _TIMESTAMPS
    event_time_json = timestamps.get(event_time) or _timestamp(event_time)
    received_at_json = timestamps.get(received_at) or _timestamp(received_at)
    quote = encode_basestring
    data = (
        f'{{"record_id":"{record_id}","nas_id":{quote(nas_id)},"nas_ip":{quote(nas_ip)},'
        f'"status":"{status.value}","acct_session_id":{quote(session_id)},'
        f'"username":{"null" if username is None else quote(username)},'
        f'"event_time":"{event_time_json}","received_at":"{received_at_json}",'
        f'"delay_time":{delay_time},'
        f'"session_time":{"null" if session_time is None else session_time},'
        f'"input_octets":{"null" if input_octets is None else input_octets},'
        f'"output_octets":{"null" if output_octets is None else output_octets},'
        f'"input_packets":{"null" if input_packets is None else input_packets},'
        f'"output_packets":{"null" if output_packets is None else output_packets},'
        f'"framed_ip_address":{"null" if framed_ip_address is None else quote(framed_ip_address)},'
        f'"calling_station_id":'
        f"{'null' if calling_station_id is None else quote(calling_station_id)},"
        f'"terminate_cause":{"null" if terminate_cause is None else quote(terminate_cause)}}}'
    )
    metadata = (
        f'{{"occurred_at":"{event_time_json}","actor":{quote("nas:" + nas_id)},'
        f'"correlation_id":null,"causation_id":null,'
        f'"traceparent":{"null" if traceparent is None else quote(traceparent)}}}'
    )
    return f"{nas_id}/{session_id}", EncodedEvent(
        record_id, _TYPE, _VERSION, data, metadata, traceparent
    )


def _timestamp(value: datetime) -> str:
    text = _TIMESTAMPS.get(value)
    if text is None:
        if len(_TIMESTAMPS) >= _TIMESTAMPS_MAX:
            _TIMESTAMPS.clear()
        text = _TIMESTAMPS[value] = timestamp_json(value)
    return text


async def publish_accounting_records(
    publisher: AccountingPublisher,
    records: Sequence[tuple[AccountingRecord, str | None]],
) -> int:
    """Publish (record, traceparent) pairs; return how many distinct records were sent.

    A request and its retransmission can land in one batch; they are one fact, so the batch
    carries it once (a ledger would otherwise see one id twice in one append).
    """
    messages: list[tuple[str, EncodedEvent]] = []
    seen = set()
    for record, traceparent in records:
        if record.record_id in seen:
            continue
        seen.add(record.record_id)
        messages.append(accounting_message(record, traceparent))
    if messages:
        await publisher.publish(ACCOUNTING_TOPIC, messages)
    return len(messages)
