"""The day list: every scheduled procedure step of one day, whatever its status."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.domain import SpsStatus, WorklistItem
from mwl.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist import worklist_item


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
    rows = session.execute(stmt)
    return [worklist_item(step, procedure, patient) for step, procedure, patient in rows]

