"""Staff users, logging in, and API tokens: each use case reads its own streams, then appends.

Passwords are hashed with argon2id (argon2-cffi's defaults: RFC 9106's second recommended
profile); a token is `isp_<token id>_<secret>`, recorded as its SHA-256 only, and checked by
reading two streams: `api-token-<token id>` and `staff-<username>` (docs/adr/0014).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from accounts.domain.errors import (
    AlreadyExists,
    Conflict,
    InvalidCredentials,
    InvalidStaffCommand,
    NotFound,
    TooManyAttempts,
    TotpRequired,
)
from accounts.domain.events import (
    ApiTokenIssued,
    ApiTokenRevoked,
    StaffPasswordChanged,
    StaffTotpEnabled,
    StaffUserCreated,
    staff_stream,
    token_stream,
    totp_context,
)
from accounts.domain.staff import (
    ApiToken,
    StaffUser,
    check_password,
    check_role,
    check_token_days,
    fold_api_token,
    fold_staff_user,
    staff_username,
    token_scopes,
)
from ispbill_core.access import STAFF_ADMIN, Principal, Unauthenticated, staff_actor
from ispbill_core.clock import Clock
from ispbill_core.events import DomainEvent, new_event
from ispbill_core.eventstore import NO_STREAM, EventStore, WrongExpectedVersion
from ispbill_core.eventstore.queries import recorded_of_types
from ispbill_core.sealing import Keyring

TOKEN_PREFIX = "isp"  # noqa: S105 - what every token starts with, not a secret
TOTP_ISSUER = "ispbill"
_hasher = PasswordHasher()  # argon2id
# Verified against when the username is unknown, so that answer takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, check_password(password))


async def password_matches(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


# --- reading -----------------------------------------------------------------------------------


async def load_staff_user(store: EventStore, username: str) -> StaffUser | None:
    history = await store.read_stream(staff_stream(username))
    return fold_staff_user((r.decode(), r.stream_position) for r in history)


async def require_staff_user(store: EventStore, username: str) -> StaffUser:
    user = await load_staff_user(store, username)
    if user is None:
        raise NotFound(f"no staff user {username!r}")
    return user


async def load_api_token(store: EventStore, token_id: str) -> ApiToken | None:
    history = await store.read_stream(token_stream(token_id))
    return fold_api_token((r.decode(), r.stream_position) for r in history)


async def staff_usernames(store: EventStore) -> list[str]:
    """Every staff user's name, in the order created. A scan of the creation events: staff
    are few (a projection takes this over with the read side)."""
    created = await recorded_of_types(store, StaffUserCreated.event_type)
    return [str(r.data["username"]) for r in created]


async def has_staff(store: EventStore) -> bool:
    return bool(await store.read_all(after=0, limit=1, types=[StaffUserCreated.event_type]))


async def list_api_tokens(store: EventStore, username: str | None) -> list[ApiToken]:
    """Tokens of one user (None: everyone's), oldest first."""
    recorded = await recorded_of_types(store, ApiTokenIssued.event_type, ApiTokenRevoked.event_type)
    tokens: dict[str, ApiToken] = {}
    for r in recorded:
        event = r.decode()
        if isinstance(event, ApiTokenIssued) and (username is None or event.username == username):
            tokens[event.token_id] = ApiToken(event, version=r.stream_position)
        elif isinstance(event, ApiTokenRevoked) and event.token_id in tokens:
            found = tokens[event.token_id]
            tokens[event.token_id] = ApiToken(found.issued, True, r.stream_position)
    return list(tokens.values())


# --- writing -----------------------------------------------------------------------------------


async def _append(
    store: EventStore,
    clock: Clock,
    stream: str,
    events: list[DomainEvent],
    expected: int | object,
    actor: str,
) -> None:
    now = clock.now()
    try:
        await store.append(
            stream,
            [new_event(e, id=uuid.uuid4(), occurred_at=now, actor=actor) for e in events],
            expected,  # type: ignore[arg-type]
        )
    except WrongExpectedVersion:
        if expected is NO_STREAM:
            raise AlreadyExists(f"{stream} exists already") from None
        raise Conflict(f"{stream} was changed meanwhile; read it and try again") from None


async def create_staff_user(
    store: EventStore, clock: Clock, username: str, role: str, password: str, actor: str
) -> StaffUser:
    """A new staff user; AlreadyExists when the (case-folded) username is taken."""
    name = staff_username(username)
    check_role(role)
    created = StaffUserCreated(
        username=name, role=role, password_hash=await hash_password(password)
    )
    try:
        await _append(store, clock, staff_stream(name), [created], NO_STREAM, actor)
    except AlreadyExists:
        raise AlreadyExists(f"staff user {name!r} exists already") from None
    return StaffUser(name, role, created.password_hash)


async def change_staff_user(
    store: EventStore,
    clock: Clock,
    username: str,
    actor: str,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    expected_version: int | None = None,
) -> StaffUser:
    user = await require_staff_user(store, staff_username(username))
    if expected_version is not None and expected_version != user.version:
        raise Conflict(
            f"staff user {user.username!r} was changed since version {expected_version}"
            f" (it is at {user.version}); read it again and decide"
        )
    events = user.changes(role=role, disabled=disabled)
    if events:
        await _append(store, clock, staff_stream(user.username), events, user.version, actor)
    return await require_staff_user(store, user.username)


async def change_password(
    store: EventStore, clock: Clock, username: str, password: str, actor: str
) -> StaffUser:
    user = await require_staff_user(store, staff_username(username))
    changed = StaffPasswordChanged(
        username=user.username, password_hash=await hash_password(password)
    )
    await _append(store, clock, staff_stream(user.username), [changed], user.version, actor)
    return await require_staff_user(store, user.username)


async def enable_totp(
    store: EventStore, clock: Clock, keyring: Keyring, username: str, actor: str
) -> str:
    """A new TOTP secret for the user, sealed in the ledger; returns its otpauth:// URI (for an
    authenticator app), which is shown this once. Enabling again replaces the secret."""
    user = await require_staff_user(store, staff_username(username))
    secret = pyotp.random_base32()
    sealed = keyring.seal(secret.encode("ascii"), totp_context(user.username))
    enabled = StaffTotpEnabled(username=user.username, totp_secret_sealed=sealed)
    await _append(store, clock, staff_stream(user.username), [enabled], user.version, actor)
    return pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=TOTP_ISSUER)


