"""Apply an order to the worklist: create, update, reconcile or end its scheduled steps.

The service never commits: the caller's unit of work does, so the HL7 adapter can
acknowledge only after the commit.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.orm import Session

from mwl.domain import (
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
)
from mwl.errors import InvalidOrderError
from mwl.orders.patients import copy_demographics
from mwl.store.engine import Base
from mwl.store.models import Patient, ScheduledProcedureStep
from mwl.store.models import RequestedProcedure as RequestedProcedureRow
from mwl.worklist.fields import Kind, order_fields

logger = logging.getLogger(__name__)

# ORC-1 x ORC-5 -> step status. dcm4chee-arc-light's defaults (NW_SC, NW_IP, XO_SC,
# XO_CM, SC_CM, CA_CA, DC_CA) plus the pairs RIS send in practice with an empty
# ORC-5, and hold/release. A pair missing here is rejected (AE naming ORC-1).
DEFAULT_STATUS_TABLE: Mapping[tuple[str, str], SpsStatus] = {
    ("NW", ""): SpsStatus.SCHEDULED,
    ("NW", "SC"): SpsStatus.SCHEDULED,
    ("NW", "IP"): SpsStatus.SCHEDULED,
    ("XO", ""): SpsStatus.SCHEDULED,
    ("XO", "SC"): SpsStatus.SCHEDULED,
    ("XO", "IP"): SpsStatus.STARTED,
    ("XO", "CM"): SpsStatus.COMPLETED,
    ("SC", "IP"): SpsStatus.STARTED,
    ("SC", "CM"): SpsStatus.COMPLETED,
    ("SC", "A"): SpsStatus.COMPLETED,
    ("CA", ""): SpsStatus.CANCELED,
    ("CA", "CA"): SpsStatus.CANCELED,
    ("OC", ""): SpsStatus.CANCELED,
    ("OC", "CA"): SpsStatus.CANCELED,
    ("DC", ""): SpsStatus.DISCONTINUED,
    ("DC", "CA"): SpsStatus.DISCONTINUED,
    ("DC", "DC"): SpsStatus.DISCONTINUED,
    ("HD", ""): SpsStatus.HELD,
    ("HD", "HD"): SpsStatus.HELD,
    ("RL", ""): SpsStatus.SCHEDULED,
    ("RL", "SC"): SpsStatus.SCHEDULED,
}

# Policies for a step that the order gives no start (Settings.hl7_missing_start).
MISSING_START_NOW = "now"
MISSING_START_REJECT = "reject"

# Statuses after which an order message only changes the status of steps that exist:
# a cancel for an order we never saw creates nothing.
_ENDING = frozenset({SpsStatus.CANCELED, SpsStatus.DISCONTINUED, SpsStatus.COMPLETED})

# Statuses a modality reported (MPPS): an order message that merely restates the
# order keeps them.
_PERFORMED = frozenset(
    {SpsStatus.STARTED.value, SpsStatus.COMPLETED.value, SpsStatus.DISCONTINUED.value}
)

# Root for UIDs derived from order numbers: a UUID-derived UID (PS3.5 B.2) whose
# UUID is name-based, so the same order always gets the same Study Instance UID.
_UID_NAMESPACE = uuid.UUID("5b1d7a52-4f0c-4b43-9a57-6d3b1f0d4c21")


class OrderAction(enum.Enum):
    """What applying an order did to one requested procedure."""

    CREATED = "created"
    UPDATED = "updated"
    STATUS_CHANGED = "status changed"
    UNKNOWN_ORDER = "unknown order, nothing changed"


@dataclass(frozen=True)
class OrderOutcome:
    """The result of :func:`apply_order`, for the ACK and the message log."""

    status: SpsStatus
    actions: tuple[tuple[str, OrderAction], ...]  # (study instance UID, action)
    steps_created: int = 0
    steps_updated: int = 0
    steps_removed: int = 0
    # (patient key, requested procedure key) of every procedure the order changed,
    # so the message log can link to them without looking them up again.
    changed: tuple[tuple[int, int], ...] = ()


def status_table(
    overrides: Iterable[tuple[str, str, str]] = (),
    base: Mapping[tuple[str, str], SpsStatus] = DEFAULT_STATUS_TABLE,
) -> Mapping[tuple[str, str], SpsStatus]:
    """The ORC-1/ORC-5 table with a site's overrides (``Settings.hl7_order_status``).

    Each override is ``(order control, order status, step status)``; an empty step
    status removes the pair, so such messages are rejected.
    """
    table = dict(base)
    for control, order_status, step_status in overrides:
        key = (control.strip().upper(), order_status.strip().upper())
        if step_status:
            table[key] = SpsStatus(step_status)
        else:
            table.pop(key, None)
    return table


def step_status_for(
    order_control: str,
    order_status: str,
    table: Mapping[tuple[str, str], SpsStatus] = DEFAULT_STATUS_TABLE,
) -> SpsStatus:
    """Look up the step status for ORC-1/ORC-5.

    Raises
    ------
    InvalidOrderError
        When the pair is not in ``table`` (location ``ORC-1``).
    """
    key = (order_control.strip().upper(), order_status.strip().upper())
    try:
        return table[key]
    except KeyError:
        raise InvalidOrderError(
            f"order control {key[0] or '(empty)'} with order status {key[1] or '(empty)'}"
            " is not mapped to a step status",
            location="ORC-1",
        ) from None


def derive_study_instance_uid(order: Order, procedure: RequestedProcedure) -> str:
    """A Study Instance UID that depends only on the order's numbers.

    Used when the order carries none (no ZDS-1 / IPC-3): every message about the
    same order, a later cancel included, gets the same UID, and a modality never
    sees a UID change between two queries.
    """
    basis = "|".join(
        (
            order.sending_facility,
            procedure.placer_order_number,
            procedure.filler_order_number,
            procedure.accession_number,
            procedure.requested_procedure_id,
        )
    )
    if not basis.strip("|") or basis.strip("|") == order.sending_facility:
        raise InvalidOrderError(
            "the order has no placer or filler order number, accession number or"
            " study instance UID to identify it",
            location="ORC-2",
        )
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, basis).int}"


def complete_identifiers(order: Order, procedure: RequestedProcedure) -> RequestedProcedure:
    """Fill in missing Study Instance UID, Requested Procedure ID and SPS IDs.

    Policy (documented in docs/hl7-interface.md): the UID is derived from the order
    numbers; the Requested Procedure ID falls back to the accession number, then
    the placer order number, then a digest of the UID (16 characters, SH); an SPS
    ID falls back to the Requested Procedure ID, with ``.n`` for the n-th step.
    """
    uid = procedure.study_instance_uid
    if not uid:
        uid = derive_study_instance_uid(order, procedure)
        # Fallbacks are logged by the field used, never by value (patient data).
        logger.debug("fallback: Study Instance UID derived from the order numbers")
    rp_id = procedure.requested_procedure_id
    if not rp_id:
        for candidate, source in (
            (procedure.accession_number, "the accession number"),
            (procedure.placer_order_number, "the placer order number"),
        ):
            if candidate and len(candidate) <= 16:
                rp_id = candidate
                logger.debug("fallback: Requested Procedure ID from %s", source)
                break
        else:
            rp_id = uuid.uuid5(_UID_NAMESPACE, uid).hex[:16].upper()
            logger.debug("fallback: Requested Procedure ID derived from the Study Instance UID")
    steps = []
    many = len(procedure.steps) > 1
    for index, step in enumerate(procedure.steps, start=1):
        if not step.scheduled_procedure_step_id:
            logger.debug("fallback: Scheduled Procedure Step ID from the Requested Procedure ID")
            sps_id = f"{rp_id[: 16 - len(str(index)) - 1]}.{index}" if many else rp_id
            step = replace(step, scheduled_procedure_step_id=sps_id)
        steps.append(step)
    return replace(
        procedure, study_instance_uid=uid, requested_procedure_id=rp_id, steps=tuple(steps)
    )


# Built once: every order runs them, and building a statement costs more than running
# it (about 0.5 ms against 0.3 ms here, SQLAlchemy 2.1).
_PROCEDURE_BY_UID = (
    select(RequestedProcedureRow)
    .where(RequestedProcedureRow.study_instance_uid == bindparam("uid"))
    # Two messages about one order on two connections: the second waits for the
    # first to commit, then reconciles against its steps (PostgreSQL; SQLite
    # writers are serialised already).
    .with_for_update()
)
_PATIENT_BY_ID = select(Patient).where(
    Patient.patient_id == bindparam("patient_id"),
    Patient.issuer_of_patient_id == bindparam("issuer"),
)
_INSERT_PATIENT = insert(Patient).returning(Patient.id)
_INSERT_PROCEDURE = insert(RequestedProcedureRow).returning(RequestedProcedureRow.id)
_INSERT_STEP = insert(ScheduledProcedureStep)


def apply_order(
    session: Session,
    order: Order,
    *,
    status_table: Mapping[tuple[str, str], SpsStatus] = DEFAULT_STATUS_TABLE,
    now: dt.datetime | None = None,
    missing_start: str = MISSING_START_NOW,
) -> OrderOutcome:
    """Bring the worklist in line with ``order``; the caller commits.

    Each requested procedure is identified by its Study Instance UID and each of
    its steps by SPS ID: steps in the order are created or updated, steps of the
    procedure that the order no longer lists are removed. Applying the same order
    twice therefore changes nothing the second time.

    Parameters
    ----------
    session
        The unit of work.
    order
        As the HL7 adapter (or the admin page) built it.
    status_table
        ORC-1/ORC-5 pairs to step status.
    now
        Start time for steps that have none (local time).
    missing_start
        What a new step without a start gets: ``"now"`` (``now``, as dcm4chee does)
        or ``"reject"`` (the order is refused). A step that exists keeps its start.

    Raises
    ------
    InvalidOrderError
        Unmapped order control, no patient ID, nothing to identify the order, or
        (``missing_start="reject"``) a new step without a start (location
        ``order.start_location``).
    """
    status = step_status_for(order.order_control, order.order_status, status_table)
    if not order.patient.patient_id.strip():
        raise InvalidOrderError("the order has no patient ID", location="PID-3")
    if not order.procedures:
        raise InvalidOrderError("the order has no requested procedure", location="OBR")
    start_default = now or dt.datetime.now().replace(microsecond=0)

    patient_key: int | None = None
    actions: list[tuple[str, OrderAction]] = []
    changed: list[tuple[int, int]] = []
    created = updated = removed = 0
    for raw_procedure in order.procedures:
        procedure = complete_identifiers(order, raw_procedure)
        row = session.scalars(
            _PROCEDURE_BY_UID, {"uid": procedure.study_instance_uid}
        ).one_or_none()
        if status in _ENDING and row is None:
            actions.append((procedure.study_instance_uid, OrderAction.UNKNOWN_ORDER))
            logger.warning(
                "order %s/%s ends an order that is not on the worklist; nothing changed",
                procedure.placer_order_number or "-",
                procedure.filler_order_number or "-",
            )
            continue
        if patient_key is None:
            patient_key = _upsert_patient(session, order.patient)
        if status in _ENDING and row is not None:
            for step_row in row.steps:
                step_row.status = status.value
                updated += 1
            actions.append((procedure.study_instance_uid, OrderAction.STATUS_CHANGED))
            changed.append((row.patient_key, row.id))
            continue
        if row is None:
            _check_starts({}, procedure.steps, order.start_location, missing_start)
            key, steps = _create_procedure(
                session, procedure, order, patient_key, status, start_default
            )
            created += steps
            actions.append((procedure.study_instance_uid, OrderAction.CREATED))
            changed.append((patient_key, key))
            continue
        row.patient_key = patient_key
        _copy_procedure(row, procedure, order)
        stored = {s.scheduled_procedure_step_id: s for s in row.steps}
        _check_starts(stored, procedure.steps, order.start_location, missing_start)
        # A new order or a change without an order status (NW, XO with empty ORC-5)
        # restates the order; it must not undo what the modality reported by MPPS,
        # or a RIS replay would put a patient who is on the table back on the
        # worklist. An explicit status (XO_SC, RL) still applies.
        keep_progress = (
            order.order_control.strip().upper() == "NW" or not order.order_status.strip()
        )
        c, u, r = _reconcile_steps(row, procedure.steps, status, start_default, keep_progress)
        created, updated, removed = created + c, updated + u, removed + r
        actions.append((procedure.study_instance_uid, OrderAction.UPDATED))
        changed.append((patient_key, row.id))
    session.flush()
    return OrderOutcome(status, tuple(actions), created, updated, removed, tuple(changed))


def _upsert_patient(session: Session, demographics: PatientDemographics) -> int:
    """The patient's key; a known patient's row takes the message's demographics."""
    patient = session.scalars(
        _PATIENT_BY_ID,
        {"patient_id": demographics.patient_id, "issuer": demographics.issuer_of_patient_id},
    ).one_or_none()
    if patient is not None:
        # Through the unit of work: only the values that changed are written.
        copy_demographics(patient, demographics)
        return patient.id
    new = Patient(
        patient_id=demographics.patient_id,
        issuer_of_patient_id=demographics.issuer_of_patient_id,
    )
    copy_demographics(new, demographics)
    key: int = session.connection().execute(_INSERT_PATIENT, _column_values(new)).scalar_one()
    return key


