"""The audit sender: a thread that delivers the audit queue to the audit repository.

Mirrors the RIS outbox sender (:mod:`mwl.hl7.sender`): one broker per database
holds the lease, work comes from the database, a failed round waits with
exponential backoff and loses nothing. Over TLS a message leaves the queue once
the transport took it (RFC 5425 has no acknowledgement); over UDP once it was
handed to the kernel (RFC 5426: fire and forget).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.audit import queue
from mwl.audit.syslog import SyslogClient, syslog_message
from mwl.config import Settings
from mwl.store.leases import SingletonLease
from mwl.tls import ClientTlsFiles, ReloadingClientContext

logger = logging.getLogger(__name__)

_BATCH = 100
# Over TLS/TCP a sent message leaves the queue once the connection stayed open this
# long after it; a connection found closed sooner sends it again (at least once).
_CONFIRM_SECONDS = 1.0
# Until then its row waits this long before it would be tried again (after a crash).
_HOLD = dt.timedelta(minutes=5)


def syslog_client(settings: Settings) -> SyslogClient:
    """The client ``settings`` describe (audit_syslog_*)."""
    tls = None
    if settings.audit_syslog_transport == "tls":
        tls = ReloadingClientContext(
            ClientTlsFiles(
                Path(settings.audit_syslog_ca),
                Path(settings.audit_syslog_cert) if settings.audit_syslog_cert else None,
                Path(settings.audit_syslog_key) if settings.audit_syslog_key else None,
            ),
            service="audit repository",
        )
    return SyslogClient(
        settings.audit_syslog_host,
        settings.audit_syslog_port,
        settings.audit_syslog_transport,
        tls,
    )


class AuditSender:
    """Delivers the audit queue; start, then shutdown (which first sends what is due).

    Parameters
    ----------
    settings
        ``audit_syslog_*``: the repository and its transport.
    session_factory
        A writer session factory.
    poll_seconds, retry_initial_seconds, retry_max_seconds
        How often to look for work; backoff after a failed round (doubled up to the max).
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        poll_seconds: float = 0.5,
        retry_initial_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
    ) -> None:
        if not settings.audit_syslog_host:
            raise ValueError("no audit repository configured (audit_syslog_host is empty)")
        self._settings = settings
        self._session_factory = session_factory
        self._client = syslog_client(settings)
        self._hostname = settings.audit_source_id or socket.gethostname()
        self._poll = poll_seconds
        self._initial, self._max = retry_initial_seconds, retry_max_seconds
        self._failures = 0
        # After a failed round no attempt before this (monotonic) time, however many
        # messages are queued meanwhile: the backoff counts rounds, not messages.
        self._retry_at = 0.0
        self._unconfirmed: list[tuple[float, list[int]]] = []  # (sent at, ids) over a stream
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with session_factory() as session:
            self._lease = SingletonLease(
                session.get_bind().engine,
                "audit-sender",
                keepalive_seconds=settings.lease_keepalive_seconds,
                lifetime_seconds=settings.lease_lifetime_seconds,
            )

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the audit sender is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-audit-sender", daemon=True)
        self._thread.start()
        logger.info(
            "audit sender started for %s:%d over %s",
            self._settings.audit_syslog_host,
            self._settings.audit_syslog_port,
            self._settings.audit_syslog_transport,
        )

    def wake(self) -> None:
        """Look at the queue now (a message was queued)."""
        self._wake.set()

    def shutdown(self) -> None:
        """Stop the thread after one last round (the Application Stop message). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout=30)
        self._client.close()
        self._lease.release()
        logger.info("audit sender stopped")

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                busy = self.run_once()
            except SQLAlchemyError as exc:
                logger.error("audit sender: database failure: %s", type(exc).__name__)
                busy = False
            except Exception:  # the thread must not die
                logger.exception("audit sender: unexpected error")
                busy = False
            if stopping:
                self._drain()
                return
            if not busy:
                self._wake.wait(self._poll)
                self._wake.clear()

    def run_once(self) -> bool:
        """One round: send what is due. True when a full batch went (more may wait).

        The thread otherwise waits ``poll_seconds`` between rounds, so that under load
        one round carries many messages: its few writes do not compete, message by
        message, with the HL7 and DICOM writers for the database.
        """
        self._confirm()
        if time.monotonic() < self._retry_at or not self._lease.acquire():
            return False
        with self._session_factory() as session:
            items = queue.due(session, limit=_BATCH)
        if not items:
            return False
        ids = [item.id for item in items]
        try:
            self._client.send([syslog_message(item.message, self._hostname) for item in items])
        except OSError as exc:
            self._failed(ids, f"{type(exc).__name__}: {exc}", f"unreachable ({type(exc).__name__})")
            return False
        with self._session_factory.begin() as session:
            if self._client.transport == "udp":
                queue.delivered(session, ids)  # fire and forget (RFC 5426)
                self._recovered()
            else:
                queue.retry_later(session, ids, "", _HOLD)
                self._unconfirmed.append((time.monotonic(), ids))
        return len(ids) == _BATCH

    def _failed(self, ids: list[int], error: str, why: str) -> None:
        """A failed round: back off (doubling) and keep the messages for later."""
        self._failures += 1
        delay = min(self._initial * 2 ** min(self._failures - 1, 16), self._max)
        self._retry_at = time.monotonic() + delay
        if self._failures == 1:
            logger.warning("audit repository %s; %d+ messages wait", why, len(ids))
        with self._session_factory.begin() as session:
            queue.retry_later(session, ids, error, dt.timedelta(seconds=delay))

    def _recovered(self) -> None:
        # Over TLS only a confirmed batch counts: a repository that refuses our client
        # certificate completes the handshake from our side and closes afterwards.
        if self._failures:
            logger.info("audit repository reachable again")
            self._failures = 0

    def _drain(self) -> None:
        # At shutdown: give the last stream messages their confirmation time.
        deadline = time.monotonic() + _CONFIRM_SECONDS * 3
        while self._unconfirmed and time.monotonic() < deadline:
            time.sleep(_CONFIRM_SECONDS / 4)
            self.run_once()  # confirms, and sends again what a closed connection lost
        if self._unconfirmed:
            # Not known to have arrived: due at once for the next start, rather than
            # held as after a crash (at least once, never lost).
            ids = [i for _, batch in self._unconfirmed for i in batch]
            self._unconfirmed = []
            with self._session_factory.begin() as session:
                queue.retry_later(session, ids, "unconfirmed at shutdown", dt.timedelta(0))

    def _confirm(self) -> None:
        """Delete the stream messages the collector has kept; resend them if it dropped us."""
        if not self._unconfirmed:
            return
        if not self._client.connection_alive():
            ids = [i for _, batch in self._unconfirmed for i in batch]
            self._unconfirmed = []
            self._failed(
                ids,
                "connection closed by the repository",
                "closed the connection (restarted, or it refuses this broker's TLS client"
                " certificate)",
            )
            return
        settled = time.monotonic() - _CONFIRM_SECONDS
        done = [batch for at, batch in self._unconfirmed if at <= settled]
        if done:
            self._unconfirmed = [(at, b) for at, b in self._unconfirmed if at > settled]
            with self._session_factory.begin() as session:
                queue.delivered(session, [i for batch in done for i in batch])
            self._recovered()
