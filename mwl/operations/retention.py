"""Retention: delete finished or stale worklist steps, old MPPS records and delivered RIS messages.

What is removed and when is configuration (``retention_*`` settings), after the
per-status delays that dcm4chee-arc-light offers (#3988: delete delay per status;
#3232: idle timeout for SCHEDULED steps nobody performed):

- scheduled steps whose status is in ``retention_step_days``, that many days after
  their last change; a requested procedure goes with its last step;
- SCHEDULED steps unchanged for ``retention_scheduled_idle_days`` whose start is as
  long past (0: never);
- performed steps (MPPS) per status in ``retention_mpps_days``, after their last change;
- outbox messages delivered more than ``retention_outbox_days`` ago (FAILED ones
  stay for an operator to look at).

Deletion goes in batches of ``retention_batch_size`` rows, one short transaction
each, so the HL7 writer never waits long behind it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, and_, delete, false, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from mwl.config import Settings
from mwl.domain import SpsStatus
from mwl.operations import metrics
from mwl.operations.outbox import DELIVERED
from mwl.store.leases import SingletonLease
from mwl.store.models import (
    OutboxMessage,
    PerformedProcedureStep,
    RequestedProcedure,
    ScheduledProcedureStep,
    utcnow,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long rows are kept, in days (fractions allowed)."""

    step_days: Mapping[str, float] = field(default_factory=dict)
    mpps_days: Mapping[str, float] = field(default_factory=dict)
    scheduled_idle_days: float = 0.0
    outbox_days: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        """The ``retention_*`` settings."""
        return cls(
            step_days=dict(settings.retention_step_days),
            mpps_days=dict(settings.retention_mpps_days),
            scheduled_idle_days=settings.retention_scheduled_idle_days,
            outbox_days=settings.retention_outbox_days,
        )


@dataclass
class PurgeCounts:
    """Rows purged (or, in a dry run, to be purged) per kind."""

    steps: int = 0
    procedures: int = 0
    performed_steps: int = 0
    outbox_messages: int = 0

    @property
    def total(self) -> int:
        """All rows."""
        return self.steps + self.performed_steps + self.outbox_messages

    def add(self, other: PurgeCounts) -> None:
        """Add ``other`` to these counts."""
        self.steps += other.steps
        self.procedures += other.procedures
        self.performed_steps += other.performed_steps
        self.outbox_messages += other.outbox_messages


def _by_status(
    status_column: InstrumentedAttribute[str],
    time_column: InstrumentedAttribute[dt.datetime],
    days: Mapping[str, float],
    now: dt.datetime,
) -> ColumnElement[bool]:
    clauses = [
        and_(status_column == status, time_column < now - dt.timedelta(days=delay))
        for status, delay in sorted(days.items())
    ]
    return or_(*clauses) if clauses else false()


def _step_condition(policy: RetentionPolicy, now: dt.datetime) -> ColumnElement[bool]:
    condition = _by_status(
        ScheduledProcedureStep.status, ScheduledProcedureStep.updated_at, policy.step_days, now
    )
    if policy.scheduled_idle_days > 0:
        idle = dt.timedelta(days=policy.scheduled_idle_days)
        # Start times are the department's local time; updated_at is UTC.
        local_now = now.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)
        condition = or_(
            condition,
            and_(
                ScheduledProcedureStep.status == SpsStatus.SCHEDULED.value,
                ScheduledProcedureStep.updated_at < now - idle,
                ScheduledProcedureStep.start_datetime < local_now - idle,
            ),
        )
    return condition


def _mpps_condition(policy: RetentionPolicy, now: dt.datetime) -> ColumnElement[bool]:
    return _by_status(
        PerformedProcedureStep.status, PerformedProcedureStep.updated_at, policy.mpps_days, now
    )


def _outbox_condition(policy: RetentionPolicy, now: dt.datetime) -> ColumnElement[bool]:
    if policy.outbox_days <= 0:
        return false()
    return and_(
        OutboxMessage.state == DELIVERED,
        OutboxMessage.delivered_at < now - dt.timedelta(days=policy.outbox_days),
    )


def count_purgeable(
    session: Session, policy: RetentionPolicy, now: dt.datetime | None = None
) -> PurgeCounts:
    """How many rows :func:`purge` would delete now (the dry run)."""
    now = now or utcnow()

    def count(model: type, condition: ColumnElement[bool]) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(condition)) or 0)

    return PurgeCounts(
        steps=count(ScheduledProcedureStep, _step_condition(policy, now)),
        performed_steps=count(PerformedProcedureStep, _mpps_condition(policy, now)),
        outbox_messages=count(OutboxMessage, _outbox_condition(policy, now)),
    )


