"""The gRPC entry point of rating: ispbill.v1.UsageService (usage and sessions).

Every answer comes from rating's read models (UsageQueries, SessionQueries), as the REST API's;
bad input is INVALID_ARGUMENT with the same rules. The server itself is
ispbill_core.grpc_server.serve_grpc, given `usage_grpc_service(...)` beside the other services
of the process.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, date, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ispbill.v1 import usage_pb2, usage_pb2_grpc
from ispbill_core.access import USAGE_READ
from ispbill_core.grpc_server import GrpcService, Refused, answers_refusals
from ispbill_core.input_policy import DATE_PATTERN, ID_PATTERN, MAX_CURSOR, PERIOD_PATTERN
from rating.application.session_read_models import (
    LOG_CURSOR_PATTERN,
    MAX_SESSIONS_PAGE,
    USERNAME_PATTERN,
    LiveSession,
    LogCursor,
    LoggedSession,
    SessionQueries,
)
from rating.application.usage_read_models import (
    MAX_DAILY_RANGE_DAYS,
    MAX_TOP_USERS,
    DailyUsage,
    Octets,
    PeriodUsage,
    UsageQueries,
)

_SERVICE = usage_pb2.DESCRIPTOR.services_by_name["UsageService"]
SERVICE_NAME: str = _SERVICE.full_name
#: The permission of each method; a method missing here stops the server from starting.
METHOD_PERMISSIONS: dict[str, str] = {
    f"/{SERVICE_NAME}/GetDailyUsage": USAGE_READ,
    f"/{SERVICE_NAME}/GetPeriodUsage": USAGE_READ,
    f"/{SERVICE_NAME}/ListTopUsers": USAGE_READ,
    f"/{SERVICE_NAME}/ListLiveSessions": USAGE_READ,
    f"/{SERVICE_NAME}/ListSessions": USAGE_READ,
}
DEFAULT_TOP_USERS = 10
DEFAULT_PAGE_SIZE = 100

_ID = re.compile(ID_PATTERN)
_PERIOD = re.compile(PERIOD_PATTERN)
_DAY = re.compile(DATE_PATTERN)
_USERNAME = re.compile(USERNAME_PATTERN)
_LOG_CURSOR = re.compile(LOG_CURSOR_PATTERN)


# --- input -------------------------------------------------------------------------------------


def _invalid(details: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, details)


def _shown(text: str) -> str:
    """An input as a refusal may quote it: never long."""
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _parse_id(text: str, field: str) -> str:
    if not _ID.fullmatch(text):
        raise _invalid(f"{field} {_shown(text)} is not an id (letters, digits, _.:@-; 1-64)")
    return text


def _parse_period(text: str) -> str:
    if not _PERIOD.fullmatch(text):
        raise _invalid(f"period {_shown(text)} is YYYY-MM, from 2000-01 to 2099-12")
    return text


def _parse_day(text: str, field: str) -> date:
    if not _DAY.fullmatch(text):
        raise _invalid(f"{field} {_shown(text)} is a day YYYY-MM-DD from 2000-01-01 to 2099-12-31")
    return date.fromisoformat(text)


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
    return min(requested or DEFAULT_PAGE_SIZE, MAX_SESSIONS_PAGE)


def _encode_page_token(after: str | int, filters: dict[str, Any]) -> str:
    # Keyset, not offset: a session opened between two pages neither shifts nor repeats rows.
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


# --- conversions -------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def octets_to_proto(octets: Octets) -> usage_pb2.Octets:
    return usage_pb2.Octets(
        input_octets=octets.input_octets,
        output_octets=octets.output_octets,
        total_octets=octets.total_octets,
        counted_octets=octets.counted_octets,
    )


def daily_to_proto(day: DailyUsage) -> usage_pb2.DailyUsage:
    return usage_pb2.DailyUsage(
        day=day.day.isoformat(),
        period=day.period,
        suspended=day.suspended,
        octets=octets_to_proto(day),
        bands=[usage_pb2.BandUsage(band=b.band, octets=octets_to_proto(b)) for b in day.bands],
    )


def period_to_proto(usage: PeriodUsage) -> usage_pb2.GetPeriodUsageResponse:
    return usage_pb2.GetPeriodUsageResponse(
        customer_id=usage.customer_id,
        period=usage.period,
        octets=octets_to_proto(usage),
        subscriptions=[
            usage_pb2.SubscriptionPeriodUsage(
                subscription_id=s.subscription_id,
                octets=octets_to_proto(s),
                buckets=[
                    usage_pb2.UsageBucket(
                        band=b.band,
                        plan_id=b.plan_id or "",
                        plan_version=b.plan_version or 0,
                        suspended=b.suspended,
                        octets=octets_to_proto(b),
                    )
                    for b in s.buckets
                ],
            )
            for s in usage.subscriptions
        ],
    )


def live_session_to_proto(s: LiveSession) -> usage_pb2.LiveSession:
    return usage_pb2.LiveSession(
        session_key=s.session_key,
        username=s.username or "",
        customer_id=s.customer_id or "",
        subscription_id=s.subscription_id or "",
        nas_id=s.nas_id,
        acct_session_id=s.acct_session_id,
        framed_ip_address=s.framed_ip_address or "",
        started_at=_timestamp(s.started_at),
        input_octets=s.input_octets,
        output_octets=s.output_octets,
        total_octets=s.total_octets,
        last_update=_timestamp(s.last_update),
    )


def logged_session_to_proto(s: LoggedSession) -> usage_pb2.LoggedSession:
    return usage_pb2.LoggedSession(
        session_key=s.session_key,
        username=s.username or "",
        subscription_id=s.subscription_id or "",
        nas_id=s.nas_id,
        acct_session_id=s.acct_session_id,
        framed_ip_address=s.framed_ip_address or "",
        started_at=_timestamp(s.started_at),
        stopped_at=None if s.stopped_at is None else _timestamp(s.stopped_at),
        duration_seconds=s.duration_seconds,
        input_octets=s.input_octets,
        output_octets=s.output_octets,
        total_octets=s.total_octets,
        last_update=_timestamp(s.last_update),
        open=s.open,
        closed_by=s.closed_by or "",
        terminate_cause=s.terminate_cause or "",
        records=s.records,
    )


# --- the service -------------------------------------------------------------------------------


class UsageService(usage_pb2_grpc.UsageServiceServicer):
    """ispbill.v1.UsageService answered from rating's read models."""

    def __init__(self, usage: UsageQueries, sessions: SessionQueries) -> None:
        self._usage = usage
        self._sessions = sessions

    @answers_refusals
    async def GetDailyUsage(
        self, request: usage_pb2.GetDailyUsageRequest, context: Any
    ) -> usage_pb2.GetDailyUsageResponse:
        subscription_id = _parse_id(request.subscription_id, "subscription_id")
        first = _parse_day(request.first_day, "first_day")
        last = _parse_day(request.last_day, "last_day")
        if last < first:
            raise _invalid("last_day is before first_day")
        if (last - first).days + 1 > MAX_DAILY_RANGE_DAYS:
            raise _invalid(f"a range of at most {MAX_DAILY_RANGE_DAYS} days")
        days = await self._usage.daily(subscription_id, first, last)
        return usage_pb2.GetDailyUsageResponse(days=[daily_to_proto(d) for d in days])

    @answers_refusals
    async def GetPeriodUsage(
        self, request: usage_pb2.GetPeriodUsageRequest, context: Any
    ) -> usage_pb2.GetPeriodUsageResponse:
        customer_id = _parse_id(request.customer_id, "customer_id")
        period = _parse_period(request.period)
        return period_to_proto(await self._usage.period(customer_id, period))

    @answers_refusals
    async def ListTopUsers(
        self, request: usage_pb2.ListTopUsersRequest, context: Any
    ) -> usage_pb2.ListTopUsersResponse:
        period = _parse_period(request.period)
        if not 0 <= request.limit <= MAX_TOP_USERS:
            raise _invalid(f"limit is 1 to {MAX_TOP_USERS} (0: {DEFAULT_TOP_USERS})")
        top = await self._usage.top(period, request.limit or DEFAULT_TOP_USERS)
        return usage_pb2.ListTopUsersResponse(
            users=[
                usage_pb2.TopUser(
                    rank=t.rank,
                    subscription_id=t.subscription_id,
                    customer_id=t.customer_id,
                    input_octets=t.input_octets,
                    output_octets=t.output_octets,
                    total_octets=t.total_octets,
                )
                for t in top
            ]
        )

    @answers_refusals
    async def ListLiveSessions(
        self, request: usage_pb2.ListLiveSessionsRequest, context: Any
    ) -> usage_pb2.ListLiveSessionsResponse:
        nas_id = _optional(request, "nas_id")
        if nas_id is not None:
            _parse_id(nas_id, "nas_id")
        username = _optional(request, "username")
        if username is not None and (len(username) > 253 or not _USERNAME.fullmatch(username)):
            raise _invalid("username is 1-253 printable characters without spaces")
        filters = {"nas_id": nas_id, "username": username}
        size = _page_size(request.page_size)
        before: int | None = None
        if request.page_token:
            after = _decode_page_token(request.page_token, filters)
            if (
                not isinstance(after, int)
                or isinstance(after, bool)
                or not 0 <= after <= MAX_CURSOR
            ):
                raise _invalid("malformed page_token")
            before = after
        found = await self._sessions.live(
            nas_id=nas_id,
            username=username,
            limit=size + 1,  # one more tells whether there is a next page
            before=before,
        )
        page = found[:size]
        next_token = _encode_page_token(page[-1].cursor, filters) if len(found) > size else ""
        return usage_pb2.ListLiveSessionsResponse(
            sessions=[live_session_to_proto(s) for s in page], next_page_token=next_token
        )

    @answers_refusals
    async def ListSessions(
        self, request: usage_pb2.ListSessionsRequest, context: Any
    ) -> usage_pb2.ListSessionsResponse:
        customer_id = _parse_id(request.customer_id, "customer_id")
        subscription_id = _optional(request, "subscription_id")
        if subscription_id is not None:
            _parse_id(subscription_id, "subscription_id")
        first_text = _optional(request, "first_day")
        last_text = _optional(request, "last_day")
        first = None if first_text is None else _parse_day(first_text, "first_day")
        last = None if last_text is None else _parse_day(last_text, "last_day")
        if first is not None and last is not None and last < first:
            raise _invalid("last_day is before first_day")
        filters = {
            "customer_id": customer_id,
            "subscription_id": subscription_id,
            "first_day": first_text,
            "last_day": last_text,
        }
        size = _page_size(request.page_size)
        before: LogCursor | None = None
        if request.page_token:
            after = _decode_page_token(request.page_token, filters)
            if not isinstance(after, str) or not _LOG_CURSOR.fullmatch(after):
                raise _invalid("malformed page_token")
            before = LogCursor.parse(after)
        found = await self._sessions.log(
            customer_id,
            subscription_id=subscription_id,
            first=first,
            last=last,
            limit=size + 1,  # one more tells whether there is a next page
            before=before,
        )
        page = found[:size]
        next_token = _encode_page_token(page[-1].cursor, filters) if len(found) > size else ""
        return usage_pb2.ListSessionsResponse(
            sessions=[logged_session_to_proto(s) for s in page], next_page_token=next_token
        )


def usage_grpc_service(usage: UsageQueries, sessions: SessionQueries) -> GrpcService:
    """UsageService as ispbill_core.grpc_server.serve_grpc takes it."""
    return GrpcService(
        descriptor=_SERVICE,
        permissions=METHOD_PERMISSIONS,
        register=lambda server: usage_pb2_grpc.add_UsageServiceServicer_to_server(
            UsageService(usage, sessions), server
        ),
    )
