"""Without sockets: outbound HL7 rendering, outbox queue rules, MPPS attribute translation."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from mwl.config import load_settings
from mwl.dicom.mpps import (
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    MppsAttributeError,
    performed_step_from_create,
    performed_step_from_set,
)
from mwl.domain import Code, MppsStatus, SpsStatus, StatusEvent
from mwl.errors import SettingsError
from mwl.hl7.outbound import OMI_O23, OutboundOptions, render
from mwl.operations.outbox import (
    DELIVERED,
    FAILED,
    NO_ACK,
    RetryPolicy,
    due_messages,
    enqueue,
    event_from_json,
    event_to_json,
    record_attempt,
)
from mwl.store.engine import make_session_factory

from .conftest import STUDY_1, STUDY_2, hl7_field, n_create_dataset, n_set_dataset, reference

NOW = dt.datetime(2026, 11, 22, 8, 30)


def _event(study: str = STUDY_1, status: MppsStatus = MppsStatus.IN_PROGRESS, **kw) -> StatusEvent:
    values = dict(
        study_instance_uid=study,
        requested_procedure_id="RP1",
        accession_number="ACC|1",
        placer_order_number="PL1",
        filler_order_number="FI1",
        scheduled_procedure_step_ids=("S1",),
        status=SpsStatus.STARTED,
        mpps_status=status,
        mpps_sop_instance_uid="1.2.3",
        occurred_at=NOW,
        patient_id="P1",
        issuer_of_patient_id="HOSP",
        patient_name="O^Brien=オ^ブライエン",
        patient_birth_date="19700101",
        patient_sex="M",
        modality="CT",
        requested_procedure_code=Code("CTHEAD", "99RIS", "CT Head"),
    )
    values.update(kw)
    return StatusEvent(**values)


def test_orm_o01_fields():
    options = OutboundOptions(
        sending_application="MWL",
        sending_facility="RAD",
        receiving_application="RIS",
        receiving_facility="HOSP",
    )
    message = render(_event(status=MppsStatus.COMPLETED), "MWL000000000007", options, now=NOW)

    assert message.endswith(b"\r")
    assert [line[:3] for line in message.decode().split("\r") if line] == [
        "MSH",
        "PID",
        "ORC",
        "OBR",
    ]
    assert [hl7_field(message, "MSH", n) for n in (3, 4, 5, 6)] == ["MWL", "RAD", "RIS", "HOSP"]
    assert hl7_field(message, "MSH", 9) == "ORM^O01^ORM_O01"
    assert hl7_field(message, "MSH", 10) == "MWL000000000007"
    assert hl7_field(message, "MSH", 12) == "2.5.1"
    assert hl7_field(message, "MSH", 18) == "UNICODE UTF-8"
    assert hl7_field(message, "ORC", 1) == "SC"
    assert hl7_field(message, "ORC", 5) == "CM"
    assert hl7_field(message, "OBR", 4) == "CTHEAD^CT Head^99RIS"
    # A delimiter in a value is escaped (HL7 v2.5.1 2.7.4), never sent raw.
    assert hl7_field(message, "OBR", 18) == "ACC\\F\\1"
    assert hl7_field(message, "OBR", 24) == "CT"
    # Only the alphabetic group of the DICOM name goes to PID-5.
    assert hl7_field(message, "PID", 5) == "O^Brien"


def test_omi_o23_has_one_ipc_per_step():
    event = _event(
        scheduled_procedure_step_ids=("S2", "S3"), study=STUDY_2, status=MppsStatus.DISCONTINUED
    )
    message = render(event, "MWL1", OutboundOptions(message_type=OMI_O23), now=NOW)

    assert hl7_field(message, "MSH", 9) == "OMI^O23^OMI_O23"
    assert hl7_field(message, "ORC", 5) == "DC"
    assert [hl7_field(message, "IPC", 4, n) for n in (0, 1)] == ["S2", "S3"]
    assert hl7_field(message, "IPC", 3) == STUDY_2


def test_event_json_round_trip():
    event = _event()
    assert event_from_json(event_to_json(event)) == event


def test_outbox_hands_out_one_message_per_order_in_order(engine):
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        first = enqueue(session, _event(), "ris", now=NOW)
        enqueue(session, _event(status=MppsStatus.COMPLETED), "ris", now=NOW)
        other = enqueue(session, _event(study=STUDY_2), "ris", now=NOW)
        session.flush()
        first_id, other_id = first.id, other.id
    later = NOW + dt.timedelta(seconds=1)
    with factory() as session:
        assert [m.id for m in due_messages(session, later)] == [first_id, other_id]
    policy = RetryPolicy(initial_seconds=10, max_seconds=40, max_rejects=0)
    with factory.begin() as session:
        state = record_attempt(session, first_id, "AE", ack=b"MSA|AE", policy=policy, now=later)
        assert state == "PENDING"
    with factory() as session:
        # The first order waits for its retry time; its second message waits behind it.
        assert [m.id for m in due_messages(session, later)] == [other_id]
        retry = [m.id for m in due_messages(session, later + dt.timedelta(seconds=10))]
        assert retry == [first_id, other_id]
    with factory.begin() as session:
        assert record_attempt(session, first_id, "AA", ack=b"MSA|AA", now=later) == DELIVERED
    with factory() as session:
        heads = due_messages(session, later)
        statuses = [m.event.mpps_status for m in heads]
        assert statuses == [MppsStatus.COMPLETED, MppsStatus.IN_PROGRESS]


def test_retry_policy():
    policy = RetryPolicy(initial_seconds=1, max_seconds=5, max_rejects=2)
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 4, 50)] == [1, 2, 4, 5, 5]


def test_only_rejects_set_a_message_aside(engine):
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        row = enqueue(session, _event(), "ris", now=NOW)
        session.flush()
        key = row.id
    policy = RetryPolicy(0.01, 0.01, max_rejects=1)
    with factory.begin() as session:
        # A RIS that is down is no reason to give up.
        assert record_attempt(session, key, NO_ACK, error="refused", policy=policy) == "PENDING"
        assert record_attempt(session, key, "AR", ack=b"MSA|AR", policy=policy) == FAILED


def test_n_create_translation():
    ds = n_create_dataset(reference(STUDY_1, "S1", "ACC1", "RP1"), reference(STUDY_2, "S2"))
    step = performed_step_from_create(ds, "1.2.3")

    assert step.status is MppsStatus.IN_PROGRESS
    assert step.start == dt.datetime(2026, 11, 22, 9, 0)
    assert step.end is None
    assert [r.scheduled_procedure_step_id for r in step.references] == ["S1", "S2"]
    assert step.references[0].accession_number == "ACC1"
    assert step.performed_station_ae_title == "CT01"


def _as_sent(keyword: str, value: str) -> DataElement:
    # As a modality may send it: pydicom's own value validation is off.
    tag = tag_for_keyword(keyword)
    return DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


@pytest.mark.parametrize(
    ("change", "status", "keyword"),
    [
        (
            lambda ds: delattr(ds, "ScheduledStepAttributesSequence"),
            MISSING_ATTRIBUTE,
            "ScheduledStepAttributesSequence",
        ),
        (
            lambda ds: ds.add(_as_sent("PerformedProcedureStepStartTime", "2561")),
            INVALID_ATTRIBUTE_VALUE,
            "PerformedProcedureStepStartDate",
        ),
        (
            lambda ds: delattr(ds.ScheduledStepAttributesSequence[0], "StudyInstanceUID"),
            MISSING_ATTRIBUTE,
            "ScheduledStepAttributesSequence",
        ),
    ],
)
def test_n_create_validation(change, status, keyword):
    ds = n_create_dataset(reference(STUDY_1, "S1"))
    change(ds)
    with pytest.raises(MppsAttributeError) as caught:
        performed_step_from_create(ds, "1.2.3")
    assert caught.value.status == status
    assert keyword in caught.value.keywords


def test_n_set_translation():
    change = performed_step_from_set(n_set_dataset("COMPLETED"), "1.2.3")
    assert change.status is MppsStatus.COMPLETED
    assert change.end == dt.datetime(2026, 11, 22, 9, 30)
    assert performed_step_from_set(Dataset(), "1.2.3").status is None


def test_mpps_and_ris_settings():
    settings = load_settings(
        environ={
            "MWL_MPPS_STEP_STATUS": '{"IN_PROGRESS": "STARTED", "COMPLETED": ""}',
            "MWL_RIS_HOST": "ris.example",
            "MWL_RIS_PORT": "2576",
            "MWL_RETENTION_STEP_DAYS": '{"CANCELED": 0.5}',
        }
    )
    assert settings.mpps_step_status == (("IN PROGRESS", "STARTED"), ("COMPLETED", ""))
    assert settings.retention_step_days == (("CANCELED", 0.5),)
    for bad in (
        {"MWL_MPPS_STEP_STATUS": '{"DONE": "COMPLETED"}'},
        {"MWL_MPPS_STEP_STATUS": '{"COMPLETED": "FINISHED"}'},
        {"MWL_RIS_HOST": "ris.example"},
        {"MWL_RIS_MESSAGE_TYPE": "ORU^R01"},
        {"MWL_RETENTION_STEP_DAYS": '{"DONE": 1}'},
        {"MWL_RIS_RETRY_INITIAL_SECONDS": "0"},
    ):
        with pytest.raises(SettingsError):
            load_settings(environ=bad)
