"""Errors payments raises before recording anything."""


class PaymentsError(Exception):
    pass


class DuplicatePaymentReference(PaymentsError):
    """The transaction reference was already used for a different payment."""


class InvalidPayment(PaymentsError):
    pass
