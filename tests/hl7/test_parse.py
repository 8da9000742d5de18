"""Frames to domain orders: every sample, field by field; charsets, escapes, errors."""

from __future__ import annotations

import datetime as dt

import pytest

from mwl.config import Hl7StationRule, Settings
from mwl.domain import Code
from mwl.hl7.datatypes import parse_timestamp
from mwl.hl7.errors import Hl7MessageError
from mwl.hl7.grammar import read_header, unescape
from mwl.hl7.order_mapping import MappingOptions
from mwl.hl7.parse import parse_message, parse_order
from mwl.orders.patients import PatientChange

from .conftest import all_samples, drop_segment, replace_field, sample

DEFAULTS = MappingOptions.from_settings(Settings())


def parse(raw: bytes, options: MappingOptions = DEFAULTS):  # type: ignore[no-untyped-def]
    return parse_order(raw, options)


def error_of(raw: bytes, options: MappingOptions = DEFAULTS) -> Hl7MessageError:
    with pytest.raises(Hl7MessageError) as info:
        parse_order(raw, options)
    return info.value


ORDER_SAMPLES = sorted(n for n in all_samples() if not n.startswith("adt_"))
ADT_SAMPLES = sorted(n for n in all_samples() if n.startswith("adt_"))


@pytest.mark.parametrize("name", ORDER_SAMPLES)
def test_every_order_sample_parses(name: str) -> None:
    order = parse(sample(name))
    assert order.patient.patient_id
    assert order.procedures and all(p.steps for p in order.procedures)


@pytest.mark.parametrize("name", ADT_SAMPLES)
def test_every_adt_sample_parses(name: str) -> None:
    changes = parse_message(sample(name), DEFAULTS)
    assert isinstance(changes, tuple) and changes
    assert all(c.patient.patient_id for c in changes)


def test_adt_update_merge_and_change_id() -> None:
    (update,) = parse_message(sample("adt_a08_update.hl7"), DEFAULTS)  # type: ignore[misc]
    assert update.change is PatientChange.UPDATE
    assert update.patient.patient_name == "Sample-Berg^Anna^Maria^Dr."
    assert update.prior_patient_id == ""
    (merge,) = parse_message(sample("adt_a40_merge.hl7"), DEFAULTS)  # type: ignore[misc]
    assert merge.change is PatientChange.MERGE
    assert (merge.patient.patient_id, merge.prior_patient_id, merge.prior_issuer_of_patient_id) == (
        "PAT0010",
        "PAT0002",
        "HOSPITAL",
    )
    (rename,) = parse_message(sample("adt_a47_change_id.hl7"), DEFAULTS)  # type: ignore[misc]
    assert rename.change is PatientChange.CHANGE_ID
    assert (rename.patient.patient_id, rename.prior_patient_id) == ("PAT0003N", "PAT0003")


def test_adt_merge_without_mrg_is_error_100() -> None:
    error = error_of_message(drop_segment(sample("adt_a40_merge.hl7"), b"MRG"))
    assert (error.code, error.location) == (100, "MRG")
    error = error_of_message(replace_field(sample("adt_a40_merge.hl7"), b"MRG", 1, b""))
    assert (error.code, error.location) == (101, "MRG-1")


def test_adt_is_not_an_order() -> None:
    error = error_of(sample("adt_a08_update.hl7"))
    assert (error.code, error.ack_code) == (200, "AR")


def error_of_message(raw: bytes) -> Hl7MessageError:
    with pytest.raises(Hl7MessageError) as info:
        parse_message(raw, DEFAULTS)
    return info.value


