"""The intake of one HL7 message: sender check, resend, parse, apply, message log, ACK.

The MLLP listener (:mod:`mwl.hl7.server`) hands each frame to :meth:`Intake.handle`
and sends back the ACK it returns; re-processing (:mod:`mwl.hl7.reprocess`) runs a
logged message through the same :class:`MessageProcessor`. Per message:

1. one transaction answers a resend of an accepted message (same MSH-3, MSH-4,
   MSH-10) with its original ACK, or parses and applies the message, then stores
   the raw bytes, MSH, outcome and ACK in the message log and links the message
   to what it changed, and commits; the ACK is returned only after that commit;
2. when anything in it fails, that transaction is rolled back whole and a second
   one stores the message with its AE/AR answer (with an ERR segment), so a
   failed change leaves nothing behind but the message is still kept;
3. when the database cannot store the message at all, the answer is AE and
   nothing is stored: the sender retries (never AA).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.overrides import LiveSettings
from mwl.audit import messages as audit_messages
from mwl.audit.auditor import Auditor
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
from mwl.hl7.order_mapping import MappingOptions
from mwl.hl7.parse import SUPPORTED_EVENTS, parse_message
from mwl.logs import log_context
from mwl.operations import metrics
from mwl.operations.messages import original_ack, record_message
from mwl.orders.apply import OrderAction, OrderOutcome, apply_order, status_table
from mwl.orders.message_links import link_order, link_patient
from mwl.orders.patients import PatientAction, PatientMessage, apply_patient_message

logger = logging.getLogger(__name__)

# Concurrent first orders for one patient (or one study) race for the same unique
# key on PostgreSQL; the loser sees the winner's row when it tries again.
WRITE_ATTEMPTS = 3

_T = TypeVar("_T")

# The message types the metrics name (MSH-9 as "ORM^O01"); any other is "other".
SUPPORTED_MESSAGE_TYPES = frozenset(
    f"{code}^{event}" for code, events in SUPPORTED_EVENTS.items() for event in events
)


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


def retrying_write_conflicts(work: Callable[[], _T], what: str) -> _T:
    """Run ``work`` (one unit of work) again after a write conflict, up to 3 times in all.

    A unique key taken by a concurrent transaction (``IntegrityError``), a deadlock or
    a serialization failure is retried; any other error, or the last conflict, is
    raised to the caller.

    Parameters
    ----------
    work
        Opens, does and commits the unit of work.
    what
        Names the message for the DEBUG line of each conflict (no patient data).
    """
    for attempt in range(1, WRITE_ATTEMPTS):
        try:
            return work()
        except (IntegrityError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and not _is_transient(exc):
                raise
            logger.debug("%s: write conflict, attempt %d", what, attempt)
    return work()


def _is_transient(exc: OperationalError) -> bool:
    """Deadlock or serialization failure (PostgreSQL SQLSTATE 40P01 / 40001)."""
    code = getattr(exc.orig, "sqlstate", None)
    return code in {"40P01", "40001"}


class Intake:
    """The path of one message from its frame to its ACK, committed in between.

    Parameters
    ----------
    settings
        ``hl7_default_charset`` (for reading MSH), ``hl7_max_frame_bytes``,
        ``log_phi`` and, without ``live_settings``, the mapping settings are used.
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
        auditor: Auditor | None = None,
    ) -> None:
        self.settings = settings
        self._sessions = session_factory
        self._live_settings = live_settings
        self._auditor = auditor
        self._processor = MessageProcessor(
            settings if live_settings is None else live_settings.current()
        )

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

    def handle(self, raw: bytes, peer: str = "") -> bytes:
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
        started = time.perf_counter()
        message_type = ""
        try:
            ack, message_type, outcome = self._handle(raw, peer)
        except Exception:
            # A bug in the error handling itself: still answer, never drop the connection.
            logger.exception("HL7 message from %s: unexpected error", peer)
            error = Hl7MessageError(APPLICATION_INTERNAL_ERROR, "", "internal error", "AE")
            ack, outcome = build_ack(None, error.ack_code, error), error.ack_code
        metrics.hl7_answered(
            metrics.bounded(message_type, SUPPORTED_MESSAGE_TYPES),
            outcome,
            time.perf_counter() - started,
        )
        return ack

    def refuse_oversized(self, partial: bytes, peer: str, reason: str) -> bytes | None:
        """The AR for a frame over ``hl7_max_frame_bytes``; None without a readable MSH.

        The message is neither applied nor logged; the listener closes the connection.

        Parameters
        ----------
        partial
            The start of the frame, as far as it was read.
        peer
            ``host:port`` of the sender, for the log.
        reason
            Why the framer gave up, for the log.
        """
        header = safe_header(partial, self.settings.hl7_default_charset)
        logger.warning(
            "HL7 message %s from %s rejected: %s; closing the connection",
            header.message_control_id if header else "(no MSH)",
            peer,
            reason,
        )
        if header is None:
            return None
        error = Hl7MessageError(
            APPLICATION_INTERNAL_ERROR,
            "",
            f"message exceeds the maximum size of {self.settings.hl7_max_frame_bytes} bytes",
            "AR",
        )
        return build_ack(header, error.ack_code, error)

    def _handle(self, raw: bytes, peer: str) -> tuple[bytes, str, str]:
        """The ACK, the message type (MSH-9, "" without MSH) and the ACK code."""
        header = safe_header(raw, self.settings.hl7_default_charset)
        # MSH-10 names the message in every line logged while it is handled (mwl.logs).
        with log_context(hl7_control_id=header.message_control_id if header else "", peer=peer):
            return self._handle_message(raw, peer, header)

    def _handle_message(
        self, raw: bytes, peer: str, header: MessageHeader | None
    ) -> tuple[bytes, str, str]:
        if self.settings.log_phi:
            logger.debug("HL7 message from %s: %r", peer, raw)
        received = _Received.of(raw, peer, header)
        try:
            try:
                return self._accept(received, header), received.message_type, ACCEPT
            except Exception as exc:
                error = rejection(exc, received.message_control_id, peer)
            # The failed transaction left nothing behind; this one keeps the message.
            ack = build_ack(header, error.ack_code, error)
            with self._sessions.begin() as session:
                received.record(session, error.ack_code, ack, str(error))
        except SQLAlchemyError as exc:
            # Nothing was stored and no AA sent: the sender sends the message again.
            logger.error(
                "HL7 message %s from %s not stored, answered AE: database unavailable (%s)",
                received.message_control_id or "-",
                peer,
                type(exc).__name__,
            )
            unavailable = Hl7MessageError(
                APPLICATION_INTERNAL_ERROR, "", "database unavailable; resend later", "AE"
            )
            ack = build_ack(header, unavailable.ack_code, unavailable)
            return ack, received.message_type, unavailable.ack_code
        logger.info(
            "HL7 message %s (%s) from %s answered %s: %s at %s",
            received.message_control_id or "-",
            received.message_type or "-",
            peer,
            error.ack_code,
            error.code,
            error.location or "-",
        )
        return ack, received.message_type, error.ack_code

    def _accept(self, received: _Received, header: MessageHeader | None) -> bytes:
        """Answer a resend, or apply the message: one transaction, committed before the ACK.

        Raises whatever stops the message (the caller answers AE/AR and logs it).
        """
        # One processor for parse and apply: the settings may change in between.
        processor = self.processor
        parsed: Order | Sequence[PatientMessage] | None = None  # once, whatever the retries

        def unit_of_work() -> bytes:
            nonlocal parsed
            with self._sessions.begin() as session:
                if header is not None:
                    # Before the resend check: a sender taken off the list gets AR.
                    processor.check_sender(header)
                    previous = _original_ack(session, received, header)
                    if previous is not None:
                        return previous
                if parsed is None:
                    parsed = processor.parse(received.raw, header)
                assert header is not None  # parse() refuses a message without MSH
                applied = processor.apply_changes(session, parsed)
                ack = build_ack(header, ACCEPT)
                note = "; ".join(parsed.warnings) if isinstance(parsed, Order) else ""
                applied.link(session, received.record(session, ACCEPT, ack, note))
                if self._auditor is not None and self._auditor.enabled:
                    for message in _audit_messages(self._auditor, received, parsed, applied):
                        self._auditor.record(session, message)
            logger.info(
                "HL7 message %s (%s) from %s answered AA: %s",
                received.message_control_id,
                received.message_type,
                received.peer,
                applied.summary,
            )
            return ack

        return retrying_write_conflicts(unit_of_work, f"HL7 message {received.message_control_id}")


