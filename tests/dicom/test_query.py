"""Identifier -> WorklistQuery translation (pure, no sockets, no database)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from mwl.dicom import keys as keytable
from mwl.dicom.query import (
    NOT_ENUMERATED,
    ON_REQUEST,
    IgnoredKey,
    parse_identifier,
    query_from_identifier,
)
from mwl.domain import KeyMatch, MatchKind, SpsStatus
from mwl.errors import InvalidQueryError
from mwl.worklist.matching import MATCHABLE_ATTRIBUTES, START_TIME, STATUS


def put(ds: Dataset, keyword: str, value: str) -> None:
    """Set a value as a modality may send it: pydicom's own validation is off."""
    tag = tag_for_keyword(keyword)
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))


def sps_query(**sps_keys: str) -> Dataset:
    ds = Dataset()
    item = Dataset()
    for keyword, value in sps_keys.items():
        put(item, keyword, value)
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def top_query(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        put(ds, keyword, value)
    return ds


def test_every_matchable_key_maps_to_a_matchable_attribute():
    for spec in keytable.KEYS:
        if spec.matching and spec.attribute not in (keytable.START, None):
            assert spec.attribute in MATCHABLE_ATTRIBUTES, spec.keyword


@pytest.mark.parametrize("value", ["", "*"])
def test_empty_and_lone_star_are_universal(value):
    query = query_from_identifier(top_query(PatientName=value, PatientID=value))
    assert query.keys == ()


def test_single_value_and_wildcard():
    query = query_from_identifier(top_query(PatientID="P1", PatientName="Mül*"))
    assert set(query.keys) == {
        KeyMatch("patient_id", MatchKind.SINGLE, ("P1",)),
        KeyMatch("patient_name", MatchKind.WILDCARD, ("Mül*",)),
    }


def test_question_mark_is_a_wildcard():
    (key,) = query_from_identifier(top_query(AccessionNumber="AC?1")).keys
    assert key.kind is MatchKind.WILDCARD


def test_station_ae_title_is_single_value_only():
    (key,) = query_from_identifier(sps_query(ScheduledStationAETitle="CT*")).keys
    assert key == KeyMatch("scheduled_station_ae_title", MatchKind.SINGLE, ("CT*",))


def test_uid_list():
    (key,) = query_from_identifier(top_query(StudyInstanceUID="1.2.3\\1.2.4")).keys
    assert key == KeyMatch("study_instance_uid", MatchKind.UID_LIST, ("1.2.3", "1.2.4"))


def test_multiple_values_where_allowed_and_refused_elsewhere():
    (key,) = query_from_identifier(sps_query(Modality="CT\\MR")).keys
    assert key == KeyMatch("modality", MatchKind.UID_LIST, ("CT", "MR"))
    with pytest.raises(InvalidQueryError) as info:
        query_from_identifier(top_query(PatientName="A^B\\C^D"))
    assert info.value.offending_keyword == "PatientName"


def test_sps_date_alone_covers_whole_days():
    query = query_from_identifier(sps_query(ScheduledProcedureStepStartDate="20261121"))
    assert query.start_from == dt.datetime(2026, 11, 21, 0, 0)
    assert query.start_until == dt.datetime(2026, 11, 21, 23, 59, 59, 999999)
    assert query.keys == ()


def test_sps_date_and_time_are_combined():
    query = query_from_identifier(
        sps_query(
            ScheduledProcedureStepStartDate="20261121-20261123",
            ScheduledProcedureStepStartTime="1000-1800",
        )
    )
    assert query.start_from == dt.datetime(2026, 11, 21, 10, 0)
    assert query.start_until == dt.datetime(2026, 11, 23, 18, 0, 59, 999999)


@pytest.mark.parametrize(
    ("date", "start_from", "start_until"),
    [
        ("20261121-", dt.datetime(2026, 11, 21), None),
        ("-20261121", None, dt.datetime(2026, 11, 21, 23, 59, 59, 999999)),
        ("2026.11.21", dt.datetime(2026, 11, 21), dt.datetime(2026, 11, 21, 23, 59, 59, 999999)),
    ],
)
def test_open_date_ranges(date, start_from, start_until):
    query = query_from_identifier(sps_query(ScheduledProcedureStepStartDate=date))
    assert (query.start_from, query.start_until) == (start_from, start_until)


def test_time_without_date_matches_the_time_column():
    (key,) = query_from_identifier(sps_query(ScheduledProcedureStepStartTime="08-0930")).keys
    assert key == KeyMatch(START_TIME, MatchKind.RANGE, low="080000", high="093059")


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ScheduledProcedureStepStartDate", "2026-13-45"),
        ("ScheduledProcedureStepStartDate", "abc"),
        ("ScheduledProcedureStepStartDate", "20261321"),
        ("ScheduledProcedureStepStartDate", "2026112"),
        ("ScheduledProcedureStepStartDate", "2026*"),
        ("ScheduledProcedureStepStartTime", "2500"),
        ("ScheduledProcedureStepStartTime", "10:6"),
    ],
)
def test_malformed_dates_and_times_name_the_key(keyword, value):
    with pytest.raises(InvalidQueryError) as info:
        query_from_identifier(sps_query(**{keyword: value}))
    assert info.value.offending_keyword == keyword
    assert keyword in str(info.value)


