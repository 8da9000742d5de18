"""The MLLP listener: frames in, orders applied and committed, ACKs out.

One thread per connection (``socketserver.ThreadingTCPServer``, the model pynetdicom
uses for associations); messages on a connection are processed one after another and
each is acknowledged before the next is read, as dcm4che does. Per message:

1. one transaction answers a resend of an accepted message (same MSH-3, MSH-4,
   MSH-10) with its original ACK, or parses and applies the message, then stores
   the raw bytes, MSH, outcome and ACK in the message log and links the message
   to what it changed, and commits; the ACK is sent only after that commit;
2. when anything in it fails, that transaction is rolled back whole and a second
   one stores the message with its AE/AR answer (with an ERR segment), so a
   failed change leaves nothing behind but the message is still kept;
3. when the database cannot store the message at all, the answer is AE and
   nothing is stored: the sender retries (never AA).
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings
from mwl.config import Settings
from mwl.domain import Order, PatientDemographics, SpsStatus
from mwl.errors import InvalidOrderError, SettingsError
from mwl.hl7.ack import ACCEPT, build_ack
from mwl.hl7.errors import (
    APPLICATION_INTERNAL_ERROR,
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    Hl7MessageError,
)
from mwl.hl7.grammar import MessageHeader, codec_for, safe_header
from mwl.hl7.mllp import FramingError, MllpFramer, frame
from mwl.hl7.order_mapping import MappingOptions
from mwl.hl7.parse import parse_message
from mwl.operations.messages import original_ack, record_message
from mwl.orders.apply import OrderOutcome, apply_order, status_table
from mwl.orders.message_links import link_order, link_patient
from mwl.orders.patients import PatientAction, PatientMessage, apply_patient_message

logger = logging.getLogger(__name__)

_RECV_BYTES = 65536
# Concurrent first orders for one patient (or one study) race for the same unique
# key on PostgreSQL; the loser sees the winner's row when it tries again.
_APPLY_ATTEMPTS = 3


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


class MessageProcessor:
    """Check, parse and apply one message under one set of settings.

    The listener's path and re-processing's (:mod:`mwl.hl7.reprocess`) are this one,
    so a message re-run after a mapping fix is treated exactly as a new one.

    Parameters
    ----------
    settings
        The mapping settings (``hl7_*``) and ``hl7_accepted_senders`` are used.

    Raises
    ------
    SettingsError
        When ``hl7_default_charset`` is not a known character set.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            codec_for(settings.hl7_default_charset)
        except Hl7MessageError:
            raise SettingsError(
                "hl7_default_charset", f"{settings.hl7_default_charset!r} is not an HL7 charset"
            ) from None
        self.options = MappingOptions.from_settings(settings)
        self.status_table: Mapping[tuple[str, str], SpsStatus] = status_table(
            settings.hl7_order_status
        )

    def check_sender(self, header: MessageHeader) -> None:
        """Refuse a sender not in ``hl7_accepted_senders`` (empty list: every sender).

        HL7 table 0357 has no code for an unknown sender; dcm4che (whose accepted
        sending applications this setting mirrors) answers 103 "Table value not
        found" at MSH-3 with AR, so the RIS sees the message will never be taken.
        """
        patterns = self.settings.hl7_accepted_senders
        application = _hd(header.sending_application, header)
        facility = _hd(header.sending_facility, header)
        if not patterns or sender_accepted(patterns, application, facility):
            return
        # Application and facility names identify systems, not patients: fine at INFO.
        logger.info(
            "HL7 message %s from sender %s|%s: not in hl7_accepted_senders",
            header.message_control_id or "-",
            application,
            facility,
        )
        raise Hl7MessageError(
            TABLE_VALUE_NOT_FOUND,
            "MSH-3",
            f"sending application {application!r} / facility {facility!r}"
            " (MSH-3 / MSH-4) not accepted",
            "AR",
        )

    def parse(self, raw: bytes, header: MessageHeader | None) -> Order | Sequence[PatientMessage]:
        """The message in domain terms; raises :class:`Hl7MessageError` (no MSH, bad field)."""
        if header is None:
            raise Hl7MessageError(
                SEGMENT_SEQUENCE_ERROR, "MSH", "the message has no MSH segment", "AR"
            )
        return parse_message(raw, self.options)

    def apply(self, session: Session, parsed: Order | Sequence[PatientMessage], key: int) -> str:
        """Apply a parsed message in ``session`` and link the logged message ``key``.

        Returns
        -------
        str
            What was done, for the log (no patient data).

        Raises
        ------
        InvalidOrderError, SQLAlchemyError
            The order cannot be applied; the caller rolls back.
        """
        applied = self.apply_changes(session, parsed)
        applied.link(session, key)
        return applied.summary

    def apply_changes(
        self, session: Session, parsed: Order | Sequence[PatientMessage]
    ) -> AppliedMessage:
        """Apply a parsed message in ``session``; linking it to the log comes after.

        For a caller that logs the message only once it knows the outcome.

        Raises
        ------
        InvalidOrderError, SQLAlchemyError
            The order cannot be applied; the caller rolls back.
        """
        if isinstance(parsed, Order):
            outcome = apply_order(
                session,
                parsed,
                status_table=self.status_table,
                missing_start=self.settings.hl7_missing_start,
            )
            return AppliedMessage(
                f"{outcome.status.value}, {outcome.steps_created} step(s) created,"
                f" {outcome.steps_updated} updated, {outcome.steps_removed} removed",
                order=outcome,
            )
        patients = tuple(
            (message.patient, apply_patient_message(session, message)) for message in parsed
        )
        return AppliedMessage(
            "patient " + ", ".join(action.value for _, action in patients), patients=patients
        )


