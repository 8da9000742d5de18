"""Singleton leases: one broker per database runs a job that must not run twice.

Several brokers may share one PostgreSQL database (that is how a site runs them
side by side), and several processes may share one SQLite file. Jobs such as the
RIS sender must still run once, or the RIS would get each message twice. The
lease is held for as long as the holder lives: a PostgreSQL session-level
advisory lock (released by the server when the holder's connection ends), or an
exclusive ``flock`` on a file beside the SQLite database (released by the kernel
when the holder's process ends). So a crashed holder never blocks the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)


class SingletonLease:
    """A non-blocking, process-lifetime lease named ``name`` on ``engine``'s database.

    Parameters
    ----------
    engine
        The broker's engine; the lease is per database, not per process.
    name
        What the lease is for, e.g. ``"ris-sender"``.
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name
        digest = hashlib.sha256(f"mwl:{name}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._connection: Connection | None = None
        self._fd: int | None = None

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

    def release(self) -> None:
        """Give the lease up (closing the connection or file ends it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                # Invalidate rather than return it to the pool: the advisory lock
                # belongs to the database session and would stay held there.
                connection.invalidate()
                connection.close()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _acquire_postgres(self) -> bool:
        if self._connection is not None:
            try:  # still ours while our connection lives
                self._connection.scalar(select(1))
                self._connection.commit()
                return True
            except SQLAlchemyError:
                logger.warning("lease %s lost with its database connection", self._name)
                self.release()
        connection = self._engine.connect()
        try:
            got = bool(connection.scalar(select(func.pg_try_advisory_lock(self._key))))
            # The lock belongs to the session, not the transaction: end the transaction
            # so the held connection does not sit "idle in transaction".
            connection.commit()
        except SQLAlchemyError:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

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
