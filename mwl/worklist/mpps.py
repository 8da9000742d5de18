"""Performed procedure steps: store them, follow them on the scheduled steps, queue RIS events.

The behaviour follows PS3.4 F.7.2 (MPPS SOP Class, SCP side) and IHE RAD-6/RAD-7
(Modality Procedure Step In Progress / Completed), in domain terms: the DICOM adapter
translates N-CREATE and N-SET into :class:`~mwl.domain.PerformedStep` values and maps
the errors raised here to DIMSE statuses. The service never commits; the status
change of the scheduled steps and the outbox rows for the RIS are written in the
caller's one transaction, so a status change is never lost nor reported twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mwl.domain import (
    MPPS_FINAL,
    MppsStatus,
    PerformedStep,
    ScheduledStepReference,
    SpsStatus,
    StatusEvent,
)
from mwl.errors import MwlError
from mwl.operations.outbox import enqueue
from mwl.store.models import (
    PerformedProcedureStep,
    RequestedProcedure,
    ScheduledProcedureStep,
    utcnow,
)

logger = logging.getLogger(__name__)

#: MPPS status -> status of the linked scheduled steps (dcm4chee's defaults;
#: ``Settings.mpps_step_status`` overrides). ``None``: leave the steps as they are.
DEFAULT_STEP_STATUS: Mapping[MppsStatus, SpsStatus | None] = {
    MppsStatus.IN_PROGRESS: SpsStatus.STARTED,
    MppsStatus.COMPLETED: SpsStatus.COMPLETED,
    MppsStatus.DISCONTINUED: SpsStatus.DISCONTINUED,
}


class MppsError(MwlError):
    """An MPPS request cannot be applied; ``reason`` says why in words for the modality."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DuplicateMppsError(MppsError):
    """N-CREATE for a SOP Instance UID that exists (PS3.4 F.7.2.1.3: Duplicate SOP Instance)."""


class UnknownMppsError(MppsError):
    """N-SET for a SOP Instance UID never created (PS3.7 10.1.3: No Such SOP Instance)."""


class MppsFinalError(MppsError):
    """N-SET on a COMPLETED or DISCONTINUED step (PS3.4 F.7.2.2.2: may no longer be updated)."""


class MppsIncompleteError(MppsError):
    """A final status without its end date and time (PS3.4 Table F.7.2-1, final state)."""

    def __init__(self, reason: str, keyword: str = "") -> None:
        self.keyword = keyword
        super().__init__(reason)


class InvalidMppsError(MppsError):
    """A value breaks an MPPS rule (e.g. N-CREATE not IN PROGRESS); ``keyword`` names it."""

    def __init__(self, reason: str, keyword: str = "") -> None:
        self.keyword = keyword
        super().__init__(reason)


@dataclass(frozen=True)
class MppsOutcome:
    """What an N-CREATE or N-SET did: for the response, the log and the tests."""

    sop_instance_uid: str
    status: MppsStatus
    dataset_json: str  # the stored attribute list after the change
    linked_steps: int
    steps_changed: int
    events_queued: int


def step_status_table(rows: Iterable[tuple[str, str]] = ()) -> dict[MppsStatus, SpsStatus | None]:
    """The MPPS -> step status table with a site's rows (``Settings.mpps_step_status``).

    Each row is ``(MPPS status, step status)``; an empty step status leaves the steps alone.
    """
    table: dict[MppsStatus, SpsStatus | None] = dict(DEFAULT_STEP_STATUS)
    for mpps_status, step_status in rows:
        table[MppsStatus(mpps_status)] = SpsStatus(step_status) if step_status else None
    return table


