"""Events the accounts service keeps to itself: staff users and their API tokens, and the
reservations that enforce uniqueness rules (case-folded RADIUS usernames).

Stream `staff-<username>` holds a staff user's facts, `api-token-<token id>` one token's.
Neither ever holds a password or a token: a password is kept as its argon2id hash, a token as
its SHA-256, a TOTP secret sealed with the secrets keyring (context `staff-totp:<username>`).
"""

from __future__ import annotations

from pydantic import AwareDatetime

from ispbill_core.events import DomainEvent, event_type


def staff_stream(username: str) -> str:
    return f"staff-{username}"


def token_stream(token_id: str) -> str:
    return f"api-token-{token_id}"


def totp_context(username: str) -> str:
    """What a staff user's TOTP secret is sealed for: it opens for no one else."""
    return f"staff-totp:{username}"


@event_type("StaffUserCreated")
class StaffUserCreated(DomainEvent):
    """A staff user was created with a role; its password is kept as an argon2id hash."""

    username: str
    role: str
    #: argon2id, in the PHC string format ($argon2id$v=19$m=...,t=...,p=...$salt$hash)
    password_hash: str


@event_type("StaffPasswordChanged")
class StaffPasswordChanged(DomainEvent):
    """A staff user's password was replaced (the new argon2id hash)."""

    username: str
    password_hash: str


@event_type("StaffRoleChanged")
class StaffRoleChanged(DomainEvent):
    """A staff user was given another role; its tokens follow at once."""

    username: str
    role: str


@event_type("StaffUserDisabled")
class StaffUserDisabled(DomainEvent):
    """A staff user may no longer log in, and its tokens stop working at once."""

    username: str


@event_type("StaffUserEnabled")
class StaffUserEnabled(DomainEvent):
    """A disabled staff user may log in again; its unexpired tokens work again."""

    username: str


@event_type("StaffTotpEnabled")
class StaffTotpEnabled(DomainEvent):
    """A staff user turned TOTP on (or replaced its secret): logging in needs the code."""

    username: str
    #: the base32 TOTP secret, sealed (ispbill_core.sealing) for totp_context(username)
    totp_secret_sealed: str


@event_type("ApiTokenIssued")
class ApiTokenIssued(DomainEvent):
    """An API token was issued (by logging in or POST /api/v1/tokens); only its SHA-256 is kept."""

    token_id: str
    username: str
    #: what the holder calls it ("cli", "nightly export")
    name: str
    #: hex SHA-256 of the whole token; the token itself is shown once and never recorded
    token_sha256: str
    #: permissions the token is limited to, within its user's role; None: all of the role
    scopes: list[str] | None
    expires_at: AwareDatetime


@event_type("ApiTokenRevoked")
class ApiTokenRevoked(DomainEvent):
    """An API token was revoked: it stops working at once."""

    token_id: str


@event_type("RadiusUsernameReserved", 1)
class RadiusUsernameReserved(DomainEvent):
    """The case-folded key of a RADIUS username, taken by a subscription: written first, with
    "no stream", to radius-username-key-<key>, so that `Alice` and `alice` cannot both be
    assigned. The claim that rating reads (RadiusUsernameAssigned) follows."""

    key: str
    username: str
    customer_id: str
    subscription_id: str
