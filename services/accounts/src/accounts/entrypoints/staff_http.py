"""REST endpoints for logging in, staff users and API tokens, under /api/v1."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

from accounts.application import staff
from accounts.domain.staff import MAX_PASSWORD, MAX_TOKEN_DAYS, MIN_PASSWORD, ApiToken, StaffUser
from ispbill_core.access import (
    PERMISSIONS,
    PROFILE_READ,
    PROFILE_WRITE,
    ROLES,
    STAFF_ADMIN,
    STAFF_READ,
    Forbidden,
    Principal,
)
from ispbill_core.clock import Clock
from ispbill_core.eventstore import EventStore
from ispbill_core.input_policy import ExpectedVersion
from ispbill_core.sealing import Keyring
from ispbill_core.web import public, requires

Username = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
TokenId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
_TOKEN_NAME = r"^[^\x00-\x1f\x7f]*$"  # noqa: S105 - a pattern, not a secret
#: What staff_username accepts (it folds the case), and what check_password does.
_USERNAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
_PASSWORD = r"^[^\x00-\x1f\x7f]*$"  # noqa: S105 - a pattern, not a secret
Permission = Annotated[str, Field(json_schema_extra={"enum": sorted(PERMISSIONS)})]


class LogIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=_USERNAME)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    totp: str | None = Field(default=None, pattern=r"^[0-9]{6,8}$")
    name: str = Field(default="cli", min_length=1, max_length=80, pattern=_TOKEN_NAME)
    expires_in_days: int = Field(default=30, ge=1, le=MAX_TOKEN_DAYS)


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=80, pattern=_TOKEN_NAME)
    #: permissions the token is limited to; none given: all of the caller's
    scopes: list[Permission] | None = Field(default=None, max_length=64)
    expires_in_days: int = Field(default=30, ge=1, le=MAX_TOKEN_DAYS)


class TokenIssued(BaseModel):
    """A new token: `token` is shown this once; the ledger keeps only its SHA-256."""

    token: str
    token_id: str
    username: str
    role: str
    expires_at: AwareDatetime
    scopes: list[str] | None = None


class TokenView(BaseModel):
    token_id: str
    username: str
    name: str
    scopes: list[str] | None
    expires_at: AwareDatetime
    revoked: bool


class Me(BaseModel):
    username: str
    role: str
    token_id: str
    permissions: list[str]


class NewStaffUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=_USERNAME)
    role: str = Field(json_schema_extra={"enum": list(ROLES)})
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, pattern=_PASSWORD)


class StaffChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = Field(default=None, json_schema_extra={"enum": [*ROLES, None]})
    disabled: StrictBool | None = None
    expected_version: ExpectedVersion | None = None


class NewPassword(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD, pattern=_PASSWORD)
    #: required when changing one's own password
    current_password: str | None = Field(default=None, max_length=MAX_PASSWORD)


class StaffView(BaseModel):
    username: str
    role: str
    disabled: bool
    totp_enabled: bool
    version: int


class TotpEnabled(BaseModel):
    username: str
    #: for an authenticator app (a QR code of it); shown this once
    otpauth_uri: str


def staff_view(user: StaffUser) -> StaffView:
    return StaffView(
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        totp_enabled=user.totp_enabled,
        version=user.version,
    )


def token_view(token: ApiToken) -> TokenView:
    issued = token.issued
    return TokenView(
        token_id=issued.token_id,
        username=issued.username,
        name=issued.name,
        scopes=issued.scopes,
        expires_at=issued.expires_at,
        revoked=token.revoked,
    )


def issued_view(issued: staff.IssuedToken) -> TokenIssued:
    return TokenIssued(
        token=issued.token,
        token_id=issued.token_id,
        username=issued.username,
        role=issued.role,
        expires_at=issued.expires_at,
        scopes=issued.scopes,
    )


def _self_or_admin(who: Principal, username: str) -> str:
    """The username named, case-folded, when it is the caller's own or the caller is an admin;
    Forbidden otherwise (whether that user exists or not)."""
    name = username.casefold()
    if name != who.username:
        who.require(STAFF_ADMIN)
    return name


def staff_router(
    store: EventStore,
    clock: Clock,
    keyring: Keyring | None,
    throttle: staff.LoginThrottle | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["staff"])
    throttle = throttle or staff.LoginThrottle()

    @router.post(
        "/auth/token",
        status_code=status.HTTP_201_CREATED,
        dependencies=[public()],
        responses={
            401: {"description": "wrong credentials (InvalidCredentials), or TotpRequired"},
            429: {"description": "too many failed logins for this username lately"},
        },
    )
    async def log_in(body: LogIn) -> TokenIssued:
        """A new token for a username and password (and TOTP code, when the user has one)."""
        issued = await staff.log_in(
            store,
            clock,
            keyring,
            throttle,
            username=body.username,
            password=body.password,
            totp=body.totp,
            name=body.name,
            expires_in_days=body.expires_in_days,
        )
        return issued_view(issued)

    @router.get("/auth/me")
    async def me(who: Principal = requires(PROFILE_READ)) -> Me:
        return Me(
            username=who.username,
            role=who.role,
            token_id=who.token_id,
            permissions=sorted(who.permissions),
        )

    @router.post("/staff", status_code=status.HTTP_201_CREATED)
    async def create_staff_user(
        body: NewStaffUser, who: Principal = requires(STAFF_ADMIN)
    ) -> StaffView:
        user = await staff.create_staff_user(
            store, clock, body.username, body.role, body.password, who.actor
        )
        return staff_view(user)

    @router.get("/staff", dependencies=[requires(STAFF_READ)])
    async def list_staff() -> list[StaffView]:
        users = [await staff.load_staff_user(store, n) for n in await staff.staff_usernames(store)]
        return [staff_view(u) for u in users if u is not None]

    @router.patch("/staff/{username}")
    async def change_staff_user(
        username: Username, body: StaffChange, who: Principal = requires(STAFF_ADMIN)
    ) -> StaffView:
        """Change a user's role, or disable (or enable) it: its tokens stop working at once."""
        name = username.casefold()
        if name == who.username and (body.disabled or body.role not in (None, who.role)):
            raise Forbidden("an admin does not disable or demote itself; ask another admin")
        user = await staff.change_staff_user(
            store,
            clock,
            name,
            who.actor,
            role=body.role,
            disabled=body.disabled,
            expected_version=body.expected_version,
        )
        return staff_view(user)

    @router.post("/staff/{username}/password")
    async def change_password(
        username: Username, body: NewPassword, who: Principal = requires(PROFILE_WRITE)
    ) -> StaffView:
        """One's own password (with the current one), or anyone's for an admin."""
        name = _self_or_admin(who, username)
        if name == who.username:
            user = await staff.require_staff_user(store, name)
            if body.current_password is None or not await staff.password_matches(
                user.password_hash, body.current_password
            ):
                raise Forbidden("changing one's own password needs the current one")
        return staff_view(await staff.change_password(store, clock, name, body.password, who.actor))

    @router.post("/staff/{username}/totp", status_code=status.HTTP_201_CREATED)
    async def enable_totp(
        username: Username, who: Principal = requires(PROFILE_WRITE)
    ) -> TotpEnabled:
        """Turn on TOTP for oneself: from now on logging in needs the code as well."""
        if username.casefold() != who.username:
            raise Forbidden("TOTP is enabled by its user, for itself")
        if keyring is None:
            raise RuntimeError("TOTP needs the secrets keyring in this process")
        uri = await staff.enable_totp(store, clock, keyring, who.username, who.actor)
        return TotpEnabled(username=who.username, otpauth_uri=uri)

    @router.get("/tokens")
    async def list_tokens(who: Principal = requires(PROFILE_READ)) -> list[TokenView]:
        """One's own tokens; an admin sees everyone's. Never a token itself."""
        owner = None if who.allows(STAFF_ADMIN) else who.username
        return [token_view(t) for t in await staff.list_api_tokens(store, owner)]

    @router.post("/tokens", status_code=status.HTTP_201_CREATED)
    async def issue_token(body: NewToken, who: Principal = requires(PROFILE_WRITE)) -> TokenIssued:
        """A new token for oneself (a script's), limited to `scopes` when given."""
        issued = await staff.issue_own_token(
            store,
            clock,
            who,
            name=body.name,
            expires_in_days=body.expires_in_days,
            scopes=body.scopes,
        )
        return issued_view(issued)

    @router.delete("/tokens/{token_id}")
    async def revoke_token(
        token_id: TokenId, who: Principal = requires(PROFILE_WRITE)
    ) -> TokenView:
        """Revoke one of one's tokens (an admin: anyone's); it stops working at once."""
        return token_view(await staff.revoke_token(store, clock, token_id, who))

    return router
