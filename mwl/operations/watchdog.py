"""The watchdog: what goes wrong quietly, noticed before a radiographer calls.

Each round computes the conditions that hold now (the HL7 feed silent, a scanner
silent or failing, the RIS outbox backing up, steps without a station AE, steps
still SCHEDULED long after their start) and compares them with the alerts firing:
a new condition fires an alert, a condition gone resolves it. Both are written to
the audit trail in the round's transaction; notifications (mwl.operations.notify)
go after the commit, and again on later rounds until they succeed.

A silence check is only evaluated within the hours watched that weekday: outside
them its alert neither fires nor resolves (a feed silent at 18:55 is not "back" at
19:00), but a message arriving resolves it at once. Nothing here names a patient:
alerts carry AE titles and counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.domain import SpsStatus
from mwl.operations.audit import record_event
from mwl.operations.outbox import PENDING
from mwl.store.leases import SingletonLease
from mwl.store.models import (
    Hl7Message,
    OutboxMessage,
    QueryLogEntry,
    ScheduledProcedureStep,
    WatchdogAlert,
    utcnow,
)

logger = logging.getLogger(__name__)

FIRING, RESOLVED = "firing", "resolved"
# The kinds of alert, in the order the page lists them; metrics label by these only.
KINDS = (
    "hl7_silent",
    "scanner_silent",
    "scanner_failing",
    "outbox_backlog",
    "missing_station",
    "overdue_steps",
)
# Who the audit trail names for what the watchdog records.
ACTOR = "watchdog"
# A scanner is "known" when it queried within this many days.
KNOWN_SCANNER_DAYS = 7
# Failures are counted among the queries of the last quarter of an hour.
FAILURE_WINDOW = dt.timedelta(minutes=15)
# C-FIND statuses that are not failures: success, cancel (the modality's choice).
_NOT_FAILED = {0x0000, 0xFE00}
# A round reads at most this many recent queries for the failure check.
_RECENT_QUERIES = 5000


@dataclass(frozen=True)
class Condition:
    """Something wrong now: what the alert with ``key`` says."""

    key: str
    kind: str
    subject: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Assessment:
    """A round's findings: the conditions, and the kinds that were not evaluated."""

    conditions: dict[str, Condition]
    not_evaluated: frozenset[str]


@dataclass(frozen=True)
class Alert:
    """One alert as the page, metrics and notifications see it (detached)."""

    key: int
    alert_key: str
    kind: str
    subject: str
    summary: str
    details: dict[str, Any]
    state: str
    fired_at: dt.datetime  # naive UTC
    resolved_at: dt.datetime | None


def _alert(row: WatchdogAlert) -> Alert:
    return Alert(
        row.id,
        row.key,
        row.kind,
        row.subject,
        row.summary,
        json.loads(row.details or "{}"),
        row.state,
        row.fired_at,
        row.resolved_at,
    )


def watched_since(settings: Settings, local_now: dt.datetime) -> dt.datetime | None:
    """When today's watched hours began (naive local), or None outside them."""
    window = settings.watchdog_hours[local_now.weekday()]
    if not window:
        return None
    start, _, end = window.partition("-")
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    opens = midnight + dt.timedelta(hours=int(start))
    closes = midnight + dt.timedelta(hours=int(end))
    return opens if opens <= local_now < closes else None


def _silence(
    since: dt.datetime | None, now: dt.datetime, opened_utc: dt.datetime, minutes: float
) -> float | None:
    """Minutes of silence worth an alert, or None (counted from when watching began)."""
    start = max(since, opened_utc) if since is not None else opened_utc
    silent = (now - start).total_seconds() / 60
    return silent if silent >= minutes else None


def _hl7_silent(
    session: Session, settings: Settings, now: dt.datetime, opened: dt.datetime
) -> Iterable[Condition]:
    minutes = settings.watchdog_hl7_silent_minutes
    last = session.scalar(select(func.max(Hl7Message.received_at)))
    silent = _silence(last, now, opened, minutes)
    if silent is not None:
        yield Condition(
            "hl7_silent",
            "hl7_silent",
            "HL7",
            f"no HL7 message for {silent:.0f} minutes (threshold {minutes:g})",
            {"minutes": round(silent), "threshold": minutes, "last": _iso(last)},
        )


