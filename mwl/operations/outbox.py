"""The RIS outbox: status events queued with the status change, handed out in order per order.

Transactional outbox: :func:`enqueue` adds a row in the caller's transaction (the
one that changes the step status), so the event exists exactly when the change
does. A sender (the HL7 adapter, :mod:`mwl.hl7.sender`) asks :func:`due_messages`
for work and reports each attempt with :func:`record_attempt`. All state is in the
database: a restarted broker carries on where it stopped.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from mwl.config import Settings
from mwl.domain import Code, MppsStatus, SpsStatus, StatusEvent
from mwl.store.models import OutboxAttempt, OutboxMessage, utcnow

PENDING = "PENDING"
DELIVERED = "DELIVERED"
FAILED = "FAILED"

#: Attempt outcomes besides the ACK codes AA, AE, AR.
NO_ACK = "ERROR"
_REJECTS = frozenset({"AE", "AR", "CE", "CR"})


def event_to_json(event: StatusEvent) -> str:
    """The outbox payload for ``event`` (JSON object, stable key names)."""
    data: dict[str, Any] = {
        "study_instance_uid": event.study_instance_uid,
        "requested_procedure_id": event.requested_procedure_id,
        "accession_number": event.accession_number,
        "placer_order_number": event.placer_order_number,
        "filler_order_number": event.filler_order_number,
        "scheduled_procedure_step_ids": list(event.scheduled_procedure_step_ids),
        "status": event.status.value,
        "mpps_status": event.mpps_status.value,
        "mpps_sop_instance_uid": event.mpps_sop_instance_uid,
        "occurred_at": event.occurred_at.isoformat(),
        "patient_id": event.patient_id,
        "issuer_of_patient_id": event.issuer_of_patient_id,
        "patient_name": event.patient_name,
        "patient_birth_date": event.patient_birth_date,
        "patient_sex": event.patient_sex,
        "modality": event.modality,
        "requested_procedure_description": event.requested_procedure_description,
        "requested_procedure_code": (
            [
                event.requested_procedure_code.value,
                event.requested_procedure_code.scheme,
                event.requested_procedure_code.meaning,
            ]
            if event.requested_procedure_code
            else None
        ),
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def event_from_json(text: str) -> StatusEvent:
    """Inverse of :func:`event_to_json`."""
    data: Mapping[str, Any] = json.loads(text)
    code = data.get("requested_procedure_code")
    return StatusEvent(
        study_instance_uid=data["study_instance_uid"],
        requested_procedure_id=data["requested_procedure_id"],
        accession_number=data["accession_number"],
        placer_order_number=data["placer_order_number"],
        filler_order_number=data["filler_order_number"],
        scheduled_procedure_step_ids=tuple(data["scheduled_procedure_step_ids"]),
        status=SpsStatus(data["status"]),
        mpps_status=MppsStatus(data["mpps_status"]),
        mpps_sop_instance_uid=data["mpps_sop_instance_uid"],
        occurred_at=dt.datetime.fromisoformat(data["occurred_at"]),
        patient_id=data.get("patient_id", ""),
        issuer_of_patient_id=data.get("issuer_of_patient_id", ""),
        patient_name=data.get("patient_name", ""),
        patient_birth_date=data.get("patient_birth_date", ""),
        patient_sex=data.get("patient_sex", ""),
        modality=data.get("modality", ""),
        requested_procedure_description=data.get("requested_procedure_description", ""),
        requested_procedure_code=Code(*code) if code else None,
    )


def control_id(message_id: int) -> str:
    """MSH-10 of an outbox message: the same on every retry, so the RIS can spot repeats."""
    return f"MWL{message_id:012d}"


def ris_destination(settings: Settings) -> str | None:
    """Where status events go (``host:port``), or None when no RIS is configured."""
    return f"{settings.ris_host}:{settings.ris_port}" if settings.ris_host else None


def enqueue(
    session: Session, event: StatusEvent, destination: str, *, now: dt.datetime | None = None
) -> OutboxMessage:
    """Queue ``event`` for ``destination`` in the caller's transaction (which commits).

    The order key is the requested procedure's Study Instance UID: events about one
    order leave in the order they were queued.
    """
    when = now or utcnow()
    row = OutboxMessage(
        created_at=when,
        order_key=event.study_instance_uid,
        payload=event_to_json(event),
        destination=destination,
        state=PENDING,
        next_attempt_at=when,
    )
    session.add(row)
    return row


@dataclass(frozen=True)
class OutboxItem:
    """A message to send now: the head of its order's queue, detached from the session."""

    id: int
    order_key: str
    event: StatusEvent
    attempts: int
    control_id: str


