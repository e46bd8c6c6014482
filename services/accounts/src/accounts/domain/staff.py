"""Staff users and API tokens as folded from their own streams, and the rules on them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from accounts.domain.errors import InvalidStaffCommand
from accounts.domain.events import (
    ApiTokenIssued,
    ApiTokenRevoked,
    StaffPasswordChanged,
    StaffRoleChanged,
    StaffTotpEnabled,
    StaffUserCreated,
    StaffUserDisabled,
    StaffUserEnabled,
)
from ispbill_core.access import ROLES, check_permissions, role_permissions
from ispbill_core.events import DomainEvent

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD, MAX_PASSWORD = 10, 256
MAX_TOKEN_DAYS = 365


def staff_username(text: str) -> str:
    """A username as it is kept: case-folded; letters, digits and . _ @ - only (so no control
    characters, no spaces, no look-alike Unicode), at most 64 characters."""
    folded = text.strip().casefold()
    if not _USERNAME.match(folded):
        raise InvalidStaffCommand(
            "a username is 1-64 of a-z 0-9 . _ @ - (case does not matter), starting with a"
            " letter or digit"
        )
    return folded


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidStaffCommand(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidStaffCommand(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters long")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise InvalidStaffCommand("a password has no control characters")
    return password


@dataclass(frozen=True)
class StaffUser:
    username: str
    role: str
    password_hash: str
    disabled: bool = False
    totp_secret_sealed: str | None = None
    #: position of the stream's latest event (what a change's expected_version names)
    version: int = 0

    @property
    def totp_enabled(self) -> bool:
        return self.totp_secret_sealed is not None

    def changes(
        self, *, role: str | None = None, disabled: bool | None = None
    ) -> list[DomainEvent]:
        """The events that bring this user to the role and state asked; [] when it is so."""
        events: list[DomainEvent] = []
        if role is not None and check_role(role) != self.role:
            events.append(StaffRoleChanged(username=self.username, role=role))
        if disabled is True and not self.disabled:
            events.append(StaffUserDisabled(username=self.username))
        if disabled is False and self.disabled:
            events.append(StaffUserEnabled(username=self.username))
        return events


def fold_staff_user(events: Iterable[tuple[DomainEvent, int]]) -> StaffUser | None:
    """The user as its stream's (event, stream position) pairs leave it; None before creation."""
    user: StaffUser | None = None
    for event, position in events:
        if isinstance(event, StaffUserCreated):
            user = StaffUser(event.username, event.role, event.password_hash, version=position)
            continue
        if user is None:
            continue
        if isinstance(event, StaffPasswordChanged):
            user = replace(user, password_hash=event.password_hash)
        elif isinstance(event, StaffRoleChanged):
            user = replace(user, role=event.role)
        elif isinstance(event, StaffUserDisabled):
            user = replace(user, disabled=True)
        elif isinstance(event, StaffUserEnabled):
            user = replace(user, disabled=False)
        elif isinstance(event, StaffTotpEnabled):
            user = replace(user, totp_secret_sealed=event.totp_secret_sealed)
        user = replace(user, version=position)
    return user


@dataclass(frozen=True)
class ApiToken:
    issued: ApiTokenIssued
    revoked: bool = False
    version: int = 0

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and now < self.issued.expires_at

    def permissions(self, role: str) -> frozenset[str]:
        """What the token allows now: its scopes within its user's current role."""
        allowed = role_permissions(role)
        scopes = self.issued.scopes
        return allowed if scopes is None else allowed & frozenset(scopes)


def fold_api_token(events: Iterable[tuple[DomainEvent, int]]) -> ApiToken | None:
    token: ApiToken | None = None
    for event, position in events:
        if isinstance(event, ApiTokenIssued):
            token = ApiToken(event, version=position)
        elif isinstance(event, ApiTokenRevoked) and token is not None:
            token = replace(token, revoked=True, version=position)
    return token


def token_scopes(
    requested: Iterable[str] | None, holder: frozenset[str], role: str
) -> list[str] | None:
    """The scopes a new token is given: None (all of the role) or a subset of what the one
    asking for it may do itself, so a narrow token never mints a wider one."""
    if requested is None:
        return None if holder >= role_permissions(role) else sorted(holder)
    try:
        scopes = check_permissions(requested)
    except ValueError as exc:
        raise InvalidStaffCommand(str(exc)) from None
    beyond = scopes - holder
    if beyond:
        raise InvalidStaffCommand(
            f"a token cannot have permissions its holder lacks: {', '.join(sorted(beyond))}"
        )
    return sorted(scopes)


def check_token_days(days: int) -> int:
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise InvalidStaffCommand(f"a token lives 1 to {MAX_TOKEN_DAYS} days")
    return days