def test_orm_v231_with_zds_maps_every_field() -> None:
    order = parse(sample("orm_o01_nw.hl7"))
    assert (order.order_control, order.order_status) == ("NW", "SC")
    assert (order.sending_application, order.sending_facility) == ("RIS", "HOSPITAL")
    patient = order.patient
    assert patient.patient_id == "PAT0001"
    assert patient.issuer_of_patient_id == "HOSPITAL"  # PID-3.4
    # XPN: family^given^middle^suffix(.4)^prefix(.5) -> PN family^given^middle^prefix^suffix
    assert patient.patient_name == "Sample^Anna^Maria^Dr."
    assert patient.patient_birth_date == "19800115"
    assert patient.patient_sex == "F"
    (procedure,) = order.procedures
    assert procedure.study_instance_uid == "1.2.826.0.1.3680043.10.543.20261121.1"  # ZDS-1
    assert procedure.accession_number == "ACC0001"  # OBR-18
    assert procedure.requested_procedure_id == "RP0001"  # OBR-19
    assert procedure.placer_order_number == "PLC0001"  # ORC-2
    assert procedure.filler_order_number == "FIL0001"  # ORC-3
    assert procedure.requested_procedure_code == Code("CTHEAD", "LOCAL", "CT Head without contrast")
    assert procedure.requested_procedure_description == "CT Head without contrast"
    assert procedure.requested_procedure_priority == "ROUTINE"  # ORC-7.6 R
    assert procedure.requesting_physician == "Orderer^Olga^^Dr."  # OBR-16 XCN
    assert procedure.referring_physician_name == "Referrer^Robert^^Dr."  # PV1-8
    (step,) = procedure.steps
    assert step.scheduled_procedure_step_id == "SPS0001"  # OBR-20
    assert step.modality == "CT"  # OBR-24
    assert step.start == dt.datetime(2026, 11, 21, 9, 30)  # ORC-7.4
    assert step.scheduled_performing_physician_name == "Tech^Tom"  # OBR-34 subcomponents
    # Protocol code from OBR-4.4/.5/.6 (dcm4chee's OBR_4_4 default); description = meaning.
    assert step.scheduled_protocol_codes == (Code("CTHEADR", "LOCAL", "CT Head routine"),)
    assert step.scheduled_procedure_step_description == "CT Head routine"


def test_protocol_code_from_obr_4_1_when_configured() -> None:
    options = MappingOptions.from_settings(Settings(hl7_protocol_code_component=1))
    (step,) = parse(sample("orm_o01_nw.hl7"), options).procedures[0].steps
    assert step.scheduled_protocol_codes == (Code("CTHEAD", "LOCAL", "CT Head without contrast"),)


def test_latin1_unlabelled_without_zds_and_modality_map() -> None:
    raw = sample("orm_o01_nw_no_zds.hl7")
    assert "Müller".encode("latin-1") in raw and b"8859" not in raw
    order = parse(raw)
    assert order.patient.patient_name == "Müller^Jürgen"
    (procedure,) = order.procedures
    assert procedure.study_instance_uid == ""  # derived later by apply_order
    assert procedure.referring_physician_name == "Größe^Hanna"
    assert procedure.requested_procedure_priority == "HIGH"  # OBR-27.6 A
    (step,) = procedure.steps
    assert step.modality == "MR"  # MRI mapped by the default hl7_modality_map
    assert step.start == dt.datetime(2026, 11, 21, 14, 0)  # OBR-27.4
    # No protocol code in OBR-4.4: the step shows the procedure's description.
    assert step.scheduled_protocol_codes == ()
    assert step.scheduled_procedure_step_description == "MR Knie links"


def test_modality_kept_as_sent_without_mapping() -> None:
    options = MappingOptions.from_settings(Settings(hl7_modality_map=()))
    assert parse(sample("orm_o01_nw_no_zds.hl7"), options).procedures[0].steps[0].modality == "MRI"


