"""Engine and session factory: the one place that knows how to talk to the database."""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.orm import Session as Session  # re-exported for type hints

# Constraint names that Alembic can find again on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_SECONDS = 10


class Base(DeclarativeBase):
    """Declarative base of every ORM model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the C-FIND and web readers run while HL7 writes; the busy timeout
    # makes a second writer wait instead of failing at once. synchronous=FULL syncs
    # the WAL at every commit: an acknowledged HL7 message survives a power cut
    # (NORMAL syncs only at checkpoints, which survives a crash of the process only).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


WRITER_OPTION = "mwl_writer"
_TURN = "mwl_writer_turn"


class _WriterTurns:
    """Writers of one SQLite database take turns on a lock of this process.

    SQLite's busy handler makes a waiting writer sleep and poll, in steps that grow
    to 100 ms; with four HL7 connections and the C-FIND query log writing at once,
    a writer could wait seconds while the lock was free most of the time (ACK p99
    0.6 s at 140 msg/s, docs/performance.md). A Python lock hands over the moment
    the previous writer's connection is back in the pool, i.e. after its commit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def take(self, conn: Any) -> None:
        # Bounded like the busy timeout: a thread that already holds a writer session
        # must not wait for itself forever; SQLite's own handler then decides.
        if self._lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            conn.info[_TURN] = self

    def give_back(self, _dbapi_connection: Any, record: Any, *_args: Any) -> None:
        if record is not None and record.info.pop(_TURN, None) is self:
            self._lock.release()


def _begin_with(turns: _WriterTurns) -> Any:
    def begin(conn: Any) -> None:
        # A deferred BEGIN that later writes fails at once with "database is locked"
        # when another writer committed meanwhile (the busy timeout does not apply to
        # that upgrade); writers therefore take the write lock up front and wait for
        # it. Readers stay deferred so that C-FIND never queues behind HL7 in WAL mode.
        if conn.get_execution_options().get(WRITER_OPTION):
            if _TURN not in conn.info:
                turns.take(conn)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return begin


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` with the broker's connection settings.

    SQLite runs in WAL mode with a busy timeout; PostgreSQL goes through psycopg 3
    (``postgresql://`` URLs are mapped to the ``postgresql+psycopg`` driver).
    """
    from sqlalchemy import create_engine

    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        # Let SQLAlchemy emit BEGIN itself (see _begin).
        connect_args.setdefault("isolation_level", None)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        turns = _WriterTurns()
        event.listen(engine, "begin", _begin_with(turns))
        # The turn ends when the connection is back in the pool (after COMMIT or
        # ROLLBACK), or when the pool drops it.
        event.listen(engine.pool, "checkin", turns.give_back)
        event.listen(engine.pool, "invalidate", turns.give_back)
        event.listen(engine.pool, "close", turns.give_back)
        return engine
    # A database host that does not answer (failing over, cut off) fails a connect
    # after this long instead of libpq's default of waiting for ever; pre-ping finds
    # the connections a restart ended and replaces them before use.
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", CONNECT_TIMEOUT_SECONDS)
    kwargs["connect_args"] = connect_args
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(parsed, **kwargs)


def is_outage(error: BaseException) -> bool:
    """Whether a database error means the database is not there now (down, restarting).

    As opposed to a bug or a bad value: the caller answers "try again later" (HL7
    AE, a DICOM failure status, HTTP 503) instead of reporting an internal error.
    """
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return bool(getattr(error, "connection_invalidated", False))


def make_session_factory(engine: Engine, *, writer: bool = False) -> sessionmaker[Session]:
    """Return a session factory; each unit of work is ``with factory.begin() as session``.

    Parameters
    ----------
    engine
        From :func:`make_engine`; one per process.
    writer
        For units of work that write (HL7 intake, web edits): on SQLite they take the
        write lock when they begin, so concurrent writers queue instead of failing.
    """
    bind = engine.execution_options(**{WRITER_OPTION: True}) if writer else engine
    return sessionmaker(bind, expire_on_commit=False)
