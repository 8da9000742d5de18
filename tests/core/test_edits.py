"""Editing a worklist item on a real database: validation, audit trail, cancel and restore."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from mwl.config import Settings
from mwl.domain import (
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
    WorklistQuery,
)
from mwl.operations.audit import events_for_step
from mwl.orders.apply import apply_order
from mwl.orders.edits import (
    EditError,
    StepChanges,
    UnknownStepError,
    cancel_step,
    edit_step,
    get_item,
    restore_step,
)
from mwl.orders.history import audit_trail, messages_for_item, performed_steps_for_item
from mwl.store.models import (
    AuditEvent,
    Hl7Message,
    Hl7MessageLink,
    Patient,
    PerformedProcedureStep,
    ScheduledProcedureStep,
    mpps_sps,
)
from mwl.store.models import RequestedProcedure as ProcedureRow
from mwl.worklist.matching import find_items

START = dt.datetime(2026, 11, 21, 9, 30)
TODAY = dt.date(2026, 11, 21)


def order(
    accession: str,
    *,
    patient_id: str = "PAT1",
    issuer: str = "HOSP",
    name: str = "Doe^Jane",
    control: str = "NW",
    status: str = "SC",
    description: str = "CT head",
) -> Order:
    return Order(
        order_control=control,
        order_status=status,
        patient=PatientDemographics(patient_id, issuer, name, "19800214", "F"),
        procedures=(
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=accession,
                accession_number=accession,
                requested_procedure_description=description,
                placer_order_number=f"PL-{accession}",
                steps=(
                    ScheduledStep(
                        f"S-{accession}",
                        modality="CT",
                        scheduled_station_ae_title="CT01",
                        start=START,
                        scheduled_procedure_step_description=description,
                    ),
                ),
            ),
        ),
        sending_facility="HOSP",
    )


@pytest.fixture
def add(session_factory):
    """Apply an order; return the key of its step."""

    def add_order(accession: str, **kwargs) -> int:
        with session_factory.begin() as session:
            apply_order(session, order(accession, **kwargs))
        with session_factory() as session:
            return session.scalars(
                select(ScheduledProcedureStep.id)
                .join(ProcedureRow)
                .where(ProcedureRow.accession_number == accession)
            ).one()

    return add_order


def edit(session_factory, key, settings=None, reason="", **changes):
    with session_factory.begin() as session:
        return edit_step(
            session,
            key,
            StepChanges(**changes),
            "erin",
            reason,
            settings=settings or Settings(),
            today=TODAY,
        )


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_correcting_demographics_changes_the_patient_and_records_before_and_after(
    session_factory, add
):
    key = add("ACC1")
    item = edit(
        session_factory,
        key,
        reason="typo at registration",
        patient_name=" Doe^Janet ",
        patient_birth_date="19800215",
        patient_sex="f",
    )
    assert (item.patient_name, item.patient_birth_date, item.patient_sex) == (
        "Doe^Janet",
        "19800215",
        "F",
    )
    with session_factory() as session:
        assert session.scalar(select(Patient.patient_name_key)) == "DOE^JANET"
        [event] = events_for_step(session, key)
    assert event.username == "erin"
    assert event.action == "edit"
    assert event.reason == "typo at registration"
    assert {c.field: (c.before, c.after) for c in event.changes} == {
        "patient_name": ("Doe^Jane", "Doe^Janet"),
        "patient_birth_date": ("19800214", "19800215"),
    }


def test_reschedule_moves_the_step_for_the_modality(session_factory, add):
    key = add("ACC1")
    later = dt.datetime(2026, 11, 22, 14, 15, 30, 123456)
    item = edit(session_factory, key, start=later, modality="mr", scheduled_station_ae_title="MR2")
    assert item.start == later.replace(microsecond=0)
    with session_factory() as session:
        step = session.get(ScheduledProcedureStep, key)
        assert (step.start_time, step.modality, step.scheduled_station_ae_title) == (
            "141530",
            "MR",
            "MR2",
        )
        on_the_day = WorklistQuery(
            start_from=dt.datetime(2026, 11, 22), start_until=dt.datetime(2026, 11, 22, 23, 59)
        )
        assert [i.accession_number for i in find_items(session, on_the_day)] == ["ACC1"]
        [event] = events_for_step(session, key)
    assert event.action == "edit"
    assert {c.field: c.after for c in event.changes} == {
        "start": "2026-11-22 14:15:30",
        "modality": "MR",
        "scheduled_station_ae_title": "MR2",
    }


def test_a_new_start_alone_is_recorded_as_reschedule(session_factory, add):
    key = add("ACC1")
    edit(session_factory, key, start=START + dt.timedelta(hours=1), modality="CT")
    with session_factory() as session:
        [event] = events_for_step(session, key)
    assert event.action == "reschedule"
    assert [(c.before, c.after) for c in event.changes] == [
        ("2026-11-21 09:30:00", "2026-11-21 10:30:00")
    ]


def test_sending_the_stored_values_back_records_nothing(session_factory, add):
    key = add("ACC1")
    item = edit(
        session_factory,
        key,
        patient_name="Doe^Jane",
        start=START,
        modality="CT",
        scheduled_station_name="",
        requested_procedure_description="CT head",
    )
    assert item.patient_name == "Doe^Jane"
    assert count(session_factory, AuditEvent) == 0


BAD_VALUES = [
    ({"patient_name": ""}, "patient_name", "required"),
    ({"patient_name": "D" * 65}, "patient_name", "At most 64 characters"),
    ({"patient_name": "Doe\\Jane"}, "patient_name", "backslash"),
    ({"patient_name": "A^B^C^D^E^F"}, "patient_name", "five components"),
    ({"patient_name": "A=B=C=D"}, "patient_name", "three component groups"),
    ({"patient_name": "Doe^Ja\nne"}, "patient_name", "control characters"),
    ({"patient_birth_date": "19800230"}, "patient_birth_date", "calendar date"),
    ({"patient_birth_date": "1980-02-14"}, "patient_birth_date", "calendar date"),
    ({"patient_birth_date": "20261122"}, "patient_birth_date", "future"),
    ({"patient_sex": "X"}, "patient_sex", "one of M, F, O"),
    ({"modality": ""}, "modality", "required"),
    ({"modality": "C-T"}, "modality", "A-Z"),
    ({"modality": "A" * 17}, "modality", "A-Z"),
    ({"scheduled_station_ae_title": "CT\\1"}, "scheduled_station_ae_title", "backslash"),
    ({"scheduled_station_ae_title": "A" * 17}, "scheduled_station_ae_title", "16 characters"),
    ({"scheduled_station_ae_title": "CTÄ"}, "scheduled_station_ae_title", "ASCII"),
    ({"scheduled_station_name": "S" * 17}, "scheduled_station_name", "16 characters"),
    ({"scheduled_procedure_step_location": "L" * 17}, "scheduled_procedure_step_location", "16"),
    ({"requested_procedure_description": "x" * 65}, "requested_procedure_description", "64"),
    (
        {"scheduled_procedure_step_description": "a\tb"},
        "scheduled_procedure_step_description",
        "control",
    ),
    (
        {"scheduled_performing_physician_name": "A^B^C^D^E^F"},
        "scheduled_performing_physician_name",
        "five",
    ),
    ({"start": dt.datetime(1899, 12, 31, 8, 0)}, "start", "before 1900"),
]


def test_bad_values_are_refused_and_nothing_is_stored(session_factory, add):
    # One database for the whole table: each case is refused on its own.
    key = add("ACC1")
    for changes, field, words in BAD_VALUES:
        with pytest.raises(EditError) as caught:
            edit(session_factory, key, **{"patient_sex": "M", **changes})
        assert list(caught.value.errors) == [field], changes
        assert words in caught.value.errors[field], changes
    with session_factory() as session:
        assert session.scalar(select(Patient.patient_sex)) == "F"  # the valid change neither
    assert count(session_factory, AuditEvent) == 0


def test_every_bad_field_is_reported_at_once(session_factory, add):
    key = add("ACC1")
    with pytest.raises(EditError) as caught:
        edit(session_factory, key, reason="r" * 256, patient_sex="Q", modality="c/t")
    assert set(caught.value.errors) == {"reason", "patient_sex", "modality"}
    assert caught.value.problems["reason"].params == {"limit": 255, "length": 256}


def test_values_must_fit_the_response_character_set(session_factory, add):
    key = add("ACC1")
    latin1 = Settings(dicom_response_charset="ISO_IR 100")
    with pytest.raises(EditError) as caught:
        edit(session_factory, key, settings=latin1, patient_name="Иванова^Анна")
    assert "ISO_IR 100" in caught.value.errors["patient_name"]
    assert "'И'" in caught.value.errors["patient_name"]
    edit(session_factory, key, settings=latin1, patient_name="Müller^Anna")
    edit(session_factory, key, patient_name="Иванова^Анна")  # UTF-8 holds it
    with session_factory() as session:
        assert session.scalar(select(Patient.patient_name)) == "Иванова^Анна"


def test_only_changed_values_are_checked(session_factory, add):
    # The RIS sent a name the Latin-1 modalities cannot show; fixing the sex still works.
    key = add("ACC1", name="Иванова^Анна")
    latin1 = Settings(dicom_response_charset="ISO_IR 100")
    item = edit(session_factory, key, settings=latin1, patient_name="Иванова^Анна", patient_sex="O")
    assert item.patient_sex == "O"


def test_unknown_step(session_factory):
    with pytest.raises(UnknownStepError):
        edit(session_factory, 4242, patient_sex="M")
    with session_factory.begin() as session, pytest.raises(UnknownStepError):
        cancel_step(session, 4242, "erin")
    with session_factory() as session:
        assert get_item(session, 4242) is None


def test_demographics_are_shared_by_the_patients_orders_and_shown_on_each_trail(
    session_factory, add
):
    first = add("ACC1")
    second = add("ACC2")
    edit(session_factory, first, patient_name="Doe^Joan", reason="name change")
    edit(session_factory, first, start=START + dt.timedelta(hours=2))
    with session_factory() as session:
        assert get_item(session, second).patient_name == "Doe^Joan"
        trail = audit_trail(session, second)
        own = audit_trail(session, first)
    # The other order's trail shows the patient change, not its reschedule.
    assert [(e.sps_key, e.action, e.reason) for e in trail] == [(first, "edit", "name change")]
    assert [e.action for e in own] == ["edit", "reschedule"]


def test_the_ris_patient_id_cannot_be_changed(session_factory, add):
    key = add("ACC1")
    with pytest.raises(EditError) as caught:
        edit(session_factory, key, patient_id="PAT2")
    assert "comes from the RIS" in caught.value.errors["patient_id"]
    with pytest.raises(EditError) as caught:
        edit(session_factory, key, issuer_of_patient_id="OTHER")
    assert "comes from the RIS" in caught.value.errors["issuer_of_patient_id"]


def test_a_temporary_id_is_replaced_by_the_real_one(session_factory, add):
    key = add("ACC1", patient_id="TMP202611210001", issuer="", name="UNKNOWN^M^101500")
    item = edit(session_factory, key, patient_id="PAT9", patient_name="Roe^Richard")
    assert (item.patient_id, item.patient_name) == ("PAT9", "Roe^Richard")
    with session_factory() as session:
        [event] = events_for_step(session, key)
    assert {c.field: (c.before, c.after) for c in event.changes} == {
        "patient_id": ("TMP202611210001", "PAT9"),
        "patient_name": ("UNKNOWN^M^101500", "Roe^Richard"),
    }


def test_a_temporary_patient_merges_into_the_known_patient_with_the_real_id(session_factory, add):
    known = add("ACC1", patient_id="PAT1", issuer="HOSP", name="Doe^Jane")
    emergency = add("ACC2", patient_id="TMP202611210001", issuer="", name="UNKNOWN^F^101500")
    also = add("ACC3", patient_id="TMP202611210001", issuer="", name="UNKNOWN^F^101500")
    # The form sends the temporary name back unchanged: the known patient's name stands.
    item = edit(session_factory, emergency, patient_id="PAT1", patient_name="UNKNOWN^F^101500")
    assert (item.patient_id, item.issuer_of_patient_id, item.patient_name) == (
        "PAT1",
        "HOSP",
        "Doe^Jane",
    )
    with session_factory() as session:
        assert session.scalars(select(Patient.patient_id)).all() == ["PAT1"]
        assert get_item(session, also).patient_id == "PAT1"
        assert get_item(session, known).patient_name == "Doe^Jane"


def test_an_id_held_by_patients_of_two_issuers_needs_the_issuer(session_factory, add):
    add("ACC1", patient_id="PAT1", issuer="HOSP")
    add("ACC2", patient_id="PAT1", issuer="CLINIC")
    temporary = add("ACC3", patient_id="TMP1", issuer="")
    with pytest.raises(EditError) as caught:
        edit(session_factory, temporary, patient_id="PAT1")
    assert "CLINIC, HOSP" in caught.value.errors["issuer_of_patient_id"]
    item = edit(session_factory, temporary, patient_id="PAT1", issuer_of_patient_id="CLINIC")
    assert item.issuer_of_patient_id == "CLINIC"


def test_a_performed_step_keeps_its_schedule_but_its_patient_can_be_corrected(session_factory, add):
    key = add("ACC1", control="XO", status="IP")  # STARTED
    with pytest.raises(EditError) as caught:
        edit(session_factory, key, start=START + dt.timedelta(hours=1), modality="MR")
    assert set(caught.value.errors) == {"start", "modality"}
    assert "STARTED" in caught.value.errors["start"]
    assert edit(session_factory, key, patient_name="Doe^Janet").patient_name == "Doe^Janet"


def test_cancel_hides_the_step_and_restore_brings_it_back(session_factory, add):
    key = add("ACC1")
    with session_factory.begin() as session:
        item = cancel_step(session, key, "erin", "patient left")
    assert item.scheduled_procedure_step_status is SpsStatus.CANCELED
    with session_factory() as session:
        assert find_items(session, WorklistQuery()) == []
    with session_factory.begin() as session, pytest.raises(EditError) as caught:
        cancel_step(session, key, "erin")
    assert "canceled already" in caught.value.errors["scheduled_procedure_step_status"]
    with session_factory.begin() as session:
        restored = restore_step(session, key, "erin", "came back")
    assert restored.scheduled_procedure_step_status is SpsStatus.SCHEDULED
    with session_factory() as session:
        assert [i.step_key for i in find_items(session, WorklistQuery())] == [key]
        trail = [
            (e.action, e.reason, [(c.before, c.after) for c in e.changes])
            for e in events_for_step(session, key)
        ]
    assert trail == [
        ("cancel", "patient left", [("SCHEDULED", "CANCELED")]),
        ("restore", "came back", [("CANCELED", "SCHEDULED")]),
    ]


def test_restore_gives_back_the_status_before_the_cancel(session_factory, add):
    key = add("ACC1", control="HD", status="")  # HELD by the RIS
    with session_factory.begin() as session:
        cancel_step(session, key, "erin")
    with session_factory.begin() as session:
        assert restore_step(session, key, "erin").scheduled_procedure_step_status is SpsStatus.HELD


def test_a_step_the_ris_canceled_is_restored_as_scheduled(session_factory, add):
    key = add("ACC1")
    add("ACC1", control="CA", status="CA")
    with session_factory.begin() as session:
        assert restore_step(session, key, "erin").scheduled_procedure_step_status is (
            SpsStatus.SCHEDULED
        )


def test_refused_cancels_and_restores(session_factory, add):
    started = add("ACC1", control="XO", status="IP")
    with session_factory.begin() as session, pytest.raises(EditError) as caught:
        cancel_step(session, started, "erin")
    assert "performed" in str(caught.value)
    scheduled = add("ACC2")
    with session_factory.begin() as session, pytest.raises(EditError) as caught:
        restore_step(session, scheduled, "erin")
    assert "Only a canceled step" in str(caught.value)
    # Canceled after a modality reported it: MPPS names the step.
    with session_factory.begin() as session:
        mpps = PerformedProcedureStep(sop_instance_uid="1.2.3.4", status="DISCONTINUED")
        session.add(mpps)
        session.flush()
        session.execute(mpps_sps.insert().values(mpps_key=mpps.id, sps_key=scheduled))
        cancel_step(session, scheduled, "erin")
    with session_factory.begin() as session, pytest.raises(EditError) as caught:
        restore_step(session, scheduled, "erin")
    assert "MPPS" in str(caught.value)
    with session_factory() as session:
        assert session.get(ScheduledProcedureStep, scheduled).status == "CANCELED"
        assert [e.action for e in events_for_step(session, scheduled)] == ["cancel"]


def test_messages_for_item_follow_the_links_of_its_order_and_patient(session_factory, add):
    key = add("ACC1")
    other = add("ACC2")  # same patient, another order
    with session_factory.begin() as session:
        step = session.get(ScheduledProcedureStep, key)
        procedure, patient = step.procedure_key, step.procedure.patient_key
        other_procedure = session.get(ScheduledProcedureStep, other).procedure_key
        messages = {}
        for control_id, links in (
            ("ORDER", [(patient, procedure)]),
            ("ADT", [(patient, None)]),
            ("OTHER", [(patient, other_procedure)]),
            ("UNLINKED", []),
        ):
            message = Hl7Message(raw=b"MSH|", message_control_id=control_id, outcome="AA")
            session.add(message)
            session.flush()
            messages[control_id] = message.id
            for patient_key, procedure_key in links:
                session.add(
                    Hl7MessageLink(
                        message_key=message.id,
                        patient_key=patient_key,
                        procedure_key=procedure_key,
                    )
                )
    with session_factory() as session:
        found = messages_for_item(session, key)
        assert messages_for_item(session, 4242) == []
    assert [m.message_control_id for m in found] == ["ORDER", "ADT"]
    assert found[0].key == messages["ORDER"]
    assert found[0].outcome == "AA"


def test_performed_steps_for_item(session_factory, add):
    key = add("ACC1")
    add("ACC2")
    with session_factory.begin() as session:
        mpps = PerformedProcedureStep(
            sop_instance_uid="1.2.3.4.5",
            status="COMPLETED",
            performed_station_ae_title="CT01",
            modality="CT",
            start_datetime=dt.datetime(2026, 11, 21, 9, 35),
            end_datetime=dt.datetime(2026, 11, 21, 9, 50),
        )
        session.add(mpps)
        session.flush()
        session.execute(mpps_sps.insert().values(mpps_key=mpps.id, sps_key=key))
    with session_factory() as session:
        [found] = performed_steps_for_item(session, key)
        assert performed_steps_for_item(session, key + 1) == []
    assert (found.sop_instance_uid, found.status, found.performed_station_ae_title) == (
        "1.2.3.4.5",
        "COMPLETED",
        "CT01",
    )
    assert found.end == dt.datetime(2026, 11, 21, 9, 50)


def test_a_later_ris_message_overwrites_the_edit(session_factory, add):
    # Documented policy: the RIS is the master of its orders.
    key = add("ACC1")
    edit(session_factory, key, patient_name="Doe^Janet", start=START + dt.timedelta(hours=3))
    add("ACC1", control="XO", status="SC")
    with session_factory() as session:
        item = get_item(session, key)
    assert (item.patient_name, item.start) == ("Doe^Jane", START)
