"""apply_order against a real database: create, update, reconcile, cancel."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep, SpsStatus
from mwl.errors import InvalidOrderError
from mwl.models import Patient, ScheduledProcedureStep
from mwl.orders import OrderAction, apply_order


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
