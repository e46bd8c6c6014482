"""decode_accounting_request: counters, event time, record ids, named errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispbill_core.contracts.usage_collector import AcctStatus
from usage_collector.domain.accounting_record import (
    GIGAWORD,
    InvalidAttributeValue,
    MissingAttribute,
    UnsupportedStatusType,
    decode_accounting_request,
)

pytestmark = pytest.mark.unit

RECEIVED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def decode(received_at: datetime = RECEIVED, **attributes: object):
    return decode_accounting_request(
        {
            name.replace("_", "-"): [value]  # type: ignore[misc]
            for name, value in attributes.items()
            if value is not None
        },
        nas_id="nas-1",
        nas_ip="192.0.2.1",
        received_at=received_at,
    )


def interim(**overrides: object) -> dict[str, object]:
    attributes: dict[str, object] = {
        "Acct_Status_Type": "Interim-Update",
        "Acct_Session_Id": "81a00003",
        "User_Name": "alice",
        "Acct_Session_Time": 600,
        "Acct_Input_Octets": 1000,
        "Acct_Output_Octets": 2000,
        "Acct_Input_Packets": 10,
        "Acct_Output_Packets": 20,
    }
    attributes.update(overrides)
    return attributes


def test_octets_are_64_bit_with_gigawords() -> None:
    record = decode(
        **interim(
            Acct_Input_Octets=5,
            Acct_Input_Gigawords=3,
            Acct_Output_Octets=2**32 - 1,
            Acct_Output_Gigawords=1,
        )
    )
    assert record.input_octets == 3 * GIGAWORD + 5
    assert record.output_octets == 2 * GIGAWORD - 1
    assert record.input_packets == 10
    assert record.session_time == 600


def test_counters_absent_stay_none() -> None:
    record = decode(Acct_Status_Type="Start", Acct_Session_Id="s")
    assert record.input_octets is None and record.output_octets is None
    assert record.status is AcctStatus.START


def test_gigawords_without_octets_still_count() -> None:
    record = decode(**interim(Acct_Input_Octets=None, Acct_Input_Gigawords=2))
    assert record.input_octets == 2 * GIGAWORD


def test_event_time_is_event_timestamp_when_present() -> None:
    record = decode(**interim(Event_Timestamp=1_700_000_000, Acct_Delay_Time=30))
    assert record.event_time == datetime.fromtimestamp(1_700_000_000, UTC)
    assert record.delay_time == 30


def test_event_time_is_received_minus_delay_otherwise() -> None:
    record = decode(**interim(Acct_Delay_Time=30))
    assert record.event_time == RECEIVED - timedelta(seconds=30)
    assert record.received_at == RECEIVED


def test_a_retransmission_with_a_higher_delay_has_the_same_record_id() -> None:
    first = decode(**interim(Acct_Delay_Time=0))
    again = decode(RECEIVED + timedelta(seconds=5), **interim(Acct_Delay_Time=5))
    assert first.record_id == again.record_id
    # Arrival jitter of a second within the minute the session started changes nothing.
    received = RECEIVED + timedelta(seconds=20)
    jittered = decode(received + timedelta(seconds=4), **interim(Acct_Delay_Time=3))
    assert decode(received, **interim()).record_id == jittered.record_id
    with_ts = decode(**interim(Event_Timestamp=1_700_000_000))
    with_ts_again = decode(
        RECEIVED + timedelta(seconds=9), **interim(Event_Timestamp=1_700_000_000, Acct_Delay_Time=9)
    )
    assert with_ts.record_id == with_ts_again.record_id


def test_a_different_fact_has_a_different_record_id() -> None:
    base = decode(**interim()).record_id
    assert decode(**interim(Acct_Input_Octets=1001)).record_id != base
    assert decode(**interim(Acct_Session_Time=601)).record_id != base
    assert decode(**interim(Acct_Status_Type="Stop")).record_id != base
    assert decode(**interim(Acct_Session_Id="other")).record_id != base
    assert decode(**interim(Event_Timestamp=1_700_000_000)).record_id != base


def test_a_session_id_reused_after_a_nas_reboot_is_another_record() -> None:
    # No Event-Timestamp: the Starts of both sessions carry identical attributes.
    before_reboot = decode(Acct_Status_Type="Start", Acct_Session_Id="81a00001", User_Name="a")
    after_reboot = decode(
        RECEIVED + timedelta(minutes=3),
        Acct_Status_Type="Start",
        Acct_Session_Id="81a00001",
        User_Name="a",
    )
    assert before_reboot.record_id != after_reboot.record_id


def test_accounting_on_needs_no_session_id_and_two_reboots_are_two_records() -> None:
    first = decode(Acct_Status_Type="Accounting-On")
    assert first.status is AcctStatus.ACCOUNTING_ON and first.acct_session_id == ""
    later = decode(RECEIVED + timedelta(hours=1), Acct_Status_Type="Accounting-On")
    assert later.record_id != first.record_id
    assert decode(Acct_Status_Type="Accounting-Off").status is AcctStatus.ACCOUNTING_OFF


def test_status_given_as_a_number_is_understood() -> None:
    assert decode(Acct_Status_Type=2, Acct_Session_Id="s").status is AcctStatus.STOP


def test_terminate_cause_and_identity_fields() -> None:
    record = decode(
        **interim(
            Acct_Status_Type="Stop",
            Acct_Terminate_Cause="User-Request",
            Framed_IP_Address="10.0.0.9",
            Calling_Station_Id="AA:BB:CC:DD:EE:FF",
        )
    )
    assert record.terminate_cause == "User-Request"
    assert record.framed_ip_address == "10.0.0.9"
    assert record.calling_station_id == "AA:BB:CC:DD:EE:FF"
    assert record.username == "alice"
    assert record.nas_id == "nas-1" and record.nas_ip == "192.0.2.1"


def test_missing_status_type_is_a_named_error() -> None:
    with pytest.raises(MissingAttribute) as caught:
        decode(Acct_Session_Id="s")
    assert caught.value.attribute == "Acct-Status-Type"


@pytest.mark.parametrize("status", ["Start", "Stop", "Interim-Update"])
def test_missing_session_id_is_a_named_error_for_session_records(status: str) -> None:
    with pytest.raises(MissingAttribute) as caught:
        decode(Acct_Status_Type=status)
    assert caught.value.attribute == "Acct-Session-Id"
    with pytest.raises(MissingAttribute):
        decode(Acct_Status_Type=status, Acct_Session_Id="")


def test_unsupported_status_is_a_named_error() -> None:
    with pytest.raises(UnsupportedStatusType):
        decode(Acct_Status_Type="Failed", Acct_Session_Id="s")
    with pytest.raises(UnsupportedStatusType):
        decode(Acct_Status_Type=9, Acct_Session_Id="s")


def test_a_counter_that_did_not_decode_is_a_named_error() -> None:
    with pytest.raises(InvalidAttributeValue):
        decode(**interim(Acct_Input_Octets=b"\x00\x01\x02"))


# --- time-ordered record ids (ordered_deterministic_id, a UUIDv8) ------------------------------

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
u32 = st.integers(0, 2**32 - 1)
session_statuses = st.sampled_from(["Start", "Stop", "Interim-Update"])
any_status = st.sampled_from(["Start", "Stop", "Interim-Update", "Accounting-On", "Accounting-Off"])
received_times = st.datetimes(
    min_value=datetime(2024, 1, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.just(UTC),
)


def id_milliseconds(record_id: str) -> int:
    """The 48-bit time prefix of a record id."""
    return uuid.UUID(record_id).int >> 80


@PROPERTY
@given(
    earlier=st.integers(0, 2**32 - 2),
    later_by=st.integers(1, 2**32 - 1),
    first=session_statuses,
    second=session_statuses,
    first_octets=u32,
    second_octets=u32,
)
def test_a_record_of_a_later_event_timestamp_sorts_after(
    earlier: int, later_by: int, first: str, second: str, first_octets: int, second_octets: int
) -> None:
    later = min(earlier + later_by, 2**32 - 1)
    # Whatever else differs (session, status, counters), time comes first.
    a = decode(
        **interim(
            Acct_Status_Type=first,
            Event_Timestamp=earlier,
            Acct_Session_Id="zzz",
            Acct_Input_Octets=first_octets,
        )
    )
    b = decode(
        **interim(
            Acct_Status_Type=second,
            Event_Timestamp=later,
            Acct_Session_Id="aaa",
            Acct_Input_Octets=second_octets,
        )
    )
    assert a.record_id < b.record_id
    assert uuid.UUID(a.record_id) < uuid.UUID(b.record_id)


@PROPERTY
@given(timestamp=u32, status=any_status, received_at=received_times, delay=u32)
def test_the_id_starts_with_the_event_timestamp_in_milliseconds(
    timestamp: int, status: str, received_at: datetime, delay: int
) -> None:
    record = decode(
        received_at,
        **interim(Acct_Status_Type=status, Event_Timestamp=timestamp, Acct_Delay_Time=delay),
    )
    assert id_milliseconds(record.record_id) == timestamp * 1000
    assert record.record_id == str(uuid.UUID(record.record_id))  # canonical text


@PROPERTY
@given(status=any_status, received_at=received_times, timestamp=st.none() | u32)
def test_the_id_is_a_version_8_rfc_9562_uuid(
    status: str, received_at: datetime, timestamp: int | None
) -> None:
    record_id = uuid.UUID(
        decode(received_at, **interim(Acct_Status_Type=status, Event_Timestamp=timestamp)).record_id
    )
    assert record_id.variant == uuid.RFC_4122
    assert record_id.version == 8
    assert str(record_id)[14] == "8"


@PROPERTY
@given(
    status=any_status,
    received_at=received_times,
    session_time=st.none() | st.integers(0, 10**6),
    delay=st.integers(0, 3600),
    retransmitted_after=st.integers(1, 3600),
)
def test_without_event_timestamp_a_retransmission_with_a_higher_delay_keeps_its_id(
    status: str,
    received_at: datetime,
    session_time: int | None,
    delay: int,
    retransmitted_after: int,
) -> None:
    attributes = interim(Acct_Status_Type=status, Acct_Session_Time=session_time)
    original = decode(received_at, **attributes, Acct_Delay_Time=delay)
    again = decode(
        received_at + timedelta(seconds=retransmitted_after),
        **attributes,
        Acct_Delay_Time=delay + retransmitted_after,
    )
    assert again.event_time == original.event_time
    assert again.delay_time > original.delay_time
    assert again.record_id == original.record_id


@PROPERTY
@given(
    started=received_times,
    session_times=st.lists(st.integers(0, 10**7), min_size=2, max_size=6, unique=True),
    delays=st.lists(st.integers(0, 120), min_size=6, max_size=6),
)
def test_without_event_timestamp_a_session_s_later_records_sort_after(
    started: datetime, session_times: list[int], delays: list[int]
) -> None:
    """Interim-Updates of one session: the id's time is the start minute + Acct-Session-Time."""
    session_times.sort()
    records = [
        decode(
            started + timedelta(seconds=elapsed + delay),
            **interim(Acct_Session_Time=elapsed, Acct_Delay_Time=delay),
        )
        for elapsed, delay in zip(session_times, delays, strict=False)
    ]
    ids = [record.record_id for record in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    start_minute = int(started.timestamp()) // 60
    for record, elapsed in zip(records, session_times, strict=False):
        assert id_milliseconds(record.record_id) == (start_minute * 60 + elapsed) * 1000


@PROPERTY
@given(
    status=st.sampled_from(["Accounting-On", "Accounting-Off"]),
    received_at=received_times,
    delay=st.integers(0, 3600),
    later_by=st.integers(1, 10**6),
)
def test_without_event_timestamp_accounting_on_off_ids_carry_the_estimated_second(
    status: str, received_at: datetime, delay: int, later_by: int
) -> None:
    record = decode(received_at, Acct_Status_Type=status, Acct_Delay_Time=delay)
    estimated = int((received_at - timedelta(seconds=delay)).timestamp())
    assert id_milliseconds(record.record_id) == estimated * 1000
    later = decode(
        received_at + timedelta(seconds=later_by), Acct_Status_Type=status, Acct_Delay_Time=delay
    )
    assert later.record_id > record.record_id