def test_v25_utf8_tq1_escapes() -> None:
    zurich = MappingOptions.from_settings(Settings(timezone="Europe/Zurich"))
    order = parse(sample("orm_o01_nw_v25_tq1.hl7"), zurich)
    assert order.patient.patient_name == "Åström^Zoë^^^PhD"  # XPN.6 degree -> suffix
    assert order.patient.patient_sex == "O"  # A -> O
    (procedure,) = order.procedures
    assert procedure.referring_physician_name == "O'Brien^Seán"  # \XC3A1\ in UTF-8
    # OBR-44 wins over OBR-4 for the requested procedure; \E\ and \.br\ decoded.
    assert procedure.requested_procedure_code == Code(
        "RPID3", "LOCAL", "Chest X-ray \\ follow-up\r\n2 views"
    )
    assert procedure.requested_procedure_priority == "STAT"  # TQ1-9 S
    (step,) = procedure.steps
    assert step.start == dt.datetime(2026, 11, 22, 8, 15)  # TQ1-7 +0100: 08:15 in Zurich
    utc = parse(
        sample("orm_o01_nw_v25_tq1.hl7"), MappingOptions.from_settings(Settings(timezone="UTC"))
    )
    assert utc.procedures[0].steps[0].start == dt.datetime(2026, 11, 22, 7, 15)
    assert step.scheduled_protocol_codes[0].meaning == "Thorax pa & lateral"  # \T\


def test_start_precedence_tq1_then_orc_then_obr() -> None:
    raw = sample("orm_o01_nw.hl7")
    raw = replace_field(raw, b"OBR", 27, b"^^^202611230800")
    assert parse(raw).procedures[0].steps[0].start == dt.datetime(2026, 11, 21, 9, 30)
    raw = replace_field(raw, b"ORC", 7, b"")
    assert parse(raw).procedures[0].steps[0].start == dt.datetime(2026, 11, 23, 8, 0)
    raw = replace_field(raw, b"OBR", 27, b"")
    assert parse(raw).procedures[0].steps[0].start is None  # apply_order uses "now"


@pytest.mark.parametrize(
    ("segment", "position", "value", "location"),
    [
        (b"ORC", 7, b"^^^20261341", "ORC-7.4"),
        (b"ORC", 7, b"^^^tomorrow", "ORC-7.4"),
        (b"ZDS", 1, b"1.2.abc", "ZDS-1"),
        (b"OBR", 18, b"A" * 17, "OBR-18"),
        (b"OBR", 20, b"S" * 17, "OBR-20"),
    ],
)
def test_invalid_values_are_error_102_naming_the_field(
    segment: bytes, position: int, value: bytes, location: str
) -> None:
    error = error_of(replace_field(sample("orm_o01_nw.hl7"), segment, position, value))
    assert (error.code, error.location, error.ack_code) == (102, location, "AE")


@pytest.mark.parametrize(
    ("value", "priority"),
    [
        (b"S", "STAT"),
        (b"A", "HIGH"),
        (b"P", "HIGH"),
        (b"C", "HIGH"),
        (b"R", "ROUTINE"),
        (b"T", "MEDIUM"),
        (b"X", ""),
    ],
)
def test_priority(value: bytes, priority: str) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"ORC", 7, b"^^^20261121093000^^" + value)
    assert parse(raw).procedures[0].requested_procedure_priority == priority


@pytest.mark.parametrize(
    ("value", "sex"),
    [(b"F", "F"), (b"M", "M"), (b"O", "O"), (b"A", "O"), (b"N", "O"), (b"U", ""), (b"", "")],
)
def test_sex(value: bytes, sex: str) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 8, value)
    assert parse(raw).patient.patient_sex == sex


def test_birth_date_first_eight_characters_partial_dropped() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 7, b"198001151230")
    assert parse(raw).patient.patient_birth_date == "19800115"
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 7, b"1980")
    assert parse(raw).patient.patient_birth_date == ""


def test_latin1_labelled_8859_1() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 5, "Jäger^Jörg".encode("latin-1"))
    assert read_header(raw).codec == "iso8859-1"
    assert parse(raw).patient.patient_name == "Jäger^Jörg"


def test_utf8_bytes_labelled_latin1_are_read_as_latin1() -> None:
    # Mislabelled data is the sender's problem; it must not crash the parse.
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 5, "Jäger".encode())
    assert parse(raw).patient.patient_name == "JÃ¤ger"


def test_undecodable_message_is_error_102_at_msh_18() -> None:
    raw = replace_field(sample("orm_o01_nw_v25_tq1.hl7"), b"PID", 5, b"J\xe4ger")
    error = error_of(raw)
    assert (error.code, error.location, error.ack_code) == (102, "MSH-18", "AE")