@dataclass(frozen=True)
class AppliedMessage:
    """What applying one message changed: a summary for the log, and what to link."""

    summary: str
    order: OrderOutcome | None = None
    patients: tuple[tuple[PatientDemographics, PatientAction], ...] = ()

    def link(self, session: Session, key: int) -> None:
        """Link the logged message ``key`` to the procedures and patients it changed."""
        if self.order is not None:
            link_order(session, key, self.order)
        for patient, action in self.patients:
            link_patient(session, key, patient, action)


def rejection(exc: Exception, control_id: str, peer: str) -> Hl7MessageError:
    """What to answer (and record) for a message whose processing raised ``exc``.

    Call it from the ``except`` block: an unexpected error is logged with its
    traceback. Database failures are logged by type only (their text may quote values).
    """
    if isinstance(exc, Hl7MessageError):
        return exc
    if isinstance(exc, InvalidOrderError):
        code = TABLE_VALUE_NOT_FOUND if exc.location == "ORC-1" else REQUIRED_FIELD_MISSING
        return Hl7MessageError(code, exc.location, exc.reason, "AE")
    if isinstance(exc, DataError):
        # The database refused a value of this message: resending will not help.
        logger.info(
            "HL7 message %s from %s not applied: a value does not fit (%s)",
            control_id or "-",
            peer,
            type(exc).__name__,
        )
        return Hl7MessageError(
            DATA_TYPE_ERROR, "", "a value does not fit the worklist database", "AE"
        )
    if isinstance(exc, SQLAlchemyError):
        logger.error(
            "HL7 message %s from %s not applied: database error (%s)",
            control_id or "-",
            peer,
            type(exc).__name__,
        )
        return Hl7MessageError(APPLICATION_INTERNAL_ERROR, "", "database error; resend later", "AE")
    logger.exception("HL7 message %s from %s: unexpected error", control_id or "-", peer)
    return Hl7MessageError(APPLICATION_INTERNAL_ERROR, "", "internal error", "AE")


