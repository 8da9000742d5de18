"""Patient changes (ADT A08/A31/A40/A47): the core service and the listener end to end."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.errors import InvalidOrderError
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.orders.apply import apply_order
from mwl.orders.patients import PatientAction, PatientChange, PatientMessage, apply_patient_message
from mwl.store.models import Patient
from mwl.store.models import RequestedProcedure as ProcedureRow

from .conftest import replace_field, sample


def order_for(patient_id: str, accession: str) -> Order:
    return Order(
        "NW",
        "SC",
        PatientDemographics(patient_id, "HOSP", "Old^Name", "19700101", "M"),
        (
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id=accession,
                accession_number=accession,
                steps=(ScheduledStep(accession, modality="CT", start=dt.datetime(2026, 11, 21)),),
            ),
        ),
        sending_facility="HOSP",
    )


def patients(session_factory) -> dict[str, tuple[str, list[str]]]:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return {
            p.patient_id: (p.patient_name, sorted(r.accession_number for r in p.procedures))
            for p in session.scalars(select(Patient))
        }


def demographics(patient_id: str, name: str) -> PatientDemographics:
    return PatientDemographics(patient_id, "HOSP", name, "19700101", "M")


def test_update_known_and_unknown_patient(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        apply_order(session, order_for("P1", "A1"))
    with session_factory.begin() as session:
        update = PatientMessage(PatientChange.UPDATE, demographics("P1", "New^Name"))
        assert apply_patient_message(session, update) is PatientAction.UPDATED
        unknown = PatientMessage(PatientChange.UPDATE, demographics("P9", "X^Y"))
        assert apply_patient_message(session, unknown) is PatientAction.UNKNOWN_PATIENT
    assert patients(session_factory) == {"P1": ("New^Name", ["A1"])}
    with session_factory() as session:
        assert session.scalar(select(Patient.patient_name_key)) == "NEW^NAME"


def test_merge_moves_procedures_to_the_surviving_patient(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        apply_order(session, order_for("P1", "A1"))
        apply_order(session, order_for("P2", "A2"))
    with session_factory.begin() as session:
        merge = PatientMessage(PatientChange.MERGE, demographics("P1", "Kept^Name"), "P2", "HOSP")
        assert apply_patient_message(session, merge) is PatientAction.MERGED
    assert patients(session_factory) == {"P1": ("Kept^Name", ["A1", "A2"])}


def test_merge_into_a_new_identifier_and_change_id(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        apply_order(session, order_for("P2", "A2"))
        apply_order(session, order_for("P3", "A3"))
    with session_factory.begin() as session:
        merge = PatientMessage(
            PatientChange.MERGE, demographics("P20", "Merged^Name"), "P2", "HOSP"
        )
        assert apply_patient_message(session, merge) is PatientAction.MERGED
        rename = PatientMessage(
            PatientChange.CHANGE_ID, demographics("P30", "Renamed^Name"), "P3", "HOSP"
        )
        assert apply_patient_message(session, rename) is PatientAction.RENAMED
        again = PatientMessage(PatientChange.CHANGE_ID, demographics("P31", "X^Y"), "P3", "HOSP")
        assert apply_patient_message(session, again) is PatientAction.UNKNOWN_PATIENT
    assert patients(session_factory) == {
        "P20": ("Merged^Name", ["A2"]),
        "P30": ("Renamed^Name", ["A3"]),
    }


def test_merge_without_prior_id_is_refused(session_factory) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOrderError) as info:
        with session_factory.begin() as session:
            apply_patient_message(
                session, PatientMessage(PatientChange.MERGE, demographics("P1", "A^B"))
            )
    assert info.value.location == "MRG-1"


@pytest.mark.e2e
def test_adt_messages_over_mllp(hl7_server: Hl7Server, session_factory) -> None:  # type: ignore[no-untyped-def]
    orders = [
        sample("orm_o01_nw.hl7"),
        sample("orm_o01_nw_no_zds.hl7"),
        sample("orm_o01_nw_v25_tq1.hl7"),
    ]
    adts = [
        sample("adt_a08_update.hl7"),
        sample("adt_a40_merge.hl7"),
        sample("adt_a47_change_id.hl7"),
    ]
    unknown = replace_field(sample("adt_a08_update.hl7"), b"PID", 3, b"NOBODY^^^HOSPITAL")
    unknown = replace_field(unknown, b"MSH", 10, b"MSG00009")
    unsupported = replace_field(sample("adt_a08_update.hl7"), b"MSH", 9, b"ADT^A01^ADT_A01")
    unsupported = replace_field(unsupported, b"MSH", 10, b"MSG00010")
    acks = send_messages(*hl7_server.address, orders + adts + [unknown, unsupported])
    assert [ack_summary(a)[0] for a in acks] == ["AA"] * 7 + ["AR"]
    assert patients(session_factory) == {
        "PAT0001": ("Sample-Berg^Anna^Maria^Dr.", ["ACC0001"]),  # A08
        "PAT0010": ("Sample^Carl", ["ACC0002"]),  # A40 merged PAT0002 into it
        "PAT0003N": ("Sample^Dora", ["ACC0003"]),  # A47 renamed PAT0003
    }
    with session_factory() as session:
        assert (
            session.scalar(
                select(ProcedureRow.accession_number).where(ProcedureRow.patient_key.is_(None))
            )
            is None
        )
