"""Orders entered on the admin page: emergency and walk-in orders the RIS has not sent.

The order takes the same path as an HL7 order (:func:`mwl.orders.apply.apply_order`,
order control NW), with the identifiers the RIS would have given generated here:

- accession number: ``Settings.order_accession_prefix`` + ``YYMMDD`` + a 4-digit
  counter per day (``EM2611210001``), at most 16 characters (SH);
- Requested Procedure ID and Scheduled Procedure Step ID: the accession number;
- Study Instance UID: ``2.25.`` + a random UUID as an integer (PS3.5 B.2);
- an unidentified patient: ID ``Settings.order_unidentified_id_prefix`` +
  ``YYYYMMDD`` + a counter, and a name from ``Settings.order_unidentified_name``.

Counters take the next number free in the database. Two people creating orders at
the same moment must not get one number: on PostgreSQL the transaction holds an
advisory lock per counter until it commits; on SQLite the writer session holds the
database's write lock from its start (``BEGIN IMMEDIATE``, :mod:`mwl.store.engine`), so
callers must use a writer session there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, replace

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from mwl.config import Settings
from mwl.domain import (
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    WorklistItem,
)
from mwl.operations.audit import record_event
from mwl.orders.apply import apply_order, status_table
from mwl.orders.edits import PATIENT_FIELDS, get_item
from mwl.orders.values import N_, PRIORITIES, SEXES, Checker, EditError
from mwl.store.models import Patient, ScheduledProcedureStep
from mwl.store.models import RequestedProcedure as RequestedProcedureRow

# Shown as the order's sending application, so the item page tells who made it.
SENDING_APPLICATION = "MWL WEB"
ACCESSION_LENGTH = 16  # SH
PATIENT_ID_LENGTH = 64  # LO
COUNTER_DIGITS = 4


@dataclass(frozen=True)
class NewOrder:
    """An order as a person enters it: one requested procedure with one step."""

    modality: str
    scheduled_station_ae_title: str = ""
    start: dt.datetime | None = None  # None = now
    requested_procedure_description: str = ""
    patient_id: str = ""  # "" with unidentified=True -> temporary ID
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    unidentified: bool = False
    priority: str = "STAT"  # Requested Procedure Priority
    referring_physician_name: str = ""
    reason_for_the_requested_procedure: str = ""
    scheduled_station_name: str = ""
    scheduled_procedure_step_location: str = ""
    # "": the issuer of the one patient on the worklist with this ID, else none.
    issuer_of_patient_id: str = ""


@dataclass(frozen=True)
class _Checked:
    """The order's values, checked and normalised."""

    modality: str
    station: str
    station_name: str
    location: str
    start: dt.datetime
    description: str
    priority: str
    referring: str
    reason: str
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


def _checked(new: NewOrder, settings: Settings, now: dt.datetime) -> _Checked:
    check = Checker(settings.dicom_response_charset)
    values = _Checked(
        modality=check.code_string("modality", new.modality, required=True),
        station=check.ae_title("scheduled_station_ae_title", new.scheduled_station_ae_title),
        station_name=check.short_string("scheduled_station_name", new.scheduled_station_name),
        location=check.short_string(
            "scheduled_procedure_step_location", new.scheduled_procedure_step_location
        ),
        start=check.start("start", new.start) if new.start is not None else now,
        description=check.long_string(
            "requested_procedure_description", new.requested_procedure_description
        ),
        priority=check.code_string("priority", new.priority, allowed=PRIORITIES),
        referring=check.person_name("referring_physician_name", new.referring_physician_name),
        reason=check.long_string(
            "reason_for_the_requested_procedure", new.reason_for_the_requested_procedure
        ),
        patient_id=check.long_string("patient_id", new.patient_id, required=not new.unidentified),
        issuer=check.long_string("issuer_of_patient_id", new.issuer_of_patient_id),
        name=check.person_name("patient_name", new.patient_name),
        birth_date=check.date("patient_birth_date", new.patient_birth_date, not_after=now.date()),
        sex=check.code_string("patient_sex", new.patient_sex, allowed=SEXES),
    )
    check.raise_if_any()
    return values


