"""The MLLP listener: accepts connections, reads frames, writes back each message's ACK.

One thread per connection (``socketserver.ThreadingTCPServer``, the model pynetdicom
uses for associations); messages on a connection are processed one after another and
each is acknowledged before the next is read, as dcm4che does. What happens to a
message between its frame and its ACK is :mod:`mwl.hl7.intake`'s business; this
module keeps the transport: accepting and closing connections, MLLP framing, the
idle timeout and the frame size limit.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings
from mwl.config import Settings
from mwl.hl7.intake import Intake
from mwl.hl7.mllp import FramingError, MllpFramer, frame

logger = logging.getLogger(__name__)

_RECV_BYTES = 65536


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = True  # server_close() joins the connection threads

    def __init__(self, address: tuple[str, int], listener: Hl7Server, family: int) -> None:
        self.address_family = family
        self.listener = listener
        super().__init__(address, _ConnectionHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Registered here, in the accepting thread, so that shutdown() sees every
        # connection accepted before the accept loop stopped.
        self.listener._register(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The handler catches everything it expects; whatever escapes is a bug.
        logger.exception("unexpected error on HL7 connection from %s", _peer(client_address))


class _ConnectionHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        self.server.listener._serve_connection(self.request, _peer(self.client_address))

    def finish(self) -> None:
        self.server.listener._unregister(self.request)


def _peer(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)


class Hl7Server:
    """The HL7 listener, started and stopped from the composition root (or a test).

    Parameters
    ----------
    settings
        ``bind_address``, ``hl7_port`` (0: any free port), ``hl7_idle_timeout_seconds``
        and ``hl7_max_frame_bytes`` are used here; the rest is the intake's.
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
    ) -> None:
        self.settings = settings
        self.intake = Intake(settings, session_factory, live_settings=live_settings)
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and serve in a background thread; return once the socket listens.

        Raises
        ------
        OSError
            When the address cannot be bound (port in use, no such address).
        """
        if self._server is not None:
            raise RuntimeError("HL7 server already started")
        host = self.settings.bind_address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Binding happens in the constructor: when it returns, the port accepts.
        self._server = _TcpServer((host, self.settings.hl7_port), self, family)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"hl7-listener-{self.address[1]}",
            daemon=True,
        )
        self._thread.start()
        logger.info("HL7 listener on %s:%d", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound; the port is the real one when 0 was asked."""
        if self._server is None:
            raise RuntimeError("HL7 server not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def shutdown(self) -> None:
        """Stop accepting, close open connections, wait for their threads to end."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # the accept loop has ended when this returns
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                # Wakes the handler blocked in recv(); it then closes the socket.
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        server.server_close()  # joins the connection threads (block_on_close)
        if thread is not None:
            thread.join()
        self._server = self._thread = None
        logger.info("HL7 listener stopped")

    def __enter__(self) -> Hl7Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _register(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _unregister(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    # ------------------------------------------------------------------ connection

    def _serve_connection(self, connection: socket.socket, peer: str) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(self.settings.hl7_idle_timeout_seconds)
        framer = MllpFramer(self.settings.hl7_max_frame_bytes)
        logger.debug("HL7 connection from %s", peer)
        while not self._stopping.is_set():
            data = self._receive(connection, framer, peer)
            if not data:
                return
            try:
                frames = framer.feed(data)
            except FramingError as exc:
                self._reject_oversized(connection, peer, exc)
                return
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

    def _receive(self, connection: socket.socket, framer: MllpFramer, peer: str) -> bytes:
        """The next bytes from the peer; empty when the connection is to be closed."""
        try:
            data = connection.recv(_RECV_BYTES)
        except TimeoutError:
            logger.info(
                "HL7 connection from %s idle for %ss%s; closing",
                peer,
                self.settings.hl7_idle_timeout_seconds,
                " in the middle of a frame" if framer.in_frame else "",
            )
            return b""
        except OSError as exc:
            logger.info("HL7 connection from %s failed: %s", peer, exc.strerror or exc)
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
