"""Which patients and requested procedures each accepted HL7 message created or changed.

Recorded in the unit of work that applies the message, so a link exists exactly when
the change was committed. Read back by :mod:`mwl.operations.activity` (a message's changes,
an item's messages). Functions take the session first and never commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from mwl.domain import PatientDemographics
from mwl.orders.apply import OrderOutcome
from mwl.orders.patients import PatientAction
from mwl.store.models import Hl7MessageLink, Patient


def link_order(session: Session, message_key: int, outcome: OrderOutcome) -> int:
    """Link a message to every requested procedure (and its patient) an order changed.

    Parameters
    ----------
    session
        The unit of work that applied the order (after :func:`mwl.orders.apply.apply_order`).
    message_key
        The message in the log.
    outcome
        What ``apply_order`` did; procedures it left alone (an end for an order not
        on the worklist) are not in ``outcome.changed`` and get no link.

    Returns
    -------
    int
        The number of links added.
    """
    return _add(session, message_key, outcome.changed)


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
        What :func:`mwl.orders.patients.apply_patient_message` did; an unknown patient
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


# Built once; a Core INSERT, as every accepted message adds links and nothing reads
# them back in the same unit of work (about 1 ms per message less than ORM objects).
_INSERT_LINK = insert(Hl7MessageLink)


def _add(session: Session, message_key: int, pairs: Iterable[tuple[int | None, int | None]]) -> int:
    links = [
        {"message_key": message_key, "patient_key": patient, "procedure_key": procedure}
        for patient, procedure in dict.fromkeys(pairs)
    ]
    if links:
        session.connection().execute(_INSERT_LINK, links)
    return len(links)
