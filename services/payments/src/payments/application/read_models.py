"""Read model of payments: every payment received, by customer, invoice and date."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import RecordedEvent
from ispbill_core.projections import Projection, ReadModelDatabase, Statement


class PaymentsProjection(Projection):
    name = "payments.payments"
    version = 1
    tables = ("rm_payments",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_payments (payment_id TEXT PRIMARY KEY,"
        " customer_id TEXT NOT NULL, invoice_id TEXT, gateway TEXT NOT NULL,"
        " transaction_ref TEXT NOT NULL, received_at TEXT NOT NULL, recorded_at BIGINT NOT NULL,"
        " actor TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_payments_by_customer"
        " ON rm_payments (customer_id, recorded_at)",
        "CREATE INDEX IF NOT EXISTS rm_payments_by_invoice ON rm_payments (invoice_id)",
        "CREATE INDEX IF NOT EXISTS rm_payments_by_received ON rm_payments (received_at)",
    )
    types = frozenset({PaymentReceived.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        payment = event.decode()
        assert isinstance(payment, PaymentReceived)
        return [
            (
                "INSERT INTO rm_payments (payment_id, customer_id, invoice_id, gateway,"
                " transaction_ref, received_at, recorded_at, actor, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (payment_id) DO NOTHING",
                (
                    str(payment.payment_id),
                    payment.customer_id,
                    None if payment.invoice_id is None else str(payment.invoice_id),
                    payment.gateway,
                    payment.transaction_ref,
                    payment.received_at.isoformat(),
                    event.global_position,
                    event.metadata.actor,
                    payment.model_dump_json(),
                ),
            )
        ]


class PaymentQueries:
    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def payments(
        self,
        *,
        customer_id: str | None = None,
        invoice_id: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[tuple[dict[str, Any], int]]:
        """(payment with the actor who recorded it, cursor), newest first."""
        where: list[str] = []
        params: list[Any] = []
        if customer_id is not None:
            where.append("customer_id = ?")
            params.append(customer_id)
        if invoice_id is not None:
            where.append("invoice_id = ?")
            params.append(invoice_id)
        if before is not None:
            where.append("recorded_at < ?")
            params.append(before)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.fetch(
            f"SELECT data, actor, recorded_at FROM rm_payments{clause}"  # noqa: S608
            " ORDER BY recorded_at DESC LIMIT ?",
            [*params, limit],
        )
        return [({**json.loads(d), "recorded_by": actor}, int(c)) for d, actor, c in rows]
