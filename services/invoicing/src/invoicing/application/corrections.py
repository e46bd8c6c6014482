"""Use cases: credit an issued invoice (a credit note, its own gapless series) and void one
that nothing was paid or credited on. Both write to the invoice's own stream at the version
read, so two clerks crediting one invoice at once cannot together credit more than its total:
the second reads again and is judged on what the first did.

A credit note's number is assigned in `credit-note-series-<series>` in the same `append_many`
as the credit note (one transaction on SQLite and PostgreSQL): a credit note refused or lost
in a race takes no number. The clerk's `reference` names the credit note: the same reference
again (a retried request) answers the credit note recorded, and never credits twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from invoicing.application.settings import BillingSettings
from invoicing.domain.corrections import (
    CorrectionRefused,
    check_void,
    draft_credit_note,
    fold_invoice,
)
from invoicing.domain.errors import InvoicingError
from ispbill_core.clock import Clock
from ispbill_core.contracts.invoicing import (
    CreditNoteIssued,
    CreditNoteNumberAssigned,
    InvoiceIssued,
    InvoicePaid,
    InvoiceVoided,
    LateUsageReleased,
    credit_note_series_stream,
    invoice_stream,
)
from ispbill_core.events import NewEvent, deterministic_id, new_event
from ispbill_core.eventstore import (
    ANY,
    NO_STREAM,
    EventStore,
    ExpectedVersion,
    WrongExpectedVersion,
)
from ispbill_core.money import Money

_ATTEMPTS = 10
#: how far back the series is read for a number this credit note took already (a store whose
#: append_many is not one transaction, KurrentDB, can leave one behind a failed attempt)
_SERIES_LOOKBACK = 50


class CreditNoteConflict(InvoicingError):
    """The reference names a credit note recorded with other terms."""


def credit_note_id_for(invoice_id: uuid.UUID, reference: str) -> uuid.UUID:
    return deterministic_id("credit-note", invoice_id, reference)


async def issue_credit_note(
    store: EventStore,
    clock: Clock,
    settings: BillingSettings,
    invoice: InvoiceIssued,
    *,
    amount: Money | None,
    reason: str,
    reference: str,
    actor: str,
) -> tuple[CreditNoteIssued, bool]:
    """Credit `amount` (tax included; None: everything still creditable) of `invoice`.
    Returns the credit note and whether this call recorded it (False: the reference's credit
    note was recorded before, with the same terms)."""
    stream = invoice_stream(invoice.customer_id, invoice.period)
    credit_note_id = credit_note_id_for(invoice.invoice_id, reference)
    for _ in range(_ATTEMPTS):
        year = clock.now().astimezone(settings.timezone).year
        series_key = settings.series_key(settings.credit_note_series, year)
        series_stream = credit_note_series_stream(series_key)
        history = await store.read_stream(stream)
        decoded = [r.decode() for r in history]
        for event in decoded:
            if isinstance(event, CreditNoteIssued) and event.credit_note_id == credit_note_id:
                if event.reason == reason and (amount is None or event.total == amount):
                    return event, False
                raise CreditNoteConflict(
                    f"reference {reference!r} is credit note {event.number} of"
                    f" {event.total.amount} {event.currency} ({event.reason!r}) already"
                )
        account = fold_invoice(decoded)
        if account is None or account.invoice.invoice_id != invoice.invoice_id:
            raise CorrectionRefused(f"invoice {invoice.number} is not in the ledger")
        draft = draft_credit_note(account, amount, reason, settings.rounding)
        series_version = await store.stream_version(series_stream)
        number, sequence, taken = await _number_for(
            store, settings, series_stream, series_version, credit_note_id, year
        )
        now = clock.now()
        credited = account.credited + draft.total
        note = CreditNoteIssued(
            credit_note_id=credit_note_id,
            number=number,
            invoice_id=invoice.invoice_id,
            invoice_number=invoice.number,
            customer_id=invoice.customer_id,
            period=invoice.period,
            issued_at=now,
            reason=reason,
            reference=reference,
            currency=invoice.currency,
            lines=draft.lines,
            subtotal=draft.subtotal,
            taxes=draft.taxes,
            tax_total=draft.tax_total,
            total=draft.total,
            invoice_credited=credited,
        )
        events: list[NewEvent] = [
            new_event(
                note,
                id=deterministic_id("credit-note-issued", credit_note_id),
                occurred_at=now,
                actor=actor,
            )
        ]
        received = Money.exact(account.received, invoice.currency)
        if (
            not account.paid
            and account.last_payment_id is not None
            and received >= invoice.total - credited
        ):
            # what was paid now covers what is owed: the invoice is settled
            events.append(
                new_event(
                    InvoicePaid(
                        invoice_id=invoice.invoice_id,
                        payment_id=account.last_payment_id,
                        amount_paid=received,
                        paid_at=now,
                    ),
                    id=deterministic_id("invoice-paid", invoice.invoice_id, credit_note_id),
                    occurred_at=now,
                    actor=actor,
                )
            )
        batches: list[tuple[str, Sequence[NewEvent], ExpectedVersion]] = []
        if not taken:
            assigned = CreditNoteNumberAssigned(
                series=series_key,
                sequence=sequence,
                number=number,
                credit_note_id=credit_note_id,
                invoice_id=invoice.invoice_id,
                customer_id=invoice.customer_id,
            )
            batches.append(
                (
                    series_stream,
                    [
                        new_event(
                            assigned,
                            id=deterministic_id("credit-note-number", credit_note_id),
                            occurred_at=now,
                            actor=actor,
                        )
                    ],
                    NO_STREAM if series_version is None else series_version,
                )
            )
        batches.append((stream, events, history[-1].stream_position))
        try:
            await store.append_many(batches)
        except WrongExpectedVersion:
            continue  # another credit note, payment or number came first: judge again
        return note, True
    raise CorrectionRefused(f"invoice {invoice.number} kept changing; try again")


async def _number_for(
    store: EventStore,
    settings: BillingSettings,
    series_stream: str,
    version: int | None,
    credit_note_id: uuid.UUID,
    year: int,
) -> tuple[str, int, bool]:
    """(number, sequence, taken already): the number this credit note took in an earlier
    attempt, else the series' next."""
    if version is not None:
        start = max(0, version - _SERIES_LOOKBACK)
        for recorded in await store.read_stream(series_stream, from_position=start):
            event = recorded.decode()
            if (
                isinstance(event, CreditNoteNumberAssigned)
                and event.credit_note_id == credit_note_id
            ):
                return event.number, event.sequence, True
    sequence = 1 if version is None else version + 2
    return settings.credit_note_number(sequence, year), sequence, False


