"""Changes people make to a worklist item: correct, reschedule, cancel, restore; each audited.

Policy (docs/admin-guide.md, "Editing an item"):

- The RIS is the master. A later HL7 message about the same order overwrites
  what was changed here, and nothing changed here is sent to the RIS (the RIS
  outbox carries performed-step status only, :mod:`mwl.operations.outbox`).
- Demographics live on the patient row, shared by every order of the patient:
  correcting a name corrects it on all of them.
- The patient ID is the RIS's key and cannot be changed, except a temporary ID
  (``Settings.order_unidentified_id_prefix``) given to an unidentified patient on
  the page: staff replace it by the real ID once known. When a patient with the
  real ID is on the worklist already, the temporary patient is merged into it (its
  orders move over, as an HL7 A47 onto an ID in use does).
- A step the modality has performed (STARTED, COMPLETED, DISCONTINUED) keeps its
  schedule; its patient's demographics may still be corrected.
- Cancel hides the step from the modalities (CANCELED is hidden by default).
  Restore gives back the status the step had before the page canceled it (from
  the audit trail), else SCHEDULED; it is refused once an MPPS names the step.

Every change writes one audit event (:func:`mwl.operations.audit.record_event`) in the
caller's transaction, with each field's value before and after. Functions take
the unit of work's session first and never commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.config import Settings
from mwl.domain import PatientDemographics, SpsStatus, WorklistItem
from mwl.errors import MwlError
from mwl.operations.audit import diff, events_for_step, record_event
from mwl.orders.patients import (
    PatientChange,
    PatientMessage,
    apply_patient_message,
    copy_demographics,
)
from mwl.orders.transitions import STATUS, check_transition
from mwl.orders.values import N_, SEXES, Checker, EditError
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep, mpps_sps
from mwl.worklist.fields import BY_NAME
from mwl.worklist.matching import worklist_item

__all__ = [
    "STATUS",
    "EditError",
    "StepChanges",
    "UnknownStepError",
    "cancel_step",
    "edit_step",
    "get_item",
    "is_temporary_patient_id",
    "restore_step",
]

# Statuses a modality reported by MPPS: the step was performed, its schedule is history.
PERFORMED = frozenset({SpsStatus.STARTED, SpsStatus.COMPLETED, SpsStatus.DISCONTINUED})
# Statuses a restore may give back (those a step has before anyone performs it).
RESTORABLE = frozenset({SpsStatus.SCHEDULED, SpsStatus.ARRIVED, SpsStatus.READY, SpsStatus.HELD})
MPPS_NAMES_STEP = N_("A modality has reported performing this step (MPPS): it cannot be restored.")
# Statuses the day list's bulk change offers: those of the way to the scanner (STARTED
# and later come from the modality or the item page, CANCELED from cancel). Each step
# still goes through mwl.orders.status.change_status and its transition table.
MANUAL_STATUSES = (SpsStatus.SCHEDULED, SpsStatus.ARRIVED, SpsStatus.READY, SpsStatus.HELD)
# Reason text is kept in AuditEvent.reason (String(255)).
REASON_LENGTH = 255

PATIENT_FIELDS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
)
# The schedule of the step and what the order asks for: fixed once performed.
SCHEDULE_FIELDS = (
    "start",
    "modality",
    "scheduled_station_ae_title",
    "scheduled_station_name",
    "scheduled_procedure_step_location",
    "scheduled_procedure_step_description",
    "requested_procedure_description",
    "scheduled_performing_physician_name",
)
_CODE_STRINGS = frozenset({"patient_sex", "modality"})


class UnknownStepError(MwlError):
    """No scheduled procedure step has this key (never existed, or purged)."""

    def __init__(self, sps_key: int) -> None:
        self.sps_key = sps_key
        super().__init__(f"no scheduled procedure step with key {sps_key}")


@dataclass(frozen=True)
class StepChanges:
    """What to change on a step, its requested procedure and its patient; None = leave.

    ``patient_id`` and ``issuer_of_patient_id`` may change only while the patient
    has a temporary ID (see the module docstring).
    """

    patient_name: str | None = None  # DICOM PN, e.g. "Doe^Jane"
    patient_birth_date: str | None = None  # YYYYMMDD or ""
    patient_sex: str | None = None  # M, F, O or ""
    start: dt.datetime | None = None  # reschedule (local time, like stored starts)
    modality: str | None = None
    scheduled_station_ae_title: str | None = None
    scheduled_station_name: str | None = None
    scheduled_procedure_step_location: str | None = None
    scheduled_procedure_step_description: str | None = None
    requested_procedure_description: str | None = None
    scheduled_performing_physician_name: str | None = None
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None


def is_temporary_patient_id(patient_id: str, settings: Settings) -> bool:
    """Whether ``patient_id`` is one the page gave an unidentified patient."""
    prefix = settings.order_unidentified_id_prefix
    return bool(prefix) and patient_id.startswith(prefix)


def get_item(session: Session, sps_key: int) -> WorklistItem | None:
    """The worklist item of step ``sps_key``, whatever its status, or None."""
    row = session.execute(_joined(sps_key)).one_or_none()
    return worklist_item(*row) if row is not None else None


def _joined(sps_key: int) -> Any:
    return (
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(ScheduledProcedureStep.id == sps_key)
    )


def load_step(
    session: Session, sps_key: int
) -> tuple[ScheduledProcedureStep, RequestedProcedure, Patient]:
    """Step ``sps_key`` with its procedure and patient, locked (:class:`UnknownStepError`)."""
    # FOR UPDATE (PostgreSQL) on step, procedure and patient: two people saving the
    # same item, or an HL7 message arriving meanwhile, wait for each other.
    row = session.execute(_joined(sps_key).with_for_update()).one_or_none()
    if row is None:
        raise UnknownStepError(sps_key)
    step, procedure, patient = row
    return step, procedure, patient


def _snapshot(
    step: ScheduledProcedureStep, procedure: RequestedProcedure, patient: Patient
) -> dict[str, Any]:
    """Every editable value as stored (start as ``YYYY-MM-DD HH:MM:SS``), and the status."""
    return {
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": patient.issuer_of_patient_id,
        "patient_name": patient.patient_name,
        "patient_birth_date": patient.patient_birth_date,
        "patient_sex": patient.patient_sex,
        "start": step.start_datetime.isoformat(sep=" "),
        "modality": step.modality,
        "scheduled_station_ae_title": step.scheduled_station_ae_title,
        "scheduled_station_name": step.scheduled_station_name,
        "scheduled_procedure_step_location": step.scheduled_procedure_step_location,
        "scheduled_procedure_step_description": step.scheduled_procedure_step_description,
        "requested_procedure_description": procedure.requested_procedure_description,
        "scheduled_performing_physician_name": step.scheduled_performing_physician_name,
        STATUS: step.status,
    }


def _normalised(name: str, value: Any) -> Any:
    if name == "start":
        if value.tzinfo is not None:
            value = value.astimezone().replace(tzinfo=None)
        return value.replace(microsecond=0).isoformat(sep=" ")
    text = str(value).strip()
    return text.upper() if name in _CODE_STRINGS else text


def _check(check: Checker, name: str, value: Any, today: dt.date) -> None:
    """Record what is wrong with the new ``value`` of field ``name``."""
    if name in ("patient_id", "issuer_of_patient_id"):
        check.long_string(name, value, required=name == "patient_id")
    elif name in ("patient_name", "scheduled_performing_physician_name"):
        check.person_name(name, value, required=name == "patient_name")
    elif name == "patient_birth_date":
        check.date(name, value, not_after=today)
    elif name == "patient_sex":
        check.code_string(name, value, allowed=SEXES)
    elif name == "start":
        check.start(name, dt.datetime.fromisoformat(value))
    elif name == "modality":
        check.code_string(name, value, required=True)
    elif name == "scheduled_station_ae_title":
        check.ae_title(name, value)
    elif name in ("scheduled_station_name", "scheduled_procedure_step_location"):
        check.short_string(name, value)
    else:
        check.long_string(name, value)


def check_reason(check: Checker, reason: str) -> str:
    """``reason`` stripped; a problem on ``check`` when it is too long for the audit trail."""
    reason = reason.strip()
    if len(reason) > REASON_LENGTH:
        check.add(
            "reason",
            N_("At most %(limit)s characters (this has %(length)s)."),
            limit=REASON_LENGTH,
            length=len(reason),
        )
    return reason


def edit_step(
    session: Session,
    sps_key: int,
    changes: StepChanges,
    username: str,
    reason: str = "",
    *,
    settings: Settings | None = None,
    today: dt.date | None = None,
) -> WorklistItem:
    """Apply ``changes`` to step ``sps_key`` and record who did it; the caller commits.

    Only values that differ from the stored ones are checked and changed, so a form
    that sends every field back does not trip over an odd value the RIS sent.

    Parameters
    ----------
    session
        A writer unit of work.
    sps_key
        Database key of the scheduled procedure step.
    changes
        New values; None leaves a value as it is.
    username
        Who makes the change, for the audit trail.
    reason
        Why, as the user wrote it (optional, 255 characters at most).
    settings
        For the response character set every value must fit and the temporary
        patient ID prefix; the defaults when None.
    today
        The local date birth dates may not be after (a parameter for tests).

    Returns
    -------
    WorklistItem
        The item as it is now. Nothing is recorded when nothing differs.

    Raises
    ------
    UnknownStepError
        No step has this key.
    EditError
        A value breaks its DICOM rules, the patient ID is not temporary, or the
        schedule of a performed step was to change; nothing is changed.
    """
    settings = settings or Settings()
    today = today or dt.date.today()
    step, procedure, patient = load_step(session, sps_key)
    before = _snapshot(step, procedure, patient)
    wanted = _wanted(changes, before)
    check = Checker(settings.dicom_response_charset)
    reason = check_reason(check, reason)
    _check_changes(check, wanted, step, patient, settings, today)
    identity = {"patient_id", "issuer_of_patient_id"} & wanted.keys()
    target = None
    if identity and not check.problems:
        target = _reconciled_identity(session, patient, wanted)
    check.raise_if_any()
    if not wanted:
        return worklist_item(step, procedure, patient)

    if identity:
        _reconcile(session, patient, wanted, target)
    else:
        copy_demographics(patient, _demographics(patient, wanted))
    _write_schedule(step, procedure, wanted)
    session.flush()
    after = _snapshot(step, procedure, procedure.patient)
    changed = diff(before, after)
    action = "reschedule" if changed.keys() == {"start"} else "edit"
    record_event(
        session,
        username,
        action,
        sps_key=sps_key,
        subject=procedure.study_instance_uid,
        changes=changed,
        reason=reason,
    )
    session.flush()
    return worklist_item(step, procedure, procedure.patient)


def _wanted(changes: StepChanges, before: dict[str, Any]) -> dict[str, Any]:
    """The changes that differ from the stored values, normalised."""
    wanted: dict[str, Any] = {}
    for f in fields(StepChanges):
        value = getattr(changes, f.name)
        if value is not None and _normalised(f.name, value) != before[f.name]:
            wanted[f.name] = _normalised(f.name, value)
    return wanted


def _check_changes(
    check: Checker,
    wanted: dict[str, Any],
    step: ScheduledProcedureStep,
    patient: Patient,
    settings: Settings,
    today: dt.date,
) -> None:
    """Record what is wrong with the wanted values and what may not change at all."""
    for name, value in wanted.items():
        _check(check, name, value, today)
    identity = {"patient_id", "issuer_of_patient_id"} & wanted.keys()
    if identity and not is_temporary_patient_id(patient.patient_id, settings):
        for name in sorted(identity):
            check.add(
                name,
                N_(
                    "The patient ID comes from the RIS and cannot be changed here; only a"
                    " temporary ID given to an unidentified patient can be replaced."
                ),
            )
    if SpsStatus(step.status) in PERFORMED:
        for name in SCHEDULE_FIELDS:
            if name in wanted:
                check.add(
                    name,
                    N_(
                        "The modality has performed this step (%(status)s): its schedule"
                        " can no longer change."
                    ),
                    status=step.status,
                )


def _write_schedule(
    step: ScheduledProcedureStep, procedure: RequestedProcedure, wanted: dict[str, Any]
) -> None:
    """Set the wanted start and schedule values where the field declaration says they live."""
    rows: dict[type[Any], Any] = {ScheduledProcedureStep: step, RequestedProcedure: procedure}
    for name in SCHEDULE_FIELDS:
        if name in wanted:
            field = BY_NAME[name]  # which row holds it, in which columns
            value = dt.datetime.fromisoformat(wanted[name]) if name == "start" else wanted[name]
            field.write(rows[field.model], value)


def _demographics(
    patient: Patient, wanted: dict[str, Any], base: Patient | None = None
) -> PatientDemographics:
    """The patient's demographics with the wanted changes (visit values left as stored)."""
    source = base or patient
    return PatientDemographics(
        patient_id=wanted.get("patient_id", source.patient_id),
        issuer_of_patient_id=wanted.get("issuer_of_patient_id", source.issuer_of_patient_id),
        patient_name=wanted.get("patient_name", source.patient_name),
        patient_birth_date=wanted.get("patient_birth_date", source.patient_birth_date),
        patient_sex=wanted.get("patient_sex", source.patient_sex),
    )


