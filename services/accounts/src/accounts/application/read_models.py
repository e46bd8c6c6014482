"""Read models of accounts: customers, plans, subscriptions and NASes as tables, and their queries.

The projections fold published events into rows; the queries answer the API's lists and
searches from those rows (never from the log). Decisions (uniqueness, expected versions) still
read the aggregates' own streams.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date
from typing import Any

from accounts.domain.subscription import Subscription
from ispbill_core.contracts.accounts import (
    CustomerDetailsChanged,
    CustomerRecord,
    CustomerRegistered,
    NasRegistered,
    NasRegisteredV1,
    NasRemoved,
    PlanDefined,
    RadiusUsernameChanged,
    SubscriptionHoldPlaced,
    SubscriptionPlanChanged,
    SubscriptionResumed,
    SubscriptionStarted,
    SubscriptionSuspended,
    SubscriptionTerminated,
    TopUpProductDefined,
)
from ispbill_core.events import RecordedEvent, UnknownEventType
from ispbill_core.projections import Projection, ReadModelDatabase, Statement, in_runs


def search_text(*parts: str) -> str:
    """What a search matches against: case-folded, one space between the parts."""
    return " ".join(p.casefold() for p in parts if p)


#: The customer events the projection folds, by (type, version) as recorded.
_CUSTOMER_EVENTS = frozenset(
    (c.event_type, c.event_version) for c in (CustomerRegistered, CustomerDetailsChanged)
)


class CustomersProjection(Projection):
    """A customer's current details (registration, then every change)."""

    name = "accounts.customers"
    version = 2
    tables = ("rm_customers",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_customers (customer_id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL, email TEXT NOT NULL, tax_region TEXT NOT NULL,"
        " account_type TEXT NOT NULL, tags TEXT NOT NULL,"
        " search TEXT NOT NULL, registered_at TEXT NOT NULL, version BIGINT NOT NULL,"
        " data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_customers_by_name ON rm_customers (name, customer_id)",
        "CREATE INDEX IF NOT EXISTS rm_customers_by_region ON rm_customers (tax_region)",
        "CREATE INDEX IF NOT EXISTS rm_customers_by_type ON rm_customers (account_type)",
    )
    # a search matches anywhere in the text (LIKE '%...%'): trigrams find it without reading
    # every customer (pg_trgm ships with PostgreSQL and is a trusted extension since 13)
    ddl_postgresql = (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
        "CREATE INDEX IF NOT EXISTS rm_customers_search_trgm"
        " ON rm_customers USING gin (search {ext:pg_trgm}.gin_trgm_ops)",
    )
    types = frozenset({CustomerRegistered.event_type, CustomerDetailsChanged.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        if (event.type, event.version) not in _CUSTOMER_EVENTS:
            raise UnknownEventType(f"{event.type} v{event.version}")
        customer = CustomerRecord.model_validate(event.data)
        return [
            (
                "INSERT INTO rm_customers (customer_id, name, email, tax_region, account_type,"
                " tags, search, registered_at, version, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name,"
                " email = excluded.email, tax_region = excluded.tax_region,"
                " account_type = excluded.account_type, tags = excluded.tags,"
                " search = excluded.search, version = excluded.version, data = excluded.data",
                (
                    customer.customer_id,
                    customer.name,
                    str(customer.email),
                    customer.tax_region,
                    customer.account_type,
                    # each tag between bars, so that one tag is found by LIKE '%|tag|%'
                    "".join(f"|{t}|" for t in customer.tags),
                    search_text(
                        customer.customer_id, customer.name, str(customer.email), customer.phone
                    ),
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
        """The plan as first defined (the list shows plans by their definition; the versions
        published since are on GET /api/v1/plans/{id}, read from the plan's stream)."""
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


SUBSCRIPTION_CHANGES = (
    SubscriptionPlanChanged,
    SubscriptionSuspended,
    SubscriptionResumed,
    SubscriptionHoldPlaced,
    SubscriptionTerminated,
    RadiusUsernameChanged,
)


_INSERT_SUBSCRIPTION = (
    "INSERT INTO rm_subscriptions (subscription_id, customer_id, plan_id,"
    " radius_username, started_on, terminated_on, started_at, version, data)"
    " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?) ON CONFLICT (subscription_id) DO NOTHING"
)
_LOG_SUBSCRIPTION_EVENT = (
    "INSERT INTO rm_subscription_events (subscription_id, position, type, data)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (subscription_id, position) DO NOTHING"
)


class SubscriptionsProjection(Projection):
    """A row per subscription with its latest plan and username, and every change in
    `rm_subscription_events`: a status is as of a day (changes take effect on their dates), so
    the query folds a subscription's changes with the domain's own rules for the day asked."""

    name = "accounts.subscriptions"
    version = 2
    tables = ("rm_subscriptions", "rm_subscription_events")
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_subscriptions (subscription_id TEXT PRIMARY KEY,"
        " customer_id TEXT NOT NULL, plan_id TEXT NOT NULL, radius_username TEXT NOT NULL,"
        " started_on TEXT NOT NULL, terminated_on TEXT, started_at BIGINT NOT NULL,"
        " version BIGINT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS rm_subscriptions_by_customer"
        " ON rm_subscriptions (customer_id, started_at)",
        "CREATE INDEX IF NOT EXISTS rm_subscriptions_by_username"
        " ON rm_subscriptions (radius_username)",
        "CREATE TABLE IF NOT EXISTS rm_subscription_events (subscription_id TEXT NOT NULL,"
        " position BIGINT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL,"
        " PRIMARY KEY (subscription_id, position))",
    )
    types = frozenset(
        {SubscriptionStarted.event_type, *(c.event_type for c in SUBSCRIPTION_CHANGES)}
    )

    def fold(
        self, events: Sequence[RecordedEvent]
    ) -> tuple[list[Statement], list[tuple[RecordedEvent, str]]]:
        """As event by event, in runs: the subscriptions started, then every change's log
        row, then the updates in their order (an update follows its subscription's insert)."""
        statements, parked = super().fold(events)
        first = (_INSERT_SUBSCRIPTION, _LOG_SUBSCRIPTION_EVENT)
        return in_runs(statements, first=first, group_rest=False), parked

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        decoded = event.decode()
        log_it: Statement = (
            _LOG_SUBSCRIPTION_EVENT,
            (
                decoded.subscription_id,  # type: ignore[attr-defined]
                event.stream_position,
                event.type,
                decoded.model_dump_json(),
            ),
        )
        if isinstance(decoded, SubscriptionStarted):
            return [
                (
                    _INSERT_SUBSCRIPTION,
                    (
                        decoded.subscription_id,
                        decoded.customer_id,
                        decoded.plan_id,
                        decoded.radius_username,
                        decoded.started_on.isoformat(),
                        event.global_position,
                        event.stream_position,
                        decoded.model_dump_json(),
                    ),
                ),
                log_it,
            ]
        assert isinstance(decoded, SUBSCRIPTION_CHANGES)
        sid = decoded.subscription_id
        if isinstance(decoded, SubscriptionPlanChanged):
            change: Statement = (
                "UPDATE rm_subscriptions SET plan_id = ?, version = ? WHERE subscription_id = ?",
                (decoded.plan_id, event.stream_position, sid),
            )
        elif isinstance(decoded, RadiusUsernameChanged):
            change = (
                "UPDATE rm_subscriptions SET radius_username = ?, version = ?"
                " WHERE subscription_id = ?",
                (decoded.new_username, event.stream_position, sid),
            )
        elif isinstance(decoded, SubscriptionTerminated):
            change = (
                "UPDATE rm_subscriptions SET terminated_on = ?, version = ?"
                " WHERE subscription_id = ?",
                (decoded.effective_on.isoformat(), event.stream_position, sid),
            )
        else:
            change = (
                "UPDATE rm_subscriptions SET version = ? WHERE subscription_id = ?",
                (event.stream_position, sid),
            )
        return [change, log_it]


class TopUpProductsProjection(Projection):
    name = "accounts.topups"
    version = 1
    tables = ("rm_topups",)
    ddl = (
        "CREATE TABLE IF NOT EXISTS rm_topups (product_id TEXT PRIMARY KEY,"
        " defined_at BIGINT NOT NULL, data TEXT NOT NULL)",
    )
    types = frozenset({TopUpProductDefined.event_type})

    def apply(self, event: RecordedEvent) -> Sequence[Statement]:
        product = event.decode()
        assert isinstance(product, TopUpProductDefined)
        return [
            (
                "INSERT INTO rm_topups (product_id, defined_at, data) VALUES (?, ?, ?)"
                " ON CONFLICT (product_id) DO UPDATE SET data = excluded.data",
                (product.product_id, event.global_position, product.model_dump_json()),
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
    return [
        CustomersProjection(),
        PlansProjection(),
        SubscriptionsProjection(),
        TopUpProductsProjection(),
        NasProjection(),
    ]


class AccountsQueries:
    """Lists and searches of the accounts read models."""

    def __init__(self, db: ReadModelDatabase) -> None:
        self._db = db

    async def customers(
        self,
        *,
        search: str | None = None,
        region: str | None = None,
        account_type: str | None = None,
        tag: str | None = None,
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
        if account_type:
            where.append("account_type = ?")
            params.append(account_type)
        if tag:
            where.append("tags LIKE ? ESCAPE '\\'")
            params.append(f"%|{like_literal(tag)}|%")
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

    async def customer_ids_with_subscriptions(self) -> dict[str, list[dict[str, Any]]]:
        """Every subscription as started, by customer: the bill run's catalogue."""
        rows = await self._db.fetch("SELECT data FROM rm_subscriptions ORDER BY started_at")
        found: dict[str, list[dict[str, Any]]] = {}
        for (data,) in rows:
            started = json.loads(data)
            found.setdefault(started["customer_id"], []).append(started)
        return found

    async def plans(self) -> list[dict[str, Any]]:
        rows = await self._db.fetch("SELECT data FROM rm_plans ORDER BY defined_at")
        return [json.loads(r[0]) for r in rows]

    async def subscriptions(
        self, today: date, *, customer_id: str | None = None, limit: int = 1000, after: int = 0
    ) -> list[dict[str, Any]]:
        """In the order started (`after`: the `cursor` of the last one of the page before),
        each with its plan, username and status on `today`."""
        where = ["started_at > ?"]
        params: list[Any] = [after]
        if customer_id:
            where.append("customer_id = ?")
            params.append(customer_id)
        rows = await self._db.fetch(
            "SELECT subscription_id, data, version, started_at FROM rm_subscriptions"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY started_at LIMIT ?",
            [*params, limit],
        )
        changed = [r[0] for r in rows if int(r[2]) > 0]
        timelines: dict[str, list[tuple[int, Any]]] = {}
        for start in range(0, len(changed), 500):
            chunk = changed[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sid, position, type_, data in await self._db.fetch(
                "SELECT subscription_id, position, type, data FROM rm_subscription_events"  # noqa: S608
                f" WHERE subscription_id IN ({marks}) ORDER BY subscription_id, position",
                chunk,
            ):
                event = _CHANGE_TYPES[type_].model_validate_json(data)
                timelines.setdefault(sid, []).append((int(position), event))
        out = []
        for sid, data, _version, cursor in rows:
            started = SubscriptionStarted.model_validate_json(data)
            sub = Subscription.fold(timelines.get(sid) or [(0, started)])
            out.append(
                {
                    **started.model_dump(mode="json"),
                    "plan_id": sub.plan_on(today),
                    "radius_username": sub.radius_username,
                    "status": sub.status_on(today),
                    "terminated_on": sub.terminated_on.isoformat() if sub.terminated_on else None,
                    "version": sub.version,
                    "cursor": int(cursor),
                }
            )
        return out

    async def topups(self) -> list[dict[str, Any]]:
        rows = await self._db.fetch("SELECT data FROM rm_topups ORDER BY defined_at")
        return [json.loads(r[0]) for r in rows]

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


_CHANGE_TYPES: dict[str, Any] = {
    c.event_type: c for c in (SubscriptionStarted, *SUBSCRIPTION_CHANGES)
}


def like_literal(text: str) -> str:
    """`text` matched literally inside a LIKE pattern whose ESCAPE is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