def test_unknown_charset_is_error_103() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 18, b"KLINGON")
    error = error_of(raw)
    assert (error.code, error.location) == (103, "MSH-18")


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        (b"ASCII", "ascii"),
        (b"8859/15", "iso8859-15"),
        (b"UNICODE UTF-8", "utf-8"),
        (b"UNICODE", "utf-8"),
        (b"8859/2", "iso8859-2"),
        (b"", "iso8859-1"),
    ],
)
def test_charset_labels(label: bytes, codec: str) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 18, label)
    assert read_header(raw).codec == codec


def test_unescape() -> None:
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f") == "a|b^c&d~e\\f"
    assert unescape(r"x\X41\y") == "xAy"
    assert unescape(r"line\.br\next") == "line\r\nnext"
    assert unescape(r"\H\bold\N\ normal") == "bold normal"
    assert unescape("no escapes") == "no escapes"
    assert unescape(r"open \ end") == r"open \ end"


def test_escaped_delimiters_do_not_split_fields() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"PID", 3, rb"P\S\1^^^HOSP")
    assert parse(raw).patient.patient_id == "P^1"


def test_timestamp_forms() -> None:
    assert parse_timestamp("20261121", "X") == dt.datetime(2026, 11, 21)
    assert parse_timestamp("202611210930", "X") == dt.datetime(2026, 11, 21, 9, 30)
    assert parse_timestamp("20261121093015.5-0500", "X") == dt.datetime(
        2026, 11, 21, 9, 30, 15, 500000
    )
    assert parse_timestamp("", "X") is None


@pytest.mark.parametrize(
    ("msh9", "version", "code", "location"),
    [
        (b"ADT^A01", b"2.3.1", 201, "MSH-9.2"),
        (b"OML^O21", b"2.5", 200, "MSH-9"),
        (b"ORU^R01", b"2.3.1", 200, "MSH-9"),
        (b"ORM^O02", b"2.3.1", 201, "MSH-9.2"),
        (b"OMI^O01", b"2.5.1", 201, "MSH-9.2"),
        (b"ORM^O01", b"2.6", 203, "MSH-12"),
        (b"ORM^O01", b"", 203, "MSH-12"),
    ],
)
def test_unsupported_messages_are_rejected_ar(
    msh9: bytes, version: bytes, code: int, location: str
) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 9, msh9)
    raw = replace_field(raw, b"MSH", 12, version)
    error = error_of_message(raw)
    assert (error.code, error.location, error.ack_code) == (code, location, "AR")


@pytest.mark.parametrize("version", [b"2.3", b"2.3.1", b"2.4", b"2.5", b"2.5.1"])
def test_supported_versions(version: bytes) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 12, version)
    assert parse(raw).order_control == "NW"


@pytest.mark.parametrize(
    ("mutate", "code", "location"),
    [
        (lambda raw: drop_segment(raw, b"PID"), 100, "PID"),
        (lambda raw: drop_segment(raw, b"ORC"), 100, "ORC"),
        (lambda raw: drop_segment(raw, b"OBR"), 100, "OBR"),
        (lambda raw: replace_field(raw, b"PID", 3, b"^^^HOSP"), 101, "PID-3"),
        (lambda raw: replace_field(raw, b"ORC", 1, b""), 101, "ORC-1"),
        (lambda raw: replace_field(raw, b"MSH", 10, b""), 101, "MSH-10"),
        (lambda raw: b"PID|1||X\r", 100, "MSH"),
    ],
)
def test_missing_parts_are_errors_naming_them(mutate, code: int, location: str) -> None:  # type: ignore[no-untyped-def]
    error = error_of(mutate(sample("orm_o01_nw.hl7")))
    assert (error.code, error.location) == (code, location)


def test_several_orc_obr_groups_give_several_procedures() -> None:
    raw = sample("orm_o01_nw.hl7").rstrip(b"\r")
    second = (
        b"ORC|NW|PLC0009|FIL0009||SC||^^^20261121100000^^R\r"
        b"OBR|1|PLC0009|FIL0009|CTCHEST^CT Chest^LOCAL"
        + b"|" * 14
        + b"ACC0009|RP0009|SPS0009||||CT\r"
    )
    order = parse(raw + b"\r" + second)
    assert [p.accession_number for p in order.procedures] == ["ACC0001", "ACC0009"]
    assert order.procedures[1].study_instance_uid == ""  # the ZDS belongs to the first group
    assert order.procedures[1].steps[0].start == dt.datetime(2026, 11, 21, 10, 0)


