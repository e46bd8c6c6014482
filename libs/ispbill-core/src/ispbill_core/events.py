"""The event envelope, the registry of event types, and deterministic event ids."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, Self, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
)
from pydantic_core import to_json

#: Namespace for uuid5 ids derived from facts: the same fact always gets the same id,
#: so a retried append is an idempotent no-op instead of a second charge.
ISPBILL_NAMESPACE = uuid.UUID("6f1c2a52-5b0e-4f0c-9d8e-1b7a0c6a9e31")


def deterministic_id(*parts: object) -> uuid.UUID:
    """A uuid5 of a fact's natural key; parts are joined with a separator no id contains.
    (uuid.uuid5, with the namespace hashed once: rating makes several ids per record.)"""
    digest = _NAMESPACE_SHA1.copy()
    digest.update("\x1f".join(str(p) for p in parts).encode())
    raw = int.from_bytes(digest.digest()[:16])
    return uuid.UUID(int=(raw & _UUID5_CLEAR) | _UUID5_SET)


_NAMESPACE_SHA1 = hashlib.sha1(ISPBILL_NAMESPACE.bytes, usedforsecurity=False)
#: version 5 and the RFC 4122 variant, as uuid.UUID(bytes=..., version=5) sets them
_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID5_SET = (5 << 76) | (0x8000 << 48)


#: The namespace as the bytes SHA-1 is fed with, for ordered_deterministic_id.
_NAMESPACE_BYTES = ISPBILL_NAMESPACE.bytes
_MAX_MILLISECONDS = 2**48 - 1
_VARIANT = "89ab"


def ordered_deterministic_id(at_seconds: int, *parts: object) -> str:
    """A deterministic id that sorts by time, as canonical UUID text.

    For high-volume facts (accounting records) whose ids fill a unique index: a uuid5 lands
    anywhere in the index, so every batch dirties pages all over it (SQLite measured 12.7 us
    per row with uuid5 ids, 7.1 us with these). Laid out like a UUIDv7 (RFC 9562 section 5.7):
    48 bits of Unix milliseconds (`at_seconds` * 1000, clamped to 0..2**48-1) first, then 74
    bits of the SHA-1 of the namespace and the parts (joined as in deterministic_id). Those
    bits are not random, so the version is 8 ("custom", section 5.8), not 7. The same time and
    parts always give the same id; the time must itself come from the fact (a timestamp the
    sender put in it), never from the clock of whoever computes the id.
    """
    milliseconds = at_seconds * 1000
    if not 0 <= milliseconds <= _MAX_MILLISECONDS:
        milliseconds = min(max(milliseconds, 0), _MAX_MILLISECONDS)
    key = parts[0] if len(parts) == 1 and type(parts[0]) is str else "\x1f".join(map(str, parts))
    digest = hashlib.sha1(_NAMESPACE_BYTES + key.encode(), usedforsecurity=False).hexdigest()
    return (
        f"{milliseconds >> 16:08x}-{milliseconds & 0xFFFF:04x}-8{digest[:3]}-"
        f"{_VARIANT[int(digest[3], 16) & 3]}{digest[4:7]}-{digest[7:19]}"
    )


def utc(value: datetime) -> datetime:
    """Normalise an aware datetime to UTC; a naive one is a bug and raises."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: every timestamp in ispbill is timezone-aware")
    return value.astimezone(UTC)


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def timestamp_json(value: datetime) -> str:
    """An aware datetime in UTC as the envelope's JSON writes it ("2026-11-24T10:00:00.5Z")."""
    text: str = _TIMESTAMP.dump_python(utc(value), mode="json")
    return text


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

    def encoded(self) -> EncodedEvent:
        """The envelope serialised, as the adapters write it (metadata without recorded_at)."""
        return EncodedEvent(
            id=str(self.id),
            type=self.type,
            version=self.version,
            data_json=to_json(self.data).decode(),
            metadata_json=self.metadata.model_dump_json(exclude={"recorded_at"}),
            traceparent=self.metadata.traceparent,
        )


