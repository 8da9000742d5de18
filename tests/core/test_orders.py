"""apply_order against a real database: create, update, reconcile, cancel."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from sqlalchemy import func, select, update

from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep, SpsStatus
from mwl.errors import InvalidOrderError
from mwl.orders.apply import OrderAction, apply_order
from mwl.store.models import Patient, ScheduledProcedureStep
from mwl.store.models import RequestedProcedure as ProcedureRow


def make_order(control: str = "NW", status: str = "SC", steps: tuple[str, ...] = ("S1",)) -> Order:
    return Order(
        order_control=control,
        order_status=status,
        patient=PatientDemographics("P1", "HOSP", "Müller^Hans", "19700101", "M"),
        procedures=(
            RequestedProcedure(
                study_instance_uid="",
                requested_procedure_id="RP1",
                accession_number="ACC1",
                placer_order_number="PL1",
                steps=tuple(
                    ScheduledStep(s, modality="CT", start=dt.datetime(2026, 11, 21, 9, 0))
                    for s in steps
                ),
            ),
        ),
        sending_facility="HOSP",
    )


def test_new_order_creates_then_replay_changes_nothing(session_factory):
    with session_factory.begin() as session:
        first = apply_order(session, make_order())
    assert first.actions[0][1] is OrderAction.CREATED
    assert first.steps_created == 1
    with session_factory.begin() as session:
        again = apply_order(session, make_order())
    assert again.actions[0][1] is OrderAction.UPDATED
    assert again.actions[0][0] == first.actions[0][0]  # same derived Study Instance UID
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ScheduledProcedureStep)) == 1
        assert session.scalar(select(Patient.patient_name_key)) == "MULLER^HANS"


def test_reconcile_drops_steps_the_order_no_longer_lists(session_factory):
    with session_factory.begin() as session:
        apply_order(session, make_order(steps=("S1", "S2")))
    with session_factory.begin() as session:
        outcome = apply_order(session, make_order(control="XO", steps=("S2",)))
    assert outcome.steps_removed == 1
    with session_factory() as session:
        ids = session.scalars(select(ScheduledProcedureStep.scheduled_procedure_step_id)).all()
        assert ids == ["S2"]


def test_cancel_sets_status_and_unknown_cancel_changes_nothing(session_factory):
    with session_factory.begin() as session:
        unknown = apply_order(session, make_order(control="CA", status="CA"))
    assert unknown.actions[0][1] is OrderAction.UNKNOWN_ORDER
    with session_factory.begin() as session:
        apply_order(session, make_order())
        apply_order(session, make_order(control="CA", status="CA"))
    with session_factory() as session:
        assert session.scalar(select(ScheduledProcedureStep.status)) == SpsStatus.CANCELED


def test_unmapped_order_control_is_rejected_and_stores_nothing(session_factory):
    with pytest.raises(InvalidOrderError) as info:
        with session_factory.begin() as session:
            apply_order(session, make_order(control="ZZ", status=""))
    assert info.value.location == "ORC-1"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0


def test_order_details_are_stored_and_replaced_by_an_update(session_factory):
    order = make_order()
    detailed = replace(
        order,
        procedures=(
            replace(order.procedures[0], patient_weight="72.5", medical_alerts="Pacemaker"),
        ),
        patient=replace(order.patient, admission_id="V1", allergies="Latex"),
    )
    with session_factory.begin() as session:
        apply_order(session, detailed)
    # An update without the details clears the order's (the order states them all) but
    # keeps the patient's values its message did not carry (None).
    with session_factory.begin() as session:
        apply_order(session, make_order(control="XO"))
    with session_factory() as session:
        procedure = session.scalars(select(ProcedureRow)).one()
        assert (procedure.patient_weight, procedure.medical_alerts) == ("", "")
        patient = session.scalars(select(Patient)).one()
        assert (patient.admission_id, patient.allergies) == ("V1", "Latex")


def test_missing_start_policy(session_factory):
    order = make_order()
    no_start = replace(
        order,
        procedures=(replace(order.procedures[0], steps=(ScheduledStep("S1", modality="CT"),)),),
        start_location="ORC-7.4",
    )
    with session_factory.begin() as session, pytest.raises(InvalidOrderError) as info:
        apply_order(session, no_start, missing_start="reject")
    assert info.value.location == "ORC-7.4"
    now = dt.datetime(2026, 11, 22, 8, 0)
    with session_factory.begin() as session:
        apply_order(session, no_start, now=now)  # default "now"
    with session_factory.begin() as session:
        # The step exists with a start now: "reject" accepts an update without one.
        apply_order(session, replace(no_start, order_control="XO"), missing_start="reject")
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.start_datetime)).all() == [now]


def test_replayed_order_keeps_the_status_the_modality_reported(session_factory):
    with session_factory.begin() as session:
        apply_order(session, make_order())
    with session_factory.begin() as session:
        session.execute(update(ScheduledProcedureStep).values(status=SpsStatus.STARTED.value))
    with session_factory.begin() as session:
        apply_order(session, make_order())  # the RIS sends the NW again
        apply_order(session, make_order(control="XO", status=""))  # a change, no status
    with session_factory() as session:
        assert session.scalar(select(ScheduledProcedureStep.status)) == SpsStatus.STARTED
    with session_factory.begin() as session:
        apply_order(session, make_order(control="XO", status="SC"))  # explicit reschedule
    with session_factory() as session:
        assert session.scalar(select(ScheduledProcedureStep.status)) == SpsStatus.SCHEDULED
