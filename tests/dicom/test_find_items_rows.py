"""find_items reads plain columns: the same WorklistItems as from the ORM rows, every field."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session, sessionmaker

from mwl.domain import (
    Code,
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
    WorklistQuery,
)
from mwl.orders.apply import apply_order
from mwl.worklist.matching import build_statement, find_items, worklist_item
from tests.dicom.conftest import SAMPLE_ORDERS

# Every optional value set, two protocol codes, a requested procedure code.
DETAILED = Order(
    "NW",
    "SC",
    PatientDemographics(
        "PDET",
        "HOSP",
        "Détail^Anna",
        "19910412",
        "F",
        admission_id="ADM100",
        current_patient_location="WARD3",
        pregnancy_status="3",
        allergies="Penicillin\\Iodine",
    ),
    (
        RequestedProcedure(
            study_instance_uid="2.25.77",
            requested_procedure_id="RPDET",
            accession_number="ACCDET",
            requested_procedure_code=Code("RPC9", "99LOCAL", "MR Knee"),
            requested_procedure_priority="STAT",
            placer_order_number="PLDET",
            filler_order_number="FIDET",
            institution_name="St. Mary",
            institutional_department_name="Radiology",
            reason_for_the_requested_procedure="Pain",
            requested_procedure_comments="Note",
            confidentiality_code="R",
            patient_transport_arrangements="WHLC",
            patient_state="MRSA",
            medical_alerts="Pacemaker",
            patient_weight="72.5",
            patient_size="1.68",
            steps=(
                ScheduledStep(
                    "SDET",
                    modality="MR",
                    scheduled_station_ae_title="MR01",
                    start=dt.datetime(2026, 11, 24, 10, 15, 30),
                    scheduled_protocol_codes=(Code("P1", "99LOCAL", "A"), Code("P2", "L", "B")),
                ),
            ),
        ),
    ),
    sending_facility="HOSP",
)


def test_column_rows_give_the_same_items_as_orm_rows(
    session_factory: sessionmaker[Session],
) -> None:
    for order in (*SAMPLE_ORDERS, DETAILED):
        with session_factory.begin() as session:
            apply_order(session, order)
    everything = WorklistQuery(statuses=frozenset(SpsStatus))
    with session_factory() as session:
        dialect = session.get_bind().dialect.name
        from_orm = [
            worklist_item(*row) for row in session.execute(build_statement(everything, dialect))
        ]
        found = find_items(session, everything)
    assert len(found) == 8  # the samples' 7 steps and the detailed one
    assert found == from_orm
    (detailed,) = [item for item in found if item.patient_id == "PDET"]
    assert detailed.requested_procedure_code == Code("RPC9", "99LOCAL", "MR Knee")
    assert detailed.scheduled_protocol_codes == (Code("P1", "99LOCAL", "A"), Code("P2", "L", "B"))
    assert detailed.scheduled_procedure_step_status is SpsStatus.SCHEDULED
    assert (detailed.allergies, detailed.patient_weight) == ("Penicillin\\Iodine", "72.5")
    assert detailed.start == dt.datetime(2026, 11, 24, 10, 15, 30)
    assert detailed.step_key > 0
