"""Staff users and tokens as folded from their streams, and the rules on them (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from accounts.domain.errors import InvalidStaffCommand
from accounts.domain.events import (
    ApiTokenIssued,
    ApiTokenRevoked,
    StaffRoleChanged,
    StaffTotpEnabled,
    StaffUserCreated,
    StaffUserDisabled,
    StaffUserEnabled,
)
from accounts.domain.staff import (
    check_password,
    fold_api_token,
    fold_staff_user,
    staff_username,
    token_scopes,
)
from ispbill_core.access import (
    ADMIN,
    AUDITOR,
    BILLING,
    CUSTOMERS_READ,
    PERMISSIONS,
    READS,
    ROLES,
    SUPPORT,
    role_permissions,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.mark.parametrize(
    ("given", "kept"), [("Admin", "admin"), ("  ops.Team@isp ", "ops.team@isp"), ("a-1_b", "a-1_b")]
)
def test_usernames_are_case_folded(given: str, kept: str) -> None:
    assert staff_username(given) == kept


@pytest.mark.parametrize(
    "bad", ["", "bad\nname", "tab\tname", "space name", "ädmin", "-x", "x" * 65]
)
def test_usernames_refuse_control_characters_spaces_and_look_alikes(bad: str) -> None:
    with pytest.raises(InvalidStaffCommand):
        staff_username(bad)


@pytest.mark.parametrize("bad", ["short", "line\nbreak-password", "x" * 257])
def test_passwords_refused(bad: str) -> None:
    with pytest.raises(InvalidStaffCommand):
        check_password(bad)


def test_a_user_folds_from_its_stream() -> None:
    events = [
        StaffUserCreated(username="sue", role=SUPPORT, password_hash="$argon2id$x"),
        StaffRoleChanged(username="sue", role=BILLING),
        StaffUserDisabled(username="sue"),
        StaffUserEnabled(username="sue"),
        StaffUserDisabled(username="sue"),
        StaffTotpEnabled(username="sue", totp_secret_sealed="sealed:v1:k:x"),
    ]
    user = fold_staff_user((e, i) for i, e in enumerate(events))
    assert user is not None
    assert (user.role, user.disabled, user.totp_enabled, user.version) == (BILLING, True, True, 5)
    assert user.changes(role=BILLING, disabled=True) == []
    assert user.changes(disabled=False) == [StaffUserEnabled(username="sue")]
    with pytest.raises(InvalidStaffCommand):
        user.changes(role="root")


def test_a_token_allows_its_scopes_within_its_users_current_role() -> None:
    issued = ApiTokenIssued(
        token_id="0" * 20,
        username="sue",
        name="cli",
        token_sha256="f" * 64,
        scopes=[CUSTOMERS_READ, "nas:write"],
        expires_at=NOW + timedelta(days=1),
    )
    token = fold_api_token([(issued, 0)])
    assert token is not None and token.usable_at(NOW) and not token.usable_at(NOW + timedelta(1))
    assert token.permissions(SUPPORT) == {CUSTOMERS_READ}
    assert token.permissions(ADMIN) == {CUSTOMERS_READ, "nas:write"}
    revoked = fold_api_token([(issued, 0), (ApiTokenRevoked(token_id="0" * 20), 1)])
    assert revoked is not None and not revoked.usable_at(NOW)


def test_a_new_tokens_scopes_never_exceed_the_asking_token() -> None:
    whole = role_permissions(BILLING)
    assert token_scopes(None, whole, BILLING) is None
    narrow = frozenset({CUSTOMERS_READ})
    assert token_scopes(None, narrow, BILLING) == [CUSTOMERS_READ]
    with pytest.raises(InvalidStaffCommand):
        token_scopes(["invoices:read"], narrow, BILLING)
    with pytest.raises(InvalidStaffCommand):
        token_scopes(["no:such"], whole, BILLING)


def test_roles() -> None:
    assert ROLES[ADMIN] == PERMISSIONS
    assert ROLES[AUDITOR] - READS == {"profile:write"}
    assert not {p for p in ROLES[SUPPORT] if p.startswith(("payments", "bill-runs", "tax-rates"))}
    assert all(role <= PERMISSIONS for role in ROLES.values())
