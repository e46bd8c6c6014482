"""Dead letters as the rating worker writes them and the CLI reads them back (no broker)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ispbill_core.bus import BusUnavailable, UndecodableMessage
from ispbill_core.bus.kafka_dead_letters import (
    HEADER_AT,
    HEADER_REASON,
    HEADER_REPLAYED_FROM,
    DeadLetter,
    dead_letter_topic,
)
from ispbill_core.subscriber import is_transient

pytestmark = pytest.mark.unit


class _Record:
    """What aiokafka's consumer gives back, as far as a dead letter reads it."""

    def __init__(self, letter: DeadLetter, partition: int, offset: int) -> None:
        self.key, self.value = letter.key, letter.value
        self.headers = letter.kafka_headers()
        self.partition, self.offset = partition, offset


def _letter(**changes: object) -> DeadLetter:
    letter = DeadLetter.of(
        key=b"nas-1/s-1",
        value=b"\x00not json",
        headers=[("traceparent", b"00-1"), (HEADER_REPLAYED_FROM, b"t.dead-letter/0/3")],
        error=UndecodableMessage("not an ispbill event envelope"),
        reason="not an ispbill event envelope",
        topic="ispbill.usage.radius-accounting",
        partition=2,
        offset=41,
        consumer="ispbill-rating",
        at=datetime(2026, 3, 1, 13, tzinfo=timezone(timedelta(hours=1))),
    )
    return replace(letter, **changes)  # type: ignore[arg-type]


def test_a_dead_letter_reads_back_as_it_was_written() -> None:
    letter = _letter()
    back = DeadLetter.from_record(_Record(letter, 0, 7))
    assert back == replace(letter, dead_letter_partition=0, dead_letter_offset=7)
    assert back.error == "ispbill_core.bus.UndecodableMessage"
    assert back.at == datetime(2026, 3, 1, 12, tzinfo=UTC), "kept in UTC"
    assert back.replayed_from == "t.dead-letter/0/3"
    assert back.headers[0] == ("traceparent", b"00-1"), "the record's own headers, first"


def test_the_headers_say_why_where_and_when() -> None:
    headers = dict(_letter().kafka_headers())
    assert headers == {
        "traceparent": b"00-1",
        HEADER_REPLAYED_FROM: b"t.dead-letter/0/3",
        HEADER_REASON: b"not an ispbill event envelope",
        "ispbill.dead-letter.error": b"ispbill_core.bus.UndecodableMessage",
        "ispbill.dead-letter.topic": b"ispbill.usage.radius-accounting",
        "ispbill.dead-letter.partition": b"2",
        "ispbill.dead-letter.offset": b"41",
        HEADER_AT: b"2026-03-01T12:00:00+00:00",
        "ispbill.dead-letter.consumer": b"ispbill-rating",
    }
    assert dead_letter_topic("ispbill.usage.radius-accounting") == (
        "ispbill.usage.radius-accounting.dead-letter"
    )


def test_a_long_reason_is_cut() -> None:
    letter = DeadLetter.of(**{**_of_arguments(), "reason": "x" * 10_000})
    assert len(letter.reason) == 2000


def test_the_broker_down_is_transient_never_a_dead_letter() -> None:
    assert is_transient(BusUnavailable("cannot send"))
    assert not is_transient(UndecodableMessage("not an envelope"))


def _of_arguments() -> dict[str, object]:
    return {
        "key": None,
        "value": b"v",
        "headers": [],
        "error": ValueError("bad"),
        "reason": "ValueError: bad",
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "consumer": "c",
        "at": datetime(2026, 1, 1, tzinfo=UTC),
    }