def _reconciled_identity(
    session: Session, patient: Patient, wanted: dict[str, Any]
) -> Patient | None:
    """Settle the issuer of the real patient ID; return the patient holding it, if any.

    Without an issuer given, the issuer of the one patient on the worklist with that
    ID is taken; several such patients need the issuer to tell them apart.
    """
    new_id = wanted.get("patient_id", patient.patient_id)
    if "issuer_of_patient_id" not in wanted:
        holders = session.scalars(
            select(Patient).where(Patient.patient_id == new_id, Patient.id != patient.id)
        ).all()
        if len(holders) > 1:
            issuers = ", ".join(sorted(h.issuer_of_patient_id or "-" for h in holders))
            raise EditError.one(
                "issuer_of_patient_id",
                N_("Several patients have this ID (issuers %(issuers)s): give the issuer too."),
                issuers=issuers,
            )
        issuer = holders[0].issuer_of_patient_id if holders else patient.issuer_of_patient_id
        if issuer != patient.issuer_of_patient_id:
            wanted["issuer_of_patient_id"] = issuer
    else:
        issuer = wanted["issuer_of_patient_id"]
    target: Patient | None = session.scalars(
        select(Patient)
        .where(Patient.patient_id == new_id, Patient.issuer_of_patient_id == issuer)
        .with_for_update()
    ).one_or_none()
    return target