def _create_procedure(
    session: Session,
    procedure: RequestedProcedure,
    order: Order,
    patient_key: int,
    status: SpsStatus,
    start_default: dt.datetime,
) -> tuple[int, int]:
    """Insert a new requested procedure and its steps: (its key, the number of steps)."""
    row = RequestedProcedureRow(
        study_instance_uid=procedure.study_instance_uid, patient_key=patient_key
    )
    _copy_procedure(row, procedure, order)
    connection = session.connection()
    key = connection.execute(_INSERT_PROCEDURE, _column_values(row)).scalar_one()
    steps = []
    for step in procedure.steps:
        step_row = ScheduledProcedureStep(
            procedure_key=key,
            scheduled_procedure_step_id=step.scheduled_procedure_step_id,
            status=status.value,
        )
        _copy_step(step_row, step, step.start or start_default)
        steps.append(_column_values(step_row))
    connection.execute(_INSERT_STEP, steps)
    return key, len(steps)


def _column_values(row: Base) -> dict[str, Any]:
    """The columns set on a new (transient) row, for a Core INSERT of that row.

    A new order is only inserted, so it needs none of the unit of work's change
    tracking, which takes half the time of an HL7 message (docs/performance.md);
    the rows are still filled by the same functions as the rows the ORM updates.
    """
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key in row.__dict__}


