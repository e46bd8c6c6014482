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


class RuleViolated(AccountsError):
    """A command the entity's rules refuse (answered 422); each rule has its own subclass."""


class InvalidCustomer(RuleViolated):
    """Customer details the rules refuse (a tag that is not a slug, too many tags)."""


class InvalidTopUp(RuleViolated):
    pass


class InvalidPlanVersion(RuleViolated):
    """A plan version out of order, in another currency, or dated into a closed period."""


class SubscriptionNotStarted(RuleViolated):
    """An effective date before the subscription's start."""


class BackdatedIntoClosedPeriod(RuleViolated):
    """An effective date in an earlier billing period: it may be invoiced already, and issued
    invoices never change."""


class SubscriptionIsTerminated(RuleViolated):
    """Nothing follows a termination."""


class AlreadySuspended(RuleViolated):
    pass


class NotSuspended(RuleViolated):
    """Only a suspended subscription is resumed."""


class SamePlan(RuleViolated):
    """A plan change to the plan in force then."""


class PlanCurrencyDiffers(RuleViolated):
    """A customer's subscriptions are billed on one invoice, in one currency."""


class OutOfOrder(RuleViolated):
    """An effective date before one already recorded for the same kind of change."""


class InvalidHold(RuleViolated):
    """Hold dates not ordered, longer than a year, or overlapping another hold."""


class SameUsername(RuleViolated):
    pass


class InvalidStaffCommand(AccountsError):
    """A staff or token command that breaks a rule: unknown role, scope outside the role, ..."""


class TooManyAttempts(AccountsError):
    """Too many failed logins for this username lately: wait before trying again."""


class InvalidCredentials(Unauthenticated):
    """Unknown username, wrong password or TOTP code, or a disabled user: one answer for all."""


class TotpRequired(Unauthenticated):
    """The password was right, and this user has TOTP: send the current code as well."""


class NoTaxRule(AccountsError):
    """The customer's tax region has no tax rule, not even the explicit "untaxed" one: a bill
    run would invoice the customer without tax by accident."""
