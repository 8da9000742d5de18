"""The day list: every scheduled procedure step of one day, whatever its status."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.domain import Code, SpsStatus, WorklistItem
from mwl.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.orders import parse_codes


def items_for_day(
    session: Session,
    day: dt.date,
    *,
    statuses: frozenset[SpsStatus] | None = None,
) -> list[WorklistItem]:
    """Return the steps scheduled on ``day`` (local time), ordered by start.

    Unlike a modality's worklist query, canceled, held and started steps are
    included by default: staff need to see them with their status.

    Parameters
    ----------
    session
        A read-only unit of work.
    day
        The calendar day, in the department's local time like the stored starts.
    statuses
        Only steps with one of these statuses; None for all.

    Returns
    -------
    list[WorklistItem]
        Detached items ordered by start, then accession number and SPS ID.
    """
    start = dt.datetime.combine(day, dt.time.min)
    end = start + dt.timedelta(days=1)
    stmt = (
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        # A half-open range keeps the index on start_datetime usable.
        .where(ScheduledProcedureStep.start_datetime >= start)
        .where(ScheduledProcedureStep.start_datetime < end)
        .order_by(
            ScheduledProcedureStep.start_datetime,
            RequestedProcedure.accession_number,
            ScheduledProcedureStep.scheduled_procedure_step_id,
            ScheduledProcedureStep.id,
        )
    )
    if statuses is not None:
        stmt = stmt.where(ScheduledProcedureStep.status.in_(sorted(s.value for s in statuses)))
    return [_item(step, procedure, patient) for step, procedure, patient in session.execute(stmt)]


def _item(
    step: ScheduledProcedureStep, procedure: RequestedProcedure, patient: Patient
) -> WorklistItem:
    code = None
    if procedure.requested_procedure_code_value:
        code = Code(
            procedure.requested_procedure_code_value,
            procedure.requested_procedure_code_scheme,
            procedure.requested_procedure_code_meaning,
        )
    return WorklistItem(
        patient_name=patient.patient_name,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        study_instance_uid=procedure.study_instance_uid,
        requested_procedure_id=procedure.requested_procedure_id,
        accession_number=procedure.accession_number,
        requested_procedure_description=procedure.requested_procedure_description,
        requested_procedure_code=code,
        requested_procedure_priority=procedure.requested_procedure_priority,
        requesting_physician=procedure.requesting_physician,
        referring_physician_name=procedure.referring_physician_name,
        placer_order_number=procedure.placer_order_number,
        filler_order_number=procedure.filler_order_number,
        scheduled_procedure_step_id=step.scheduled_procedure_step_id,
        modality=step.modality,
        scheduled_station_ae_title=step.scheduled_station_ae_title,
        scheduled_station_name=step.scheduled_station_name,
        scheduled_procedure_step_location=step.scheduled_procedure_step_location,
        start=step.start_datetime,
        scheduled_performing_physician_name=step.scheduled_performing_physician_name,
        scheduled_procedure_step_description=step.scheduled_procedure_step_description,
        scheduled_protocol_codes=parse_codes(step.scheduled_protocol_codes),
        scheduled_procedure_step_status=SpsStatus(step.status),
        step_key=step.id,
    )
