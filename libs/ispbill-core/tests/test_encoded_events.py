"""EncodedEvent (an envelope already serialised) and ordered_deterministic_id (UUIDv8)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispbill_core.bus import TRACEPARENT_HEADER, decode_message, encode_message, message_headers
from ispbill_core.events import (
    ISPBILL_NAMESPACE,
    EncodedEvent,
    EventMetadata,
    NewEvent,
    deterministic_id,
    encoded,
    ordered_deterministic_id,
    timestamp_json,
)

pytestmark = pytest.mark.unit

MAX_MS = 2**48 - 1
#: The last whole second whose milliseconds still fit in 48 bits.
MAX_SECONDS = MAX_MS // 1000
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def reference_id(at_seconds: int, key: str) -> uuid.UUID:
    """The layout written out as bit arithmetic (RFC 9562 section 5.8): 48 bits of Unix ms,
    version 8, the SHA-1's first 12 bits, variant 0b10, then the SHA-1's bits 14..75 (of the
    4 bits after the first 12, the 2 the variant overwrites are dropped)."""
    milliseconds = min(max(at_seconds * 1000, 0), MAX_MS)
    digest = int.from_bytes(hashlib.sha1(ISPBILL_NAMESPACE.bytes + key.encode()).digest())
    rand_a = digest >> 148  # the first 12 bits of the 160
    rand_b = (digest >> 84) & (2**62 - 1)  # bits 14..75
    return uuid.UUID(int=milliseconds << 80 | 0x8 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


# -- strategies --------------------------------------------------------------------------
unicode_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
part = st.one_of(unicode_text, st.integers())
seconds = st.integers(min_value=0, max_value=MAX_SECONDS)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | unicode_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode_text, inner, max_size=4),
    max_leaves=12,
)
data_dicts = st.dictionaries(unicode_text, json_values, max_size=6)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8)), None]
)
aware_datetimes = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
traceparents = st.from_regex(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\Z")
metadatas = st.builds(
    EventMetadata,
    occurred_at=st.builds(
        lambda dt, zone: dt if zone is None else dt.astimezone(zone), aware_datetimes, zones
    ),
    actor=unicode_text,
    correlation_id=st.none() | st.uuids(),
    causation_id=st.none() | st.uuids(),
    traceparent=st.none() | traceparents,
)
new_events = st.builds(
    NewEvent,
    id=st.uuids(),
    type=st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20),
    version=st.integers(min_value=1, max_value=2**31 - 1),
    data=data_dicts,
    metadata=metadatas,
)


def new(traceparent: str | None = TRACEPARENT, **data: Any) -> NewEvent:
    return NewEvent(
        id=uuid.uuid4(),
        type="Tested",
        version=1,
        data=data or {"n": 1},
        metadata=EventMetadata(
            occurred_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC), traceparent=traceparent
        ),
    )


# -- ordered_deterministic_id ------------------------------------------------------------
@given(seconds, st.lists(part, min_size=1, max_size=4))
def test_ordered_id_is_a_uuid_v8_of_the_rfc_variant(at: int, parts: list[object]) -> None:
    text = ordered_deterministic_id(at, *parts)
    parsed = uuid.UUID(text)
    assert str(parsed) == text, "canonical text: lower case, 8-4-4-4-12"
    assert parsed.version == 8
    assert parsed.variant == uuid.RFC_4122
    assert text[14] == "8"
    assert text[19] in "89ab"
    assert parsed.int >> 80 == at * 1000, "the first 48 bits are the unix milliseconds"


@given(seconds, st.lists(part, min_size=1, max_size=4))
def test_ordered_id_is_the_namespaced_sha1_of_the_parts_after_the_time(
    at: int, parts: list[object]
) -> None:
    key = "\x1f".join(str(p) for p in parts)
    assert uuid.UUID(ordered_deterministic_id(at, *parts)) == reference_id(at, key)


def test_ordered_id_is_pinned() -> None:
    # Ids are stored: a change of layout, namespace or joining makes a retry a second record.
    assert (
        ordered_deterministic_id(1_764_000_000, "nas-1", "sess-42", 7)
        == "019ab697-e800-84e4-b9e0-c7a7f54461b6"
    )


@given(
    st.integers(min_value=0, max_value=MAX_SECONDS - 1),
    st.integers(min_value=1, max_value=MAX_SECONDS),
    st.lists(part, min_size=1, max_size=4),
    st.lists(part, min_size=1, max_size=4),
)
def test_ordered_ids_sort_by_time_whatever_the_key(
    early: int, gap: int, early_key: list[object], late_key: list[object]
) -> None:
    late = min(early + gap, MAX_SECONDS)
    a = ordered_deterministic_id(early, *early_key)
    b = ordered_deterministic_id(late, *late_key)
    assert a < b
    assert uuid.UUID(a) < uuid.UUID(b)


@given(seconds, st.lists(part, min_size=1, max_size=4))
def test_ordered_id_is_deterministic_and_depends_on_key_and_time(
    at: int, parts: list[object]
) -> None:
    assert ordered_deterministic_id(at, *parts) == ordered_deterministic_id(at, *list(parts))
    assert ordered_deterministic_id(at, *parts) != ordered_deterministic_id(at, *parts, "x")
    other_time = at + 1 if at < MAX_SECONDS else at - 1
    assert (
        ordered_deterministic_id(at, *parts)[19:]
        == ordered_deterministic_id(other_time, *parts)[19:]
    )
    assert ordered_deterministic_id(at, *parts) != ordered_deterministic_id(other_time, *parts)


@given(st.lists(part, min_size=1, max_size=4))
def test_ordered_id_clamps_the_time_into_48_bits(parts: list[object]) -> None:
    floor = ordered_deterministic_id(0, *parts)
    assert floor.startswith("00000000-0000-8")
    assert ordered_deterministic_id(-1, *parts) == floor
    assert ordered_deterministic_id(-(10**12), *parts) == floor

    ceiling = ordered_deterministic_id(MAX_SECONDS + 1, *parts)
    assert ceiling.startswith("ffffffff-ffff-8")
    assert ordered_deterministic_id(10**15, *parts) == ceiling
    assert uuid.UUID(ceiling).int >> 80 == MAX_MS
    # The last second that fits is not clamped.
    assert uuid.UUID(ordered_deterministic_id(MAX_SECONDS, *parts)).int >> 80 == MAX_SECONDS * 1000


@given(seconds, st.lists(part, min_size=1, max_size=5))
def test_a_single_prejoined_key_is_the_same_as_its_parts(at: int, parts: list[object]) -> None:
    joined = "\x1f".join(str(p) for p in parts)
    assert ordered_deterministic_id(at, joined) == ordered_deterministic_id(at, *parts)


@given(seconds, st.integers())
def test_a_single_part_that_is_not_a_str_is_stringified(at: int, number: int) -> None:
    assert ordered_deterministic_id(at, number) == ordered_deterministic_id(at, str(number))


def test_parts_are_kept_apart() -> None:
    assert ordered_deterministic_id(0, "ab", "c") != ordered_deterministic_id(0, "a", "bc")
    assert ordered_deterministic_id(0, "a") != ordered_deterministic_id(0, "a", "")


# -- NewEvent.encoded / EncodedEvent.decoded ---------------------------------------------
@given(new_events)
def test_encoded_then_decoded_is_the_same_new_event(event: NewEvent) -> None:
    serialised = event.encoded()
    assert isinstance(serialised, EncodedEvent)
    assert serialised.decoded() == event
    assert serialised.id == str(event.id)
    assert (serialised.type, serialised.version) == (event.type, event.version)
    assert serialised.traceparent == event.metadata.traceparent
    assert serialised.data == event.data
    assert json.loads(serialised.data_json) == event.data
    assert serialised.metadata == event.metadata
    assert "recorded_at" not in json.loads(serialised.metadata_json)
    # The envelope as the model would dump it, but for recorded_at (the ledger sets it).
    assert json.loads(serialised.envelope_json()) == json.loads(
        event.model_dump_json(exclude={"metadata": {"recorded_at"}})
    )
    assert encoded(event) == serialised
    assert encoded(serialised) is serialised


def test_encoded_leaves_out_a_recorded_at_the_new_event_carries() -> None:
    event = new()
    stamped = event.model_copy(
        update={
            "metadata": event.metadata.model_copy(
                update={"recorded_at": datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC)}
            )
        }
    )
    serialised = stamped.encoded()
    assert "recorded_at" not in serialised.metadata_json
    assert serialised.decoded() == event


@given(new_events, aware_datetimes)
def test_stamped_metadata_adds_recorded_at_and_keeps_the_rest(
    event: NewEvent, recorded_at: datetime
) -> None:
    serialised = event.encoded()
    stamp = timestamp_json(recorded_at)
    stamped = serialised.stamped_metadata(stamp)
    assert json.loads(stamped) == {**json.loads(serialised.metadata_json), "recorded_at": stamp}
    assert stamped.startswith(serialised.metadata_json[:-1])
    metadata = EventMetadata.model_validate_json(stamped)
    assert metadata.recorded_at == recorded_at
    assert metadata.model_copy(update={"recorded_at": None}) == event.metadata


@pytest.mark.parametrize("body", ["{}", "{ }", " {\n} \n", '{"actor":"x"}  '])
def test_stamped_metadata_of_a_bare_or_padded_object(body: str) -> None:
    serialised = EncodedEvent(str(uuid.uuid4()), "T", 1, "{}", body)
    stamped = serialised.stamped_metadata("2026-11-24T10:00:00Z")
    assert json.loads(stamped) == {**json.loads(body), "recorded_at": "2026-11-24T10:00:00Z"}


@pytest.mark.parametrize("body", ["[]", '["}"]', "null", "", "   ", '"{}"', "{} x"])
def test_stamped_metadata_refuses_what_is_not_a_json_object(body: str) -> None:
    serialised = EncodedEvent(str(uuid.uuid4()), "T", 1, "{}", body)
    with pytest.raises(ValueError, match="not a JSON object"):
        serialised.stamped_metadata("2026-11-24T10:00:00Z")


def test_timestamp_json_is_utc_with_z() -> None:
    dhaka = timezone(timedelta(hours=6))
    assert timestamp_json(datetime(2026, 11, 24, 16, 0, 0, 500000, tzinfo=dhaka)) == (
        "2026-11-24T10:00:00.500000Z"
    )
    with pytest.raises(ValueError):
        timestamp_json(datetime(2026, 11, 24))


# -- the bus encoding --------------------------------------------------------------------
@given(new_events)
def test_a_new_event_and_its_encoded_event_make_the_same_message(event: NewEvent) -> None:
    serialised = event.encoded()
    from_model = decode_message(encode_message(event))
    from_encoded = decode_message(encode_message(serialised))
    assert from_model == from_encoded == event
    assert message_headers(event) == message_headers(serialised)


@pytest.mark.parametrize("traceparent", [TRACEPARENT, None])
def test_message_headers_carry_the_traceparent_of_either_kind(traceparent: str | None) -> None:
    event = new(traceparent)
    expected = [] if traceparent is None else [(TRACEPARENT_HEADER, traceparent.encode())]
    assert message_headers(event) == expected
    assert message_headers(event.encoded()) == expected


def test_encoded_event_is_new_event_encoded_byte_for_byte() -> None:
    """The fast path rating takes gives exactly the envelope new_event(...).encoded() gives."""
    from ispbill_core.contracts.rating import UsageRated
    from ispbill_core.events import encoded_event, new_event

    record_id = uuid.UUID(int=7)
    at = datetime(2026, 3, 10, 8, 0, 0, 500000, tzinfo=timezone(timedelta(hours=6)))
    usage = UsageRated(
        customer_id="c-ü",
        subscription_id="s-1",
        period="2026-03",
        session_key="k",
        record_id=record_id,
        input_octets=1,
        output_octets=2**40,
        occurred_at=at,
    )
    for kwargs in (
        {"actor": "system:rating", "causation_id": record_id, "traceparent": "00-abc-def-01"},
        {"correlation_id": record_id},
        {},
    ):
        fast = encoded_event(usage, id=record_id, occurred_at=at, **kwargs)  # type: ignore[arg-type]
        slow = new_event(usage, id=record_id, occurred_at=at, **kwargs).encoded()  # type: ignore[arg-type]
        assert fast == slow


@given(
    actor=st.text(min_size=1),
    correlation=st.none() | st.uuids(),
    causation=st.none() | st.uuids(),
    traceparent=st.none() | st.text(),
    at=st.datetimes(
        min_value=datetime(1, 1, 2), timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])
    ),
)
def test_encoded_event_metadata_is_the_envelopes_for_any_values(
    actor: str,
    correlation: uuid.UUID | None,
    causation: uuid.UUID | None,
    traceparent: str | None,
    at: datetime,
) -> None:
    """The metadata written out by hand (quotes, control characters, non-ASCII actors and
    traceparents, any time) is byte for byte what EventMetadata serialises."""
    from ispbill_core.contracts.rating import UsageRated
    from ispbill_core.events import encoded_event, new_event

    usage = UsageRated(
        customer_id="c",
        subscription_id="s",
        period="2026-03",
        session_key="k",
        record_id=uuid.UUID(int=1),
        input_octets=1,
        output_octets=2,
        occurred_at=datetime(2026, 3, 10, tzinfo=UTC),
    )
    kwargs = {
        "actor": actor,
        "correlation_id": correlation,
        "causation_id": causation,
        "traceparent": traceparent,
    }
    fast = encoded_event(usage, id=uuid.UUID(int=2), occurred_at=at, **kwargs)  # type: ignore[arg-type]
    slow = new_event(usage, id=uuid.UUID(int=2), occurred_at=at, **kwargs).encoded()  # type: ignore[arg-type]
    assert fast == slow
    assert json.loads(fast.metadata_json)["actor"] == actor


@given(
    st.lists(st.one_of(st.text(), st.integers(), st.uuids(), st.dates()), min_size=1, max_size=4)
)
def test_deterministic_id_is_uuid5_of_the_joined_parts(parts: list[object]) -> None:
    """The namespace is hashed once (a copy per id): still exactly uuid.uuid5, ids already in
    ledgers stay what they were."""
    expected = uuid.uuid5(ISPBILL_NAMESPACE, "\x1f".join(str(p) for p in parts))
    assert deterministic_id(*parts) == expected
    assert deterministic_id(*parts).version == 5
