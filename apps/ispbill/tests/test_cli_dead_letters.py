"""`ispbill dead-letters list / show / replay` against a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer

from ispbill_app.cli import main
from ispbill_core.bus import UndecodableMessage
from ispbill_core.bus.kafka import ensure_topics
from ispbill_core.bus.kafka_dead_letters import (
    HEADER_REPLAYED_FROM,
    DeadLetter,
    KafkaDeadLetters,
    dead_letter_topic,
)
from tests.fixtures.kafka import TansuBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _letter(topic: str, offset: int, value: bytes, error: BaseException) -> DeadLetter:
    return DeadLetter.of(
        key=b"nas-1/s-1",
        value=value,
        headers=[("traceparent", b"00-abc")],
        error=error,
        reason=f"{type(error).__name__}: {error}\nsecond line",
        topic=topic,
        partition=1,
        offset=offset,
        consumer="ispbill-rating",
        at=datetime(2026, 3, 1, 12, tzinfo=UTC),
    )


async def _dead_letters(bootstrap: str, topic: str) -> None:
    await ensure_topics(bootstrap, [topic], 2)
    await ensure_topics(bootstrap, [dead_letter_topic(topic)], 1)
    publisher = KafkaDeadLetters(bootstrap, client_id="test")
    try:
        await publisher.publish(
            [
                _letter(topic, 5, b"\x00garbage", UndecodableMessage("not an envelope")),
                _letter(topic, 9, b'{"id": "x"}', ValueError("input_octets < 0")),
            ]
        )
    finally:
        await publisher.stop()


async def _source_records(bootstrap: str, topic: str, count: int) -> list[object]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    got: list[object] = []
    try:
        async with asyncio.timeout(20):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(records)
    finally:
        await consumer.stop()
    return got


def test_an_operator_lists_shows_and_replays_dead_letters(
    kafka_broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = f"test.cli.{uuid.uuid4().hex[:8]}"
    asyncio.run(_dead_letters(bootstrap, topic))
    where = ["--kafka", bootstrap, "--topic", topic]

    assert main(["dead-letters", "list", *where, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["source"], r["error_type"]) for r in rows] == [
        ("0:0", f"{topic}[1]@5", "UndecodableMessage"),
        ("0:1", f"{topic}[1]@9", "ValueError"),
    ]
    assert rows[1]["reason"] == "ValueError: input_octets < 0\nsecond line"
    assert rows[0]["headers"] == {"traceparent": "00-abc"}
    assert rows[0]["value_base64"] == "AGdhcmJhZ2U="

    assert main(["dead-letters", "list", *where]) == 0
    table = capsys.readouterr().out
    assert "UndecodableMessage" in table and "second line" not in table, "one line a letter"

    assert main(["dead-letters", "show", "0:1", *where]) == 0
    shown = capsys.readouterr().out
    assert "input_octets < 0" in shown and "ispbill-rating" in shown and '{"id": "x"}' in shown
    assert main(["dead-letters", "show", "0:7", *where]) == 1

    assert main(["dead-letters", "replay", *where]) == 2, "which ones, or --all"
    assert main(["dead-letters", "replay", "0:1", *where]) == 0
    assert "replayed 1 record" in capsys.readouterr().out
    (replayed,) = asyncio.run(_source_records(bootstrap, topic, 1))
    assert (replayed.key, replayed.value) == (b"nas-1/s-1", b'{"id": "x"}')  # type: ignore[attr-defined]
    headers = dict(replayed.headers)  # type: ignore[attr-defined]
    assert headers == {
        "traceparent": b"00-abc",
        HEADER_REPLAYED_FROM: f"{dead_letter_topic(topic)}/0/1".encode(),
    }

    assert main(["dead-letters", "replay", "--all", *where]) == 0
    assert "replayed 2 records" in capsys.readouterr().out
    assert len(asyncio.run(_source_records(bootstrap, topic, 3))) == 3


def test_without_a_broker_it_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ISPBILL_KAFKA", raising=False)
    assert main(["dead-letters", "list"]) == 2
    assert "--kafka" in capsys.readouterr().err
