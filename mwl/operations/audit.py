"""The audit trail: who changed what, when, and the values before and after."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.store.models import AuditEvent


@dataclass(frozen=True)
class Change:
    """One field's value before and after a change."""

    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class AuditRecord:
    """An audit event as the pages and the API show it."""

    key: int
    at: dt.datetime
    username: str
    action: str
    sps_key: int | None
    subject: str
    changes: tuple[Change, ...]
    reason: str


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields of ``after`` whose value differs from ``before``, as (before, after)."""
    return {
        name: (before.get(name), value)
        for name, value in after.items()
        if before.get(name) != value
    }


def record_event(
    session: Session,
    username: str,
    action: str,
    *,
    sps_key: int | None = None,
    subject: str = "",
    changes: Mapping[str, tuple[Any, Any]] | None = None,
    reason: str = "",
) -> AuditEvent:
    """Add an audit event to the unit of work; the caller commits it with the change.

    Parameters
    ----------
    session
        The writer unit of work that makes the change, so both commit or neither does.
    username
        Who made the change (copied: the trail outlives the account).
    action
        What was done: ``edit``, ``reschedule``, ``cancel``, ``restore``, ``create``,
        ``reprocess``, ``settings``, ...
    sps_key
        The scheduled procedure step concerned, if any.
    subject
        What else identifies the change (Study Instance UID, message key, setting).
    changes
        ``{field: (before, after)}``; values must be JSON-serialisable.
    reason
        Free text the user gave, if any.
    """
    event = AuditEvent(
        username=username,
        action=action,
        sps_key=sps_key,
        subject=subject[:128],
        changes=json.dumps(
            {name: [old, new] for name, (old, new) in (changes or {}).items()},
            ensure_ascii=False,
            default=str,
        ),
        reason=reason[:255],
    )
    session.add(event)
    return event


def _record(row: AuditEvent) -> AuditRecord:
    loaded = json.loads(row.changes or "{}")
    return AuditRecord(
        key=row.id,
        at=row.at,
        username=row.username,
        action=row.action,
        sps_key=row.sps_key,
        subject=row.subject,
        changes=tuple(Change(name, pair[0], pair[1]) for name, pair in loaded.items()),
        reason=row.reason,
    )


def events_for_step(session: Session, sps_key: int) -> list[AuditRecord]:
    """The trail of one scheduled procedure step, oldest first."""
    rows = session.scalars(
        select(AuditEvent).where(AuditEvent.sps_key == sps_key).order_by(AuditEvent.id)
    )
    return [_record(row) for row in rows]


def events_for_subject(session: Session, subject: str) -> list[AuditRecord]:
    """The trail of one subject (message key, setting name, study), oldest first."""
    rows = session.scalars(
        select(AuditEvent).where(AuditEvent.subject == subject).order_by(AuditEvent.id)
    )
    return [_record(row) for row in rows]


def recent_events(session: Session, limit: int = 100) -> list[AuditRecord]:
    """The newest events first."""
    rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit))
    return [_record(row) for row in rows]