def _audit_messages(
    auditor: Auditor,
    received: _Received,
    parsed: Order | Sequence[PatientMessage],
    applied: AppliedMessage,
) -> list[str]:
    """ATNA 110109 Order Record / 110110 Patient Record for what an accepted message changed."""
    host = received.peer.rsplit(":", 1)[0]
    sender = audit_messages.Participant(
        received.sending_application or "-", True, address=host, alternative_id=received.peer
    )
    if isinstance(parsed, Order) and applied.order is not None:
        actions = {action for _, action in applied.order.actions}
        if actions == {OrderAction.UNKNOWN_ORDER}:
            return []
        if OrderAction.CREATED in actions:
            code = "C"
        elif applied.order.status in {SpsStatus.CANCELED, SpsStatus.DISCONTINUED}:
            code = "D"
        else:
            code = "U"
        objects = [audit_messages.patient_object(parsed.patient.patient_id)]
        objects.extend(
            audit_messages.study_object(p.study_instance_uid, [p.accession_number])
            for p in parsed.procedures
        )
        return [
            audit_messages.record(
                audit_messages.ORDER_RECORD, code, auditor.source, sender, objects
            )
        ]
    return [
        audit_messages.record(
            audit_messages.PATIENT_RECORD,
            "U",
            auditor.source,
            sender,
            [audit_messages.patient_object(patient.patient_id)],
        )
        for patient, action in applied.patients
        if action is not PatientAction.UNKNOWN_PATIENT
    ]


def _original_ack(session: Session, received: _Received, header: MessageHeader) -> bytes | None:
    """The ACK of an accepted message this one resends, logging the resend; else None."""
    previous = original_ack(
        session,
        header.sending_application,
        header.sending_facility,
        header.message_control_id,
    )
    if previous is None:
        return None
    received.record(session, ACCEPT, previous, "resend of an accepted message; not applied again")
    logger.info(
        "HL7 message %s (%s) from %s is a resend of an accepted message; original ACK sent",
        header.message_control_id,
        header.message_code,
        received.peer,
    )
    return previous


@dataclass(frozen=True)
class _Received:
    """A received message as the log stores it, whatever becomes of it."""

    raw: bytes
    peer: str
    sending_application: str
    sending_facility: str
    message_control_id: str
    message_type: str

    @classmethod
    def of(cls, raw: bytes, peer: str, header: MessageHeader | None) -> _Received:
        """The log fields of ``raw``: MSH-3, MSH-4, MSH-10, MSH-9 ("" without MSH)."""
        if header is None:
            return cls(raw, peer, "", "", "", "")
        return cls(
            raw,
            peer,
            sending_application=header.sending_application,
            sending_facility=header.sending_facility,
            message_control_id=header.message_control_id,
            message_type=header.message_code,
        )

    def record(self, session: Session, outcome: str, ack: bytes | None, note: str = "") -> int:
        """Store the message with its outcome in the message log; returns its key."""
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
