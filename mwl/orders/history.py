"""What happened to one worklist item: its HL7 messages, its MPPS and its audit trail.

Read side of the item page (and of the API's item resource). Also the row type of
the DICOM listing, which the DICOM adapter fills (:mod:`mwl.dicom.listing`) and
the web page shows without importing that adapter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from mwl.operations.activity import MessageSummary, message_summary
from mwl.operations.audit import AuditRecord, events_for_step
from mwl.orders.edits import PATIENT_FIELDS
from mwl.store.models import (
    AuditEvent,
    Hl7Message,
    Hl7MessageLink,
    Patient,
    PerformedProcedureStep,
    RequestedProcedure,
    ScheduledProcedureStep,
    mpps_sps,
)


@dataclass(frozen=True)
class AttributeRow:
    """One line of the dataset a modality receives for an item, as people read it.

    Attributes
    ----------
    depth
        0 for the Identifier itself, 1 inside a sequence item, and so on.
    tag
        ``(gggg,eeee)``; ``(FFFE,E000)`` for the start of a sequence item.
    keyword, name
        The DICOM keyword and the attribute name of the data dictionary
        (``Item 1`` for an item).
    vr
        Value representation (empty for an item).
    value
        The value as text; several values joined by a backslash; a sequence shows
        its number of items.
    """

    depth: int
    tag: str
    keyword: str
    name: str
    vr: str
    value: str


@dataclass(frozen=True)
class PerformedStepSummary:
    """An MPPS that names the step: its status, who performed it, and when."""

    sop_instance_uid: str
    status: str
    performed_station_ae_title: str
    modality: str
    start: dt.datetime | None  # local time, as the modality reported it
    end: dt.datetime | None


def _keys(session: Session, sps_key: int) -> tuple[int, int] | None:
    row = session.execute(
        select(RequestedProcedure.id, RequestedProcedure.patient_key)
        .join(ScheduledProcedureStep, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .where(ScheduledProcedureStep.id == sps_key)
    ).one_or_none()
    return (row[0], row[1]) if row is not None else None


def messages_for_item(session: Session, sps_key: int) -> list[MessageSummary]:
    """The HL7 messages that created or changed the item's order or patient, oldest first.

    A message counts when its link names the step's requested procedure, or names
    the step's patient without a procedure (a patient update such as ADT^A08);
    messages about the patient's other orders do not.
    """
    keys = _keys(session, sps_key)
    if keys is None:
        return []
    procedure_key, patient_key = keys
    linked = select(Hl7MessageLink.message_key).where(
        or_(
            Hl7MessageLink.procedure_key == procedure_key,
            and_(
                Hl7MessageLink.patient_key == patient_key,
                Hl7MessageLink.procedure_key.is_(None),
            ),
        )
    )
    rows = session.scalars(
        select(Hl7Message).where(Hl7Message.id.in_(linked)).order_by(Hl7Message.id)
    )
    return [message_summary(row) for row in rows]


def performed_steps_for_item(session: Session, sps_key: int) -> list[PerformedStepSummary]:
    """The MPPS instances whose Scheduled Step Attributes Sequence names the step."""
    rows = session.scalars(
        select(PerformedProcedureStep)
        .join(mpps_sps, mpps_sps.c.mpps_key == PerformedProcedureStep.id)
        .where(mpps_sps.c.sps_key == sps_key)
        .order_by(PerformedProcedureStep.id)
    )
    return [
        PerformedStepSummary(
            sop_instance_uid=row.sop_instance_uid,
            status=row.status,
            performed_station_ae_title=row.performed_station_ae_title,
            modality=row.modality,
            start=row.start_datetime,
            end=row.end_datetime,
        )
        for row in rows
    ]


def audit_trail(session: Session, sps_key: int) -> list[AuditRecord]:
    """The item's audit trail, oldest first, with the patient changes made via other items.

    Demographics live on the patient row: a name corrected on one of the patient's
    orders changed it on this one too, so such events of the patient's other steps
    are included (their ``sps_key`` tells them apart).
    """
    own = events_for_step(session, sps_key)
    keys = _keys(session, sps_key)
    if keys is None:
        return own
    siblings = (
        select(ScheduledProcedureStep.id)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(Patient.id == keys[1], ScheduledProcedureStep.id != sps_key)
    )
    with_events = session.scalars(
        select(AuditEvent.sps_key).where(AuditEvent.sps_key.in_(siblings)).distinct()
    ).all()
    shared = [
        record
        for sibling in with_events
        if sibling is not None
        for record in events_for_step(session, sibling)
        if any(change.field in PATIENT_FIELDS for change in record.changes)
    ]
    return sorted(own + shared, key=lambda record: record.key)
