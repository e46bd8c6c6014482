"""`ispbill dead-letters`: the records a Kafka consumer gave up on, read from the broker."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

import typer

from ispbill_app.commands import runtime
from ispbill_app.commands.output import (
    FormatOption,
    OutputFormat,
    count,
    fail,
    print_data,
    print_record,
)

app = typer.Typer(
    help="records a Kafka consumer could not handle (the `<topic>.dead-letter` topic)",
    no_args_is_help=True,
)

COLUMNS = [
    ("ID", "id"),
    ("AT", "at"),
    ("FROM", "source"),
    ("ERROR", "error_type"),
    ("REASON", "summary"),
]

Topic = Annotated[
    str | None,
    typer.Option(
        help="the source topic whose dead letters to read (default: the accounting topic)"
    ),
]


def _broker(kafka: str | None) -> str:
    broker = runtime.settings_from(kafka=kafka).kafka
    if not broker:
        raise fail("give the broker: --kafka HOST:PORT (or ISPBILL_KAFKA)", 2)
    return str(broker)


def _source(topic: str | None) -> str:
    from ispbill_core.contracts.usage_collector import ACCOUNTING_TOPIC

    return topic or ACCOUNTING_TOPIC


def _read(broker: str, source: str) -> list[Any]:
    from ispbill_core.bus import BusError
    from ispbill_core.bus.kafka_dead_letters import dead_letter_topic, read_dead_letters

    try:
        return asyncio.run(read_dead_letters(broker, dead_letter_topic(source)))
    except BusError as exc:
        raise fail(str(exc), 2) from None


def _row(letter: Any) -> dict[str, Any]:
    value = letter.value or b""
    return {
        "id": f"{letter.dead_letter_partition}:{letter.dead_letter_offset}",
        "at": letter.at.isoformat(),
        "source": f"{letter.topic}[{letter.partition}]@{letter.offset}",
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "consumer": letter.consumer,
        "error": letter.error,
        "error_type": letter.error.rsplit(".", 1)[-1],
        "reason": letter.reason,
        "summary": letter.reason.splitlines()[0][:120] if letter.reason else "",
        "key": (letter.key or b"").decode(errors="replace"),
        "headers": {name: v.decode(errors="replace") for name, v in letter.headers},
        "replayed_from": letter.replayed_from,
        "value": value.decode(errors="replace"),
        "value_base64": base64.b64encode(value).decode(),
    }


@app.command("list")
def list_dead_letters(
    kafka: runtime.Kafka = None,
    topic: Topic = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Every dead letter, oldest first, with why (ID is partition:offset on the dead-letter
    topic)."""
    rows = [_row(letter) for letter in _read(_broker(kafka), _source(topic))]
    if fmt is OutputFormat.json:
        print_data(rows, fmt)
        return
    print_data(rows, fmt, COLUMNS)


@app.command("show")
def show_dead_letter(
    letter_id: Annotated[str, typer.Argument(help="partition:offset, as `list` shows it")],
    kafka: runtime.Kafka = None,
    topic: Topic = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """One dead letter: the record as it was read (key, headers, value), and why."""
    rows = {row["id"]: row for row in map(_row, _read(_broker(kafka), _source(topic)))}
    if letter_id not in rows:
        raise fail(f"no dead letter {letter_id!r}", 1)
    fields = [
        *COLUMNS[:3],
        ("CONSUMER", "consumer"),
        ("ERROR", "error"),
        ("REASON", "reason"),
        ("REPLAYED FROM", "replayed_from"),
        ("KEY", "key"),
        ("HEADERS", "headers"),
        ("VALUE", "value"),
    ]
    print_record(rows[letter_id], fmt, fields)


@app.command("replay")
def replay(
    letter_ids: Annotated[
        list[str] | None, typer.Argument(help="partition:offset of each to replay")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    kafka: runtime.Kafka = None,
    topic: Topic = None,
) -> None:
    """Publish the records to their source topic again, as they were (once the cause is
    fixed). The consumer handles them as any record: one handled meanwhile changes nothing,
    one that fails again is dead-lettered again, saying which one it was replayed from."""
    from ispbill_core.bus import BusError
    from ispbill_core.bus.kafka_dead_letters import dead_letter_topic, replay_dead_letters

    if not letter_ids and not every:
        raise fail("name the dead letters to replay (partition:offset), or --all", 2)
    broker, source = _broker(kafka), _source(topic)
    letters = _read(broker, source)
    if not every:
        by_id = {f"{x.dead_letter_partition}:{x.dead_letter_offset}": x for x in letters}
        unknown = [i for i in letter_ids or [] if i not in by_id]
        if unknown:
            raise fail(f"no dead letter {', '.join(unknown)}", 1)
        letters = [by_id[i] for i in dict.fromkeys(letter_ids or [])]
    try:
        done = asyncio.run(
            replay_dead_letters(broker, letters, dead_letter_topic_name=dead_letter_topic(source))
        )
    except BusError as exc:
        raise fail(str(exc), 2) from None
    print(f"replayed {count(done, 'record')} to {source} (its consumer takes them within seconds)")
