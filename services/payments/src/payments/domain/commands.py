"""Validated payment commands."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ispbill_core.contracts.payments import PaymentReceived
from ispbill_core.events import deterministic_id
from ispbill_core.money import Money


class RecordManualPayment(BaseModel):
    """A payment a clerk received at the counter or saw on the bank statement."""

    model_config = ConfigDict(extra="forbid")

    invoice: str = Field(min_length=1, description="invoice number or id")
    amount: str = Field(description="decimal string in the invoice's currency")
    reference: str = Field(min_length=1, max_length=100, description="receipt or bank reference")
    method: str = Field(default="cash", max_length=40)

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", value):
            raise ValueError("a reference is letters, digits and _.:/- only")
        return value


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