def test_mixed_order_controls_in_one_message_are_refused() -> None:
    raw = sample("orm_o01_nw.hl7") + b"ORC|CA|PLC0009||||\rOBR|1|PLC0009||X^Y^L\r"
    error = error_of(raw)
    assert (error.code, error.location) == (103, "ORC-1")


def test_omi_ipc_segments_are_steps() -> None:
    order = parse(sample("omi_o23_nw.hl7"))
    (procedure,) = order.procedures
    assert procedure.accession_number == "ACC0005"  # IPC-1
    assert procedure.requested_procedure_id == "RP0005"  # IPC-2
    assert procedure.study_instance_uid == "1.2.826.0.1.3680043.10.543.20261123.5"  # IPC-3
    assert procedure.requested_procedure_priority == "ROUTINE"  # TQ1-9
    first, second = procedure.steps
    assert (first.scheduled_procedure_step_id, second.scheduled_procedure_step_id) == (
        "SPS0005A",
        "SPS0005B",
    )  # IPC-4
    assert first.modality == "CT"  # IPC-5
    assert first.scheduled_protocol_codes == (Code("CTTHX", "LOCAL", "CT Thorax"),)  # IPC-6
    assert first.scheduled_station_name == "CTSTATION1"  # IPC-7
    assert first.scheduled_procedure_step_location == "CT ROOM 1"  # IPC-8
    assert first.scheduled_station_ae_title == "CT1"  # IPC-9
    assert first.start == dt.datetime(2026, 11, 23, 10, 0)  # TQ1-7


def test_omi_ipc_with_other_study_is_another_procedure() -> None:
    raw = sample("omi_o23_nw.hl7").replace(
        b"IPC|ACC0005|RP0005|1.2.826.0.1.3680043.10.543.20261123.5|SPS0005B",
        b"IPC|ACC0006|RP0006|1.2.826.0.1.3680043.10.543.20261123.6|SPS0006",
    )
    order = parse(raw)
    assert [p.accession_number for p in order.procedures] == ["ACC0005", "ACC0006"]
    assert [len(p.steps) for p in order.procedures] == [1, 1]


def test_station_rules_route_steps_without_station() -> None:
    rules = (
        Hl7StationRule(station_ae_title="MR1", modality="MR"),
        Hl7StationRule(station_ae_title="CTHEAD1", station_name="CT head", procedure_code="CTHEAD"),
        Hl7StationRule(station_ae_title="CTANY", modality="CT"),
    )
    options = MappingOptions.from_settings(Settings(hl7_station_rules=rules))
    step = parse(sample("orm_o01_nw.hl7"), options).procedures[0].steps[0]
    assert (step.scheduled_station_ae_title, step.scheduled_station_name) == ("CTHEAD1", "CT head")
    step = parse(sample("orm_o01_nw_no_zds.hl7"), options).procedures[0].steps[0]
    assert step.scheduled_station_ae_title == "MR1"
    # IPC-9 given: the order's station wins over the rules.
    step = parse(sample("omi_o23_nw.hl7"), options).procedures[0].steps[0]
    assert step.scheduled_station_ae_title == "CT1"


def test_station_from_orc_18_only_when_configured() -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"ORC", 18, b"CT7~CT8")
    assert parse(raw).procedures[0].steps[0].scheduled_station_ae_title == ""
    options = MappingOptions.from_settings(Settings(hl7_station_from_orc18=True))
    assert parse(raw, options).procedures[0].steps[0].scheduled_station_ae_title == "CT7"
    omi = replace_field(sample("omi_o23_nw.hl7"), b"ORC", 18, b"CT7")
    assert parse(omi, options).procedures[0].steps[0].scheduled_station_ae_title == "CT1"  # IPC-9
