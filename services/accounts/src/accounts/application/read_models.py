"""Read models of accounts: customers, plans, subscriptions and NASes as tables, and their queries.

The projections fold published events into rows; the queries answer the API's lists and
searches from those rows (never from the log). Decisions (uniqueness, expected versions) still
read the aggregates' own streams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ispbill_core.contracts.accounts import (
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    NasRemoved,
    PlanDefined,
    SubscriptionStarted,
)
from ispbill_core.events import RecordedEvent
from ispbill_core.projections import Projection, ReadModelDatabase, Statement


def search_text(*parts: str) -> str:
    """What a search matches against: case-folded, one space between the parts."""
    return " ".join(p.casefold() for p in parts if p)


class CustomersProjection(Projection):
    name = "accounts.customers"
    version = 1
    tables = ("rm_customers",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_customers (customer_id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL, email TEXT NOT NULL, tax_region TEXT NOT NULL,"
        " search TEXT NOT NULL, registered_at TEXT NOT NULL, version BIGINT NOT NULL,"
        " data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_customers_by_name ON rm_customers (name, customer_id)",
        "CREATE INDEX IF NOT EXISTS rm_customers_by_region ON rm_customers (tax_region)",
    )
    types = frozenset({CustomerRegistered.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        customer = event.decode()
        assert isinstance(customer, CustomerRegistered)
        return [
            (
                "INSERT INTO rm_customers (customer_id, name, email, tax_region, search,"
                " registered_at, version, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name,"
                " email = excluded.email, tax_region = excluded.tax_region,"
                " search = excluded.search, version = excluded.version, data = excluded.data",
                (
                    customer.customer_id,
                    customer.name,
                    str(customer.email),
                    customer.tax_region,
                    search_text(customer.customer_id, customer.name, str(customer.email)),
                    event.metadata.occurred_at.isoformat(),
                    event.stream_position,
                    customer.model_dump_json(),
                ),
            )
        ]


class PlansProjection(Projection):
    name = "accounts.plans"
    version = 1
    tables = ("rm_plans",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_plans (plan_id TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " defined_at BIGINT NOT NULL, version BIGINT NOT NULL, data TEXT NOT NULL)",
    )
    types = frozenset({PlanDefined.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        plan = event.decode()
        assert isinstance(plan, PlanDefined)
        return [
            (
                "INSERT INTO rm_plans (plan_id, name, defined_at, version, data)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (plan_id) DO UPDATE SET name = excluded.name,"
                " version = excluded.version, data = excluded.data",
                (
                    plan.plan_id,
                    plan.name,
                    event.global_position,
                    event.stream_position,
                    plan.model_dump_json(),
                ),
            )
        ]


class SubscriptionsProjection(Projection):
    name = "accounts.subscriptions"
    version = 1
    tables = ("rm_subscriptions",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_subscriptions (subscription_id TEXT PRIMARY KEY,"
        " customer_id TEXT NOT NULL, plan_id TEXT NOT NULL, radius_username TEXT NOT NULL,"
        " started_on TEXT NOT NULL, status TEXT NOT NULL, started_at BIGINT NOT NULL,"
        " version BIGINT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_subscriptions_by_customer"
        " ON rm_subscriptions (customer_id, started_at)",
        "CREATE INDEX IF NOT EXISTS rm_subscriptions_by_username"
        " ON rm_subscriptions (radius_username)",
    )
    types = frozenset({SubscriptionStarted.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        sub = event.decode()
        assert isinstance(sub, SubscriptionStarted)
        return [
            (
                "INSERT INTO rm_subscriptions (subscription_id, customer_id, plan_id,"
                " radius_username, started_on, status, started_at, version, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (subscription_id) DO NOTHING",
                (
                    sub.subscription_id,
                    sub.customer_id,
                    sub.plan_id,
                    sub.radius_username,
                    sub.started_on.isoformat(),
                    "active",
                    event.global_position,
                    event.stream_position,
                    sub.model_dump_json(),
                ),
            )
        ]


def secret_digest(secret: bytes) -> str:
    """How the NAS read model remembers a plain-text secret from before sealing: only its
    digest, to tell whether a sealed secret is one that was once in the ledger in plain text."""
    return hashlib.sha256(b"ispbill-nas-secret\x1f" + secret).hexdigest()


class NasProjection(Projection):
    """NASes in service (a removal deletes the row), in the order registered; the sealed secret
    is kept as recorded (the API shows its key id), a v1 plain-text secret only as a digest."""

    name = "accounts.nas"
    version = 1
    tables = ("rm_nas", "rm_nas_plaintext")
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_nas (nas_id TEXT PRIMARY KEY, ip_address TEXT NOT NULL,"
        " registered_at BIGINT NOT NULL, version BIGINT NOT NULL, event_version INTEGER NOT NULL,"
        " data TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS rm_nas_plaintext (digest TEXT PRIMARY KEY)",
    )
    types = frozenset({NasRegistered.event_type, NasRemoved.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        decoded = event.decode()
        if isinstance(decoded, NasRemoved):
            return [("DELETE FROM rm_nas WHERE nas_id = ?", (decoded.nas_id,))]
        assert isinstance(decoded, NasRegistered | NasRegisteredV1)
        statements: list[Statement] = []
        data = decoded.model_dump(mode="json")
        if isinstance(decoded, NasRegisteredV1):
            statements.append(
                (
                    "INSERT INTO rm_nas_plaintext (digest) VALUES (?) ON CONFLICT DO NOTHING",
                    (secret_digest(decoded.secret.encode("utf-8")),),
                )
            )
            data.pop("secret")
        statements.append(
            (
                "INSERT INTO rm_nas (nas_id, ip_address, registered_at, version, event_version,"
                " data) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (nas_id) DO UPDATE SET"
                " ip_address = excluded.ip_address, version = excluded.version,"
                " event_version = excluded.event_version, data = excluded.data",
                (
                    decoded.nas_id,
                    decoded.ip_address,
                    event.global_position,
                    event.stream_position,
                    event.version,
                    json.dumps(data),
                ),
            )
        )
        return statements


def accounts_projections() -> list[Projection]:
    return [CustomersProjection(), PlansProjection(), SubscriptionsProjection(), NasProjection()]


class AccountsQueries:
    """Lists and searches of the accounts read models."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def customers(
        self,
        *,
        search: str | None = None,
        region: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[dict[str, Any]]:
        """Ordered by customer id; `after` is the last id of the previous page."""
        where: list[str] = []
        params: list[Any] = []
        if search:
            where.append("search LIKE ? ESCAPE '\\'")
            params.append(f"%{like_literal(search.casefold())}%")
        if region:
            where.append("tax_region = ?")
            params.append(region)
        if after:
            where.append("customer_id > ?")
            params.append(after)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.fetch(
            f"SELECT data, version FROM rm_customers{clause}"  # noqa: S608 - fixed fragments
            " ORDER BY customer_id LIMIT ?",
            [*params, limit],
        )
        return [{**json.loads(data), "version": int(version)} for data, version in rows]

    async def plans(self) -> list[dict[str, Any]]:
        rows = await self._db.fetch("SELECT data FROM rm_plans ORDER BY defined_at")
        return [json.loads(r[0]) for r in rows]

    async def subscriptions(
        self, *, customer_id: str | None = None, limit: int = 1000, after: int = 0
    ) -> list[dict[str, Any]]:
        where = ["started_at > ?"]
        params: list[Any] = [after]
        if customer_id:
            where.append("customer_id = ?")
            params.append(customer_id)
        rows = await self._db.fetch(
            f"SELECT data, status FROM rm_subscriptions WHERE {' AND '.join(where)}"  # noqa: S608
            " ORDER BY started_at LIMIT ?",
            [*params, limit],
        )
        return [json.loads(data) for data, _status in rows]

    async def nases(self) -> list[tuple[dict[str, Any], int, int]]:
        """Every NAS in service: (its registration as recorded, the NAS stream's version, the
        event's type version), in the order registered."""
        rows = await self._db.fetch(
            "SELECT data, version, event_version FROM rm_nas ORDER BY registered_at"
        )
        return [(json.loads(data), int(version), int(ev)) for data, version, ev in rows]

    async def plaintext_digests(self) -> frozenset[str]:
        rows = await self._db.fetch("SELECT digest FROM rm_nas_plaintext")
        return frozenset(r[0] for r in rows)


def like_literal(text: str) -> str:
    """`text` matched literally inside a LIKE pattern whose ESCAPE is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
