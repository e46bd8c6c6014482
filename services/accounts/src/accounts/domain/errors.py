"""Errors the accounts domain raises before it records anything."""


class AccountsError(Exception):
    """Base of accounts' named errors."""


class AlreadyExists(AccountsError):
    """An entity with this id exists with different details."""


class NotFound(AccountsError):
    pass


class UsernameTaken(AccountsError):
    pass


class InvalidPlan(AccountsError):
    pass