def create_order(
    session: Session,
    new: NewOrder,
    settings: Settings,
    username: str,
    *,
    now: dt.datetime | None = None,
) -> WorklistItem:
    """Put a new order on the worklist and record who entered it; the caller commits.

    Parameters
    ----------
    session
        A writer unit of work (see the module docstring on SQLite).
    new
        What the person entered.
    settings
        Prefixes and name template of generated identifiers, the response character
        set values must fit, the ORC-1/ORC-5 status table and station rules.
    username
        Who enters the order, for the audit trail.
    now
        The local time of entry (start of an order without one); a parameter for tests.

    Returns
    -------
    WorklistItem
        The new item.

    Raises
    ------
    EditError
        A value breaks its DICOM rules, the patient ID is ambiguous, a patient the
        worklist does not know has no name, or a day's counter is exhausted;
        nothing is stored.
    """
    now = (now or dt.datetime.now()).replace(microsecond=0)
    values = _checked(new, settings, now)
    patient, known = _entered_patient(session, new, values)
    before = _patient_values(known)

    accession = _next_serial(
        session,
        RequestedProcedureRow.accession_number,
        settings.order_accession_prefix + now.strftime("%y%m%d"),
        ACCESSION_LENGTH,
        "accession_number",
    )
    if new.unidentified:
        patient = _unidentified_patient(session, patient, settings, now)
    station = values.station or _station_by_rule(settings, values.modality, values.location)
    uid = f"2.25.{uuid.uuid4().int}"
    order = _order(values, patient, accession, station, uid)
    apply_order(session, order, status_table=status_table(settings.hl7_order_status), now=now)
    step_key = session.scalars(
        select(ScheduledProcedureStep.id)
        .join(RequestedProcedureRow)
        .where(RequestedProcedureRow.study_instance_uid == uid)
    ).one()
    item = get_item(session, step_key)
    assert item is not None
    record_event(
        session,
        username,
        "create",
        sps_key=step_key,
        subject=uid,
        changes=_created(item, accession, before),
        reason="unidentified patient" if new.unidentified else "",
    )
    session.flush()
    return item


def _entered_patient(
    session: Session, new: NewOrder, values: _Checked
) -> tuple[PatientDemographics, Patient | None]:
    """The patient as entered, completed from the worklist's row when it knows the ID.

    Raises
    ------
    EditError
        The ID is ambiguous, or a patient the worklist does not know has no name.
    """
    patient_id, issuer, name = values.patient_id, values.issuer, values.name
    birth_date, sex = values.birth_date, values.sex
    known: Patient | None = None
    if patient_id:
        known = _known_patient(session, patient_id, issuer)
    if known is not None:
        issuer = known.issuer_of_patient_id
        # Left empty on the form: the worklist's values stand.
        name = name or known.patient_name
        birth_date = birth_date or known.patient_birth_date
        sex = sex or known.patient_sex
    elif not new.unidentified and not name.strip("^ "):
        raise EditError.one(
            "patient_name", N_("The worklist does not know this patient: give the name.")
        )
    return PatientDemographics(patient_id, issuer, name, birth_date, sex), known


def _unidentified_patient(
    session: Session, patient: PatientDemographics, settings: Settings, now: dt.datetime
) -> PatientDemographics:
    """An unidentified patient with a temporary ID and a name, unless entered."""
    patient_id, name = patient.patient_id, patient.patient_name
    if not patient_id:
        patient_id = _next_serial(
            session,
            Patient.patient_id,
            settings.order_unidentified_id_prefix + now.strftime("%Y%m%d"),
            PATIENT_ID_LENGTH,
            "patient_id",
        )
    if not name:
        name = settings.order_unidentified_name.format(
            sex=patient.patient_sex or "X",
            date=now.strftime("%Y%m%d"),
            time=now.strftime("%H%M%S"),
            id=patient_id,
        )
        check = Checker(settings.dicom_response_charset)
        check.person_name("patient_name", name, required=True)
        check.raise_if_any()
    return replace(patient, patient_id=patient_id, patient_name=name)


