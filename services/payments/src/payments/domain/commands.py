"""Validated payment commands."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import deterministic_id
from ispbill_core.input_policy import MoneyText, Reference
from ispbill_core.money import Money


class RecordManualPayment(BaseModel):
    """A payment a clerk received at the counter or saw on the bank statement."""

    model_config = ConfigDict(extra="forbid")

    invoice: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:/-]+$",
        description="invoice number or id",
    )
    amount: MoneyText = Field(description="decimal string in the invoice's currency")
    reference: Reference = Field(description="receipt or bank reference: letters, digits, _.:/-")
    method: str = Field(default="cash", max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")


def payment_received(
    *,
    gateway: str,
    reference: str,
    customer_id: str,
    invoice_id: uuid.UUID,
    amount: Money,
    method: str,
    received_at: datetime,
    invoice_period: str | None = None,
) -> PaymentReceived:
    return PaymentReceived(
        payment_id=deterministic_id("payment", gateway, reference),
        gateway=gateway,
        transaction_ref=reference,
        customer_id=customer_id,
        invoice_id=invoice_id,
        amount=amount,
        received_at=received_at,
        method=method,
        invoice_period=invoice_period,
    )