def _reconcile(
    session: Session, patient: Patient, wanted: dict[str, Any], target: Patient | None
) -> None:
    """Give the temporary patient its real identity, merging into the patient holding it.

    Onto a patient already on the worklist, that patient's demographics stay unless
    the form changed them too; the temporary patient's orders move over.
    """
    base = target if target is not None and target is not patient else patient
    apply_patient_message(
        session,
        PatientMessage(
            PatientChange.CHANGE_ID,
            _demographics(patient, wanted, base),
            prior_patient_id=patient.patient_id,
            prior_issuer_of_patient_id=patient.issuer_of_patient_id,
        ),
    )


def _set_status(
    session: Session,
    rows: tuple[ScheduledProcedureStep, RequestedProcedure, Patient],
    status: SpsStatus,
    action: str,
    username: str,
    reason: str,
    refuse: dict[SpsStatus, str],
) -> WorklistItem:
    step, procedure, patient = rows
    check = Checker()
    reason = check_reason(check, reason)
    current = SpsStatus(step.status)
    if current in refuse:
        check.add(STATUS, refuse[current], status=current.value)
    else:
        check_transition(check, current, status)
    check.raise_if_any()
    step.status = status.value
    record_event(
        session,
        username,
        action,
        sps_key=step.id,
        subject=procedure.study_instance_uid,
        changes={STATUS: (current.value, status.value)},
        reason=reason,
    )
    session.flush()
    return worklist_item(step, procedure, patient)


