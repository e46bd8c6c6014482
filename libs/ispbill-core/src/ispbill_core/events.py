"""The event envelope, the registry of event types, and deterministic event ids."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

#: Namespace for uuid5 ids derived from facts: the same fact always gets the same id,
#: so a retried append is an idempotent no-op instead of a second charge.
ISPBILL_NAMESPACE = uuid.UUID("6f1c2a52-5b0e-4f0c-9d8e-1b7a0c6a9e31")


def deterministic_id(*parts: object) -> uuid.UUID:
    """A uuid5 of a fact's natural key; parts are joined with a separator no id contains."""
    return uuid.uuid5(ISPBILL_NAMESPACE, "\x1f".join(str(p) for p in parts))


def utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; a naive one is a bug and raises."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: every timestamp in ispbill is timezone-aware")
    return value.astimezone(UTC)


class DomainEvent(BaseModel):
    """Base of every event: an immutable fact, named in the past tense."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    event_version: ClassVar[int]


E = TypeVar("E", bound=type[DomainEvent])

_REGISTRY: dict[tuple[str, int], type[DomainEvent]] = {}


def event_type(name: str, version: int = 1) -> Callable[[E], E]:
    """Register a DomainEvent subclass under a stable type name and version."""

    def register(cls: E) -> E:
        key = (name, version)
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f"event type {name} v{version} registered twice")
        cls.event_type = name
        cls.event_version = version
        _REGISTRY[key] = cls
        return cls

    return register


def registered_event_types() -> dict[tuple[str, int], type[DomainEvent]]:
    return dict(_REGISTRY)


class UnknownEventType(LookupError):
    pass


class EventMetadata(BaseModel):
    """What is known about the recording of a fact, as opposed to the fact itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    occurred_at: AwareDatetime
    recorded_at: AwareDatetime | None = None
    actor: str = "system"
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    traceparent: str | None = None

    @field_validator("occurred_at", "recorded_at")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc(value)


class NewEvent(BaseModel):
    """An event about to be appended: the envelope without its positions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID
    type: str
    version: int
    data: dict[str, Any]
    metadata: EventMetadata


class RecordedEvent(NewEvent):
    """An event as the ledger holds it."""

    stream: str
    stream_position: int
    global_position: int

    def decode(self) -> DomainEvent:
        """The typed event; raises UnknownEventType for a type this code does not know."""
        cls = _REGISTRY.get((self.type, self.version))
        if cls is None:
            raise UnknownEventType(f"{self.type} v{self.version}")
        return cls.model_validate(self.data)


def new_event(
    event: DomainEvent,
    *,
    id: uuid.UUID,
    occurred_at: datetime,
    actor: str = "system",
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    traceparent: str | None = None,
) -> NewEvent:
    """Wrap a domain event in an envelope, ready to append."""
    return NewEvent(
        id=id,
        type=event.event_type,
        version=event.event_version,
        data=event.model_dump(mode="json"),
        metadata=EventMetadata(
            occurred_at=occurred_at,
            actor=actor,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
        ),
    )
