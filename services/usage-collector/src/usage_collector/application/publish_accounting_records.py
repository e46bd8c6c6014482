"""Publish a batch of accepted records in one durable call: the bus write behind every ack."""

from __future__ import annotations

from collections.abc import Sequence

from ispbill_core.contracts.usage_collector import (
    ACCOUNTING_TOPIC,
    AccountingRecordReceived,
    accounting_key,
)
from ispbill_core.events import NewEvent, new_event
from usage_collector.application.ports import AccountingPublisher


def accounting_message(
    record: AccountingRecordReceived, traceparent: str | None = None
) -> tuple[str, NewEvent]:
    """(key, event): keyed by NAS and session so one session stays on one partition, in order.

    The event id is the record id, so a retransmitted request is a no-op in an idempotent bus
    or ledger rather than a second record.
    """
    event = new_event(
        record,
        id=record.record_id,
        occurred_at=record.event_time,
        actor=f"nas:{record.nas_id}",
        traceparent=traceparent,
    )
    return accounting_key(record.nas_id, record.acct_session_id), event


async def publish_accounting_records(
    publisher: AccountingPublisher,
    records: Sequence[tuple[AccountingRecordReceived, str | None]],
) -> int:
    """Publish (record, traceparent) pairs; return how many distinct records were sent.

    A request and its retransmission can land in one batch; they are one fact, so the batch
    carries it once (a ledger would otherwise see one id twice in one append).
    """
    messages: list[tuple[str, NewEvent]] = []
    seen = set()
    for record, traceparent in records:
        if record.record_id in seen:
            continue
        seen.add(record.record_id)
        messages.append(accounting_message(record, traceparent))
    if messages:
        await publisher.publish(ACCOUNTING_TOPIC, messages)
    return len(messages)