def test_birth_date_single_and_range():
    (single,) = query_from_identifier(top_query(PatientBirthDate="19700101")).keys
    assert single == KeyMatch(
        "patient_birth_date", MatchKind.SINGLE, ("19700101",), low="19700101", high="19700101"
    )
    (span,) = query_from_identifier(top_query(PatientBirthDate="19600101-")).keys
    assert (span.kind, span.low, span.high) == (MatchKind.RANGE, "19600101", None)
    with pytest.raises(InvalidQueryError):
        query_from_identifier(top_query(PatientBirthDate="abc"))


def test_statuses():
    query = query_from_identifier(sps_query(ScheduledProcedureStepStatus="STARTED\\ARRIVED"))
    assert query.statuses == {SpsStatus.STARTED, SpsStatus.ARRIVED}
    # HELD is the broker's own: no modality can ask for it; an unknown term finds nothing.
    held = query_from_identifier(sps_query(ScheduledProcedureStepStatus="HELD"))
    assert held.statuses == frozenset()
    assert held.keys == (KeyMatch(STATUS, MatchKind.SINGLE, ("HELD",)),)


def test_query_retrieve_level_is_neither_required_nor_used():
    ds = top_query(PatientID="P1")
    without = query_from_identifier(ds)
    ds.QueryRetrieveLevel = "PATIENT"
    assert query_from_identifier(ds) == without


def test_unsupported_matching_keys_are_reported_not_matched():
    parsed = parse_identifier(
        top_query(
            SpecialNeeds="wheelchair",
            ConfidentialityConstraintOnPatientDataDescription="VIP",
            PatientID="",
        )
    )
    assert parsed.query.keys == ()
    assert set(parsed.unsupported_keys) == {
        "SpecialNeeds",
        "ConfidentialityConstraintOnPatientDataDescription",
    }


def test_sps_sequence_with_two_items_is_refused():
    ds = sps_query(Modality="CT")
    ds.ScheduledProcedureStepSequence.append(Dataset())
    with pytest.raises(InvalidQueryError) as info:
        query_from_identifier(ds)
    assert info.value.offending_keyword == "ScheduledProcedureStepSequence"


def test_query_character_set_is_used_to_decode():
    # Latin-1 bytes for "Müller": the decoded value is matched, not the bytes.
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller*"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    assert "Müller".encode("latin-1") in buffer.getvalue()
    decoded = dcmread(DicomBytesIO(buffer.getvalue()), force=True)
    (key,) = query_from_identifier(decoded).keys
    assert key.values == ("Müller*",)


def test_limit_is_passed_through():
    assert query_from_identifier(Dataset(), limit=5).limit == 5


def test_iso_2022_query_is_decoded_before_matching():
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    assert "山田".encode() not in buffer.getvalue()  # escape sequences, not UTF-8
    decoded = dcmread(DicomBytesIO(buffer.getvalue()), force=True)
    (key,) = query_from_identifier(decoded).keys
    assert key == KeyMatch("patient_name", MatchKind.SINGLE, ("Yamada^Tarou=山田^太郎",))


def test_pregnancy_status_is_matched_only_on_request():
    # dcmjs-dimse always sends Pregnancy Status 0; others send the template's 4.
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PregnancyStatus = 3
    parsed = parse_identifier(ds)
    assert [key.attribute for key in parsed.query.keys] == ["patient_id"]
    assert parsed.ignored == (IgnoredKey("PregnancyStatus", ON_REQUEST, ("3",)),)
    asked = parse_identifier(ds, match_keys=frozenset({"PregnancyStatus"}))
    assert "pregnancy_status" in {key.attribute for key in asked.query.keys}
    assert asked.ignored == ()


def test_a_value_outside_the_enumerated_values_is_ignored_and_reported():
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PregnancyStatus = 0
    parsed = parse_identifier(ds, match_keys=frozenset({"PregnancyStatus"}))
    assert [key.attribute for key in parsed.query.keys] == ["patient_id"]
    (ignored,) = parsed.ignored
    assert (ignored.keyword, ignored.reason, ignored.values) == (
        "PregnancyStatus",
        NOT_ENUMERATED,
        ("0",),
    )
    assert "PregnancyStatus '0' ignored: not one of its enumerated values (1, 2, 3, 4)" in (
        parsed.warning()
    )
    # Patient's Sex: M, F, O; an outside value is dropped from a list, the rest matched.
    sex = parse_identifier(top_query(PatientSex="X"))
    assert sex.query.keys == ()
    assert sex.unsupported_keys == ("PatientSex",)
    some = parse_identifier(top_query(PatientSex="F\\X"))
    assert some.query.keys == (KeyMatch("patient_sex", MatchKind.SINGLE, ("F",)),)
    assert some.unsupported_keys == ("PatientSex",)
    assert parse_identifier(top_query(PatientSex="F")).ignored == ()
    assert parse_identifier(top_query(PatientSex="?")).ignored == ()  # wildcard: matched
