"""The gRPC entry point of accounts: ispbill.v1.AccountsService (customers and subscriptions).

Lists come from the read models (AccountsQueries); a single customer or subscription is read
from its own stream (lifecycle.load_customer / load_subscription), as the REST API does. The
server itself is ispbill_core.grpc_server.serve_grpc, given `accounts_grpc_service(...)` beside
the other services of the process.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import grpc

from accounts.application import lifecycle
from accounts.application.read_models import AccountsQueries
from accounts.domain.errors import NotFound
from accounts.domain.subscription import (
    ACTIVE,
    ON_HOLD,
    PENDING,
    SUSPENDED,
    TERMINATED,
    HistoryEntry,
    Subscription,
)
from ispbill.v1 import accounts_pb2, accounts_pb2_grpc
from ispbill_core.access import CUSTOMERS_READ, SUBSCRIPTIONS_READ
from ispbill_core.clock import Clock
from ispbill_core.contracts.accounts import CustomerDetails, CustomerRegistered
from ispbill_core.eventstore import EventStore
from ispbill_core.grpc_server import GrpcService, Refused, answers_refusals

_SERVICE = accounts_pb2.DESCRIPTOR.services_by_name["AccountsService"]
SERVICE_NAME: str = _SERVICE.full_name
#: The permission of each method; a method missing here stops the server from starting.
METHOD_PERMISSIONS: dict[str, str] = {
    f"/{SERVICE_NAME}/GetCustomer": CUSTOMERS_READ,
    f"/{SERVICE_NAME}/ListCustomers": CUSTOMERS_READ,
    f"/{SERVICE_NAME}/GetSubscription": SUBSCRIPTIONS_READ,
    f"/{SERVICE_NAME}/ListSubscriptions": SUBSCRIPTIONS_READ,
}
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_QUERY_LENGTH = 100

#: What an id of the accounts service looks like (RegisterCustomer's and StartSubscription's).
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
_TAG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ACCOUNT_TYPES: dict[str, accounts_pb2.AccountType.ValueType] = {
    "home": accounts_pb2.ACCOUNT_TYPE_HOME,
    "business": accounts_pb2.ACCOUNT_TYPE_BUSINESS,
    "corporate": accounts_pb2.ACCOUNT_TYPE_CORPORATE,
}
_ACCOUNT_TYPE_NAMES = {value: name for name, value in _ACCOUNT_TYPES.items()}
_STATUSES: dict[str, accounts_pb2.SubscriptionStatus.ValueType] = {
    PENDING: accounts_pb2.SUBSCRIPTION_STATUS_PENDING,
    ACTIVE: accounts_pb2.SUBSCRIPTION_STATUS_ACTIVE,
    SUSPENDED: accounts_pb2.SUBSCRIPTION_STATUS_SUSPENDED,
    ON_HOLD: accounts_pb2.SUBSCRIPTION_STATUS_ON_HOLD,
    TERMINATED: accounts_pb2.SUBSCRIPTION_STATUS_TERMINATED,
}
_CHANGE_KINDS: dict[str, accounts_pb2.SubscriptionChangeKind.ValueType] = {
    "SubscriptionStarted": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_STARTED,
    "SubscriptionPlanChanged": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_PLAN_CHANGED,
    "SubscriptionSuspended": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_SUSPENDED,
    "SubscriptionResumed": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_RESUMED,
    "SubscriptionHoldPlaced": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_HOLD_PLACED,
    "SubscriptionTerminated": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_TERMINATED,
    "RadiusUsernameChanged": accounts_pb2.SUBSCRIPTION_CHANGE_KIND_RADIUS_USERNAME_CHANGED,
}


# --- conversions -------------------------------------------------------------------------------


def customer_to_proto(details: CustomerDetails, version: int) -> accounts_pb2.Customer:
    return accounts_pb2.Customer(
        customer_id=details.customer_id,
        name=details.name,
        email=str(details.email),
        tax_region=details.tax_region,
        billing_address=details.billing_address,
        phone=details.phone,
        service_address=details.service_address,
        account_type=_ACCOUNT_TYPES.get(
            details.account_type, accounts_pb2.ACCOUNT_TYPE_UNSPECIFIED
        ),
        tags=list(details.tags),
        version=version,
    )


def _status(status: str) -> accounts_pb2.SubscriptionStatus.ValueType:
    try:
        return _STATUSES[status]
    except KeyError:
        raise ValueError(f"unknown subscription status {status!r}") from None


def history_entry_to_proto(entry: HistoryEntry) -> accounts_pb2.SubscriptionHistoryEntry:
    details = entry.details
    if entry.type == "SubscriptionStarted":
        username = details.get("radius_username", "")
    else:
        username = details.get("new_username", "")
    return accounts_pb2.SubscriptionHistoryEntry(
        version=entry.version,
        kind=_CHANGE_KINDS.get(entry.type, accounts_pb2.SUBSCRIPTION_CHANGE_KIND_UNSPECIFIED),
        type=entry.type,
        effective_on=entry.effective_on.isoformat(),
        reason=details.get("reason", ""),
        plan_id=details.get("plan_id", ""),
        from_plan_id=details.get("from_plan_id", ""),
        hold_until=details.get("hold_until", ""),
        radius_username=username,
        old_radius_username=details.get("old_username", ""),
    )


def subscription_to_proto(sub: Subscription, today: date) -> accounts_pb2.Subscription:
    """A subscription as of `today`, with its whole history (what GetSubscription answers)."""
    plan_today = sub.plan_on(today)
    return accounts_pb2.Subscription(
        subscription_id=sub.subscription_id,
        customer_id=sub.customer_id,
        plan_id=plan_today,
        scheduled_plan_id=sub.latest_plan if sub.latest_plan != plan_today else None,
        radius_username=sub.radius_username,
        started_on=sub.started.started_on.isoformat(),
        status=_status(sub.status_on(today)),
        terminated_on=sub.terminated_on.isoformat() if sub.terminated_on else None,
        version=sub.version,
        history=[history_entry_to_proto(entry) for entry in sub.history],
    )


def listed_subscription_to_proto(row: dict[str, Any]) -> accounts_pb2.Subscription:
    """A row of AccountsQueries.subscriptions (already as of today), without history."""
    return accounts_pb2.Subscription(
        subscription_id=row["subscription_id"],
        customer_id=row["customer_id"],
        plan_id=row["plan_id"],
        radius_username=row["radius_username"],
        started_on=row["started_on"],
        status=_status(row["status"]),
        terminated_on=row["terminated_on"],
        version=row["version"],
    )


# --- input -------------------------------------------------------------------------------------


def _invalid(details: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, details)


def _parse_id(text: str, field: str) -> str:
    if not _ID.fullmatch(text):
        # never echo a long input back
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise _invalid(f"{field} {shown!r} is not an id (letters, digits, _.:@-; 1-64)")
    return text


def _optional(request: Any, field: str) -> str | None:
    """An optional string filter: None when not set, refused when set but empty."""
    if not request.HasField(field):
        return None
    value: str = getattr(request, field)
    if not value:
        raise _invalid(f"{field} is set but empty (leave it unset to match any)")
    return value


def _page_size(requested: int) -> int:
    if requested < 0:
        raise _invalid("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode_page_token(after: str | int, filters: dict[str, Any]) -> str:
    # Keyset, not offset: a row added between two pages neither shifts nor repeats rows.
    payload = {"after": after, "filters": filters}
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, filters: dict[str, Any]) -> Any:
    """The `after` of a token issued for the same `filters`; INVALID_ARGUMENT otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        after = payload["after"]
        same_filters = payload["filters"] == filters
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise _invalid("malformed page_token") from None
    if not same_filters:
        raise _invalid("page_token was issued for different filters")
    return after