class Hl7Server:
    """The HL7 listener, started and stopped from the composition root (or a test).

    Parameters
    ----------
    settings
        ``bind_address``, ``hl7_port`` (0: any free port), ``hl7_idle_timeout_seconds``,
        ``hl7_max_frame_bytes``, the mapping settings and ``log_phi`` are used.
    session_factory
        A writer session factory (:func:`mwl.store.engine.make_session_factory` with
        ``writer=True``); each message is one or two units of work.
    live_settings
        When given, the mapping and routing settings and the accepted senders are
        read from it per message, so changes made on the admin page apply to the
        next message without a restart.

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
        self._sessions = session_factory
        self._live_settings = live_settings
        self._processor = MessageProcessor(
            settings if live_settings is None else live_settings.current()
        )
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def processor(self) -> MessageProcessor:
        """The message path under the current settings (rebuilt after a page change)."""
        live = self._live_settings
        if live is not None:
            current = live.current()
            if current is not self._processor.settings:
                # Threads racing here build equal processors; either one will do.
                self._processor = MessageProcessor(current)
        return self._processor

    @property
    def options(self) -> MappingOptions:
        """The mapping options in force."""
        return self.processor.options

    @property
    def status_table(self) -> Mapping[tuple[str, str], SpsStatus]:
        """The ORC-1/ORC-5 -> step status table in force."""
        return self.processor.status_table

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
            try:
                data = connection.recv(_RECV_BYTES)
            except TimeoutError:
                logger.info(
                    "HL7 connection from %s idle for %ss%s; closing",
                    peer,
                    self.settings.hl7_idle_timeout_seconds,
                    " in the middle of a frame" if framer.in_frame else "",
                )
                return
            except OSError as exc:
                logger.info("HL7 connection from %s failed: %s", peer, exc.strerror or exc)
                return
            if not data:
                if framer.in_frame:
                    logger.info(
                        "HL7 peer %s closed the connection in the middle of a frame"
                        " (%d bytes dropped)",
                        peer,
                        framer.buffered,
                    )
                else:
                    logger.debug("HL7 peer %s closed the connection", peer)
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

    def _reject_oversized(self, connection: socket.socket, peer: str, exc: FramingError) -> None:
        header = safe_header(exc.partial, self.settings.hl7_default_charset)
        logger.warning(
            "HL7 message %s from %s rejected: %s; closing the connection",
            header.message_control_id if header else "(no MSH)",
            peer,
            exc.reason,
        )
        if header is None:
            return
        error = Hl7MessageError(
            APPLICATION_INTERNAL_ERROR,
            "",
            f"message exceeds the maximum size of {self.settings.hl7_max_frame_bytes} bytes",
            "AR",
        )
        try:
            connection.sendall(frame(build_ack(header, error.ack_code, error)))
        except OSError:
            pass  # the peer is gone; nothing more to tell it

    # ------------------------------------------------------------------ message

    def handle_message(self, raw: bytes, peer: str = "") -> bytes:
        """Log, check for a resend, parse, apply, commit and acknowledge one message.

        Never raises: every outcome is an ACK (the listener must survive any input).

        Parameters
        ----------
        raw
            One frame payload.
        peer
            ``host:port`` of the sender, for the log.

        Returns
        -------
        bytes
            The ACK payload to send (not framed).
        """
        try:
            return self._handle_message(raw, peer)
        except Exception:
            # A bug in the error handling itself: still answer, never drop the connection.
            logger.exception("HL7 message from %s: unexpected error", peer)
            error = Hl7MessageError(APPLICATION_INTERNAL_ERROR, "", "internal error", "AE")
            return build_ack(None, error.ack_code, error)

    def _handle_message(self, raw: bytes, peer: str) -> bytes:
        header = safe_header(raw, self.settings.hl7_default_charset)
        control_id = header.message_control_id if header else ""
        message_type = header.message_code if header else ""
        if self.settings.log_phi:
            logger.debug("HL7 message from %s: %r", peer, raw)
        logged = _LogFields(
            raw,
            peer,
            sending_application=header.sending_application if header else "",
            sending_facility=header.sending_facility if header else "",
            message_control_id=control_id,
            message_type=message_type,
        )
        try:
            try:
                return self._accept(logged, header)
            except Exception as exc:
                error = rejection(exc, control_id, peer)
            # The failed transaction left nothing behind; this one keeps the message.
            ack = build_ack(header, error.ack_code, error)
            with self._sessions.begin() as session:
                logged.record(session, error.ack_code, ack, str(error))
        except SQLAlchemyError as exc:
            # Nothing was stored and no AA sent: the sender sends the message again.
            logger.error(
                "HL7 message %s from %s not stored, answered AE: database unavailable (%s)",
                control_id or "-",
                peer,
                type(exc).__name__,
            )
            unavailable = Hl7MessageError(
                APPLICATION_INTERNAL_ERROR, "", "database unavailable; resend later", "AE"
            )
            return build_ack(header, unavailable.ack_code, unavailable)
        logger.info(
            "HL7 message %s (%s) from %s answered %s: %s at %s",
            control_id or "-",
            message_type or "-",
            peer,
            error.ack_code,
            error.code,
            error.location or "-",
        )
        return ack

    def _accept(self, logged: _LogFields, header: MessageHeader | None) -> bytes:
        """Answer a resend, or apply the message: one transaction, committed before the ACK.

        Raises whatever stops the message (the caller answers AE/AR and logs it).
        """
        # One processor for parse and apply: the settings may change in between.
        processor = self.processor
        parsed: Order | Sequence[PatientMessage] | None = None
        for attempt in range(1, _APPLY_ATTEMPTS + 1):
            try:
                with self._sessions.begin() as session:
                    if header is not None:
                        # Before the resend check: a sender taken off the list gets AR.
                        processor.check_sender(header)
                        previous = original_ack(
                            session,
                            header.sending_application,
                            header.sending_facility,
                            header.message_control_id,
                        )
                        if previous is not None:
                            logged.record(
                                session,
                                ACCEPT,
                                previous,
                                "resend of an accepted message; not applied again",
                            )
                            logger.info(
                                "HL7 message %s (%s) from %s is a resend of an accepted"
                                " message; original ACK sent",
                                header.message_control_id,
                                header.message_code,
                                logged.peer,
                            )
                            return previous
                    if parsed is None:
                        parsed = processor.parse(logged.raw, header)
                    assert header is not None  # parse() refuses a message without MSH
                    applied = processor.apply_changes(session, parsed)
                    ack = build_ack(header, ACCEPT)
                    applied.link(session, logged.record(session, ACCEPT, ack))
                break
            except (IntegrityError, OperationalError) as exc:
                if attempt == _APPLY_ATTEMPTS or (
                    isinstance(exc, OperationalError) and not _is_transient(exc)
                ):
                    raise
                logger.debug(
                    "HL7 message %s: write conflict, attempt %d", logged.message_control_id, attempt
                )
        logger.info(
            "HL7 message %s (%s) from %s answered AA: %s",
            logged.message_control_id,
            logged.message_type,
            logged.peer,
            applied.summary,
        )
        return ack


@dataclass(frozen=True)
class _LogFields:
    """A received message as the log stores it, whatever becomes of it."""

    raw: bytes
    peer: str
    sending_application: str
    sending_facility: str
    message_control_id: str
    message_type: str

    def record(self, session: Session, outcome: str, ack: bytes | None, note: str = "") -> int:
        return record_message(
            session,
            self.raw,
            self.peer,
            sending_application=self.sending_application,
            sending_facility=self.sending_facility,
            message_control_id=self.message_control_id,
            message_type=self.message_type,
            outcome=outcome,
            ack=ack,
            error=note,
        )


def sender_accepted(patterns: Sequence[str], application: str, facility: str) -> bool:
    """Whether ``application|facility`` matches one ``APP|FACILITY`` pattern.

    ``*`` stands for any run of characters; everything else compares exactly, as
    HL7 HD values are case-sensitive. A pattern without ``|`` accepts any facility.
    """
    for pattern in patterns:
        app_pattern, _, facility_pattern = pattern.partition("|")
        if _glob(app_pattern or "*").fullmatch(application) and _glob(
            facility_pattern or "*"
        ).fullmatch(facility):
            return True
    return False


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _hd(value: str, header: MessageHeader) -> str:
    """HD namespace ID: MSH-3.1 / MSH-4.1 (the universal ID parts are not compared)."""
    return value.split(header.encoding_characters[:1] or "^")[0].strip()


def _is_transient(exc: OperationalError) -> bool:
    """Deadlock or serialization failure (PostgreSQL SQLSTATE 40P01 / 40001)."""
    code = getattr(exc.orig, "sqlstate", None)
    return code in {"40P01", "40001"}