def due_messages(
    session: Session, now: dt.datetime | None = None, limit: int = 50
) -> list[OutboxItem]:
    """The messages to try now, oldest first: per order, only the oldest pending one.

    A message whose retry time has not come blocks the later messages of its order
    (they wait, so the RIS never hears "completed" before "in progress") but not
    those of other orders.
    """
    earlier = aliased(OutboxMessage)
    blocked = (
        select(earlier.id)
        .where(
            earlier.order_key == OutboxMessage.order_key,
            earlier.state == PENDING,
            earlier.id < OutboxMessage.id,
        )
        .exists()
    )
    rows = session.scalars(
        select(OutboxMessage)
        .where(
            OutboxMessage.state == PENDING,
            OutboxMessage.next_attempt_at <= (now or utcnow()),
            ~blocked,
        )
        .order_by(OutboxMessage.id)
        .limit(limit)
    ).all()
    return [
        OutboxItem(r.id, r.order_key, event_from_json(r.payload), r.attempts, control_id(r.id))
        for r in rows
    ]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff after failed attempts, and when to give up on rejects.

    ``max_rejects`` AE/AR answers set a message aside (FAILED) so the order's later
    messages can go; 0 retries for ever. Connection failures and missing ACKs never
    set a message aside: the RIS being down is no reason to lose a message.
    """

    initial_seconds: float = 5.0
    max_seconds: float = 300.0
    max_rejects: int = 0

    def delay(self, attempts: int) -> dt.timedelta:
        """Wait after the ``attempts``-th failed attempt: initial * 2**(attempts-1), capped."""
        exponent = min(max(attempts - 1, 0), 32)
        return dt.timedelta(seconds=min(self.initial_seconds * 2**exponent, self.max_seconds))


def record_attempt(
    session: Session,
    message_id: int,
    outcome: str,
    *,
    ack: bytes | None = None,
    error: str = "",
    policy: RetryPolicy | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Record one delivery attempt and decide what comes next; the caller commits.

    Parameters
    ----------
    session
        The unit of work.
    message_id
        The outbox message tried.
    outcome
        The ACK code (MSA-1: ``AA``, ``AE``, ``AR``; ``CA``/``CE``/``CR`` as enhanced
        mode sends them) or :data:`NO_ACK` when no ACK came.
    ack, error
        The ACK payload, when one came; what went wrong, in words.
    policy
        Backoff and reject limit.

    Returns
    -------
    str
        The message's state afterwards: ``DELIVERED``, ``PENDING`` (retry at
        ``next_attempt_at``) or ``FAILED``.
    """
    policy = policy or RetryPolicy()
    when = now or utcnow()
    row = session.get(OutboxMessage, message_id, with_for_update=True)
    if row is None:
        raise LookupError(f"no outbox message {message_id}")
    session.add(
        OutboxAttempt(
            message_key=message_id, attempted_at=when, outcome=outcome, ack=ack, error=error
        )
    )
    row.attempts += 1
    if ack is not None:
        row.ack = ack
        row.ack_code = outcome
    if outcome in {"AA", "CA"}:
        row.state = DELIVERED
        row.delivered_at = when
        row.last_error = ""
        return row.state
    row.last_error = error or outcome
    if outcome in _REJECTS:
        row.rejects += 1
        if policy.max_rejects and row.rejects >= policy.max_rejects:
            row.state = FAILED
            return row.state
    row.next_attempt_at = when + policy.delay(row.attempts)
    return row.state


def outbox_counts(session: Session) -> dict[str, int]:
    """Messages per state, for the status page and the tests."""
    rows = session.execute(
        select(OutboxMessage.state, func.count()).group_by(OutboxMessage.state)
    ).all()
    return {state: count for state, count in rows}