def _customer_filters(request: accounts_pb2.ListCustomersRequest) -> dict[str, Any]:
    query = _optional(request, "query")
    if query is not None and (len(query) > MAX_QUERY_LENGTH or _CONTROL.search(query)):
        raise _invalid(
            f"query must be at most {MAX_QUERY_LENGTH} characters, without control characters"
        )
    region = _optional(request, "tax_region")
    if region is not None:
        _parse_id(region, "tax_region")
    tag = _optional(request, "tag")
    if tag is not None and not _TAG.fullmatch(tag):
        raise _invalid("tag is a lower-case slug of letters, digits and '-', 1-40 characters")
    account_type: str | None = None
    if request.account_type != accounts_pb2.ACCOUNT_TYPE_UNSPECIFIED:
        try:
            account_type = _ACCOUNT_TYPE_NAMES[request.account_type]
        except KeyError:
            raise _invalid(f"unknown account_type {request.account_type}") from None
    return {"query": query, "tax_region": region, "account_type": account_type, "tag": tag}


# --- the service -------------------------------------------------------------------------------


class AccountsService(accounts_pb2_grpc.AccountsServiceServicer):
    """ispbill.v1.AccountsService: lists from the read models, single reads from the streams.

    `timezone` is the ISP's: it says which day "today" is for a subscription's status and plan.
    """

    def __init__(
        self, queries: AccountsQueries, store: EventStore, clock: Clock, timezone: ZoneInfo
    ) -> None:
        self._queries = queries
        self._store = store
        self._clock = clock
        self._timezone = timezone

    def _today(self) -> date:
        return lifecycle.today_in(self._clock, self._timezone)

    @answers_refusals
    async def GetCustomer(
        self, request: accounts_pb2.GetCustomerRequest, context: Any
    ) -> accounts_pb2.GetCustomerResponse:
        customer_id = _parse_id(request.customer_id, "customer_id")
        try:
            version, details = await lifecycle.load_customer(self._store, customer_id)
        except NotFound:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no customer {customer_id}") from None
        return accounts_pb2.GetCustomerResponse(customer=customer_to_proto(details, version))

    @answers_refusals
    async def ListCustomers(
        self, request: accounts_pb2.ListCustomersRequest, context: Any
    ) -> accounts_pb2.ListCustomersResponse:
        filters = _customer_filters(request)
        size = _page_size(request.page_size)
        after: str | None = None
        if request.page_token:
            after = _decode_page_token(request.page_token, filters)
            if not isinstance(after, str):
                raise _invalid("malformed page_token")
        found = await self._queries.customers(
            search=filters["query"],
            region=filters["tax_region"],
            account_type=filters["account_type"],
            tag=filters["tag"],
            limit=size + 1,  # one more tells whether there is a next page
            after=after,
        )
        page = found[:size]
        customers = [
            customer_to_proto(
                CustomerRegistered.model_validate({k: v for k, v in row.items() if k != "version"}),
                int(row["version"]),
            )
            for row in page
        ]
        next_token = (
            _encode_page_token(page[-1]["customer_id"], filters) if len(found) > size else ""
        )
        return accounts_pb2.ListCustomersResponse(customers=customers, next_page_token=next_token)

    @answers_refusals
    async def GetSubscription(
        self, request: accounts_pb2.GetSubscriptionRequest, context: Any
    ) -> accounts_pb2.GetSubscriptionResponse:
        subscription_id = _parse_id(request.subscription_id, "subscription_id")
        try:
            sub = await lifecycle.load_subscription(self._store, subscription_id)
        except NotFound:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no subscription {subscription_id}") from None
        return accounts_pb2.GetSubscriptionResponse(
            subscription=subscription_to_proto(sub, self._today())
        )

    @answers_refusals
    async def ListSubscriptions(
        self, request: accounts_pb2.ListSubscriptionsRequest, context: Any
    ) -> accounts_pb2.ListSubscriptionsResponse:
        customer_id = _optional(request, "customer_id")
        if customer_id is not None:
            _parse_id(customer_id, "customer_id")
        filters = {"customer_id": customer_id}
        size = _page_size(request.page_size)
        after = 0
        if request.page_token:
            after = _decode_page_token(request.page_token, filters)
            if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63:
                raise _invalid("malformed page_token")
        found = await self._queries.subscriptions(
            self._today(), customer_id=customer_id, limit=size + 1, after=after
        )
        page = found[:size]
        next_token = _encode_page_token(page[-1]["cursor"], filters) if len(found) > size else ""
        return accounts_pb2.ListSubscriptionsResponse(
            subscriptions=[listed_subscription_to_proto(row) for row in page],
            next_page_token=next_token,
        )


def accounts_grpc_service(
    queries: AccountsQueries, store: EventStore, clock: Clock, timezone: ZoneInfo
) -> GrpcService:
    """AccountsService as ispbill_core.grpc_server.serve_grpc takes it."""
    return GrpcService(
        descriptor=_SERVICE,
        permissions=METHOD_PERMISSIONS,
        register=lambda server: accounts_pb2_grpc.add_AccountsServiceServicer_to_server(
            AccountsService(queries, store, clock, timezone), server
        ),
    )