def cancel_step(session: Session, sps_key: int, username: str, reason: str = "") -> WorklistItem:
    """Cancel step ``sps_key``: modalities no longer see it; the caller commits.

    Raises
    ------
    UnknownStepError
        No step has this key.
    EditError
        The step is canceled already, or a modality has performed it.
    """
    performed = N_("The modality has performed this step (%(status)s): it cannot be canceled.")
    refuse = {s: performed for s in PERFORMED}
    refuse[SpsStatus.CANCELED] = N_("The step is canceled already.")
    rows = load_step(session, sps_key)
    return _set_status(session, rows, SpsStatus.CANCELED, "cancel", username, reason, refuse)


def restore_step(session: Session, sps_key: int, username: str, reason: str = "") -> WorklistItem:
    """Undo a cancel: give step ``sps_key`` back its status before; the caller commits.

    The status is the one the last cancel on the page replaced (SCHEDULED, ARRIVED,
    READY or HELD), or SCHEDULED when the RIS canceled the step.

    Raises
    ------
    UnknownStepError
        No step has this key.
    EditError
        The step is not canceled, or an MPPS names it (a modality performed it).
    """
    rows = load_step(session, sps_key)
    if rows[0].status != SpsStatus.CANCELED:
        raise EditError.one(
            STATUS,
            N_("Only a canceled step can be restored (this one is %(status)s)."),
            status=rows[0].status,
        )
    if performed_by_mpps(session, sps_key):
        raise EditError.one(STATUS, MPPS_NAMES_STEP)
    target = _status_before_cancel(session, sps_key)
    return _set_status(session, rows, target, "restore", username, reason, {})


def performed_by_mpps(session: Session, sps_key: int) -> bool:
    """Whether an MPPS names step ``sps_key`` (a modality performed it: no way back)."""
    found = session.scalars(
        select(mpps_sps.c.mpps_key).where(mpps_sps.c.sps_key == sps_key).limit(1)
    ).first()
    return found is not None


def _status_before_cancel(session: Session, sps_key: int) -> SpsStatus:
    for event in reversed(events_for_step(session, sps_key)):
        change = next((c for c in event.changes if c.field == STATUS), None)
        if change is None:
            continue
        if event.action == "cancel" and change.before in {s.value for s in RESTORABLE}:
            return SpsStatus(change.before)
        break
    return SpsStatus.SCHEDULED
