"""The outbox sender: a thread that delivers pending status messages to the RIS over MLLP.

Delivery is at least once and in order per order: a message counts as delivered
only when the RIS answers AA for its MSH-10 (HL7 v2.5.1 2.9, original mode), and
the next message of that order is not sent before. Everything it knows is in the
outbox table (:mod:`mwl.operations.outbox`); a restarted broker continues where it stopped.
MSH-10 stays the same on every retry, so a RIS can recognise a repeat after a lost
ACK.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.client import ack_summary
from mwl.hl7.mllp import FramingError, MllpFramer, frame
from mwl.hl7.outbound import OutboundOptions, render
from mwl.operations.outbox import NO_ACK, OutboxItem, RetryPolicy, due_messages, record_attempt
from mwl.store.leases import SingletonLease
from mwl.tls import ClientTlsFiles, ReloadingClientContext

logger = logging.getLogger(__name__)

_MAX_ACK_BYTES = 1_048_576
_ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_BATCH = 50


class OutboxSender:
    """Sends the outbox to the RIS at ``ris_host``:``ris_port``; start, then shutdown.

    Parameters
    ----------
    settings
        ``ris_*``: destination, message type and MSH names, ACK timeout, backoff
        (``ris_retry_initial_seconds`` doubled per attempt up to
        ``ris_retry_max_seconds``), reject policy, poll interval.
    session_factory
        A writer session factory: one unit of work per attempt record.
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        if not settings.ris_host:
            raise ValueError("no RIS configured (ris_host is empty)")
        self._settings = settings
        self._session_factory = session_factory
        self._options = OutboundOptions.from_settings(settings)
        self._policy = RetryPolicy(
            settings.ris_retry_initial_seconds,
            settings.ris_retry_max_seconds,
            settings.ris_max_rejects,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._framer = MllpFramer(_MAX_ACK_BYTES)
        self._frames: list[bytes] = []  # frames read but not yet looked at
        # Brokers sharing the database must not both deliver: one holds the lease.
        with session_factory() as session:
            self._lease = SingletonLease(
                session.get_bind().engine,
                "ris-sender",
                keepalive_seconds=settings.lease_keepalive_seconds,
                lifetime_seconds=settings.lease_lifetime_seconds,
            )
        self._standing_by = False
        # MLLP over TLS while a CA is set; the files are looked at again per connection.
        self._tls: ReloadingClientContext | None = None
        if settings.ris_tls_ca:
            self._tls = ReloadingClientContext(
                ClientTlsFiles(
                    Path(settings.ris_tls_ca),
                    Path(settings.ris_tls_cert) if settings.ris_tls_cert else None,
                    Path(settings.ris_tls_key) if settings.ris_tls_key else None,
                ),
                service="RIS",
            )

    @property
    def destination(self) -> tuple[str, int]:
        """The RIS (host, port)."""
        return self._settings.ris_host, self._settings.ris_port

    @property
    def running(self) -> bool:
        """Whether the sender thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the sender thread; it runs until :meth:`shutdown`."""
        if self._thread is not None:
            raise RuntimeError("the outbox sender is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-outbox-sender", daemon=True)
        self._thread.start()
        logger.info(
            "RIS sender started for %s:%d%s", *self.destination, " over TLS" if self._tls else ""
        )

    def shutdown(self) -> None:
        """Stop after the exchange in progress (never between a send and its ACK). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            self._close()  # a connection left open by run_once() called directly
            return
        self._stop.set()
        # An exchange in progress ends within the ACK timeout; it is let finish so
        # that a message the RIS accepted is recorded as delivered, not sent again.
        thread.join(timeout=self._settings.ris_ack_timeout_seconds + 10)
        self._close()
        self._lease.release()
        logger.info("RIS sender stopped")

    def __enter__(self) -> OutboxSender:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except SQLAlchemyError as exc:
                logger.error("RIS sender: database failure: %s", type(exc).__name__)
                busy = False
            except Exception:  # the thread must not die; log once per occurrence
                logger.exception("RIS sender: unexpected error")
                busy = False
            if not busy:
                self._stop.wait(self._settings.ris_poll_interval_seconds)
        self._close()

    def run_once(self) -> bool:
        """One round: try each due message once, oldest first (per order, the oldest only).

        Returns
        -------
        bool
            True when messages were tried and the RIS answered; False when there was
            nothing to do or the RIS could not be reached (the caller then waits).
        """
        if not self._lease.acquire():
            if not self._standing_by:
                logger.info("another broker sends the RIS messages of this database; standing by")
                self._standing_by = True
            return False
        if self._standing_by:
            logger.info("this broker now sends the RIS messages of this database")
            self._standing_by = False
        with self._session_factory() as session:
            items = due_messages(session, limit=_BATCH)
        if not items:
            return False
        for item in items:
            if self._stop.is_set():
                return False
            if not self._lease.confirm():
                # Lost while this round ran (the broker was stopped or cut off for
                # longer than lease_lifetime_seconds): another broker sends now.
                logger.warning("RIS sender: the lease is lost; this broker stands by")
                self._close()
                return False
            outcome, ack, error = self._exchange(item)
            with self._session_factory.begin() as session:
                state = record_attempt(
                    session, item.id, outcome, ack=ack, error=error, policy=self._policy
                )
            if outcome == "AA":
                logger.info("RIS accepted %s (%s)", item.control_id, item.event.mpps_status.value)
            else:
                logger.warning(
                    "RIS delivery of %s: %s%s; now %s",
                    item.control_id,
                    outcome,
                    f" ({error})" if error else "",
                    state,
                )
            if outcome == NO_ACK:
                # The RIS is unreachable or silent: stop this round and wait.
                self._close()
                return False
        return True

    def _exchange(self, item: OutboxItem) -> tuple[str, bytes | None, str]:
        """Send one message and wait for its ACK: (MSA-1 or NO_ACK, ACK payload, error)."""
        payload = render(item.event, item.control_id, self._options)
        try:
            sock = self._connect()
            sock.sendall(frame(payload))
            deadline = time.monotonic() + self._settings.ris_ack_timeout_seconds
            while True:
                ack = self._next_frame(sock, deadline)
                code, acked_id, text = ack_summary(ack)
                if acked_id == item.control_id:
                    break
                # An ACK for an earlier message whose answer came too late: skip it.
                logger.info(
                    "RIS sent an ACK for %s while %s was expected", acked_id or "-", item.control_id
                )
        except (OSError, FramingError) as exc:
            self._close()
            return NO_ACK, None, f"{type(exc).__name__}: {exc}"[:500]
        if code not in _ACK_CODES:
            self._close()
            return NO_ACK, ack, f"unreadable ACK (MSA-1 {code!r})"
        return code, ack, "" if code in {"AA", "CA"} else text[:500]

    def _connect(self) -> socket.socket:
        if self._sock is None:
            host, port = self.destination
            sock = socket.create_connection(
                (host, port), timeout=self._settings.ris_ack_timeout_seconds
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    # The handshake (within the ACK timeout) checks the certificate
                    # against the CA and ris_host.
                    sock = self._tls.current().wrap_socket(sock, server_hostname=host)
                except OSError:
                    sock.close()
                    raise
            self._sock = sock
            self._framer = MllpFramer(_MAX_ACK_BYTES)
            self._frames = []
        return self._sock

    def _next_frame(self, sock: socket.socket, deadline: float) -> bytes:
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no ACK within ris_ack_timeout_seconds")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the RIS closed the connection without an ACK")
            self._frames.extend(self._framer.feed(data))
        return self._frames.pop(0)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            # A connection to drop anyway: an error closing it changes nothing.
            with contextlib.suppress(OSError):
                sock.close()
