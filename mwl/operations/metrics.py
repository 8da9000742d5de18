"""The broker's Prometheus metrics: what the adapters record, what ``/metrics`` shows.

The metric objects live in one registry of their own (:data:`REGISTRY`), not in
``prometheus_client``'s global one, so ``/metrics`` shows the broker's metrics and the
process's, nothing a library registered by chance. The adapters record through the
functions below, which do nothing while metrics are off (``metrics_enabled = false``,
for the overhead benchmark). Gauges that describe the database (outbox depth, pool)
are read when Prometheus scrapes, by :class:`DatabaseCollector`, so they cost nothing
between scrapes.

Labels that come from the wire (calling AE titles, HL7 message types) are passed
through :func:`bounded`: a value outside the configured or supported set becomes
``other``, so a peer cannot grow the number of series without bound. No label ever
holds patient data.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from mwl.operations.outbox import FAILED, PENDING
from mwl.operations.watchdog import firing_counts
from mwl.store.models import OutboxMessage, utcnow

logger = logging.getLogger(__name__)

#: The label value of everything outside the known set.
OTHER = "other"

# The *_created series double every counter for a use (counter resets) that
# Prometheus handles by itself.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Seconds from a frame's arrival to its ACK: most are a few milliseconds (one commit),
# seconds mean the database is slow and the RIS will soon time out.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MATCH_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)

HL7_MESSAGES = Counter(
    "mwl_hl7_messages",
    "HL7 messages answered, by message type (MSH-9) and ACK code (AA, AE, AR)",
    ["type", "outcome"],
    registry=REGISTRY,
)
HL7_ACK_SECONDS = Histogram(
    "mwl_hl7_ack_seconds",
    "Seconds from a received HL7 message to its ACK (committed before it is sent)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CFIND = Counter(
    "mwl_dicom_cfind",
    "Worklist C-FIND requests answered, by calling AE title and final status"
    " (success, warning, cancel, failure, pending: ended without a final status)",
    ["calling_ae", "status"],
    registry=REGISTRY,
)
CFIND_SECONDS = Histogram(
    "mwl_dicom_cfind_duration_seconds",
    "Seconds from a C-FIND request to its last response",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
CFIND_MATCHES = Histogram(
    "mwl_dicom_cfind_matches",
    "Matches sent per C-FIND",
    buckets=_MATCH_BUCKETS,
    registry=REGISTRY,
)
ASSOCIATIONS_OPEN = Gauge(
    "mwl_dicom_associations_open",
    "DICOM associations open now (negotiating or established)",
    registry=REGISTRY,
)
MPPS = Counter(
    "mwl_dicom_mpps",
    "MPPS N-CREATE and N-SET answered, by operation and status (the Performed"
    " Procedure Step Status accepted, or refused)",
    ["operation", "status"],
    registry=REGISTRY,
)
RETENTION_RUNS = Counter(
    "mwl_retention_runs",
    "Housekeeping (retention) runs, by outcome (ok, failed)",
    ["outcome"],
    registry=REGISTRY,
)
RETENTION_DELETED = Counter(
    "mwl_retention_deleted_rows",
    "Rows deleted by housekeeping, by kind (steps, procedures, mpps, outbox)",
    ["kind"],
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "mwl_database_errors",
    "Database errors raised to the broker, by SQLAlchemy error class",
    ["error"],
    registry=REGISTRY,
)
LOGIN_FAILURES = Counter(
    "mwl_web_login_failures",
    "Failed web logins, by reason (password: wrong name or password; throttled:"
    " refused during a failed-login delay)",
    ["reason"],
    registry=REGISTRY,
)

_CFIND_STATUSES = ("success", "warning", "cancel", "failure", "pending")
_MPPS_STATUSES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED", "refused")
_DATABASE_ERRORS = frozenset(
    {
        "OperationalError",
        "IntegrityError",
        "DataError",
        "ProgrammingError",
        "InterfaceError",
        "DatabaseError",
        "InternalError",
        "NotSupportedError",
        "TimeoutError",
        "DisconnectionError",
    }
)


class _Switch:
    """Whether the recording functions record; set once at start-up."""

    enabled = True


_switch = _Switch()


def configure(*, enabled: bool) -> None:
    """Turn recording on or off (``metrics_enabled``); on by default."""
    _switch.enabled = enabled


def enabled() -> bool:
    """Whether metrics are recorded (and ``/metrics`` is served)."""
    return _switch.enabled


def bounded(value: str, allowed: Collection[str]) -> str:
    """``value`` when it is one of ``allowed``, else :data:`OTHER`."""
    return value if value in allowed else OTHER


def hl7_answered(message_type: str, outcome: str, seconds: float) -> None:
    """One HL7 message answered: its (bounded) type, ACK code and time to the ACK."""
    if not _switch.enabled:
        return
    HL7_MESSAGES.labels(message_type, outcome if outcome in ("AA", "AE", "AR") else OTHER).inc()
    HL7_ACK_SECONDS.observe(seconds)


def cfind_status(status: int) -> str:
    """The category of a C-FIND's final status (PS3.4 Table C.4-1, PS3.7 C)."""
    if status == 0x0000:
        return "success"
    if status == 0xFE00:
        return "cancel"
    if status in (0xFF00, 0xFF01):
        return "pending"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"