def create_performed_step(
    session: Session,
    step: PerformedStep,
    *,
    step_status: Mapping[MppsStatus, SpsStatus | None] = DEFAULT_STEP_STATUS,
    outbox_destination: str | None = None,
    now: dt.datetime | None = None,
) -> MppsOutcome:
    """Store a new performed step (N-CREATE), link it and start its scheduled steps.

    Parameters
    ----------
    session
        The unit of work; the caller commits.
    step
        As the modality created it; ``status`` must be IN PROGRESS (PS3.4 F.7.2.1.2).
    step_status
        MPPS status -> status given to the linked scheduled steps.
    outbox_destination
        Where status events go (``host:port`` of the RIS); ``None``: no RIS, none queued.
    now
        Event time (naive UTC); defaults to the current time.

    Returns
    -------
    MppsOutcome

    Raises
    ------
    InvalidMppsError
        The status is not IN PROGRESS.
    DuplicateMppsError
        A performed step with this SOP Instance UID exists.
    """
    if step.status is not MppsStatus.IN_PROGRESS:
        raise InvalidMppsError(
            "N-CREATE must have Performed Procedure Step Status IN PROGRESS",
            "PerformedProcedureStepStatus",
        )
    existing = session.scalars(
        select(PerformedProcedureStep.id).where(
            PerformedProcedureStep.sop_instance_uid == step.sop_instance_uid
        )
    ).first()
    if existing is not None:
        raise DuplicateMppsError("a performed procedure step with this SOP Instance UID exists")
    row = PerformedProcedureStep(
        sop_instance_uid=step.sop_instance_uid,
        status=step.status.value,
        performed_station_ae_title=step.performed_station_ae_title,
        modality=step.modality,
        start_datetime=step.start,
        end_datetime=step.end,
        dataset_json=step.dataset_json,
    )
    row.steps = find_scheduled_steps(session, step.references)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # Two N-CREATEs with one UID at the same time: the unique index decides.
        raise DuplicateMppsError(
            "a performed procedure step with this SOP Instance UID exists"
        ) from None
    changed, events = _apply_status(
        session, row, step.status, step_status, outbox_destination, now or utcnow()
    )
    if not row.steps:
        logger.info("MPPS N-CREATE: unscheduled (no scheduled step matches its references)")
    return MppsOutcome(
        row.sop_instance_uid, step.status, row.dataset_json, len(row.steps), changed, events
    )


