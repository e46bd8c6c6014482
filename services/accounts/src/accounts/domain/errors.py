"""Errors the accounts domain raises before it records anything."""

from ispbill_core.access import Unauthenticated


class AccountsError(Exception):
    """Base of accounts' named errors."""


class AlreadyExists(AccountsError):
    """An entity with this id exists with different details."""


class Conflict(AccountsError):
    """Someone else changed the entity between this command's read and its write."""


class AddressInUse(AccountsError):
    """Another NAS is registered at this address: the collector knows a NAS by its address."""


class NotFound(AccountsError):
    pass


class UsernameTaken(AccountsError):
    pass


class InvalidPlan(AccountsError):
    pass


class InvalidStaffCommand(AccountsError):
    """A staff or token command that breaks a rule: unknown role, scope outside the role, ..."""


class TooManyAttempts(AccountsError):
    """Too many failed logins for this username lately: wait before trying again."""


class InvalidCredentials(Unauthenticated):
    """Unknown username, wrong password or TOTP code, or a disabled user: one answer for all."""


class TotpRequired(Unauthenticated):
    """The password was right, and this user has TOTP: send the current code as well."""