def _order(
    values: _Checked, patient: PatientDemographics, accession: str, station: str, uid: str
) -> Order:
    """The NW order an HL7 message would carry: one requested procedure, one step."""
    return Order(
        order_control="NW",
        order_status="SC",
        patient=patient,
        procedures=(
            RequestedProcedure(
                study_instance_uid=uid,
                requested_procedure_id=accession,
                accession_number=accession,
                requested_procedure_description=values.description,
                requested_procedure_priority=values.priority,
                referring_physician_name=values.referring,
                reason_for_the_requested_procedure=values.reason,
                steps=(
                    ScheduledStep(
                        scheduled_procedure_step_id=accession,
                        modality=values.modality,
                        scheduled_station_ae_title=station,
                        scheduled_station_name=values.station_name,
                        scheduled_procedure_step_location=values.location,
                        start=values.start,
                        scheduled_procedure_step_description=values.description,
                    ),
                ),
            ),
        ),
        sending_application=SENDING_APPLICATION,
    )


def _created(
    item: WorklistItem, accession: str, before: dict[str, str]
) -> dict[str, tuple[str | None, str]]:
    """The audit changes of a new order: its values, and the patient's that changed."""
    created = {
        "accession_number": accession,
        "modality": item.modality,
        "scheduled_station_ae_title": item.scheduled_station_ae_title,
        "scheduled_station_name": item.scheduled_station_name,
        "scheduled_procedure_step_location": item.scheduled_procedure_step_location,
        "start": item.start.isoformat(sep=" "),
        "requested_procedure_description": item.requested_procedure_description,
        "requested_procedure_priority": item.requested_procedure_priority,
        "referring_physician_name": item.referring_physician_name,
        "reason_for_the_requested_procedure": item.reason_for_the_requested_procedure,
    }
    changes: dict[str, tuple[str | None, str]] = {
        name: (None, value) for name, value in created.items() if value
    }
    for field, value in _patient_values(item).items():
        if before.get(field, "") != value:
            changes[field] = (before.get(field), value)
    return changes


def _known_patient(session: Session, patient_id: str, issuer: str) -> Patient | None:
    """The patient on the worklist with this ID (and issuer, when given), if any."""
    query = select(Patient).where(Patient.patient_id == patient_id)
    if issuer:
        query = query.where(Patient.issuer_of_patient_id == issuer)
    found = session.scalars(query).all()
    if len(found) > 1:
        raise EditError.one(
            "issuer_of_patient_id",
            N_("Several patients have this ID (issuers %(issuers)s): give the issuer too."),
            issuers=", ".join(sorted(p.issuer_of_patient_id or "-" for p in found)),
        )
    return found[0] if found else None


def _patient_values(source: Patient | WorklistItem | None) -> dict[str, str]:
    """Identity and demographics of a patient row or an item (same attribute names)."""
    if source is None:
        return {}
    return {name: getattr(source, name) for name in PATIENT_FIELDS}


def _station_by_rule(settings: Settings, modality: str, location: str) -> str:
    """The station of the first HL7 station rule that matches, as an order without IPC-9 gets."""
    for rule in settings.hl7_station_rules:
        if rule.matches(modality, "", location):
            return rule.station_ae_title
    return ""


def _lock_key(stem: str) -> int:
    """A stable signed 64-bit number for the advisory lock of one counter."""
    # The module's old name, kept: brokers of two versions sharing one database
    # during an upgrade must still take the same lock.
    digest = hashlib.sha256(f"mwl.order_entry:{stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _next_serial(
    session: Session,
    column: InstrumentedAttribute[str],
    stem: str,
    limit: int,
    field: str,
) -> str:
    """``stem`` + the next counter value not yet in ``column`` (4 digits, more if needed)."""
    if session.get_bind().dialect.name == "postgresql":
        # Held until commit or rollback: a second create waits, then sees the first's row.
        session.execute(select(func.pg_advisory_xact_lock(_lock_key(stem))))
    taken = session.scalars(select(column).where(column.startswith(stem, autoescape=True)))
    numbers = {int(value[len(stem) :]) for value in taken if value[len(stem) :].isdigit()}
    value = f"{stem}{max(numbers, default=0) + 1:0{COUNTER_DIGITS}d}"
    if len(value) > limit:
        raise EditError.one(
            field,
            N_("No more numbers with %(stem)s: the counter has reached its limit."),
            stem=stem,
        )
    return value


def known_stations(session: Session) -> list[str]:
    """The Scheduled Station AE Titles the worklist holds, for the form's suggestions."""
    column = ScheduledProcedureStep.scheduled_station_ae_title
    return list(session.scalars(select(column).where(column != "").distinct().order_by(column)))