class EncodedEvent(NamedTuple):
    """A NewEvent already serialised: what a producer hands the bus when it makes thousands of
    events a second (the usage collector), so that no pydantic model is built per event.

    Adapters write `data_json` as it is and the metadata with recorded_at added
    (`stamped_metadata`). Nothing validates it on the way: whoever builds one vouches that
    `data_json` is what the event type's model would dump, and its tests hold the two equal
    (`decoded()` gives the envelope back as a NewEvent for that).
    """

    #: Canonical UUID text.
    id: str
    type: str
    version: int
    #: The event's data: a JSON object.
    data_json: str
    #: EventMetadata as a JSON object without recorded_at, which the ledger sets.
    metadata_json: str
    #: The metadata's traceparent too, for a bus that carries it in a header.
    traceparent: str | None = None

    def stamped_metadata(self, recorded_at: str) -> str:
        """The metadata JSON with `recorded_at` (ISO 8601 text) added, as a ledger stores it."""
        body = self.metadata_json.rstrip()
        if not body.endswith("}"):
            raise ValueError(f"event {self.id}: metadata is not a JSON object: {body[:40]!r}")
        separator = "" if body[:-1].rstrip().endswith("{") else ","
        return f'{body[:-1]}{separator}"recorded_at":"{recorded_at}"}}'

    def envelope_json(self) -> str:
        """The whole envelope as JSON, read back by NewEvent.model_validate_json as the event.

        The metadata has no recorded_at (only a ledger sets it); NewEvent.model_dump_json would
        write `"recorded_at": null` there, which reads back the same.
        """
        return (
            f'{{"id":"{self.id}","type":{json.dumps(self.type)},"version":{self.version},'
            f'"data":{self.data_json},"metadata":{self.metadata_json}}}'
        )

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data_json)
        return loaded

    @property
    def metadata(self) -> EventMetadata:
        return EventMetadata.model_validate_json(self.metadata_json)

    def decoded(self) -> NewEvent:
        """The envelope as a validated NewEvent; raises when it is not one."""
        return NewEvent.model_validate_json(self.envelope_json())


#: An event to append or publish, as a model or already serialised.
AnyNewEvent = NewEvent | EncodedEvent


def encoded(event: AnyNewEvent) -> EncodedEvent:
    """Either kind of event to be appended, serialised: the one form adapters write."""
    return event if isinstance(event, EncodedEvent) else event.encoded()


class RecordedEvent(NewEvent):
    """An event as the ledger holds it."""

    stream: str
    stream_position: int
    global_position: int
    #: the data's JSON text as the ledger returned it, when read from one: a cache, never
    #: serialised, and not part of the event (equality and hashing ignore it)
    stored_data: str | None = Field(default=None, exclude=True, repr=False)

    @classmethod
    def stored(
        cls,
        *,
        id: uuid.UUID,
        stream: str,
        stream_position: int,
        global_position: int,
        type: str,
        version: int,
        data_json: str,
        metadata: EventMetadata,
    ) -> RecordedEvent:
        """An event as a ledger adapter reads it: `data_json` parsed, and kept, so that a
        reader that stores or shows the data as JSON (projections) need not encode it again."""
        return cls(
            id=id,
            stream=stream,
            stream_position=stream_position,
            global_position=global_position,
            type=type,
            version=version,
            data=json.loads(data_json),
            metadata=metadata,
            stored_data=data_json,
        )

    def data_json(self) -> str:
        """The data as JSON text: as the ledger stored it, or else encoded now."""
        if self.stored_data is not None:
            return self.stored_data
        return to_json(self.data).decode()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        if update and "data" in update:
            update = {**update, "stored_data": None}
        return super().model_copy(update=update, deep=deep)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        mine, theirs = dict(self.__dict__), dict(other.__dict__)
        mine.pop("stored_data", None)
        theirs.pop("stored_data", None)
        return type(self) is type(other) and mine == theirs

    def __hash__(self) -> int:
        return hash((self.id, self.global_position))

    def decode(self) -> DomainEvent:
        """The typed event; raises UnknownEventType for a type this code does not know."""
        cls = _REGISTRY.get((self.type, self.version))
        if cls is None:
            raise UnknownEventType(f"{self.type} v{self.version}")
        return cls.model_validate(self.data)


#: json.dumps(..., separators=(",", ":"), ensure_ascii=False) without a new encoder per call
_METADATA_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encoded_event(
    event: DomainEvent,
    *,
    id: uuid.UUID,
    occurred_at: datetime,
    actor: str = "system",
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    traceparent: str | None = None,
) -> EncodedEvent:
    """What `new_event(...).encoded()` gives, byte for byte, without building and validating a
    NewEvent and its metadata (a fifth of the cost): for code that makes events by the
    thousand (rating). The domain event itself is a validated model already."""
    # The metadata's JSON written out: the timestamp and the ids need no escaping (digits,
    # letters, "-:.TZ"); the actor (one of a few per process) and a traceparent are encoded.
    correlation = "null" if correlation_id is None else f'"{correlation_id}"'
    causation = "null" if causation_id is None else f'"{causation_id}"'
    metadata_json = (
        f'{{"occurred_at":"{timestamp_json(occurred_at)}","actor":{_actor_json(actor)},'
        f'"correlation_id":{correlation},"causation_id":{causation},'
        f'"traceparent":{_METADATA_JSON(traceparent)}}}'
    )
    return EncodedEvent(
        id=str(id),
        type=event.event_type,
        version=event.event_version,
        data_json=event.model_dump_json(),
        metadata_json=metadata_json,
        traceparent=traceparent,
    )


@functools.lru_cache(maxsize=256)
def _actor_json(actor: str) -> str:
    return _METADATA_JSON(actor)


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
