"""The audit queue: messages written with their event, handed to the sender, deleted once sent.

:func:`enqueue` adds a row in the caller's transaction, so a message exists exactly
when the change it records does, at no cost of its own (no extra commit, no fsync).
The sender (:mod:`mwl.audit.sender`) takes :func:`due` rows, and reports each round
with :func:`delivered` or :func:`retry_later`, as the RIS outbox does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from mwl.store.models import AuditQueueMessage, utcnow


def enqueue(session: Session, message: str, *, now: dt.datetime | None = None) -> None:
    """Queue ``message`` (an AuditMessage document) in the caller's transaction."""
    when = now or utcnow()
    session.add(AuditQueueMessage(created_at=when, message=message, next_attempt_at=when))


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    message: str
    attempts: int


def due(session: Session, limit: int = 100, now: dt.datetime | None = None) -> list[QueuedMessage]:
    """The messages to send now, oldest first."""
    rows = session.execute(
        select(AuditQueueMessage.id, AuditQueueMessage.message, AuditQueueMessage.attempts)
        .where(AuditQueueMessage.next_attempt_at <= (now or utcnow()))
        .order_by(AuditQueueMessage.id)
        .limit(limit)
    ).all()
    return [QueuedMessage(*row) for row in rows]


def delivered(session: Session, ids: list[int]) -> None:
    """The transport took these: they leave the queue."""
    if ids:
        session.execute(delete(AuditQueueMessage).where(AuditQueueMessage.id.in_(ids)))


def retry_later(
    session: Session,
    ids: list[int],
    error: str,
    delay: dt.timedelta,
    now: dt.datetime | None = None,
) -> None:
    """These could not be sent: try again after ``delay``; nothing is ever dropped."""
    if ids:
        session.execute(
            update(AuditQueueMessage)
            .where(AuditQueueMessage.id.in_(ids))
            .values(
                attempts=AuditQueueMessage.attempts + 1,
                next_attempt_at=(now or utcnow()) + delay,
                last_error=error[:500],
            )
        )


def pending(session: Session) -> int:
    """Messages waiting, for the status page and the tests."""
    return session.scalar(select(func.count()).select_from(AuditQueueMessage)) or 0