# What an order message writes onto the rows it found or made (mwl.worklist.fields):
# every field but the identifying ones and the step status.
_PROCEDURE_FIELDS = order_fields(RequestedProcedureRow)
_STEP_FIELDS = order_fields(ScheduledProcedureStep)


def _copy_procedure(
    row: RequestedProcedureRow, procedure: RequestedProcedure, order: Order
) -> None:
    for field in _PROCEDURE_FIELDS:
        field.write(row, getattr(procedure, field.name))
    row.sending_application = order.sending_application
    row.sending_facility = order.sending_facility


def _check_starts(
    known: Mapping[str, ScheduledProcedureStep],
    steps: tuple[ScheduledStep, ...],
    location: str,
    policy: str,
) -> None:
    """Refuse (policy "reject") a step that neither the order nor ``known`` gives a start."""
    for step in steps:
        if step.start is not None:
            continue
        stored = known.get(step.scheduled_procedure_step_id)
        if stored is not None and stored.start_datetime is not None:
            logger.debug("fallback: step start kept from the stored step (none in the order)")
            continue
        if policy == MISSING_START_REJECT:
            raise InvalidOrderError(
                "the order has no scheduled start (TQ1-7, ORC-7.4 or OBR-27.4)",
                location=location,
            )
        logger.debug("fallback: step start set to now (no TQ1-7, ORC-7.4 or OBR-27.4)")