def _scanners_silent(
    session: Session, settings: Settings, now: dt.datetime, opened: dt.datetime
) -> Iterable[Condition]:
    minutes = settings.watchdog_scanner_silent_minutes
    rows = session.execute(
        select(QueryLogEntry.calling_ae_title, func.max(QueryLogEntry.received_at))
        .where(QueryLogEntry.received_at >= now - dt.timedelta(days=KNOWN_SCANNER_DAYS))
        .group_by(QueryLogEntry.calling_ae_title)
    ).all()
    for ae_title, last in rows:
        silent = _silence(last, now, opened, minutes)
        if ae_title and silent is not None:
            yield Condition(
                f"scanner_silent:{ae_title}",
                "scanner_silent",
                ae_title,
                f"{ae_title} has not queried the worklist for {silent:.0f} minutes",
                {"minutes": round(silent), "threshold": minutes, "last": _iso(last)},
            )


def _scanners_failing(
    session: Session, settings: Settings, now: dt.datetime
) -> Iterable[Condition]:
    needed = settings.watchdog_scanner_failures
    rows = session.execute(
        select(QueryLogEntry.calling_ae_title, QueryLogEntry.status)
        .where(QueryLogEntry.received_at >= now - FAILURE_WINDOW)
        .order_by(QueryLogEntry.received_at.desc(), QueryLogEntry.id.desc())
        .limit(_RECENT_QUERIES)
    ).all()
    newest: dict[str, list[int]] = {}
    for ae_title, status in rows:
        statuses = newest.setdefault(ae_title, [])
        if len(statuses) < needed:
            statuses.append(status)
    for ae_title, statuses in sorted(newest.items()):
        if len(statuses) == needed and all(s not in _NOT_FAILED for s in statuses):
            yield Condition(
                f"scanner_failing:{ae_title}",
                "scanner_failing",
                ae_title,
                f"the last {needed} worklist queries of {ae_title} failed "
                f"(last status 0x{statuses[0]:04X})",
                {"count": needed, "status": f"0x{statuses[0]:04X}"},
            )


def _outbox_backlog(session: Session, settings: Settings, now: dt.datetime) -> Iterable[Condition]:
    minutes = settings.watchdog_outbox_minutes
    pending, oldest = session.execute(
        select(func.count(), func.min(OutboxMessage.created_at)).where(
            OutboxMessage.state == PENDING
        )
    ).one()
    if oldest is None:
        return
    age = (now - oldest).total_seconds() / 60
    if age >= minutes:
        yield Condition(
            "outbox_backlog",
            "outbox_backlog",
            "RIS",
            f"{pending} RIS status message(s) waiting, the oldest for {age:.0f} minutes",
            {"count": int(pending), "minutes": round(age), "threshold": minutes},
        )


