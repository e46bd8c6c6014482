"""The audit trail: who recorded what, when, about which customer — a projection of every
event's envelope (its metadata's actor) except the machine-made usage records."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from ispbill_core.events import RecordedEvent, registered_event_types
from ispbill_core.projections import Projection, ReadModelDatabase, Statement, in_runs

#: Usage and counters arrive by the million and are made by machines, not people: they are
#: audited through their own records (and the ledger itself), not this trail.
NOT_AUDITED = frozenset(
    {
        "AccountingRecordReceived",
        "RouterCountersSampled",
        "UsageRated",
        "UsageMeasured",
        "UsageUnmatched",
    }
)

_CUSTOMER_STREAM_PREFIXES = ("customer-",)


def customer_of(event: RecordedEvent) -> str | None:
    """The customer an event is about, when it names one (a subscription's lifecycle events
    name only the subscription: the projection looks its customer up)."""
    value = event.data.get("customer_id")
    if isinstance(value, str):
        return value
    for prefix in _CUSTOMER_STREAM_PREFIXES:
        if event.stream.startswith(prefix):
            return event.stream[len(prefix) :]
    return None


_SECRET_PARTS = ("secret", "password", "hash")
#: Whether a field name hides its value, by name (events have few distinct field names).
_hidden: dict[str, bool] = {}
_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


def _is_hidden(key: str) -> bool:
    hidden = _hidden.get(key)
    if hidden is None:
        hidden = any(part in key for part in _SECRET_PARTS)
        if len(_hidden) < 10_000:
            _hidden[key] = hidden
    return hidden


#: Whether an event's data hides any field, by its tuple of field names (few distinct ones).
_hides: dict[tuple[str, ...], bool] = {}


def _hides_any(data: dict[str, Any]) -> bool:
    keys = tuple(data)
    hides = _hides.get(keys)
    if hides is None:
        hides = any(_is_hidden(k) for k in keys)
        if len(_hides) < 10_000:
            _hides[keys] = hides
    return hides


def _summary(event: RecordedEvent) -> str:
    """The event's data without anything secret (sealed secrets, hashes), cut short."""
    data = event.data
    if _hides_any(data):
        text = _encode({k: v for k, v in data.items() if not _is_hidden(k)})
    else:
        text = event.data_json()
    return text if len(text) <= 1000 else text[:997] + "..."


_INSERT_SUBSCRIPTION = (
    "INSERT INTO rm_audit_subscriptions (subscription_id, customer_id)"
    " VALUES (?, ?) ON CONFLICT (subscription_id) DO NOTHING"
)
_INSERT_ROW = (
    "INSERT INTO rm_audit (global_position, occurred_at, recorded_at, actor, type,"
    " stream, summary, customer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (global_position) DO NOTHING"
)
_INSERT_ROW_LOOKED_UP = (
    "INSERT INTO rm_audit (global_position, occurred_at, recorded_at, actor, type,"
    " stream, summary, customer_id) VALUES (?, ?, ?, ?, ?, ?, ?,"
    " (SELECT customer_id FROM rm_audit_subscriptions WHERE subscription_id = ?))"
    " ON CONFLICT (global_position) DO NOTHING"
)


class AuditTrailProjection(Projection):
    name = "core.audit-trail"
    version = 2
    tables = ("rm_audit", "rm_audit_subscriptions")
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_audit (global_position BIGINT PRIMARY KEY,"
        " occurred_at TEXT NOT NULL, recorded_at TEXT NOT NULL, actor TEXT NOT NULL,"
        " type TEXT NOT NULL, stream TEXT NOT NULL, customer_id TEXT, summary TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_audit_by_actor ON rm_audit (actor, global_position)",
        "CREATE INDEX IF NOT EXISTS rm_audit_by_customer"
        " ON rm_audit (customer_id, global_position)",
        "CREATE INDEX IF NOT EXISTS rm_audit_by_time ON rm_audit (recorded_at)",
        # whose a subscription is: its lifecycle events name only the subscription
        "CREATE TABLE IF NOT EXISTS rm_audit_subscriptions (subscription_id TEXT PRIMARY KEY,"
        " customer_id TEXT NOT NULL)",
    )

    def __init__(self, types: Collection[str] | None = None) -> None:
        """`types`: the event types audited; by default every registered type but usage."""
        chosen = (
            {name for name, _ in registered_event_types()} if types is None else set(types)
        ) - NOT_AUDITED
        self.types = frozenset(chosen)  # type: ignore[misc]

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """As event by event, grouped by statement (one executemany each): every
        subscription's customer first, then the trail's rows, which are independent of each
        other (their own key, never updated) and read only those."""
        statements, parked = super().fold(events)
        return in_runs(statements, first=(_INSERT_SUBSCRIPTION,)), parked

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        meta = event.metadata
        customer_id = customer_of(event)
        subscription_id = event.data.get("subscription_id")
        statements: list[Statement] = []
        if customer_id is not None and isinstance(subscription_id, str):
            statements.append((_INSERT_SUBSCRIPTION, (subscription_id, customer_id)))
        values = (
            event.global_position,
            meta.occurred_at.isoformat(),
            (meta.recorded_at or meta.occurred_at).isoformat(),
            meta.actor,
            event.type,
            event.stream,
            _summary(event),
        )
        if customer_id is None and isinstance(subscription_id, str):
            statements.append((_INSERT_ROW_LOOKED_UP, (*values, subscription_id)))
        else:
            statements.append((_INSERT_ROW, (*values, customer_id)))
        return statements


async def audit_log(
    db: ReadModelDatabase,
    *,
    actor: str | None = None,
    customer_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `before` (a global position) pages on."""
    where: list[str] = []
    params: list[Any] = []
    if actor is not None:
        where.append("actor = ?")
        params.append(actor)
    if customer_id is not None:
        where.append("customer_id = ?")
        params.append(customer_id)
    if since is not None:
        where.append("recorded_at >= ?")
        params.append(since.isoformat())
    if before is not None:
        where.append("global_position < ?")
        params.append(before)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    columns = "global_position, occurred_at, recorded_at, actor, type, stream, customer_id, summary"
    sql = f"SELECT {columns} FROM rm_audit{clause} ORDER BY global_position DESC LIMIT ?"  # noqa: S608
    rows = await db.fetch(sql, [*params, limit])
    return [
        {
            "position": int(r[0]),
            "occurred_at": r[1],
            "recorded_at": r[2],
            "actor": r[3],
            "type": r[4],
            "stream": r[5],
            "customer_id": r[6],
            "data": json.loads(r[7]) if r[7].endswith("}") else r[7],
        }
        for r in rows
    ]
