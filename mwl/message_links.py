"""Which patients and requested procedures each accepted HL7 message created or changed.

Recorded in the unit of work that applies the message, so a link exists exactly when
the change was committed. Read back by :mod:`mwl.activity` (a message's changes,
an item's messages). Functions take the session first and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.domain import PatientDemographics
from mwl.models import Hl7MessageLink, Patient, RequestedProcedure
from mwl.orders import OrderAction, OrderOutcome
from mwl.patients import PatientAction


def link_order(session: Session, message_key: int, outcome: OrderOutcome) -> int:
    """Link a message to every requested procedure (and its patient) an order changed.

    Parameters
    ----------
    session
        The unit of work that applied the order (after :func:`mwl.orders.apply_order`).
    message_key
        The message in the log.
    outcome
        What ``apply_order`` did; procedures it left alone (an end for an order not
        on the worklist) get no link.

    Returns
    -------
    int
        The number of links added.
    """
    uids = [uid for uid, action in outcome.actions if action is not OrderAction.UNKNOWN_ORDER]
    if not uids:
        return 0
    rows = session.execute(
        select(RequestedProcedure.id, RequestedProcedure.patient_key)
        .where(RequestedProcedure.study_instance_uid.in_(uids))
        .order_by(RequestedProcedure.id)
    ).all()
    return _add(session, message_key, ((patient, procedure) for procedure, patient in rows))


def link_patient(
    session: Session,
    message_key: int,
    patient: PatientDemographics,
    action: PatientAction,
) -> int:
    """Link a message to the patient a patient message updated, merged into or renamed.

    Parameters
    ----------
    session
        The unit of work that applied the message.
    message_key
        The message in the log.
    patient
        The patient as the message names it now (PID-3; for a merge the survivor).
    action
        What :func:`mwl.patients.apply_patient_message` did; an unknown patient
        (nothing changed) gets no link.

    Returns
    -------
    int
        The number of links added (0 or 1).
    """
    if action is PatientAction.UNKNOWN_PATIENT:
        return 0
    key = session.scalars(
        select(Patient.id).where(
            Patient.patient_id == patient.patient_id,
            Patient.issuer_of_patient_id == patient.issuer_of_patient_id,
        )
    ).one_or_none()
    if key is None:
        return 0
    return _add(session, message_key, [(key, None)])


def _add(session: Session, message_key: int, pairs: Iterable[tuple[int | None, int | None]]) -> int:
    links = [
        Hl7MessageLink(message_key=message_key, patient_key=patient, procedure_key=procedure)
        for patient, procedure in dict.fromkeys(pairs)
    ]
    session.add_all(links)
    return len(links)
