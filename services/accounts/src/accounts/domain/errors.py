"""Errors the accounts domain raises before it records anything."""


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


class NoTaxRule(AccountsError):
    """The customer's tax region has no tax rule, not even the explicit "untaxed" one: a bill
    run would invoice the customer without tax by accident."""
