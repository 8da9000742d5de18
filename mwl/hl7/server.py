"""The MLLP listener: accepts connections (plain and TLS), reads frames, writes back each ACK.

One thread waits in ``poll`` on the listening sockets and a wake-up pipe, so it
costs nothing between connections. Each admitted connection gets a thread of its
own that blocks in ``recv`` with a timeout: a silent connection costs a thread and
a descriptor but no CPU. Messages on a connection are processed one after another
and each is acknowledged before the next is read, as dcm4che does. What happens to
a message between its frame and its ACK is :mod:`mwl.hl7.intake`'s business; this
module keeps the transport and its limits:

- ``hl7_allowed_peers``: only these addresses or networks may connect;
- ``hl7_max_connections`` and ``hl7_max_connections_per_address``: connections
  served at once, in all and from one IP address;
- a reserve of file descriptors for the rest of the process (:mod:`mwl.descriptors`);
- ``hl7_idle_timeout_seconds``: silence on a connection;
- ``hl7_frame_timeout_seconds``: a whole frame, from its first byte, however slowly
  it drips in (and a TLS handshake);
- ``hl7_max_frame_bytes``: the size of a frame.

A connection over a limit is closed at accept, before it costs a thread; each kind
of refusal writes one rate-limited log line.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl import descriptors
from mwl.admin.overrides import LiveSettings
from mwl.audit import messages as audit_messages
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.hl7.intake import Intake
from mwl.hl7.mllp import FramingError, MllpFramer, frame
from mwl.listening import Listener, Wakeup, listening_socket, ready_listeners
from mwl.logs import log_context
from mwl.proxy_protocol import Balancers, ProxyHeaderError, peer_behind, plain_address
from mwl.ratelog import RateLimitedLog
from mwl.tls import ReloadingContext, TlsFiles, peer_subject

logger = logging.getLogger(__name__)

_RECV_BYTES = 65536
# Back-off when accept fails for want of descriptors or memory: the accept thread
# sleeps instead of spinning on a listening socket that stays readable.
_ACCEPT_BACKOFF = 0.1
# A refused peer is audited at most once per this many seconds.
_ALERT_INTERVAL = 60.0
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_STOP_JOIN_SECONDS = 30.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(eq=False)
class _Connection:
    """One connection being served; ``sock`` becomes the TLS socket after the handshake."""

    sock: socket.socket
    host: str
    port: int

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"


class Hl7Server:
    """The HL7 listener, started and stopped from the composition root (or a test).

    Parameters
    ----------
    settings
        ``bind_address``, ``hl7_port`` (0: any free port), the ``hl7_tls_*`` files and
        port, and the limits listed in the module's description are used here; the
        rest is the intake's.
    session_factory, live_settings
        Passed on to the :class:`~mwl.hl7.intake.Intake` that handles each message.

    Raises
    ------
    SettingsError
        When ``hl7_default_charset`` is not a known character set.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        live_settings: LiveSettings | None = None,
        auditor: Auditor | None = None,
    ) -> None:
        self.settings = settings
        self.intake = Intake(
            settings, session_factory, live_settings=live_settings, auditor=auditor
        )
        # Lines a peer can provoke at will: at most one per kind and minute.
        self.rate_log = RateLimitedLog(logger)
        self._auditor = auditor
        self._session_factory = session_factory
        self._alerted: dict[str, float] = {}  # host -> monotonic time of its last alert
        self._allowed: tuple[Network, ...] = tuple(
            ipaddress.ip_network(peer) for peer in settings.hl7_allowed_peers
        )
        self._balancers = Balancers(settings.proxy_protocol_from)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._awaiting_header = 0  # balancer connections whose PROXY header is not read yet
        self._by_address: Counter[str] = Counter()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._wakeup: Wakeup | None = None
        self._serial = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and serve in a background thread; return once the sockets listen.

        Raises
        ------
        OSError
            When an address cannot be bound (port in use, no such address).
        ssl.SSLError
            When the TLS files do not load.
        """
        if self._accept_thread is not None:
            raise RuntimeError("HL7 server already started")
        settings = self.settings
        tls = None
        if settings.hl7_tls_cert:
            files = TlsFiles(
                Path(settings.hl7_tls_cert),
                Path(settings.hl7_tls_key),
                Path(settings.hl7_tls_ca) if settings.hl7_tls_ca else None,
            )
            tls = ReloadingContext(files, service="HL7")
        try:
            self._listen(settings.bind_address, settings.hl7_port, None)
            if tls is not None:
                self._listen(settings.bind_address, settings.hl7_tls_port, tls)
        except OSError:
            for listener in self._listeners:
                listener.sock.close()
            self._listeners.clear()
            raise
        self._stopping.clear()
        self._wakeup = Wakeup()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"hl7-listener-{self.address[1]}", daemon=True
        )
        self._accept_thread.start()
        logger.info("HL7 listener on %s:%d", *self.address)
        if self.tls_address is not None:
            logger.info("HL7 listener over TLS on %s:%d", *self.tls_address)

    def _listen(self, host: str, port: int, tls: ReloadingContext | None) -> None:
        self._listeners.append(Listener(listening_socket(host, port), tls))

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the plain port; the real port when 0 was asked."""
        if not self._listeners:
            raise RuntimeError("HL7 server not started")
        host, port = self._listeners[0].sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """The (host, port) of the TLS port, or None without TLS."""
        for listener in self._listeners:
            if listener.tls is not None:
                host, port = listener.sock.getsockname()[:2]
                return str(host), int(port)
        return None

    @property
    def serving(self) -> bool:
        """Whether the listeners are bound and accepting (for ``/health``)."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive() and not self._stopping.is_set()

    @property
    def open_connections(self) -> int:
        """Connections being served now."""
        with self._lock:
            return len(self._connections)

    def shutdown(self) -> None:
        """Stop accepting, close open connections, wait for their threads to end."""
        thread = self._accept_thread
        if thread is None:
            return
        self._stopping.set()
        if self._wakeup is not None:
            self._wakeup.wake()
        thread.join(_STOP_JOIN_SECONDS)
        for listener in self._listeners:
            listener.sock.close()
        self._listeners.clear()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for connection in connections:
            try:
                # Wakes the handler blocked in recv() (under TLS too: the TCP socket
                # itself); the handler then closes it.
                socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        for connection_thread in threads:
            connection_thread.join(max(0.0, deadline - time.monotonic()))
        if self._wakeup is not None:
            self._wakeup.close()
            self._wakeup = None
        self._accept_thread = None
        logger.info("HL7 listener stopped")

    def __enter__(self) -> Hl7Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        assert self._wakeup is not None  # made by start() before this thread
        for listener in ready_listeners(self._listeners, self._wakeup, self._stopping):
            self._accept(listener)

    def _accept(self, listener: Listener) -> None:
        try:
            sock, address = listener.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            resources = exc.errno in _RESOURCE_ERRORS
            self.rate_log.warning(
                "accept:resources" if resources else "accept:error",
                "HL7 listener cannot accept a connection: %s; backing off",
                os.strerror(exc.errno) if exc.errno else exc,
            )
            # Sleeping here is the back-off; the pending connection stays queued.
            self._stopping.wait(_ACCEPT_BACKOFF)
            return
        connection = _Connection(sock, str(address[0]), int(address[1]))
        host = connection.host
        target = self._run_connection
        if connection.host in self._balancers:
            # Who called is known only after the header: it is read, and the
            # connection admitted, on the connection's own thread.
            with self._lock:
                full = self._awaiting_header >= self.settings.hl7_max_connections
                if not full:
                    self._awaiting_header += 1
            if full:
                sock.close()
                self.rate_log.warning(
                    "proxy:total", "HL7 connection from balancer %s closed at once: too many", host
                )
                return
            target = self._run_proxied
        elif not self._admitted(connection):
            return
        with self._lock:
            self._serial += 1
            thread = threading.Thread(
                target=target,
                args=(connection, listener.tls),
                name=f"hl7-connection-{self._serial}",
                daemon=True,
            )
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (memory, a process limit)
            self._forget(connection, thread)
            if target == self._run_proxied:
                self._header_done()
            sock.close()
            self.rate_log.warning(
                "accept:thread", "HL7 connection from %s closed at once: no thread", host
            )

    def _admitted(self, connection: _Connection) -> bool:
        """Whether ``connection`` is admitted (and counted); if not, it is closed and logged."""
        refusal = self._admit(connection)
        if refusal is None:
            return True
        key, why = refusal
        host = connection.host
        connection.sock.close()
        self.rate_log.warning(key, "HL7 connection from %s closed at once: %s", host, why)
        if key.startswith("peer:"):
            self._audit_refusal(host, why)
        return False

    def _run_proxied(self, connection: _Connection, tls: ReloadingContext | None) -> None:
        """A balancer's connection: the PROXY header, then the caller it names as the peer."""
        balancer = connection.host
        try:
            connection.host, connection.port = peer_behind(
                connection.sock, (connection.host, connection.port)
            )
        except ProxyHeaderError as exc:
            self.rate_log.warning(
                f"proxy:{balancer}",
                "HL7 connection from balancer %s closed: no valid PROXY protocol header (%s)",
                balancer,
                exc,
            )
            connection.sock.close()
            self._forget(connection, threading.current_thread())
            return
        finally:
            self._header_done()
        if not self._admitted(connection):
            self._forget(connection, threading.current_thread())
            return
        logger.debug("HL7 connection from %s through balancer %s", connection.peer, balancer)
        self._run_connection(connection, tls)

    def _header_done(self) -> None:
        with self._lock:
            self._awaiting_header -= 1

    def _audit_refusal(self, host: str, why: str) -> None:
        """ATNA 110113 Security Alert for a peer outside hl7_allowed_peers.

        At most one per host and minute: a peer must not turn its retries into a
        flood of database writes on the accept thread.
        """
        auditor = self._auditor
        if auditor is None or not auditor.enabled:
            return
        now = time.monotonic()
        if now - self._alerted.get(host, -_ALERT_INTERVAL) < _ALERT_INTERVAL:
            return
        if len(self._alerted) > 10_000:
            self._alerted.clear()
        self._alerted[host] = now
        message = audit_messages.security_alert(
            auditor.source,
            audit_messages.NODE_AUTHENTICATION,
            audit_messages.Participant(host, True, address=host),
            host,
            text=f"HL7 connection refused: {why}",
        )
        try:
            with self._session_factory.begin() as session:
                auditor.record(session, message)
        except SQLAlchemyError as exc:
            logger.error("could not queue the audit message of a refused peer: %s", exc)

    def _admit(self, connection: _Connection) -> tuple[str, str] | None:
        """Count a new connection; or (log key, reason) when it is refused."""
        settings, host = self.settings, connection.host
        if self._allowed:
            try:
                address = plain_address(host)
            except ValueError:
                return f"peer:{host}", "not an IP address"
            if not any(address in network for network in self._allowed):
                return f"peer:{host}", "not in hl7_allowed_peers"
        if descriptors.reserve_reached(connection.sock.fileno()):
            return "descriptors", "file descriptors of the process nearly used up"
        with self._lock:
            if self._stopping.is_set():
                return "stopping", "the listener is stopping"
            if len(self._connections) >= settings.hl7_max_connections:
                return (
                    "total",
                    f"{settings.hl7_max_connections} connections open (hl7_max_connections)",
                )
            if self._by_address[host] >= settings.hl7_max_connections_per_address:
                return (
                    f"address:{host}",
                    f"{settings.hl7_max_connections_per_address} connections from {host} open "
                    "(hl7_max_connections_per_address)",
                )
            self._by_address[host] += 1
            self._connections.add(connection)
        return None

    def _forget(self, connection: _Connection, thread: threading.Thread | None = None) -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.discard(connection)
                host = connection.host
                self._by_address[host] -= 1
                if self._by_address[host] <= 0:
                    del self._by_address[host]
            if thread is not None:
                self._threads.discard(thread)

    # ------------------------------------------------------------------ connection

    def _run_connection(self, connection: _Connection, tls: ReloadingContext | None) -> None:
        # The sender's address on every line of this connection (mwl.logs); each
        # message adds its MSH-10 (mwl.hl7.intake).
        with log_context(peer=connection.peer):
            self._run_logged(connection, tls)

    def _run_logged(self, connection: _Connection, tls: ReloadingContext | None) -> None:
        try:
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is None or self._handshake(connection, tls):
                self._serve_connection(connection.sock, connection.peer)
        except Exception:
            # The handler catches everything it expects; whatever escapes is a bug.
            logger.exception("unexpected error on HL7 connection from %s", connection.peer)
        finally:
            self._forget(connection, threading.current_thread())
            connection.sock.close()

    def _handshake(self, connection: _Connection, tls: ReloadingContext) -> bool:
        """The TLS handshake, within ``hl7_frame_timeout_seconds`` all told; whether it worked.

        A handshake that drips in byte by byte is bounded as a frame is; it runs on a
        non-blocking socket so that the deadline covers it whole.
        """
        host, peer = connection.host, connection.peer
        deadline = time.monotonic() + self.settings.hl7_frame_timeout_seconds
        try:
            # The TCP socket object hands its descriptor to the TLS one.
            sock = tls.current().wrap_socket(
                connection.sock, server_side=True, do_handshake_on_connect=False
            )
        except (ssl.SSLError, OSError) as exc:
            self.rate_log.warning(
                f"tls:{host}", "HL7 TLS connection from %s refused: %s", host, _reason(exc)
            )
            return False
        connection.sock = sock
        sock.setblocking(False)
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    wanted = select.POLLIN
                except ssl.SSLWantWriteError:
                    wanted = select.POLLOUT
                remaining = deadline - time.monotonic()
                poller = select.poll()
                poller.register(sock.fileno(), wanted)
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    raise TimeoutError(
                        f"no handshake within {self.settings.hl7_frame_timeout_seconds}s"
                    )
        except (ssl.SSLError, OSError) as exc:
            self.rate_log.warning(
                f"tls:{host}", "HL7 TLS handshake with %s failed: %s", peer, _reason(exc)
            )
            return False
        sock.setblocking(True)
        if logger.isEnabledFor(logging.DEBUG):
            cipher = sock.cipher()
            logger.debug(
                "HL7 TLS connection from %s: %s %s%s",
                peer,
                sock.version(),
                cipher[0] if cipher else "",
                f", client {peer_subject(sock)}" if tls.files.ca else "",
            )
        return True

    def _serve_connection(self, connection: socket.socket, peer: str) -> None:
        framer = MllpFramer(self.settings.hl7_max_frame_bytes)
        logger.debug("HL7 connection from %s", peer)
        # When the frame in progress (or the bytes outside a frame) began to arrive.
        frame_started: float | None = None
        while not self._stopping.is_set():
            data = self._receive(connection, framer, peer, frame_started)
            if not data:
                return
            now = time.monotonic()
            if frame_started is None:
                frame_started = now
            try:
                frames = framer.feed(data)
            except FramingError as exc:
                self._reject_oversized(connection, peer, exc)
                return
            if frames:
                # The next frame's clock starts with its first byte; a start block
                # already read counts as now.
                frame_started = now if framer.in_frame else None
            for payload in frames:
                if not payload.strip(b"\r\n\x00 "):
                    logger.debug("empty MLLP frame from %s ignored", peer)
                    continue
                ack = self.handle_message(payload, peer)
                try:
                    connection.sendall(frame(ack))
                except OSError as exc:
                    logger.info("ACK to %s not delivered: %s", peer, exc.strerror or exc)
                    return

    def _receive(
        self,
        connection: socket.socket,
        framer: MllpFramer,
        peer: str,
        frame_started: float | None,
    ) -> bytes:
        """The next bytes from the peer; empty when the connection is to be closed."""
        settings = self.settings
        timeout = settings.hl7_idle_timeout_seconds
        frame_left = None
        if frame_started is not None:
            frame_left = frame_started + settings.hl7_frame_timeout_seconds - time.monotonic()
            timeout = min(timeout, max(frame_left, 0.0))
        try:
            if timeout <= 0:
                raise TimeoutError
            connection.settimeout(timeout)
            data = connection.recv(_RECV_BYTES)
        except TimeoutError:
            if frame_left is not None and frame_left <= settings.hl7_idle_timeout_seconds:
                self.rate_log.info(
                    f"frame:{peer.rsplit(':', 1)[0]}",
                    "HL7 connection from %s did not complete a frame within %ss "
                    "(hl7_frame_timeout_seconds, %d bytes dropped); closing",
                    peer,
                    settings.hl7_frame_timeout_seconds,
                    framer.buffered,
                )
            else:
                logger.info(
                    "HL7 connection from %s idle for %ss%s; closing",
                    peer,
                    settings.hl7_idle_timeout_seconds,
                    " in the middle of a frame" if framer.in_frame else "",
                )
            return b""
        except OSError as exc:
            logger.info("HL7 connection from %s failed: %s", peer, _reason(exc))
            return b""
        if not data:
            if framer.in_frame:
                logger.info(
                    "HL7 peer %s closed the connection in the middle of a frame (%d bytes dropped)",
                    peer,
                    framer.buffered,
                )
            else:
                logger.debug("HL7 peer %s closed the connection", peer)
        return data

    def _reject_oversized(self, connection: socket.socket, peer: str, exc: FramingError) -> None:
        ack = self.intake.refuse_oversized(exc.partial, peer, exc.reason)
        if ack is None:
            return
        try:
            connection.sendall(frame(ack))
        except OSError:
            pass  # the peer is gone; nothing more to tell it

    def handle_message(self, raw: bytes, peer: str = "") -> bytes:
        """The ACK for one frame payload (:meth:`mwl.hl7.intake.Intake.handle`); never raises."""
        return self.intake.handle(raw, peer)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