# --- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    """A token just issued: the only time `token` itself is known."""

    token: str
    token_id: str
    username: str
    role: str
    expires_at: datetime
    scopes: list[str] | None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_id_of(token: str) -> str | None:
    prefix, sep, rest = token.partition("_")
    token_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or not secret:
        return None
    if len(token_id) != 20 or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id


async def issue_token(
    store: EventStore,
    clock: Clock,
    user: StaffUser,
    *,
    name: str,
    expires_in_days: int,
    scopes: list[str] | None,
    actor: str,
) -> IssuedToken:
    """A new random token for `user`; `scopes` None: all of the user's role."""
    token_id = secrets.token_hex(10)
    token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
    expires_at = clock.now() + timedelta(days=check_token_days(expires_in_days))
    issued = ApiTokenIssued(
        token_id=token_id,
        username=user.username,
        name=name,
        token_sha256=token_sha256(token),
        scopes=scopes,
        expires_at=expires_at,
    )
    await _append(store, clock, token_stream(token_id), [issued], NO_STREAM, actor)
    return IssuedToken(token, token_id, user.username, user.role, expires_at, scopes)


async def issue_own_token(
    store: EventStore,
    clock: Clock,
    who: Principal,
    *,
    name: str,
    expires_in_days: int,
    scopes: list[str] | None,
) -> IssuedToken:
    """A token for the caller, never wider than the token it calls with."""
    user = await require_staff_user(store, who.username)
    given = token_scopes(scopes, who.permissions, user.role)
    return await issue_token(
        store,
        clock,
        user,
        name=name,
        expires_in_days=expires_in_days,
        scopes=given,
        actor=who.actor,
    )


