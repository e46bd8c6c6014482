"""The event envelope, the type registry and deterministic ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ispbill_core.events import (
    ISPBILL_NAMESPACE,
    DomainEvent,
    EventMetadata,
    NewEvent,
    RecordedEvent,
    UnknownEventType,
    deterministic_id,
    event_type,
    new_event,
    registered_event_types,
    utc,
)

pytestmark = pytest.mark.unit


@event_type("test.core.PlanPriced", 1)
class PlanPriced(DomainEvent):
    plan: str
    price: Decimal
    currency: str


@event_type("test.core.PlanPriced", 2)
class PlanPricedV2(DomainEvent):
    plan: str
    price: Decimal
    currency: str
    tax_inclusive: bool


OCCURRED = datetime(2025, 3, 30, 0, 30, tzinfo=UTC)


def recorded(event: NewEvent, *, position: int = 0) -> RecordedEvent:
    return RecordedEvent(
        **event.model_dump(), stream="plan-1", stream_position=position, global_position=7
    )


def test_registry_round_trip() -> None:
    fact = PlanPriced(plan="fibre-100", price=Decimal("29.90"), currency="GBP")
    envelope = new_event(fact, id=deterministic_id("plan", "fibre-100", 1), occurred_at=OCCURRED)
    assert (envelope.type, envelope.version) == ("test.core.PlanPriced", 1)
    assert envelope.data == {"plan": "fibre-100", "price": "29.90", "currency": "GBP"}
    # Through JSON, as a store holds it.
    stored = RecordedEvent.model_validate_json(recorded(envelope).model_dump_json())
    decoded = stored.decode()
    assert isinstance(decoded, PlanPriced)
    assert decoded == fact
    assert decoded.price == Decimal("29.90")


def test_each_version_decodes_to_its_own_class() -> None:
    v2 = PlanPricedV2(plan="p", price=Decimal("1"), currency="USD", tax_inclusive=True)
    envelope = new_event(v2, id=uuid.uuid4(), occurred_at=OCCURRED)
    assert envelope.version == 2
    assert isinstance(recorded(envelope).decode(), PlanPricedV2)
    assert registered_event_types()[("test.core.PlanPriced", 1)] is PlanPriced


def test_unknown_type_or_version_raises() -> None:
    envelope = NewEvent(
        id=uuid.uuid4(),
        type="test.core.PlanPriced",
        version=9,
        data={},
        metadata=EventMetadata(occurred_at=OCCURRED),
    )
    with pytest.raises(UnknownEventType):
        recorded(envelope).decode()


def test_a_type_name_and_version_is_registered_once() -> None:
    with pytest.raises(ValueError):

        @event_type("test.core.PlanPriced", 1)
        class Impostor(DomainEvent):
            plan: str

    # Registering the same class again (a module reloaded) is harmless.
    assert event_type("test.core.PlanPriced", 1)(PlanPriced) is PlanPriced


def test_events_are_immutable_and_strict() -> None:
    fact = PlanPriced(plan="p", price=Decimal("1"), currency="USD")
    with pytest.raises(ValidationError):
        fact.plan = "q"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        PlanPriced(plan="p", price=Decimal("1"), currency="USD", colour="red")  # type: ignore[call-arg]


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValidationError):
        EventMetadata(occurred_at=datetime(2025, 1, 1))
    with pytest.raises(ValidationError):
        EventMetadata(occurred_at=OCCURRED, recorded_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        utc(datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        new_event(
            PlanPriced(plan="p", price=Decimal("1"), currency="USD"),
            id=uuid.uuid4(),
            occurred_at=datetime(2025, 1, 1),
        )


def test_aware_datetimes_are_stored_in_utc() -> None:
    dhaka = timezone(timedelta(hours=6))
    metadata = EventMetadata(occurred_at=datetime(2025, 1, 1, 6, 0, tzinfo=dhaka))
    assert metadata.occurred_at == datetime(2025, 1, 1, 0, 0, tzinfo=UTC)
    assert metadata.occurred_at.utcoffset() == timedelta(0)
    assert '"occurred_at":"2025-01-01T00:00:00Z"' in metadata.model_dump_json()


def test_deterministic_id_is_stable() -> None:
    # Pinned: changing the namespace or the joining would make every retry a second charge.
    assert uuid.UUID("6f1c2a52-5b0e-4f0c-9d8e-1b7a0c6a9e31") == ISPBILL_NAMESPACE
    assert deterministic_id("invoice", "cust-1", "2025-03") == uuid.UUID(
        "3118cac9-bb99-5c3b-b2df-0b87bca4805b"
    )
    assert deterministic_id("invoice", "cust-1", "2025-03").version == 5
    assert deterministic_id("nas-1", 42) == deterministic_id("nas-1", "42")


def test_deterministic_id_keeps_parts_apart() -> None:
    assert deterministic_id("ab", "c") != deterministic_id("a", "bc")
    assert deterministic_id("a") != deterministic_id("a", "")


@given(
    st.lists(
        st.text(alphabet=st.characters(exclude_characters="\x1f", exclude_categories=["Cs"])),
        min_size=1,
    )
)
def test_deterministic_id_is_a_function_of_its_parts(parts: list[str]) -> None:
    assert deterministic_id(*parts) == deterministic_id(*list(parts))
    assert deterministic_id(*parts) != deterministic_id(*parts, "x")