async def void_invoice(
    store: EventStore, clock: Clock, invoice: InvoiceIssued, *, reason: str, actor: str
) -> InvoiceVoided:
    """Void `invoice` (refused once anything was paid or credited on it); voiding it again
    answers the void recorded."""
    stream = invoice_stream(invoice.customer_id, invoice.period)
    for _ in range(_ATTEMPTS):
        history = await store.read_stream(stream)
        account = fold_invoice(r.decode() for r in history)
        if account is None or account.invoice.invoice_id != invoice.invoice_id:
            raise CorrectionRefused(f"invoice {invoice.number} is not in the ledger")
        if account.voided is not None:
            return account.voided
        check_void(account)
        now = clock.now()
        voided = InvoiceVoided(
            invoice_id=invoice.invoice_id, number=invoice.number, reason=reason, voided_at=now
        )
        batches: list[tuple[str, Sequence[NewEvent], ExpectedVersion]] = [
            (
                stream,
                [
                    new_event(
                        voided,
                        id=deterministic_id("invoice-voided", invoice.invoice_id),
                        occurred_at=now,
                        actor=actor,
                    )
                ],
                history[-1].stream_position,
            )
        ]
        # Late usage of earlier periods this invoice billed is billed again by the next bill
        # run: each original's stream says so, in the same transaction (ADR 0032).
        for spec in invoice.late_usage:
            released = LateUsageReleased(
                invoice_id=spec.invoice_id,
                period=spec.period,
                on_invoice_id=invoice.invoice_id,
                on_invoice_number=invoice.number,
                billed_through=spec.billed_through,
            )
            batches.append(
                (
                    invoice_stream(invoice.customer_id, spec.period),
                    [
                        new_event(
                            released,
                            id=deterministic_id(
                                "late-usage-released", invoice.invoice_id, spec.period
                            ),
                            occurred_at=now,
                            actor=actor,
                        )
                    ],
                    ANY,
                )
            )
        try:
            await store.append_many(batches)
        except WrongExpectedVersion:
            continue  # a payment or credit note came first: judge again
        return voided
    raise CorrectionRefused(f"invoice {invoice.number} kept changing; try again")