def purge_batch(
    session: Session, policy: RetentionPolicy, now: dt.datetime, batch_size: int
) -> PurgeCounts:
    """Delete at most ``batch_size`` rows of each kind; the caller commits.

    Links between performed and scheduled steps go with either side (ON DELETE
    CASCADE); a requested procedure whose last step is deleted goes too.
    """
    counts = PurgeCounts()
    step_rows = session.execute(
        select(ScheduledProcedureStep.id, ScheduledProcedureStep.procedure_key)
        .where(_step_condition(policy, now))
        .order_by(ScheduledProcedureStep.id)
        .limit(batch_size)
    ).all()
    if step_rows:
        session.execute(
            delete(ScheduledProcedureStep).where(
                ScheduledProcedureStep.id.in_([r.id for r in step_rows])
            ),
            execution_options={"synchronize_session": False},
        )
        counts.steps = len(step_rows)
        keys = sorted({r.procedure_key for r in step_rows})
        orphaned = select(ScheduledProcedureStep.id).where(
            ScheduledProcedureStep.procedure_key == RequestedProcedure.id
        )
        result = session.execute(
            delete(RequestedProcedure).where(RequestedProcedure.id.in_(keys), ~orphaned.exists()),
            execution_options={"synchronize_session": False},
        )
        counts.procedures = int(getattr(result, "rowcount", 0) or 0)
    mpps_ids = session.scalars(
        select(PerformedProcedureStep.id)
        .where(_mpps_condition(policy, now))
        .order_by(PerformedProcedureStep.id)
        .limit(batch_size)
    ).all()
    if mpps_ids:
        session.execute(
            delete(PerformedProcedureStep).where(PerformedProcedureStep.id.in_(mpps_ids)),
            execution_options={"synchronize_session": False},
        )
        counts.performed_steps = len(mpps_ids)
    outbox_ids = session.scalars(
        select(OutboxMessage.id)
        .where(_outbox_condition(policy, now))
        .order_by(OutboxMessage.id)
        .limit(batch_size)
    ).all()
    if outbox_ids:
        session.execute(
            delete(OutboxMessage).where(OutboxMessage.id.in_(outbox_ids)),
            execution_options={"synchronize_session": False},
        )
        counts.outbox_messages = len(outbox_ids)
    return counts


def purge(
    session_factory: sessionmaker[Session],
    policy: RetentionPolicy,
    *,
    now: dt.datetime | None = None,
    batch_size: int = 500,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
) -> PurgeCounts:
    """Apply the retention policy, batch after batch, one transaction per batch.

    Parameters
    ----------
    session_factory
        A writer session factory.
    policy
        What to delete after how long.
    now
        The reference time (naive UTC); defaults to the current time, fixed for the run.
    batch_size
        Rows of each kind per transaction.
    dry_run
        Count only; delete nothing.
    progress
        Called as ``progress(done, total)`` after each batch (total from the count
        at the start).

    Returns
    -------
    PurgeCounts
        What was deleted (or, in a dry run, would be).
    """
    now = now or utcnow()
    with session_factory() as session:
        planned = count_purgeable(session, policy, now)
    if dry_run or planned.total == 0:
        if progress is not None:
            progress(planned.total, planned.total)
        return planned
    done = PurgeCounts()
    # Bounded: each batch deletes at least one row or the loop ends; rows that match
    # only later (a new completion) wait for the next run.
    for _ in range(planned.total + 1):
        with session_factory.begin() as session:
            batch = purge_batch(session, policy, now, batch_size)
        done.add(batch)
        if progress is not None:
            progress(min(done.total, planned.total), planned.total)
        if batch.total == 0 or done.total >= planned.total:
            break
    return done


# How often a broker that does not run housekeeping checks whether the one that did
# is gone: the fail-over time of the job after its holder dies.
STANDBY_CHECK_SECONDS = 2.0


class Housekeeper:
    """Runs :func:`purge` in a thread: at start, then every ``retention_interval_seconds``.

    Brokers sharing a database run it once between them: the one holding the
    ``housekeeping`` lease (:class:`~mwl.store.leases.SingletonLease`) purges, the
    others check every :data:`STANDBY_CHECK_SECONDS` whether it is still held and take
    over when its holder is gone.

    Parameters
    ----------
    settings
        ``retention_*``.
    session_factory
        A writer session factory.
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        if settings.retention_interval_seconds <= 0:
            raise ValueError("housekeeping is off (retention_interval_seconds is 0)")
        self._settings = settings
        self._session_factory = session_factory
        self._policy = RetentionPolicy.from_settings(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0  # completed runs, for the status page and tests
        with session_factory() as session:
            self._lease = SingletonLease(session.get_bind().engine, "housekeeping")
        self._standing_by = False

    def start(self) -> None:
        """Start the housekeeping thread."""
        if self._thread is not None:
            raise RuntimeError("housekeeping is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-housekeeping", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the thread (after the batch in progress). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=60)
            self._lease.release()

    def _holds_lease(self) -> bool:
        """Whether this broker runs housekeeping now (logged when that changes)."""
        held = self._lease.acquire()
        if not held and not self._standing_by:
            logger.info("another broker runs housekeeping on this database; standing by")
        elif held and self._standing_by:
            logger.info("this broker now runs housekeeping on this database")
        self._standing_by = not held
        return held

    def _run(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while not self._stop.is_set():
            wait = self._settings.retention_interval_seconds
            try:
                if not self._holds_lease():
                    self._stop.wait(min(wait, STANDBY_CHECK_SECONDS))
                    continue
                counts = purge(
                    self._session_factory,
                    self._policy,
                    batch_size=self._settings.retention_batch_size,
                )
                metrics.retention_ran(
                    True,
                    {
                        "steps": counts.steps,
                        "procedures": counts.procedures,
                        "mpps": counts.performed_steps,
                        "outbox": counts.outbox_messages,
                    },
                )
                if counts.total:
                    logger.info(
                        "housekeeping purged %d step(s), %d procedure(s), %d MPPS, "
                        "%d outbox message(s)",
                        counts.steps,
                        counts.procedures,
                        counts.performed_steps,
                        counts.outbox_messages,
                    )
            except SQLAlchemyError as exc:
                metrics.retention_ran(False)
                logger.error("housekeeping: database failure: %s", type(exc).__name__)
                if not self._lease.held:  # a standby tries again soon, not in an hour
                    wait = min(wait, STANDBY_CHECK_SECONDS)
            self.runs += 1
            self._stop.wait(wait)