def cfind_answered(calling_ae: str, status: int, seconds: float, matches: int) -> None:
    """One C-FIND ended; ``calling_ae`` already :func:`bounded` by the caller."""
    if not _switch.enabled:
        return
    CFIND.labels(calling_ae, cfind_status(status)).inc()
    CFIND_SECONDS.observe(seconds)
    CFIND_MATCHES.observe(matches)


def association_opened() -> None:
    """A DICOM association's connection was accepted."""
    if _switch.enabled:
        ASSOCIATIONS_OPEN.inc()


def association_closed() -> None:
    """A DICOM association accepted before has ended."""
    if _switch.enabled:
        ASSOCIATIONS_OPEN.dec()


def mpps_answered(operation: str, status: str) -> None:
    """One MPPS N-CREATE or N-SET answered: the status accepted, or ``refused``."""
    if _switch.enabled:
        MPPS.labels(operation, status if status in _MPPS_STATUSES else OTHER).inc()


def retention_ran(ok: bool, deleted: dict[str, int] | None = None) -> None:
    """One housekeeping run ended (``deleted``: rows per kind)."""
    if not _switch.enabled:
        return
    RETENTION_RUNS.labels("ok" if ok else "failed").inc()
    for kind, count in (deleted or {}).items():
        if count:
            RETENTION_DELETED.labels(kind).inc(count)


def login_failed(reason: str) -> None:
    """A web login failed: ``password`` or ``throttled``."""
    if _switch.enabled:
        LOGIN_FAILURES.labels(reason if reason in ("password", "throttled") else OTHER).inc()


def _database_error(context: Any) -> None:
    # SQLAlchemy's handle_error event: every error a statement or connect raised.
    if _switch.enabled:
        name = type(context.sqlalchemy_exception or context.original_exception).__name__
        DATABASE_ERRORS.labels(bounded(name, _DATABASE_ERRORS)).inc()


