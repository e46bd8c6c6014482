"""Who may do what: the permission vocabulary, the staff roles, and the authenticated principal.

Pure data, shared by every service: a router declares the permission each of its routes needs
(ispbill_core.web.requires) and a gRPC server the permission of each method
(ispbill_core.grpc_access), without importing the accounts service that issues the tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

# --- the vocabulary ---------------------------------------------------------------------------
# "<resource>:<verb>". Reads end in ":read"; everything else changes something.

CUSTOMERS_READ = "customers:read"
CUSTOMERS_WRITE = "customers:write"
SUBSCRIPTIONS_READ = "subscriptions:read"
SUBSCRIPTIONS_WRITE = "subscriptions:write"
PLANS_READ = "plans:read"
PLANS_WRITE = "plans:write"
NAS_READ = "nas:read"
NAS_WRITE = "nas:write"
USAGE_READ = "usage:read"
USAGE_IMPORT = "usage:import"
COLLECTOR_READ = "collector:read"
INVOICES_READ = "invoices:read"
#: credit notes and voids: corrections of issued invoices
INVOICES_CORRECT = "invoices:correct"
BILL_RUNS_RUN = "bill-runs:run"
TAX_RATES_READ = "tax-rates:read"
TAX_RATES_WRITE = "tax-rates:write"
PAYMENTS_READ = "payments:read"
PAYMENTS_WRITE = "payments:write"
STAFF_READ = "staff:read"
STAFF_ADMIN = "staff:admin"
AUDIT_READ = "audit:read"
PARKED_READ = "parked:read"
PARKED_WRITE = "parked:write"
PROJECTIONS_READ = "projections:read"
PROJECTIONS_ADMIN = "projections:admin"
#: one's own profile: who am I, my tokens
PROFILE_READ = "profile:read"
#: one's own password, TOTP and tokens; every role has it (an auditor changes its password too)
PROFILE_WRITE = "profile:write"

PERMISSIONS: frozenset[str] = frozenset(
    {
        CUSTOMERS_READ,
        CUSTOMERS_WRITE,
        SUBSCRIPTIONS_READ,
        SUBSCRIPTIONS_WRITE,
        PLANS_READ,
        PLANS_WRITE,
        NAS_READ,
        NAS_WRITE,
        USAGE_READ,
        USAGE_IMPORT,
        COLLECTOR_READ,
        INVOICES_READ,
        INVOICES_CORRECT,
        BILL_RUNS_RUN,
        TAX_RATES_READ,
        TAX_RATES_WRITE,
        PAYMENTS_READ,
        PAYMENTS_WRITE,
        STAFF_READ,
        STAFF_ADMIN,
        AUDIT_READ,
        PARKED_READ,
        PARKED_WRITE,
        PROJECTIONS_READ,
        PROJECTIONS_ADMIN,
        PROFILE_READ,
        PROFILE_WRITE,
    }
)

#: Reads: what the auditor role holds (and nothing else but PROFILE_WRITE).
READS: frozenset[str] = frozenset(p for p in PERMISSIONS if p.endswith(":read"))

ADMIN, BILLING, SUPPORT, AUDITOR = "admin", "billing", "support", "auditor"
_OWN = {PROFILE_READ, PROFILE_WRITE}

#: What each staff role may do. A token carries a subset of its user's role (its scopes).
ROLES: dict[str, frozenset[str]] = {
    ADMIN: PERMISSIONS,
    BILLING: frozenset(
        {
            INVOICES_READ,
            INVOICES_CORRECT,
            BILL_RUNS_RUN,
            TAX_RATES_READ,
            TAX_RATES_WRITE,
            PAYMENTS_READ,
            PAYMENTS_WRITE,
            PLANS_READ,
            PLANS_WRITE,
            CUSTOMERS_READ,
            CUSTOMERS_WRITE,
            SUBSCRIPTIONS_READ,
            SUBSCRIPTIONS_WRITE,
            USAGE_READ,
            *_OWN,
        }
    ),
    SUPPORT: frozenset(
        {
            CUSTOMERS_READ,
            CUSTOMERS_WRITE,
            SUBSCRIPTIONS_READ,
            SUBSCRIPTIONS_WRITE,
            PLANS_READ,
            USAGE_READ,
            NAS_READ,
            INVOICES_READ,
            COLLECTOR_READ,
            *_OWN,
        }
    ),
    AUDITOR: READS | {PROFILE_WRITE},
}


def role_permissions(role: str) -> frozenset[str]:
    try:
        return ROLES[role]
    except KeyError:
        raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})") from None


def check_permissions(permissions: Iterable[str]) -> frozenset[str]:
    """The given permissions, every one of them in the vocabulary, or ValueError."""
    given = frozenset(permissions)
    unknown = given - PERMISSIONS
    if unknown:
        raise ValueError(f"unknown permission(s): {', '.join(sorted(unknown))}")
    return given


# --- actors -------------------------------------------------------------------------------------

_COMPONENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def staff_actor(username: str) -> str:
    """The actor a staff user's commands are recorded with (event metadata.actor)."""
    return f"staff:{username}"


def system_actor(component: str) -> str:
    """The actor of what a background component records on its own: `system:<component>`."""
    if not _COMPONENT.match(component):
        raise ValueError(f"not a component name: {component!r}")
    return f"system:{component}"


# --- the principal -----------------------------------------------------------------------------


class Unauthenticated(Exception):
    """No credentials, or credentials that are not (or no longer) valid: 401."""


class Forbidden(Exception):
    """Authenticated, but without the permission this needs: 403."""


@dataclass(frozen=True)
class Principal:
    """The staff user behind a request, as its token allows it to act."""

    username: str
    role: str
    token_id: str
    #: the token's scopes within the user's current role
    permissions: frozenset[str]

    @property
    def actor(self) -> str:
        return staff_actor(self.username)

    def allows(self, permission: str) -> bool:
        return permission in self.permissions

    def require(self, permission: str) -> None:
        if permission not in self.permissions:
            raise Forbidden(f"this needs the permission {permission!r}")


class Authenticator(Protocol):
    """Turns a bearer token into the principal it stands for, at the time of the call.

    Raises Unauthenticated for an unknown, expired or revoked token or a disabled user. It must
    not remember answers: a disabled user's token fails on its next request.
    """

    async def authenticate(self, token: str) -> Principal: ...


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying a token (what a service client sends)."""
    return (("authorization", f"Bearer {token}"),)
