"""What makes a rebuild cheap without changing what it folds: the stored JSON an event keeps,
statements grouped into runs, the audit summary."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispbill_core.events import EventMetadata, RecordedEvent
from ispbill_core.projections import in_runs
from ispbill_core.projections.audit import AuditTrailProjection

pytestmark = pytest.mark.unit

META = EventMetadata(occurred_at=datetime(2026, 3, 1, tzinfo=UTC), actor="staff:ann")


def stored(data_json: str, position: int = 1, type_: str = "Thing") -> RecordedEvent:
    return RecordedEvent.stored(
        id=uuid.UUID(int=position),
        stream="thing-1",
        stream_position=0,
        global_position=position,
        type=type_,
        version=1,
        data_json=data_json,
        metadata=META,
    )


def test_a_stored_event_keeps_its_json_and_is_equal_to_the_same_event_without_it() -> None:
    text = '{"b": 1, "a": "x"}'  # as PostgreSQL's jsonb gives it back: not our encoder's form
    event = stored(text)
    assert event.data == {"b": 1, "a": "x"}
    assert event.data_json() == text
    plain = RecordedEvent(**event.model_dump())
    assert plain.data_json() == '{"b":1,"a":"x"}'
    assert plain == event and hash(plain) == hash(event)
    assert "stored_data" not in event.model_dump() and "stored_data" not in json.loads(
        event.model_dump_json()
    )
    # a copy with other data does not keep the old text
    changed = event.model_copy(update={"data": {"a": "y"}})
    assert changed.data_json() == '{"a":"y"}'
    assert event.model_copy(update={"stream": "thing-2"}).data_json() == text
    assert event != changed


def test_the_audit_summary_is_the_stored_json_unless_something_is_secret() -> None:
    audit = AuditTrailProjection(types={"Thing"})
    [(_, row)] = audit.apply(stored('{"name": "Ann"}'))
    assert row[6] == '{"name": "Ann"}'
    [(_, row)] = audit.apply(stored('{"name": "Ann", "password_hash": "x", "secret": "y"}', 2))
    assert json.loads(row[6]) == {"name": "Ann"}
    long = json.dumps({"notes": "z" * 5000})
    [(_, row)] = audit.apply(stored(long, 3))
    assert len(row[6]) == 1000 and row[6].endswith("...")


SQL = st.sampled_from(["A", "B", "C", "D"])


@given(st.lists(st.tuples(SQL, st.integers(0, 5)), max_size=40))
def test_in_runs_keeps_every_statement_and_the_order_within_each_sql(
    raw: list[tuple[str, int]],
) -> None:
    statements = [(sql, (n, i)) for i, (sql, n) in enumerate(raw)]
    for first, group_rest in ((("C", "A"), True), (("B",), False), ((), True)):
        out = in_runs(statements, first=first, group_rest=group_rest)
        assert sorted(out, key=lambda s: s[1][1]) == statements
        for sql in "ABCD":
            assert [s for s in out if s[0] == sql] == [s for s in statements if s[0] == sql]
        # the `first` SQL come first, in that order
        heads = [s[0] for s in out][: sum(1 for s in statements if s[0] in first)]
        assert heads == [sql for sql in first for s in statements if s[0] == sql]
        rest = [s for s in out if s[0] not in first]
        if group_rest:  # one run per SQL
            runs = [sql for i, (sql, _) in enumerate(rest) if i == 0 or rest[i - 1][0] != sql]
            assert len(runs) == len(set(runs))
        else:
            assert rest == [s for s in statements if s[0] not in first]


def test_customer_records_check_every_field_but_the_e_mail_form() -> None:
    from pydantic import ValidationError

    from ispbill_core.contracts.accounts import CustomerRecord

    record = CustomerRecord.model_validate(
        {"customer_id": "c-1", "name": "Ann", "email": "ann@example.com", "tax_region": "metro"}
    )
    assert (record.account_type, record.tags, record.phone) == ("home", (), "")
    with pytest.raises(ValidationError):
        CustomerRecord.model_validate({"customer_id": "c-1", "name": ["Ann"], "email": "a@b.c"})
    with pytest.raises(ValidationError):
        CustomerRecord.model_validate(
            {"customer_id": "c-1", "name": "Ann", "email": "a@b.c", "tax_region": "m", "x": 1}
        )