class DatabaseCollector(Collector):
    """Reads the outbox and the connection pool when Prometheus scrapes.

    A database that does not answer makes ``mwl_database_up`` 0 and leaves the outbox
    gauges out; the scrape itself succeeds (Prometheus's ``up`` stays about the process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._failing: Callable[[Session], Mapping[str, int]] | None = None

    def watch_profile_checks(self, failing: Callable[[Session], Mapping[str, int]]) -> None:
        """Count, per station AE title, the open items its device would not take.

        ``failing`` is :func:`mwl.worklist.device.failing_counts` with the settings in
        force, lent by the composition root (this package imports no worklist code).
        Its keys are configured AE titles, so the label stays bounded.
        """
        with self._lock:
            self._failing = failing

    def watch(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        """Read this engine's pool and, through ``sessions``, its outbox."""
        with self._lock:
            self._engine, self._sessions = engine, sessions

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Nothing to check for duplicate names at registration: the names are ours.
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            engine, sessions = self._engine, self._sessions
        if engine is None or sessions is None or not _switch.enabled:
            return
        yield from _pool_metrics(engine)
        up = GaugeMetricFamily("mwl_database_up", "1 while the database answers a query")
        try:
            with sessions() as session:
                outbox = outbox_depth(session)
                alerts = firing_counts(session)
        except SQLAlchemyError as exc:
            logger.warning("metrics: the database does not answer (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._profile_metrics(sessions)
        pending, failed, oldest = outbox
        yield GaugeMetricFamily(
            "mwl_outbox_pending", "RIS status messages waiting to be delivered", value=pending
        )
        yield GaugeMetricFamily(
            "mwl_outbox_failed", "RIS status messages set aside after rejects", value=failed
        )
        yield GaugeMetricFamily(
            "mwl_outbox_oldest_pending_age_seconds",
            "Age of the oldest RIS status message waiting (0 when none waits)",
            value=oldest,
        )
        firing = GaugeMetricFamily(
            "mwl_watchdog_alerts_firing", "Watchdog alerts firing now, by kind", labels=["kind"]
        )
        for kind, count in alerts.items():
            firing.add_metric([kind], count)
        yield firing

    def _profile_metrics(self, sessions: sessionmaker[Session]) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            failing = self._failing
        if failing is None:
            return
        try:
            with sessions() as session:
                counts = failing(session)
        except SQLAlchemyError as exc:
            logger.warning("metrics: profile checks failed (%s)", type(exc).__name__)
            return
        gauge = GaugeMetricFamily(
            "mwl_items_failing_profile",
            "Open worklist items the station's device would drop or truncate (its AE profile)",
            labels=["calling_ae"],
        )
        for ae, count in sorted(counts.items()):
            gauge.add_metric([bounded(ae, counts)], count)
        yield gauge


def outbox_depth(session: Session) -> tuple[int, int, float]:
    """Pending messages, failed ones, and the oldest pending one's age in seconds."""
    pending, oldest = session.execute(
        select(func.count(), func.min(OutboxMessage.created_at)).where(
            OutboxMessage.state == PENDING
        )
    ).one()
    failed = session.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.state == FAILED)
    )
    age = 0.0
    if oldest is not None:
        age = max(0.0, (utcnow() - oldest).total_seconds())
    return int(pending), int(failed or 0), age


def _pool_metrics(engine: Engine) -> Iterator[GaugeMetricFamily]:
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return
    yield GaugeMetricFamily("mwl_database_pool_size", "Connections the pool keeps", pool.size())
    yield GaugeMetricFamily(
        "mwl_database_pool_checked_out", "Pool connections in use now", pool.checkedout()
    )
    yield GaugeMetricFamily(
        "mwl_database_pool_overflow",
        "Connections beyond the pool size (negative: room left before the size)",
        pool.overflow(),
    )


DATABASE = DatabaseCollector()
REGISTRY.register(DATABASE)


def watch_database(engine: Engine, sessions: sessionmaker[Session]) -> None:
    """Count ``engine``'s errors, and read its pool and outbox at each scrape."""
    if not event.contains(engine, "handle_error", _database_error):
        event.listen(engine, "handle_error", _database_error)
    DATABASE.watch(engine, sessions)


def watch_profile_checks(failing: Callable[[Session], Mapping[str, int]]) -> None:
    """Report ``mwl_items_failing_profile`` at each scrape (see :class:`DatabaseCollector`)."""
    DATABASE.watch_profile_checks(failing)