async def revoke_token(store: EventStore, clock: Clock, token_id: str, who: Principal) -> ApiToken:
    """Revoke a token of the caller's, or anyone's for an admin. Someone else's token is
    NotFound for anyone else, as an unknown one is. Revoking twice records nothing."""
    token = await load_api_token(store, token_id) if _is_token_id(token_id) else None
    if token is None or (token.issued.username != who.username and not who.allows(STAFF_ADMIN)):
        raise NotFound(f"no token {token_id!r}")
    if token.revoked:
        return token
    revoked = ApiTokenRevoked(token_id=token_id)
    await _append(store, clock, token_stream(token_id), [revoked], token.version, who.actor)
    return ApiToken(token.issued, True, token.version + 1)


def _is_token_id(text: str) -> bool:
    return len(text) == 20 and all(c in "0123456789abcdef" for c in text)


class LoginThrottle:
    """At most `max_failures` failed logins per username in `window` seconds, in this process.
    Lock-out across processes is for later (a staff event)."""

    def __init__(self, max_failures: int = 10, window: float = 15 * 60, capacity: int = 10_000):
        self.max_failures = max_failures
        self.window = window
        self.capacity = capacity
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, username: str, now: float) -> deque[float]:
        failures = self._failures.get(username)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def check(self, username: str) -> None:
        if len(self._recent(username, time.monotonic())) >= self.max_failures:
            raise TooManyAttempts(
                f"too many failed logins for {username!r}; try again in a few minutes"
            )

    def failed(self, username: str) -> None:
        now = time.monotonic()
        failures = self._recent(username, now)
        failures.append(now)
        self._failures[username] = failures
        self._failures.move_to_end(username)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        self._failures.pop(username, None)


async def log_in(
    store: EventStore,
    clock: Clock,
    keyring: Keyring | None,
    throttle: LoginThrottle,
    *,
    username: str,
    password: str,
    totp: str | None,
    name: str,
    expires_in_days: int,
) -> IssuedToken:
    """Password (and the TOTP code when the user has one) for a new token of the whole role.

    Every failure reads the same (InvalidCredentials), whether the user is unknown, disabled
    or the password wrong; only a right password without its TOTP code says TotpRequired.
    """
    check_token_days(expires_in_days)
    try:
        name_ = staff_username(username)
    except InvalidStaffCommand:
        raise InvalidCredentials("wrong username or password") from None
    throttle.check(name_)
    user = await load_staff_user(store, name_)
    matches = await password_matches(user.password_hash if user else _DUMMY_HASH, password)
    if user is None or not matches or user.disabled:
        throttle.failed(name_)
        raise InvalidCredentials("wrong username or password")
    if user.totp_secret_sealed is not None:
        if not totp:
            raise TotpRequired('this user has TOTP: send the current code as "totp"')
        if keyring is None:
            raise RuntimeError("TOTP needs the secrets keyring in this process")
        secret = keyring.open(user.totp_secret_sealed, totp_context(user.username))
        if not pyotp.TOTP(secret.decode("ascii")).verify(
            totp, for_time=clock.now(), valid_window=1
        ):
            throttle.failed(name_)
            raise InvalidCredentials("wrong TOTP code")
    throttle.succeeded(name_)
    return await issue_token(
        store,
        clock,
        user,
        name=name,
        expires_in_days=expires_in_days,
        scopes=None,
        actor=staff_actor(user.username),
    )


class LedgerAuthenticator:
    """Checks a bearer token against the ledger on every call: two indexed stream reads
    (the token's, its user's), no cache, so revoking a token or disabling its user takes
    effect on the very next request."""

    def __init__(self, store: EventStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def authenticate(self, token: str) -> Principal:
        token_id = _token_id_of(token)
        if token_id is None:
            raise Unauthenticated("not an ispbill token")
        found = await load_api_token(self._store, token_id)
        if found is None or not hmac.compare_digest(found.issued.token_sha256, token_sha256(token)):
            raise Unauthenticated("unknown token")
        if found.revoked:
            raise Unauthenticated("this token was revoked")
        if not found.usable_at(self._clock.now()):
            raise Unauthenticated("this token has expired; log in again")
        user = await load_staff_user(self._store, found.issued.username)
        if user is None or user.disabled:
            raise Unauthenticated("this token's user is disabled")
        return Principal(
            username=user.username,
            role=user.role,
            token_id=token_id,
            permissions=found.permissions(user.role),
        )