def _copy_step(step_row: ScheduledProcedureStep, step: ScheduledStep, start: dt.datetime) -> None:
    """Write ``step`` onto its row; ``start`` is the step's start or the one it falls back to."""
    for field in _STEP_FIELDS:
        field.write(step_row, start if field.kind is Kind.START else getattr(step, field.name))


def _reconcile_steps(
    row: RequestedProcedureRow,
    steps: tuple[ScheduledStep, ...],
    status: SpsStatus,
    start_default: dt.datetime,
    keep_progress: bool,
) -> tuple[int, int, int]:
    existing = {s.scheduled_procedure_step_id: s for s in row.steps}
    wanted = {s.scheduled_procedure_step_id for s in steps}
    created = updated = removed = 0
    for step in steps:
        step_row = existing.get(step.scheduled_procedure_step_id)
        if step_row is None:
            step_row = ScheduledProcedureStep(
                scheduled_procedure_step_id=step.scheduled_procedure_step_id
            )
            row.steps.append(step_row)
            created += 1
        else:
            updated += 1
        _copy_step(step_row, step, step.start or step_row.start_datetime or start_default)
        if not (keep_progress and step_row.status in _PERFORMED):
            step_row.status = status.value
    for sps_id, step_row in existing.items():
        if sps_id not in wanted:
            row.steps.remove(step_row)
            removed += 1
    return created, updated, removed
