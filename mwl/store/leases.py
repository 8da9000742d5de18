"""Singleton leases: one broker per database runs a job that must not run twice.

Several brokers may share one PostgreSQL database (that is how a site runs them
side by side), and several processes may share one SQLite file. Jobs such as the
RIS sender must still run once, or the RIS would get each message twice. The
lease is held for as long as the holder lives: a PostgreSQL session-level
advisory lock (released by the server when the holder's connection ends), or an
exclusive ``flock`` on a file beside the SQLite database (released by the kernel
when the holder's process ends). So a crashed holder never blocks the others.

A holder that hangs (SIGSTOP, a stuck VM) or is cut off from the database would
otherwise keep a PostgreSQL lock for as long as its TCP connection is thought alive:
its kernel still answers keepalives while the process is stopped, and without them
a cut-off peer lingers for the kernel's two hours. So the lease connection is a
connection of its own with TCP keepalive (``keepalive_seconds``, client and server
side, with ``tcp_user_timeout`` bounding unanswered sends), and the server ends its
session after ``lifetime_seconds`` without a query (``idle_session_timeout``,
PostgreSQL 14+), which releases the lock. A thread of the holder renews the lease
with a query every third of the lifetime; :meth:`SingletonLease.confirm` lets the
job check, before each piece of work, that the lease is still its own. A holder that
wakes up after losing it sees its connection gone and stands by.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

logger = logging.getLogger(__name__)

_KEEPALIVE_PROBES = 3


def lock_key(name: str, schema: str | None) -> int:
    """The advisory lock of lease ``name`` for the brokers of one schema.

    An advisory lock is per database, but brokers of different schemas (a test and
    a production installation in one database, the test suite's workers) are not
    the same site: each schema has its own leases. ``public`` keeps the key of the
    releases before, so that during a rolling upgrade both releases agree on it.
    """
    label = f"mwl:{name}" if schema in (None, "public") else f"mwl:{schema}:{name}"
    digest = hashlib.sha256(label.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SingletonLease:
    """A non-blocking, process-lifetime lease named ``name`` on ``engine``'s database.

    Parameters
    ----------
    engine
        The broker's engine; the lease is per database, not per process.
    name
        What the lease is for, e.g. ``"ris-sender"``.
    keepalive_seconds
        PostgreSQL: TCP keepalive idle time and probe interval (3 probes) of the lease
        connection; 0: the kernel's.
    lifetime_seconds
        PostgreSQL: the server ends a lease not renewed for this long; 0: held while
        the connection lives.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        keepalive_seconds: float = 0.0,
        lifetime_seconds: float = 0.0,
    ) -> None:
        self._engine = engine
        self._name = name
        self._key: int | None = None  # PostgreSQL: from the name and the schema
        self._keepalive = keepalive_seconds
        self._lifetime = lifetime_seconds
        self._connection: Connection | None = None
        self._fd: int | None = None
        # One thread at a time on the lease connection: the job's and the renewer's.
        self._lock = threading.RLock()
        self._own_engine: Engine | None = None
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()

    @property
    def held(self) -> bool:
        """Whether this object holds the lease (as far as it last checked)."""
        return self._connection is not None or self._fd is not None

    def acquire(self) -> bool:
        """Take the lease if nobody holds it, or check that we still hold it.

        Returns
        -------
        bool
            True when this holder has the lease now.
        """
        backend = self._engine.url.get_backend_name()
        if backend == "postgresql":
            return self._acquire_postgres()
        if backend == "sqlite":
            return self._acquire_file()
        return True  # no way to share the database between brokers is known

    def confirm(self) -> bool:
        """Whether the lease is still ours, asked of the database now (PostgreSQL).

        For the job before each piece of work: a holder that was stopped or cut off
        for longer than the lifetime must not go on as if it still held the lease.
        """
        if self._engine.url.get_backend_name() != "postgresql":
            return self.acquire()  # a file lock lasts as long as the process
        with self._lock:
            return self._renew()

    def release(self) -> None:
        """Give the lease up (closing the connection or file ends it)."""
        self._stop_renewing.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=10)
        with self._lock:
            self._drop_connection()
            engine, self._own_engine = self._own_engine, None
            if engine is not None:
                engine.dispose()
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                # Never back into a pool: the advisory lock belongs to the database
                # session and would stay held there.
                connection.invalidate()
                connection.close()

    def _renew(self) -> bool:
        """One query on the lease connection (the caller holds ``_lock``)."""
        connection = self._connection
        if connection is None:
            return False
        try:  # still ours while our connection lives
            connection.scalar(select(1))
            connection.commit()
            return True
        except SQLAlchemyError as exc:
            logger.warning(
                "lease %s lost with its database connection (%s)", self._name, type(exc).__name__
            )
            self._drop_connection()
            return False

    def _acquire_postgres(self) -> bool:
        with self._lock:
            if self._connection is not None and self._renew():
                return True
            connection = self._lease_engine().connect()
            try:
                if self._key is None:
                    self._key = lock_key(
                        self._name, connection.scalar(select(func.current_schema()))
                    )
                got = bool(connection.scalar(select(func.pg_try_advisory_lock(self._key))))
                if got:
                    self._set_session_limits(connection)
                # The lock belongs to the session, not the transaction: end the
                # transaction so the held connection does not sit "idle in transaction".
                connection.commit()
            except SQLAlchemyError:
                connection.invalidate()
                connection.close()
                raise
            if not got:
                connection.close()
                return False
            self._connection = connection
        self._start_renewing()
        return True

    def _lease_engine(self) -> Engine:
        """An engine without a pool for the lease connection, with TCP keepalive."""
        if self._own_engine is None:
            connect_args: dict[str, Any] = {}
            if self._keepalive:
                seconds = max(1, round(self._keepalive))
                connect_args.update(
                    keepalives=1,
                    keepalives_idle=seconds,
                    keepalives_interval=seconds,
                    keepalives_count=_KEEPALIVE_PROBES,
                )
            if self._lifetime:
                # A renewal the server does not acknowledge fails within the lifetime
                # instead of the kernel's retransmission time (about 15 minutes).
                connect_args["tcp_user_timeout"] = round(self._lifetime * 1000)
            self._own_engine = create_engine(
                self._engine.url, poolclass=NullPool, connect_args=connect_args
            )
        return self._own_engine

    def _set_session_limits(self, connection: Connection) -> None:
        """The server side: keepalive towards the holder, and the lifetime of the session."""
        limits: dict[str, str] = {}
        if self._keepalive:
            seconds = str(max(1, round(self._keepalive)))
            limits.update(
                tcp_keepalives_idle=seconds,
                tcp_keepalives_interval=seconds,
                tcp_keepalives_count=str(_KEEPALIVE_PROBES),
            )
        if self._lifetime:
            limits["tcp_user_timeout"] = str(round(self._lifetime * 1000))
            if (connection.dialect.server_version_info or (0,)) >= (14,):
                limits["idle_session_timeout"] = str(round(self._lifetime * 1000))
            else:
                logger.warning(
                    "lease %s: PostgreSQL before 14 has no idle_session_timeout; a hung "
                    "holder keeps the lease until its connection ends",
                    self._name,
                )
        for name, value in limits.items():
            connection.scalar(select(func.set_config(name, value, False)))

    def _start_renewing(self) -> None:
        if not self._lifetime or (self._renewer is not None and self._renewer.is_alive()):
            return
        self._stop_renewing.clear()
        self._renewer = threading.Thread(
            target=self._renew_until_stopped, name=f"mwl-lease-{self._name}", daemon=True
        )
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop_renewing.wait(self._lifetime / 3):
            with self._lock:
                if self._connection is None or not self._renew():
                    return  # lost: the job's next acquire() takes it again, or stands by

    def _acquire_file(self) -> bool:
        if self._fd is not None:
            return True
        database = self._engine.url.database
        if not database or database == ":memory:":
            return True  # a private database: nobody to share it with
        fd = os.open(f"{database}.{self._name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True