def _steps_today(local_now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    midnight = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight, midnight + dt.timedelta(days=1)


def _missing_station(session: Session, local_now: dt.datetime) -> Iterable[Condition]:
    start, end = _steps_today(local_now)
    rows = session.execute(
        select(ScheduledProcedureStep.modality, func.count())
        .where(
            ScheduledProcedureStep.start_datetime >= start,
            ScheduledProcedureStep.start_datetime < end,
            ScheduledProcedureStep.status == SpsStatus.SCHEDULED.value,
            ScheduledProcedureStep.scheduled_station_ae_title == "",
        )
        .group_by(ScheduledProcedureStep.modality)
    ).all()
    for modality, count in sorted(rows, key=lambda row: str(row[0])):
        name = modality or "?"
        yield Condition(
            f"missing_station:{name}",
            "missing_station",
            name,
            f"{count} {name} step(s) today have no Scheduled Station AE Title",
            {"count": int(count)},
        )


def _overdue(session: Session, settings: Settings, local_now: dt.datetime) -> Iterable[Condition]:
    minutes = settings.watchdog_overdue_minutes
    start, _ = _steps_today(local_now)
    rows = session.execute(
        select(
            ScheduledProcedureStep.scheduled_station_ae_title,
            ScheduledProcedureStep.modality,
            func.count(),
        )
        .where(
            ScheduledProcedureStep.start_datetime >= start,
            ScheduledProcedureStep.start_datetime < local_now - dt.timedelta(minutes=minutes),
            ScheduledProcedureStep.status == SpsStatus.SCHEDULED.value,
        )
        .group_by(
            ScheduledProcedureStep.scheduled_station_ae_title, ScheduledProcedureStep.modality
        )
    ).all()
    for station, modality, count in sorted(rows, key=lambda row: (str(row[0]), str(row[1]))):
        name = station or modality or "?"
        yield Condition(
            f"overdue_steps:{name}",
            "overdue_steps",
            name,
            f"{count} step(s) for {name} still SCHEDULED {minutes:g}+ minutes after their start",
            {"count": int(count), "threshold": minutes},
        )


def _iso(value: dt.datetime | None) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat() if value is not None else ""


def assess(
    session: Session,
    settings: Settings,
    now: dt.datetime,
    local_now: dt.datetime,
    *,
    started: dt.datetime | None = None,
) -> Assessment:
    """What is wrong now. ``now`` and ``started`` are naive UTC, ``local_now`` site time.

    A silence is counted from the newest message or query, but never from before
    the watched hours began or the watchdog ``started``: it cannot vouch for more.
    """
    found: list[Condition] = []
    skipped: set[str] = set()
    opened_local = watched_since(settings, local_now)
    opened = None if opened_local is None else now - (local_now - opened_local)
    if opened is not None and started is not None:
        opened = max(opened, started)
    for kind, threshold, check in (
        ("hl7_silent", settings.watchdog_hl7_silent_minutes, _hl7_silent),
        ("scanner_silent", settings.watchdog_scanner_silent_minutes, _scanners_silent),
    ):
        if threshold and opened is not None:
            found.extend(check(session, settings, now, opened))
        elif threshold:
            skipped.add(kind)  # outside the watched hours: leave its alerts as they are
    if settings.watchdog_scanner_failures:
        found.extend(_scanners_failing(session, settings, now))
    if settings.watchdog_outbox_minutes:
        found.extend(_outbox_backlog(session, settings, now))
    if settings.watchdog_missing_station:
        found.extend(_missing_station(session, local_now))
    if settings.watchdog_overdue_minutes:
        found.extend(_overdue(session, settings, local_now))
    conditions = {c.key: c for c in found}
    if "hl7_silent" in skipped:
        # A message resolves the silence even outside the watched hours.
        last = session.scalar(select(func.max(Hl7Message.received_at)))
        if last is not None and last > now - dt.timedelta(minutes=1):
            skipped.discard("hl7_silent")
    return Assessment(conditions, frozenset(skipped))


def apply_assessment(session: Session, assessment: Assessment, now: dt.datetime) -> list[Alert]:
    """Fire and resolve alerts in ``session`` (audited); the alerts that changed state."""
    firing = {
        row.key: row
        for row in session.scalars(select(WatchdogAlert).where(WatchdogAlert.state == FIRING))
    }
    changed: list[WatchdogAlert] = []
    for key, condition in assessment.conditions.items():
        row = firing.get(key)
        if row is not None:
            row.summary = condition.summary
            row.details = json.dumps(condition.details, default=str)
            continue
        row = WatchdogAlert(
            key=key,
            kind=condition.kind,
            subject=condition.subject[:64],
            summary=condition.summary,
            details=json.dumps(condition.details, default=str),
            state=FIRING,
            fired_at=now,
            notified="",
        )
        session.add(row)
        record_event(session, ACTOR, "alert firing", subject=key, reason=condition.summary)
        logger.warning("watchdog: %s", condition.summary)
        changed.append(row)
    for key, row in firing.items():
        if key in assessment.conditions or row.kind in assessment.not_evaluated:
            continue
        row.state, row.resolved_at = RESOLVED, now
        record_event(session, ACTOR, "alert resolved", subject=key, reason=row.summary)
        logger.info("watchdog: resolved: %s", row.summary)
        changed.append(row)
    session.flush()
    return [_alert(row) for row in changed]


def firing_alerts(session: Session) -> list[Alert]:
    """The alerts firing now, in the order of KINDS, then subject."""
    rows = session.scalars(select(WatchdogAlert).where(WatchdogAlert.state == FIRING)).all()
    order = {kind: n for n, kind in enumerate(KINDS)}
    return sorted((_alert(row) for row in rows), key=lambda a: (order.get(a.kind, 99), a.subject))


def recent_alerts(session: Session, limit: int = 100) -> list[Alert]:
    """The newest alerts, firing or resolved, newest first."""
    rows = session.scalars(
        select(WatchdogAlert)
        .order_by(WatchdogAlert.fired_at.desc(), WatchdogAlert.id.desc())
        .limit(limit)
    )
    return [_alert(row) for row in rows]


def firing_counts(session: Session) -> dict[str, int]:
    """Firing alerts by kind (every kind present, 0 when none), for the metrics."""
    counts = dict.fromkeys(KINDS, 0)
    for kind, count in session.execute(
        select(WatchdogAlert.kind, func.count())
        .where(WatchdogAlert.state == FIRING)
        .group_by(WatchdogAlert.kind)
    ):
        if kind in counts:
            counts[kind] = int(count)
    return counts


def unnotified(session: Session, limit: int = 50) -> list[Alert]:
    """Alerts whose current state was not yet told to e-mail and the webhook."""
    rows = session.scalars(
        select(WatchdogAlert)
        .where(WatchdogAlert.notified != WatchdogAlert.state)
        .order_by(WatchdogAlert.id)
        .limit(limit)
    )
    return [_alert(row) for row in rows]


def mark_notified(session: Session, key: int, state: str) -> None:
    row = session.get(WatchdogAlert, key)
    if row is not None and row.state == state:
        row.notified = state


class Watchdog:
    """Runs the rounds in a thread on the broker that holds the ``watchdog`` lease.

    Parameters
    ----------
    settings
        Callable returning the current settings (live: thresholds change without a
        restart).
    session_factory
        A writer session factory.
    notify
        Sends one alert's state (e-mail, webhook); True when every channel took it.
    local_now
        The site's local time, naive (a parameter so tests can drive it).
    started
        Since when this broker watches (naive UTC; default: now). Silence before it
        is not counted.
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        session_factory: sessionmaker[Session],
        notify: Callable[[Settings, Alert], bool],
        *,
        local_now: Callable[[], dt.datetime] = dt.datetime.now,
        started: dt.datetime | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = session_factory
        self._notify = notify
        self._local_now = local_now
        self._started = started or utcnow()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with session_factory() as session:
            base = settings()
            self._lease = SingletonLease(
                session.get_bind().engine,
                "watchdog",
                keepalive_seconds=base.lease_keepalive_seconds,
                lifetime_seconds=base.lease_lifetime_seconds,
            )
        self.rounds = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the watchdog is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-watchdog", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=30)
        self._lease.release()

    def run_once(self) -> list[Alert]:
        """One round (if this broker holds the lease): the alerts that changed state."""
        settings = self._settings()
        if not self._lease.acquire():
            return []
        now = utcnow()
        with self._sessions.begin() as session:
            assessment = assess(session, settings, now, self._local_now(), started=self._started)
            changed = apply_assessment(session, assessment, now)
        self._send_notifications(settings)
        self.rounds += 1
        return changed

    def _send_notifications(self, settings: Settings) -> None:
        with self._sessions() as session:
            waiting = unnotified(session)
        for alert in waiting:
            if self._notify(settings, alert):
                with self._sessions.begin() as session:
                    mark_notified(session, alert.key, alert.state)

    def _run(self) -> None:
        while not self._stop.is_set():
            interval = self._settings().watchdog_interval_seconds
            if interval > 0:
                try:
                    self.run_once()
                except SQLAlchemyError as exc:
                    logger.error("watchdog: database failure: %s", type(exc).__name__)
                except Exception:  # the thread must not die
                    logger.exception("watchdog: unexpected error")
            self._stop.wait(interval if interval > 0 else 5.0)
