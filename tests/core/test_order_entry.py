"""New orders entered on the page, on a real database: identifiers, patients, policy, races."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mwl.config import Hl7StationRule, Settings, load_settings
from mwl.domain import (
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
    WorklistQuery,
)
from mwl.errors import SettingsError
from mwl.operations.audit import events_for_step
from mwl.orders.apply import apply_order
from mwl.orders.edits import EditError
from mwl.orders.entry import SENDING_APPLICATION, NewOrder, create_order
from mwl.store.models import AuditEvent, Patient
from mwl.store.models import RequestedProcedure as ProcedureRow
from mwl.worklist.matching import find_items

NOW = dt.datetime(2026, 11, 21, 10, 15, 42)


def create(session_factory, new: NewOrder, settings: Settings | None = None):
    with session_factory.begin() as session:
        return create_order(session, new, settings or Settings(), "erin", now=NOW)


def ris_order(accession: str, patient_id: str = "PAT1", issuer: str = "HOSP") -> Order:
    return Order(
        order_control="NW",
        order_status="SC",
        patient=PatientDemographics(patient_id, issuer, "Doe^Jane", "19800214", "F"),
        procedures=(
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=accession,
                accession_number=accession,
                steps=(ScheduledStep(accession, modality="CT", start=NOW),),
            ),
        ),
        sending_facility="HOSP",
    )


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_an_order_gets_accession_uid_and_ids_and_reaches_the_modality(session_factory):
    item = create(
        session_factory,
        NewOrder(
            modality="ct",
            scheduled_station_ae_title="CT01",
            requested_procedure_description="CT head trauma",
            patient_id="PAT7",
            patient_name="Roe^Richard",
            patient_birth_date="19700101",
            patient_sex="M",
            referring_physician_name="House^Gregory",
        ),
    )
    assert item.accession_number == "EM2611210001"
    assert item.requested_procedure_id == item.scheduled_procedure_step_id == "EM2611210001"
    assert item.study_instance_uid.startswith("2.25.")
    assert len(item.study_instance_uid) <= 64
    assert int(item.study_instance_uid[5:]) > 0
    assert item.start == NOW  # no start given: now
    assert item.modality == "CT"
    assert item.requested_procedure_priority == "STAT"
    assert item.scheduled_procedure_step_status is SpsStatus.SCHEDULED
    second = create(session_factory, NewOrder(modality="CT", patient_id="PAT7"))
    assert second.accession_number == "EM2611210002"
    assert second.patient_name == "Roe^Richard"  # a known patient: the stored name
    assert second.study_instance_uid != item.study_instance_uid
    with session_factory() as session:
        found = find_items(session, WorklistQuery())
        assert [i.accession_number for i in found] == ["EM2611210001", "EM2611210002"]
        assert session.scalar(select(ProcedureRow.sending_application).limit(1)) == (
            SENDING_APPLICATION
        )
        [event] = events_for_step(session, item.step_key)
    assert (event.username, event.action, event.subject) == (
        "erin",
        "create",
        item.study_instance_uid,
    )
    changes = {c.field: (c.before, c.after) for c in event.changes}
    assert changes["accession_number"] == (None, "EM2611210001")
    assert changes["patient_name"] == (None, "Roe^Richard")
    assert changes["start"] == (None, "2026-11-21 10:15:42")


def test_an_unidentified_patient_gets_a_temporary_id_and_name(session_factory):
    first = create(session_factory, NewOrder(modality="CT", unidentified=True))
    second = create(session_factory, NewOrder(modality="CT", unidentified=True, patient_sex="m"))
    assert (first.patient_id, first.patient_name) == ("TMP202611210001", "UNKNOWN^X^101542")
    assert (second.patient_id, second.patient_name, second.patient_sex) == (
        "TMP202611210002",
        "UNKNOWN^M^101542",
        "M",
    )
    with session_factory() as session:
        [event] = events_for_step(session, first.step_key)
    assert event.reason == "unidentified patient"


def test_the_unidentified_policy_is_configurable(session_factory):
    settings = Settings(
        order_accession_prefix="ER-",
        order_unidentified_id_prefix="UNK",
        order_unidentified_name="Trauma^{id}",
    )
    item = create(session_factory, NewOrder(modality="DX", unidentified=True), settings=settings)
    assert item.accession_number == "ER-2611210001"
    assert (item.patient_id, item.patient_name) == ("UNK202611210001", "Trauma^UNK202611210001")
    named = create(
        session_factory,
        NewOrder(modality="DX", unidentified=True, patient_name="Doe^John"),
        settings=settings,
    )
    assert (named.patient_id, named.patient_name) == ("UNK202611210002", "Doe^John")


def test_counters_skip_numbers_the_database_holds(session_factory):
    with session_factory.begin() as session:
        apply_order(session, ris_order("EM2611210007"))
        apply_order(session, ris_order("EM261121XY"))  # not a counter value
    item = create(session_factory, NewOrder(modality="CT", patient_id="PAT1"))
    assert item.accession_number == "EM2611210008"
    assert (item.issuer_of_patient_id, item.patient_name) == ("HOSP", "Doe^Jane")


def test_an_exhausted_counter_is_refused(session_factory):
    settings = Settings(order_accession_prefix="ABCDEF")
    with session_factory.begin() as session:
        apply_order(session, ris_order("ABCDEF2611219999"))
    with pytest.raises(EditError) as caught:
        create(session_factory, NewOrder(modality="CT", patient_id="PAT1"), settings=settings)
    assert "ABCDEF261121" in caught.value.errors["accession_number"]
    assert count(session_factory, ProcedureRow) == 1


def test_a_known_patient_with_new_demographics_is_updated_and_audited(session_factory):
    with session_factory.begin() as session:
        apply_order(session, ris_order("ACC1"))
    item = create(
        session_factory, NewOrder(modality="CT", patient_id="PAT1", patient_name="Doe^Joan")
    )
    assert (item.patient_name, item.patient_birth_date) == ("Doe^Joan", "19800214")
    with session_factory() as session:
        [event] = events_for_step(session, item.step_key)
        assert session.scalar(select(func.count()).select_from(Patient)) == 1
    changes = {c.field: (c.before, c.after) for c in event.changes}
    assert changes["patient_name"] == ("Doe^Jane", "Doe^Joan")
    assert "patient_birth_date" not in changes


def test_bad_orders_are_refused_with_every_reason_and_nothing_is_stored(session_factory):
    with pytest.raises(EditError) as caught:
        create(
            session_factory,
            NewOrder(
                modality="",
                scheduled_station_ae_title="CT\\01",
                patient_id="",
                patient_name="A^B^C^D^E^F",
                patient_birth_date="20260231",
                patient_sex="U",
                priority="URGENT",
                start=dt.datetime(1800, 1, 1),
                scheduled_station_name="S" * 17,
                reason_for_the_requested_procedure="line\nbreak",
            ),
        )
    assert set(caught.value.errors) == {
        "modality",
        "scheduled_station_ae_title",
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "priority",
        "start",
        "scheduled_station_name",
        "reason_for_the_requested_procedure",
    }
    assert "STAT, HIGH, ROUTINE, MEDIUM, LOW" in caught.value.errors["priority"]
    assert count(session_factory, ProcedureRow) == 0
    assert count(session_factory, Patient) == 0
    assert count(session_factory, AuditEvent) == 0


def test_a_patient_the_worklist_does_not_know_needs_a_name(session_factory):
    with pytest.raises(EditError) as caught:
        create(session_factory, NewOrder(modality="CT", patient_id="NEW1"))
    assert list(caught.value.errors) == ["patient_name"]
    assert count(session_factory, Patient) == 0


def test_a_patient_id_of_two_issuers_needs_the_issuer(session_factory):
    with session_factory.begin() as session:
        apply_order(session, ris_order("ACC1", issuer="HOSP"))
        apply_order(session, ris_order("ACC2", issuer="CLINIC"))
    with pytest.raises(EditError) as caught:
        create(session_factory, NewOrder(modality="CT", patient_id="PAT1"))
    assert "CLINIC, HOSP" in caught.value.errors["issuer_of_patient_id"]
    item = create(
        session_factory,
        NewOrder(modality="CT", patient_id="PAT1", issuer_of_patient_id="CLINIC"),
    )
    assert item.issuer_of_patient_id == "CLINIC"


def test_the_name_must_fit_the_response_character_set(session_factory):
    ascii_only = Settings(dicom_response_charset="ISO_IR 6")
    with pytest.raises(EditError) as caught:
        create(
            session_factory,
            NewOrder(modality="CT", patient_id="P1", patient_name="Müller^Hans"),
            settings=ascii_only,
        )
    assert "ISO_IR 6" in caught.value.errors["patient_name"]


def test_a_station_rule_routes_an_order_without_station(session_factory):
    settings = Settings(
        hl7_station_rules=(Hl7StationRule("CT_ER", modality="CT"),),
    )
    item = create(session_factory, NewOrder(modality="CT", unidentified=True), settings=settings)
    assert item.scheduled_station_ae_title == "CT_ER"
    other = create(session_factory, NewOrder(modality="MR", unidentified=True), settings=settings)
    assert other.scheduled_station_ae_title == ""


def test_concurrent_creates_get_distinct_numbers(session_factory):
    # Eight people press "Create" at once: each waits for the counter in turn.
    barrier = threading.Barrier(8)
    made: list[str] = []
    errors: list[BaseException] = []

    def enter() -> None:
        try:
            barrier.wait()
            with session_factory.begin() as session:
                item = create_order(
                    session, NewOrder(modality="CT", unidentified=True), Settings(), "erin", now=NOW
                )
            made.append(f"{item.accession_number} {item.patient_id}")
        except BaseException as exc:  # reported below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=enter) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(m.split()[0] for m in made) == [f"EM261121{n:04d}" for n in range(1, 9)]
    assert sorted(m.split()[1] for m in made) == [f"TMP20261121{n:04d}" for n in range(1, 9)]
    assert count(session_factory, ProcedureRow) == 8


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("order_accession_prefix", "EMERGE1", "at most 6"),
        ("order_accession_prefix", "E*", "at most 6"),
        ("order_unidentified_id_prefix", "", "must not be empty"),
        ("order_unidentified_id_prefix", "T\\", "at most 40"),
        ("order_unidentified_name", "UNKNOWN^{gender}", "not a name template"),
        ("order_unidentified_name", "UNKNOWN^{sex", "not a name template"),
        ("order_unidentified_name", "A^B^C^D^E^{sex}", "does not make a person name"),
        ("order_unidentified_name", "UNKNOWN\\{sex}", "does not make a person name"),
        ("order_unidentified_name", "^", "does not make a person name"),
    ],
)
def test_bad_order_entry_settings_are_refused(setting, value, words):
    with pytest.raises(SettingsError) as caught:
        Settings(**{setting: value})
    assert caught.value.setting == setting
    assert words in caught.value.reason


def test_order_entry_settings_from_file_and_environment(tmp_path: Path):
    config = tmp_path / "mwl.toml"
    config.write_text('[order]\naccession_prefix = "ER"\nunidentified_name = "X^{id}"\n')
    settings = load_settings(config, {"MWL_ORDER_UNIDENTIFIED_ID_PREFIX": "UNK-"})
    assert (
        settings.order_accession_prefix,
        settings.order_unidentified_id_prefix,
        settings.order_unidentified_name,
    ) == ("ER", "UNK-", "X^{id}")
