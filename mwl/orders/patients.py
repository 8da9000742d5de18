"""Patient administration on the worklist: update demographics, merge, change identifiers.

Core service for ADT messages (A08/A31 update, A40 merge, A47 change of identifier),
in domain terms: functions take the unit of work's session first and never commit.
Only patients the worklist knows are touched; an update for a patient without
orders changes nothing (the broker keeps patients only for their worklist items).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.domain import PatientDemographics
from mwl.errors import InvalidOrderError
from mwl.store.models import Patient
from mwl.worklist.fields import order_fields
from mwl.worklist.names import name_search_key

logger = logging.getLogger(__name__)


class PatientChange(enum.Enum):
    """What a patient message asks for."""

    UPDATE = "update"  # ADT^A08, ADT^A31
    MERGE = "merge"  # ADT^A40: the prior patient's records move to the surviving one
    CHANGE_ID = "change id"  # ADT^A47: the prior identifier becomes the new one


@dataclass(frozen=True)
class PatientMessage:
    """One patient change: the patient as it is now and, for merges, who it was.

    ``prior_patient_id``/``prior_issuer_of_patient_id`` (MRG-1) name the patient that
    is merged away or renamed; empty for updates.
    """

    change: PatientChange
    patient: PatientDemographics
    prior_patient_id: str = ""
    prior_issuer_of_patient_id: str = ""


class PatientAction(enum.Enum):
    """What applying a patient message did."""

    UPDATED = "updated"
    MERGED = "merged"
    RENAMED = "identifier changed"
    UNKNOWN_PATIENT = "unknown patient, nothing changed"


def _find(session: Session, patient_id: str, issuer: str) -> Patient | None:
    return session.scalars(
        select(Patient)
        .where(Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer)
        # Two messages about one patient on two connections: the second waits.
        .with_for_update()
    ).one_or_none()


# What a message writes onto a patient row (mwl.worklist.fields): all but the identifiers.
_PATIENT_FIELDS = order_fields(Patient)


def copy_demographics(row: Patient, demographics: PatientDemographics) -> None:
    """Write what a message says about the patient onto the patient row.

    Name, birth date and sex are always written (every PID states them). The visit
    and medical values (admission ID, location, pregnancy status, allergies) are
    written only when the message carried their segment (PV1, AL1): ``None`` keeps
    the stored value, so an order without PV1 or a merge does not clear them.
    """
    for field in _PATIENT_FIELDS:
        value = getattr(demographics, field.name)
        if value is not None:  # None: the message did not carry it
            field.write(row, value)
    row.patient_name_key = name_search_key(demographics.patient_name)


def apply_patient_message(session: Session, message: PatientMessage) -> PatientAction:
    """Apply a patient update, merge or identifier change; the caller commits.

    Parameters
    ----------
    session
        The unit of work.
    message
        As the HL7 adapter built it from PID (and MRG).

    Returns
    -------
    PatientAction
        What was done; ``UNKNOWN_PATIENT`` when the worklist has no such patient.

    Raises
    ------
    InvalidOrderError
        A merge or identifier change without the prior identifier (location ``MRG-1``),
        or a patient without ID (``PID-3``).
    """
    patient = message.patient
    if not patient.patient_id.strip():
        raise InvalidOrderError("the message has no patient ID", location="PID-3")
    if message.change is PatientChange.UPDATE:
        row = _find(session, patient.patient_id, patient.issuer_of_patient_id)
        if row is None:
            return PatientAction.UNKNOWN_PATIENT
        copy_demographics(row, patient)
        session.flush()
        return PatientAction.UPDATED

    if not message.prior_patient_id:
        raise InvalidOrderError("the message has no prior patient ID", location="MRG-1")
    prior = _find(session, message.prior_patient_id, message.prior_issuer_of_patient_id)
    if prior is None:
        return PatientAction.UNKNOWN_PATIENT
    target = _find(session, patient.patient_id, patient.issuer_of_patient_id)
    if target is prior:
        copy_demographics(prior, patient)
        session.flush()
        return PatientAction.UPDATED
    if target is None and message.change is PatientChange.CHANGE_ID:
        prior.patient_id = patient.patient_id
        prior.issuer_of_patient_id = patient.issuer_of_patient_id
        copy_demographics(prior, patient)
        session.flush()
        return PatientAction.RENAMED
    if target is None:
        target = Patient(
            patient_id=patient.patient_id, issuer_of_patient_id=patient.issuer_of_patient_id
        )
        session.add(target)
    # Merge (and an identifier change onto an identifier in use, which is a merge too):
    # the surviving patient takes over every requested procedure of the prior one.
    copy_demographics(target, patient)
    for procedure in list(prior.procedures):
        procedure.patient = target
    session.flush()
    session.delete(prior)
    session.flush()
    logger.info("patient merged: %d procedure(s) moved", len(target.procedures))
    return PatientAction.MERGED