def update_performed_step(
    session: Session,
    change: PerformedStep,
    *,
    step_status: Mapping[MppsStatus, SpsStatus | None] = DEFAULT_STEP_STATUS,
    outbox_destination: str | None = None,
    now: dt.datetime | None = None,
) -> MppsOutcome:
    """Apply an N-SET: merge the modified attributes, and follow a status change.

    Parameters
    ----------
    session
        The unit of work; the caller commits.
    change
        ``dataset_json`` holds the modified attributes only; ``status`` is ``None``
        when the N-SET does not set it; ``end`` when it sets the end date and time.
    step_status, outbox_destination, now
        As for :func:`create_performed_step`.

    Returns
    -------
    MppsOutcome

    Raises
    ------
    UnknownMppsError
        No performed step has this SOP Instance UID.
    MppsFinalError
        The step is COMPLETED or DISCONTINUED already (PS3.4 F.7.2.2.2).
    MppsIncompleteError
        It becomes COMPLETED or DISCONTINUED without an end date and time.
    """
    row = session.scalars(
        select(PerformedProcedureStep)
        .where(PerformedProcedureStep.sop_instance_uid == change.sop_instance_uid)
        # Two N-SETs on one step (two associations): the second waits, then sees the
        # first one's status (PostgreSQL; SQLite writers are serialised already).
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownMppsError("no performed procedure step has this SOP Instance UID")
    current = MppsStatus(row.status)
    if current in MPPS_FINAL:
        raise MppsFinalError(f"the performed procedure step is {current.value} already")
    stored = json.loads(row.dataset_json or "{}")
    # N-SET replaces whole attributes (a sequence as a whole): PS3.7 10.1.3.
    stored.update(json.loads(change.dataset_json or "{}"))
    row.dataset_json = json.dumps(stored, separators=(",", ":"))
    if change.end is not None:
        row.end_datetime = change.end
    new_status = change.status or current
    if new_status in MPPS_FINAL and row.end_datetime is None:
        raise MppsIncompleteError(
            f"{new_status.value} needs PerformedProcedureStepEndDate and EndTime",
            "PerformedProcedureStepEndDate",
        )
    row.status = new_status.value
    changed = events = 0
    if new_status is not current:
        changed, events = _apply_status(
            session, row, new_status, step_status, outbox_destination, now or utcnow()
        )
    session.flush()
    return MppsOutcome(
        row.sop_instance_uid, new_status, row.dataset_json, len(row.steps), changed, events
    )


def find_scheduled_steps(
    session: Session, references: Iterable[ScheduledStepReference]
) -> list[ScheduledProcedureStep]:
    """The scheduled steps an MPPS performed, from its Scheduled Step Attributes Sequence.

    Each item is tried with these keys in turn, the first that finds steps wins
    (IHE RAD-6: the modality copies them from the worklist item):

    1. Study Instance UID + SPS ID;
    2. Accession Number + SPS ID;
    3. Requested Procedure ID + SPS ID;
    4. Study Instance UID: every step of that requested procedure;
    5. Accession Number + Requested Procedure ID: every step of those procedures;
    6. SPS ID alone, when exactly one step has it (dcm4chee matches on SPS ID).

    An item that finds nothing (IHE's unscheduled case sends a new Study Instance UID
    and empty keys) adds no step; several items may name several steps.
    """
    found: dict[int, ScheduledProcedureStep] = {}
    for ref in references:
        for step in _match(session, ref):
            found.setdefault(step.id, step)
    return list(found.values())


def _match(session: Session, ref: ScheduledStepReference) -> list[ScheduledProcedureStep]:
    sps = ScheduledProcedureStep.scheduled_procedure_step_id
    rp = RequestedProcedure
    base = (
        select(ScheduledProcedureStep).join(RequestedProcedure).order_by(ScheduledProcedureStep.id)
    )
    strategies = [
        (
            ref.study_instance_uid and ref.scheduled_procedure_step_id,
            (
                rp.study_instance_uid == ref.study_instance_uid,
                sps == ref.scheduled_procedure_step_id,
            ),
        ),
        (
            ref.accession_number and ref.scheduled_procedure_step_id,
            (rp.accession_number == ref.accession_number, sps == ref.scheduled_procedure_step_id),
        ),
        (
            ref.requested_procedure_id and ref.scheduled_procedure_step_id,
            (
                rp.requested_procedure_id == ref.requested_procedure_id,
                sps == ref.scheduled_procedure_step_id,
            ),
        ),
        (ref.study_instance_uid, (rp.study_instance_uid == ref.study_instance_uid,)),
        (
            ref.accession_number and ref.requested_procedure_id,
            (
                rp.accession_number == ref.accession_number,
                rp.requested_procedure_id == ref.requested_procedure_id,
            ),
        ),
    ]
    for usable, conditions in strategies:
        if usable:
            steps = list(session.scalars(base.where(*conditions)))
            if steps:
                return steps
    if ref.scheduled_procedure_step_id:
        steps = list(session.scalars(base.where(sps == ref.scheduled_procedure_step_id).limit(2)))
        if len(steps) == 1:
            return steps
        if steps:
            logger.warning("MPPS reference by SPS ID alone is ambiguous; not linked")
    return []


def status_event(
    procedure: RequestedProcedure,
    steps: Sequence[ScheduledProcedureStep],
    mpps_status: MppsStatus,
    mpps_sop_instance_uid: str,
    now: dt.datetime,
    modality: str,
) -> StatusEvent:
    """The RIS event for ``steps`` of one order now having their status after ``mpps_status``.

    The MPPS path and a manual change (:mod:`mwl.orders.status`) both build it here, so
    the RIS gets the same message either way.
    """
    patient = procedure.patient
    return StatusEvent(
        study_instance_uid=procedure.study_instance_uid,
        requested_procedure_id=procedure.requested_procedure_id,
        accession_number=procedure.accession_number,
        placer_order_number=procedure.placer_order_number,
        filler_order_number=procedure.filler_order_number,
        scheduled_procedure_step_ids=tuple(s.scheduled_procedure_step_id for s in steps),
        status=SpsStatus(steps[0].status),
        mpps_status=mpps_status,
        mpps_sop_instance_uid=mpps_sop_instance_uid,
        occurred_at=now,
        patient_id=patient.patient_id,
        issuer_of_patient_id=patient.issuer_of_patient_id,
        patient_name=patient.patient_name,
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        modality=modality,
        requested_procedure_description=procedure.requested_procedure_description,
        requested_procedure_code=procedure.requested_procedure_code,
    )


def _apply_status(
    session: Session,
    row: PerformedProcedureStep,
    status: MppsStatus,
    step_status: Mapping[MppsStatus, SpsStatus | None],
    destination: str | None,
    now: dt.datetime,
) -> tuple[int, int]:
    """Give the linked steps their new status and queue one RIS event per order."""
    target = step_status.get(status)
    changed = 0
    by_order: dict[int, list[ScheduledProcedureStep]] = {}
    for step in row.steps:
        if target is not None and step.status != target.value:
            step.status = target.value
            changed += 1
        by_order.setdefault(step.procedure_key, []).append(step)
    events = 0
    if destination is None:
        return changed, events
    for steps in by_order.values():
        modality = row.modality or steps[0].modality
        event = status_event(steps[0].procedure, steps, status, row.sop_instance_uid, now, modality)
        enqueue(session, event, destination, now=now)
        events += 1
    return changed, events
