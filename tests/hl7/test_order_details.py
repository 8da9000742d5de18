"""Order details (issue 3/4 data gaps), the sender allow-list and the missing-start policy.

Parsing is checked field by field on ``samples/hl7/orm_o01_nw_details.hl7`` and on
variants of it; the policies over real MLLP sockets, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import select

from mwl.config import Settings, load_settings
from mwl.errors import SettingsError
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.intake import sender_accepted
from mwl.hl7.order_mapping import MappingOptions
from mwl.hl7.parse import parse_message, parse_order
from mwl.hl7.server import Hl7Server
from mwl.orders.patients import PatientChange
from mwl.store.models import Hl7Message, Patient, RequestedProcedure, ScheduledProcedureStep

from .conftest import drop_segment, replace_field, sample

DETAILS = "orm_o01_nw_details.hl7"
DEFAULTS = MappingOptions.from_settings(Settings())


def details() -> bytes:
    return sample(DETAILS)


def replace_nth(message: bytes, segment: bytes, nth: int, position: int, value: bytes) -> bytes:
    """``message`` with SEG-n of the ``nth`` (0-based) ``segment`` set to ``value``."""
    lines = message.split(b"\r")
    seen = -1
    for index, line in enumerate(lines):
        if line.startswith(segment + b"|"):
            seen += 1
            if seen == nth:
                fields = line.split(b"|")
                fields += [b""] * (position + 1 - len(fields))
                fields[position] = value
                lines[index] = b"|".join(fields)
                return b"\r".join(lines)
    raise AssertionError(f"no {segment!r} number {nth}")


# --------------------------------------------------------------------------- parsing


def test_sample_maps_every_order_detail() -> None:
    order = parse_order(details(), DEFAULTS)
    patient = order.patient
    assert patient.admission_id == "V20261123001"  # PV1-19.1 (PID-18 not needed)
    assert patient.current_patient_location == "WARD3, room 312, bed 2"  # PV1-3.1/.2/.3
    assert patient.pregnancy_status == "3"  # PV1-15 B6
    # AL1-3.2 of both AL1 segments, as two LO values.
    assert patient.allergies == "Penicillin\\Iodinated contrast media"
    (procedure,) = order.procedures
    assert procedure.institution_name == "St. Mary Hospital"  # ORC-17.2
    assert procedure.institutional_department_name == "Radiology Outpatients"  # ORC-13.9
    assert procedure.patient_state == "Infectious (MRSA)"  # OBR-12.2
    assert procedure.medical_alerts == "Pacemaker in situ"  # OBR-13
    assert procedure.patient_transport_arrangements == "WHLC"  # OBR-30
    assert procedure.reason_for_the_requested_procedure == "Headache"  # OBR-31.2
    assert procedure.confidentiality_code == "Restricted"  # ORC-28.2
    # NTE after OBR, line by line; the NTE after the OBX comments on the weight only.
    assert procedure.requested_procedure_comments == (
        "Patient is hard of hearing.\r\nSedation may be needed; escort from ward 3."
    )
    assert procedure.patient_weight == "72.5"  # OBX-3.2 BODY WEIGHT, OBX-6 kg
    assert procedure.patient_size == "1.68"  # OBX-3.2 BODY HEIGHT, OBX-6 m
    assert order.start_location == "TQ1-7"


def test_admission_id_falls_back_to_pid_18_and_the_fallback_is_logged(caplog) -> None:  # type: ignore[no-untyped-def]
    raw = replace_field(details(), b"PV1", 19, b"")
    with caplog.at_level(logging.DEBUG, logger="mwl.hl7"):
        order = parse_order(raw, DEFAULTS)
    assert order.patient.admission_id == "ACCT0020"
    fallbacks = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert "fallback: Admission ID from PID-18 (PV1-19 empty)" in fallbacks
    # Field names only: no value of the message is in a fallback line.
    for line in fallbacks:
        for value in ("ACCT0020", "Lefèvre", "PAT0020", "PLC0020", "ACC0020"):
            assert value not in line
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "fallback" in r.getMessage())


def test_institution_falls_back_to_msh_4(caplog) -> None:  # type: ignore[no-untyped-def]
    raw = replace_field(details(), b"ORC", 17, b"")
    with caplog.at_level(logging.DEBUG, logger="mwl.hl7"):
        (procedure,) = parse_order(raw, DEFAULTS).procedures
    assert procedure.institution_name == "HOSPITAL"
    assert any(
        r.getMessage() == "fallback: Institution Name from MSH-4 (ORC-17 empty)"
        for r in caplog.records
    )
    # A CE with only its identifier: the identifier.
    (procedure,) = parse_order(replace_field(details(), b"ORC", 17, b"STM"), DEFAULTS).procedures
    assert procedure.institution_name == "STM"


def test_other_fallbacks_are_logged_by_field(caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.DEBUG, logger="mwl.hl7"):
        parse_order(replace_field(sample("orm_o01_nw_no_zds.hl7"), b"ORC", 2, b""), DEFAULTS)
    lines = {r.getMessage() for r in caplog.records}
    assert "fallback: step start from OBR-27.4 (ORC-7.4 empty)" in lines
    assert "fallback: placer order number from OBR-2 (ORC-2 empty)" in lines
    assert "fallback: MSH-18 empty, message read in the default character set" in lines
    assert "fallback: Requested Procedure Code from OBR-4 (OBR-44 empty)" in lines


def test_without_pv1_the_visit_values_are_not_carried() -> None:
    order = parse_order(drop_segment(details(), b"PV1"), DEFAULTS)
    # None: the stored values stay (mwl.orders.patients.copy_demographics); PID-18 still counts.
    assert order.patient.current_patient_location is None
    assert order.patient.pregnancy_status is None
    assert order.patient.admission_id == "ACCT0020"
    no_visit = drop_segment(replace_field(details(), b"PID", 18, b""), b"PV1")
    assert parse_order(no_visit, DEFAULTS).patient.admission_id is None
    assert parse_order(drop_segment(details(), b"AL1"), DEFAULTS).patient.allergies is None


@pytest.mark.parametrize(
    ("pv1_3", "expected"),
    [
        (b"WARD3^312^2^HOSPITAL", "WARD3, room 312, bed 2"),
        (b"ER", "ER"),
        (b"^12", "room 12"),
        (b"", ""),
    ],
)
def test_current_patient_location_is_readable(pv1_3: bytes, expected: str) -> None:
    raw = replace_field(details(), b"PV1", 3, pv1_3)
    assert parse_order(raw, DEFAULTS).patient.current_patient_location == expected


@pytest.mark.parametrize(
    ("pv1_15", "expected"), [(b"B6", "3"), (b"B1~B6", "3"), (b"B1", ""), (b"", "")]
)
def test_pregnancy_status_from_pv1_15(pv1_15: bytes, expected: str) -> None:
    raw = replace_field(details(), b"PV1", 15, pv1_15)
    assert parse_order(raw, DEFAULTS).patient.pregnancy_status == expected


def test_allergy_code_without_text_and_duplicates() -> None:
    raw = replace_nth(details(), b"AL1", 0, 3, b"LATEX")
    raw = replace_nth(raw, b"AL1", 1, 3, b"LTX^LATEX")
    assert parse_order(raw, DEFAULTS).patient.allergies == "LATEX"


@pytest.mark.parametrize(
    ("obx_5", "obx_6", "expected"),
    [
        (b"72.5", b"kg", "72.5"),
        (b"072.50", b"KG", "72.5"),
        (b"72500", b"g", "72.5"),
        (b"heavy", b"kg", ""),
        (b"-3", b"kg", ""),
        (b"72.5", b"lb", ""),
        (b"72.5", b"", ""),
    ],
)
def test_patient_weight_from_obx(obx_5: bytes, obx_6: bytes, expected: str) -> None:
    raw = replace_nth(details(), b"OBX", 0, 5, obx_5)
    raw = replace_nth(raw, b"OBX", 0, 6, obx_6)
    (procedure,) = parse_order(raw, DEFAULTS).procedures
    assert procedure.patient_weight == expected
    assert procedure.patient_size == "1.68"  # the other OBX is unaffected


def test_patient_size_in_centimetres_and_observations_by_name() -> None:
    raw = replace_nth(details(), b"OBX", 1, 5, b"168")
    raw = replace_nth(raw, b"OBX", 1, 6, b"cm")
    (procedure,) = parse_order(raw, DEFAULTS).procedures
    assert procedure.patient_size == "1.68"
    # OBX-3.2 alone names it (docs/hl7-mapping.md), whatever the code.
    raw = replace_nth(details(), b"OBX", 0, 3, b"W^BODY WEIGHT^L")
    assert parse_order(raw, DEFAULTS).procedures[0].patient_weight == "72.5"
    # Another observation is not a weight.
    raw = replace_nth(details(), b"OBX", 0, 3, b"8867-4^HEART RATE^LN")
    assert parse_order(raw, DEFAULTS).procedures[0].patient_weight == ""


def test_long_and_escaped_text_is_cut_and_kept_single_valued() -> None:
    raw = replace_field(details(), b"OBR", 13, b"A" * 70)
    raw = replace_field(raw, b"OBR", 12, b"^Isolation \\E\\ contact")
    (procedure,) = parse_order(raw, DEFAULTS).procedures
    assert procedure.medical_alerts == "A" * 64  # LO
    # An escaped backslash would split an LO value in DICOM: it becomes "/".
    assert procedure.patient_state == "Isolation / contact"


def test_adt_a08_carries_visit_and_allergies() -> None:
    raw = sample("adt_a08_update.hl7")
    raw = replace_field(raw, b"PV1", 3, b"ICU^4^1")
    raw = replace_field(raw, b"PV1", 19, b"V99")
    raw = raw.rstrip(b"\r") + b"\rAL1|1|DA|^Latex"
    (update,) = parse_message(raw, DEFAULTS)  # type: ignore[misc]
    assert update.change is PatientChange.UPDATE
    assert update.patient.current_patient_location == "ICU, room 4, bed 1"
    assert update.patient.admission_id == "V99"
    assert update.patient.pregnancy_status == ""
    assert update.patient.allergies == "Latex"


# --------------------------------------------------------------------------- settings


def test_sender_patterns() -> None:
    assert sender_accepted(("RIS|HOSPITAL",), "RIS", "HOSPITAL")
    assert not sender_accepted(("RIS|HOSPITAL",), "RIS", "CLINIC")
    assert not sender_accepted(("RIS|HOSPITAL",), "ris", "HOSPITAL")  # HD is case-sensitive
    assert sender_accepted(("RIS",), "RIS", "ANY")  # no facility part: any facility
    assert sender_accepted(("*|HOSP*",), "LAB", "HOSPITAL2")
    assert sender_accepted(("PACS|X", "R?S|*", "RIS*|*"), "RIS2", "")
    assert not sender_accepted(("R.S|*",), "RIS", "")  # only * is special


def test_settings_validate_the_new_policies() -> None:
    settings = Settings(hl7_accepted_senders=("RIS|HOSPITAL",), hl7_missing_start="reject")
    assert settings.hl7_missing_start == "reject"
    with pytest.raises(SettingsError, match="hl7_missing_start"):
        Settings(hl7_missing_start="later")
    loaded = load_settings(environ={"MWL_HL7_ACCEPTED_SENDERS": '["RIS|HOSPITAL", "PACS*|*"]'})
    assert loaded.hl7_accepted_senders == ("RIS|HOSPITAL", "PACS*|*")
    with pytest.raises(SettingsError, match="HL7_ACCEPTED_SENDERS"):
        load_settings(environ={"MWL_HL7_ACCEPTED_SENDERS": '["A|B|C"]'})


# --------------------------------------------------------------------------- sockets


@pytest.mark.e2e
def test_unknown_sender_gets_ar_naming_msh_3_and_is_kept_in_the_log(
    settings: Settings,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    restricted = settings.replace(hl7_accepted_senders=("RIS|HOSPITAL", "LAB*|*"))
    stranger = replace_field(details(), b"MSH", 3, b"OTHERRIS")
    with Hl7Server(restricted, session_factory) as server:
        (refused, accepted) = send_messages(*server.address, [stranger, details()], timeout=10)
    code, control_id, text = ack_summary(refused)
    assert (code, control_id) == ("AR", "MSG00020")
    assert "OTHERRIS" in text and "MSH-3" in text and "MSH-4" in text
    # v2.5: ERR-2 names MSH-3, ERR-3 the code 103 (what dcm4che answers).
    assert "|MSH^1^3|103^Table value not found^HL70357|E" in refused.decode("utf-8")
    assert ack_summary(accepted)[0] == "AA"
    with session_factory() as session:
        log = session.scalars(select(Hl7Message).order_by(Hl7Message.id)).all()
        assert [(m.sending_application, m.outcome) for m in log] == [
            ("OTHERRIS", "AR"),
            ("RIS", "AA"),
        ]
        assert log[0].raw == stranger and log[0].ack == refused
        assert "not accepted" in log[0].error
        # Only the accepted message reached the worklist.
        assert session.scalars(select(RequestedProcedure.accession_number)).all() == ["ACC0020"]


@pytest.mark.e2e
def test_an_accepted_message_resent_after_the_sender_was_removed_is_refused(
    settings: Settings,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    with Hl7Server(settings, session_factory) as server:
        (first,) = send_messages(*server.address, [details()], timeout=10)
    assert ack_summary(first)[0] == "AA"
    only_lab = settings.replace(hl7_accepted_senders=("LAB|*",))
    with Hl7Server(only_lab, session_factory) as server:
        (again,) = send_messages(*server.address, [details()], timeout=10)
    assert again != first and ack_summary(again)[0] == "AR"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "location"),
    # v2.3.1 ERR-1 (ELD) names segment and field only: ORC-7.4 is written ORC^1^7.
    [("orm_o01_nw_details.hl7", "TQ1^1^7"), ("orm_o01_nw.hl7", "ORC^1^7")],
)
def test_missing_start_rejected_names_the_start_field(
    settings: Settings,
    session_factory,  # type: ignore[no-untyped-def]
    name: str,
    location: str,
) -> None:
    raw = sample(name)
    if name == DETAILS:
        raw = replace_field(raw, b"TQ1", 7, b"")
    else:
        raw = replace_field(raw, b"ORC", 7, b"^^^^^R")
    with Hl7Server(settings.replace(hl7_missing_start="reject"), session_factory) as server:
        (ack,) = send_messages(*server.address, [raw], timeout=10)
    code, _, text = ack_summary(ack)
    assert code == "AE"
    assert "no scheduled start" in text
    decoded = ack.decode("utf-8")
    if name == DETAILS:  # v2.5: ERR-2 location, ERR-3 code
        assert f"|{location}|101^Required field missing^HL70357|E" in decoded
    else:  # v2.3.1: ERR-1
        assert f"ERR|{location}^101&" in decoded
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep)).all() == []
        (logged,) = session.scalars(select(Hl7Message)).all()
        assert logged.outcome == "AE"


@pytest.mark.e2e
def test_missing_start_now_by_default_and_kept_on_update(
    settings: Settings,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    no_start = replace_field(details(), b"TQ1", 7, b"")
    before = dt.datetime.now().replace(microsecond=0)
    with Hl7Server(settings, session_factory) as server:
        (ack,) = send_messages(*server.address, [no_start], timeout=10)
    after = dt.datetime.now()
    assert ack_summary(ack)[0] == "AA"
    with session_factory() as session:
        (start,) = session.scalars(select(ScheduledProcedureStep.start_datetime)).all()
    assert before <= start <= after
    # With "reject", an update of a step that has a start keeps it and is accepted.
    update = replace_field(no_start, b"MSH", 10, b"MSG00021")
    update = replace_field(update, b"ORC", 1, b"XO")
    with Hl7Server(settings.replace(hl7_missing_start="reject"), session_factory) as server:
        (ack,) = send_messages(*server.address, [update], timeout=10)
    assert ack_summary(ack)[0] == "AA"
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.start_datetime)).all() == [start]


@pytest.mark.e2e
def test_details_stored_and_updated_by_adt(
    settings: Settings,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    a08 = replace_field(sample("adt_a08_update.hl7"), b"PID", 3, b"PAT0020^^^HOSPITAL^MR")
    a08 = replace_field(a08, b"PV1", 3, b"ICU^4^1")
    a08 = replace_field(a08, b"PV1", 19, b"V20261123002")
    a08_without_pv1 = replace_field(drop_segment(a08, b"PV1"), b"MSH", 10, b"MSG00009")
    with Hl7Server(settings, session_factory) as server:
        acks = send_messages(*server.address, [details(), a08, a08_without_pv1], timeout=10)
    assert [ack_summary(a)[0] for a in acks] == ["AA", "AA", "AA"]
    with session_factory() as session:
        patient = session.scalars(select(Patient)).one()
        # A08 with PV1 changed the visit; the A08 without PV1 left it alone. Allergies
        # came with the order (AL1) and no later message had AL1: kept.
        assert (patient.current_patient_location, patient.admission_id) == (
            "ICU, room 4, bed 1",
            "V20261123002",
        )
        assert patient.pregnancy_status == ""  # PV1-15 empty in the A08
        assert patient.allergies == "Penicillin\\Iodinated contrast media"
        procedure = session.scalars(select(RequestedProcedure)).one()
        # Order details stay with the order: no patient message touches them.
        assert (procedure.patient_weight, procedure.patient_state) == (
            "72.5",
            "Infectious (MRSA)",
        )


def test_the_parser_leaves_a_missing_start_to_the_policy() -> None:
    # The parser accepts a message without start; the policy is the service's
    # (a cancel or an update needs no start).
    order = parse_order(replace_field(details(), b"TQ1", 7, b""), DEFAULTS)
    assert order.procedures[0].steps[0].start is None
