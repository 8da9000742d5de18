"""One association as the acceptor, from the accepted socket to its close, on one thread.

The thread sleeps in ``poll`` on its socket (:class:`~mwl.dicom.net.channel.Channel`)
with the deadline that applies: the ACSE timeout until the A-ASSOCIATE-RQ, the
network timeout while the association is idle, the DIMSE timeout while a request
is half received. It wakes only when bytes arrive or the deadline passes.

While it writes a C-FIND answer it reads too: between spans of responses, and
whenever the socket is full, it looks at what the peer sent. A C-CANCEL ends the
answer with 0xFE00 after the responses already handed to the socket; an
A-RELEASE-RQ ends it and is answered with A-RELEASE-RP; an A-ABORT or a reset
ends the association at once. A peer that stops reading holds only this thread
and one span of bytes, and is dropped when the network timeout passes without the
socket taking a byte.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, N_CREATE, N_SET
from pynetdicom.presentation import PresentationContext

from mwl.dicom.net import framing
from mwl.dicom.net.channel import Channel, ConnectionClosedError, DeadlineError
from mwl.dicom.net.framing import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PduError,
    PduReader,
    abort_pdu,
    pdata_pdus,
    short_pdu,
)
from mwl.dicom.net.messages import (
    C_CANCEL_COMMAND,
    DimseMessage,
    MessageAssembler,
    encode_data_set,
    pending_find_command,
    response_pdus,
)
from mwl.dicom.net.negotiation import (
    AssociateRequest,
    Rejection,
    accept,
    protocol_rejection,
    read_request,
)
from mwl.dicom.net.service import (
    ABORTED,
    CANCELLED,
    COMPLETED,
    CONNECTION_LOST,
    RELEASED,
    SHUTDOWN,
    TIMED_OUT,
    AnswerEnd,
    Context,
    DimseRequest,
    FindAnswer,
    Requestor,
    Services,
)
from mwl.logs import bind, log_context, new_id
from mwl.ratelog import RateLimitedLog

logger = logging.getLogger(__name__)

# Statuses the layer itself answers with (PS3.7 Annex C).
_CANCEL = 0xFE00
_FIND_HANDLER_FAILED = 0xC311  # what pynetdicom answers when its handler raises
_PROCESSING_FAILURE = 0x0110
_UNRECOGNIZED_OPERATION = 0x0211
# Bytes of responses gathered before they are handed to the socket: large enough that
# a long answer costs few system calls, small enough that a C-CANCEL is seen within
# a few milliseconds. Over TLS a span is written whole once started (OpenSSL wants
# a retried write to carry the same bytes), so spans are one TLS record there.
_SPAN = 64 * 1024
_TLS_SPAN = 16 * 1024
# After A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the peer is given this long (or the
# ACSE timeout, if shorter) to read and close before the socket is closed: PS3.8
# 9.1.5's ARTIM timer. A busy requestor (pynetdicom polls) may take seconds to read
# the last PDU; closing first can make it see a lost connection instead of the RJ.
_LINGER = 10.0


@dataclass(frozen=True)
class LayerSettings:
    """What one association needs to know of the AE it belongs to.

    ``max_pdu_length`` is the Maximum Length advertised in the A-ASSOCIATE-AC
    (longer P-DATA-TF PDUs from the peer abort the association);
    ``max_data_bytes`` the limit on one request's data set, raw and inflated.
    """

    ae_title: str
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    max_pdu_length: int = 16384
    max_data_bytes: int = 64 * 1024
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


class AdmissionPolicy(Protocol):
    """Decides whether an association may be established (limits, allowed callers)."""

    def admit(self, association: Association, request: AssociateRequest) -> Rejection | None:
        """A rejection, or None to accept; called once per A-ASSOCIATE-RQ."""


class _Ended(Exception):
    """The association ended while a request was being answered (reason in ``args[0]``)."""


class _Spool:
    """Encoded responses waiting for the socket, and where each one ends.

    Bytes go to the socket in spans that end where a response ends. Over plain TCP
    a span may be handed over in pieces; over TLS one write carries one span (at
    most ``span`` bytes unless one response is longer), because OpenSSL wants a
    write it could not finish to be retried with the same bytes.
    """

    def __init__(self, span: int) -> None:
        self.span = span
        self.data = bytearray()
        self.sent = 0
        self.responses_sent = 0
        self._ends: deque[int] = deque()
        self._last_end = 0
        #: End of the span being written (0: none started).
        self.span_end = 0

    def add(self, pdus: bytes) -> None:
        self.data += pdus
        self._ends.append(len(self.data))

    @property
    def pending(self) -> int:
        return len(self.data) - self.sent

    def next_span(self, whole: bool) -> memoryview:
        """The bytes to write next: the rest of the span started, or a new span."""
        if self.span_end <= self.sent:
            if whole:
                self.span_end = len(self.data)
            else:
                limit = self.sent + self.span
                ends = [e for e in self._ends if e <= limit]
                self.span_end = ends[-1] if ends else self._ends[0]
        return memoryview(self.data)[self.sent : self.span_end]

    def mark_sent(self, n: int) -> None:
        self.sent += n
        ends = self._ends
        while ends and ends[0] <= self.sent:
            self._last_end = ends.popleft()
            self.responses_sent += 1
        if self.sent == len(self.data):
            self.data.clear()
            self.sent = self._last_end = self.span_end = 0

    def stop_point(self, keep_span: bool) -> int:
        """Where an answer cut short may stop: after the response (or span) under way."""
        if keep_span and self.span_end > self.sent:
            return self.span_end
        if self.sent == self._last_end:
            return self.sent  # between two responses: nothing is half written
        return self._ends[0]

    def drop_after(self, end: int) -> None:
        """Forget the responses after ``end``: they were never handed to the socket."""
        del self.data[end:]
        while self._ends and self._ends[-1] > end:
            self._ends.pop()
        self.span_end = min(self.span_end, end)
        if self.sent >= len(self.data):
            self.data.clear()
            self.sent = self._last_end = self.span_end = 0


class Association:
    """An accepted connection, served until it closes. :meth:`run` is the thread's body.

    Parameters
    ----------
    sock
        The accepted socket (wrapped in TLS, handshake pending, on a TLS port).
    address
        The peer's (host, port).
    settings
        Timeouts, PDU and data set limits, implementation identity.
    services
        The handlers by SOP class.
    supported
        The presentation contexts offered (:func:`~mwl.dicom.net.negotiation.supported_contexts`).
    policy
        Admission: limits and the calling-AE check.
    on_close
        Called once from this thread when the association is over.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        *,
        settings: LayerSettings,
        services: Services,
        supported: list[PresentationContext],
        policy: AdmissionPolicy,
        on_close: Callable[[Association], None] = lambda _a: None,
        certificate_subject: Callable[[socket.socket], str] | None = None,
        rate_log: RateLimitedLog | None = None,
    ) -> None:
        self.address = address
        self.settings = settings
        # Names this association in every log line of its thread (mwl.logs).
        self.log_id = new_id()
        self.channel = Channel(sock)
        self.calling_ae_title = ""
        self.established = False
        self._services = services
        self._supported = supported
        self._policy = policy
        self._on_close = on_close
        self._certificate_subject = certificate_subject
        self._rate_log = rate_log or RateLimitedLog(logger)
        self._reader = PduReader()
        self._assembler = MessageAssembler(settings.max_data_bytes)
        self._contexts: dict[int, PresentationContext] = {}
        self._peer_max_length = 0
        self._requestor: Requestor | None = None
        self._stopping = threading.Event()
        self._closed = False
        # Requests that arrived while an answer was being sent (a peer ignoring the
        # one-operation window): served in order once the answer is done.
        self._backlog: list[DimseMessage] = []
        # Set while a C-FIND answer is being sent: its Message ID, and whether a
        # C-CANCEL for it arrived.
        self._answering: int | None = None
        self._cancelled = False
        self._release_requested = False

    @property
    def peer(self) -> str:
        """``host:port`` of the peer, for log lines."""
        return f"{self.address[0]}:{self.address[1]}"

    # -- the thread ---------------------------------------------------------------

    def run(self) -> None:
        """Serve the association until it ends; close the socket; report the close."""
        with log_context(association=self.log_id, peer=self.peer):
            self._run_logged()

    def _run_logged(self) -> None:
        try:
            self._run()
        except (ConnectionClosedError, _Ended):
            pass
        except DeadlineError:
            logger.info("DICOM association from %s timed out", self.peer)
        except PduError as exc:
            self._protocol_abort(exc)
        except Exception:
            # A bug, not the peer: say so once, abort, and keep serving the others.
            logger.exception("DICOM association from %s failed; aborting it", self.peer)
            self._send_quietly(abort_pdu())
        finally:
            self._close()

    def stop(self) -> None:
        """End the association from another thread (the server is shutting down).

        Shutting the socket down wakes this association's ``poll`` at once.
        """
        self._stopping.set()
        try:
            # socket.socket's own shutdown: SSLSocket.shutdown would drop the TLS
            # object under the owner thread.
            socket.socket.shutdown(self.channel.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _run(self) -> None:
        settings = self.settings
        deadline = time.monotonic() + settings.acse_timeout
        self.channel.handshake(deadline)
        pdu = self._read_pdu(deadline)
        if pdu.type != A_ASSOCIATE_RQ:
            raise PduError(framing.REASON_UNEXPECTED_PDU, f"PDU type 0x{pdu.type:02X} first")
        request = read_request(pdu.data)
        self.calling_ae_title = request.calling_ae_title
        # Until the thread ends: run()'s log_context is reset with it.
        bind(calling_ae=request.calling_ae_title, called_ae=request.called_ae_title)
        rejection = protocol_rejection(request) or self._policy.admit(self, request)
        if rejection is not None:
            self._reject(request, rejection)
            return
        acceptance = accept(
            request,
            self._supported,
            max_length=settings.max_pdu_length,
            implementation_class_uid=settings.implementation_class_uid,
            implementation_version_name=settings.implementation_version_name,
        )
        self._contexts = acceptance.contexts
        self._peer_max_length = request.max_length
        self._reader.max_pdata_length = settings.max_pdu_length
        self._requestor = Requestor(
            ae_title=request.calling_ae_title,
            address=self.address[0],
            port=self.address[1],
            called_ae_title=request.called_ae_title,
            tls=self.channel.tls,
            certificate_subject=(
                self._certificate_subject(self.channel.sock) if self._certificate_subject else ""
            ),
        )
        self.channel.send_all(acceptance.pdu, time.monotonic() + settings.network_timeout)
        self.established = True
        logger.debug(
            "DICOM association accepted: %s from %s, %d context(s)",
            request.calling_ae_title,
            self.peer,
            len(self._contexts),
        )
        self._serve()

    def _serve(self) -> None:
        while True:
            while self._backlog:
                self._dispatch(self._backlog.pop(0))
            timeout = (
                self.settings.dimse_timeout
                if self._assembler.in_progress
                else self.settings.network_timeout
            )
            try:
                pdu = self._read_pdu(time.monotonic() + timeout)
            except DeadlineError:
                what = "DIMSE" if self._assembler.in_progress else "network"
                logger.info(
                    "DICOM association %s from %s: %s timeout, aborted",
                    self.calling_ae_title,
                    self.peer,
                    what,
                )
                self._send_quietly(abort_pdu())
                return
            if pdu.type == P_DATA_TF:
                for message in self._assembler.add(pdu.data):
                    self._dispatch(message)
            elif pdu.type == A_RELEASE_RQ:
                self._release()
                return
            elif pdu.type == A_ABORT:
                logger.debug(
                    "DICOM association %s from %s aborted by the peer",
                    self.calling_ae_title,
                    self.peer,
                )
                return
            else:
                raise PduError(framing.REASON_UNEXPECTED_PDU, f"unexpected PDU 0x{pdu.type:02X}")

    # -- reading ------------------------------------------------------------------

    def _read_pdu(self, deadline: float) -> framing.Pdu:
        while True:
            pdu = self._reader.next_pdu()
            if pdu is not None:
                return pdu
            self._reader.feed(self.channel.recv(deadline))

    def _read_available(self) -> None:
        """Take in whatever the peer sent, without waiting, while an answer is out."""
        while self.channel.readable():
            try:
                data = self.channel.recv(time.monotonic())
            except DeadlineError:
                return  # TLS: a partial record; the rest comes later
            self._reader.feed(data)
            while (pdu := self._reader.next_pdu()) is not None:
                self._during_answer(pdu)

    def _during_answer(self, pdu: framing.Pdu) -> None:
        if pdu.type == P_DATA_TF:
            for message in self._assembler.add(pdu.data):
                if (
                    message.command_field == C_CANCEL_COMMAND
                    and int(message.command.get("MessageIDBeingRespondedTo", -1)) == self._answering
                ):
                    self._cancelled = True
                elif message.command_field == C_CANCEL_COMMAND:
                    pass  # a cancel of nothing outstanding: nothing to do (PS3.7 9.3.2.3)
                else:
                    self._backlog.append(message)
        elif pdu.type == A_RELEASE_RQ:
            self._release_requested = True
        elif pdu.type == A_ABORT:
            raise _Ended(ABORTED)
        else:
            raise PduError(framing.REASON_UNEXPECTED_PDU, f"unexpected PDU 0x{pdu.type:02X}")

    # -- requests -----------------------------------------------------------------

    def _dispatch(self, message: DimseMessage) -> None:
        context = self._contexts.get(message.context_id)
        if context is None:
            raise PduError(
                framing.REASON_INVALID_PDU_PARAMETER_VALUE,
                f"presentation context {message.context_id} was not accepted",
            )
        primitive = message.primitive()
        if isinstance(primitive, C_CANCEL):
            return  # nothing outstanding to cancel
        abstract = str(context.abstract_syntax)
        cx = Context(int(message.context_id), abstract, str(context.transfer_syntax[0]))
        if primitive is None:
            self._rate_log.warning(
                f"unsupported:{self.address[0]}",
                "DICOM association %s from %s: command 0x%04X not served, aborted",
                self.calling_ae_title,
                self.peer,
                message.command_field,
            )
            self._send_quietly(abort_pdu())
            raise _Ended(ABORTED)
        assert self._requestor is not None
        request = DimseRequest(
            self._requestor,
            cx,
            primitive,
            message.data,
            message.data_too_large,
            self.settings.max_data_bytes,
        )
        if isinstance(primitive, C_FIND) and abstract in self._services.find:
            self._answer_find(request, primitive, self._services.find[abstract])
        elif isinstance(primitive, C_ECHO) and abstract in self._services.echo:
            self._answer_echo(request, primitive, self._services.echo[abstract])
        elif isinstance(primitive, (N_CREATE, N_SET)):
            table = (
                self._services.n_create if isinstance(primitive, N_CREATE) else self._services.n_set
            )
            self._answer_n(request, primitive, table.get(abstract))
        else:
            self._answer_unrecognized(primitive, cx)

    def _send_response(self, response: C_FIND | C_ECHO | N_CREATE | N_SET, context_id: int) -> None:
        pdus = response_pdus(response, context_id, self._peer_max_length)
        self.channel.send_all(pdus, time.monotonic() + self.settings.network_timeout)

    def _answer_echo(
        self, request: DimseRequest, primitive: C_ECHO, handler: Callable[[DimseRequest], int]
    ) -> None:
        response = C_ECHO()
        response.MessageIDBeingRespondedTo = primitive.MessageID
        response.AffectedSOPClassUID = primitive.AffectedSOPClassUID
        try:
            response.Status = int(handler(request))
        except Exception:
            logger.exception("C-ECHO handler failed")
            response.Status = _PROCESSING_FAILURE
        self._send_response(response, request.context.context_id)

    def _answer_unrecognized(
        self, primitive: C_FIND | C_ECHO | N_CREATE | N_SET, cx: Context
    ) -> None:
        # A known command on a context whose SOP class does not offer it (a C-FIND on the
        # Verification context, say): PS3.7 C.5.x "Unrecognized Operation".
        response = type(primitive)()
        response.MessageIDBeingRespondedTo = primitive.MessageID
        if hasattr(primitive, "AffectedSOPClassUID") and hasattr(response, "AffectedSOPClassUID"):
            response.AffectedSOPClassUID = (
                getattr(primitive, "AffectedSOPClassUID", None) or cx.abstract_syntax
            )
        response.Status = _UNRECOGNIZED_OPERATION
        self._send_response(response, cx.context_id)

    def _answer_n(
        self,
        request: DimseRequest,
        primitive: N_CREATE | N_SET,
        handler: Callable[[DimseRequest], tuple[int | Dataset, Dataset | None]] | None,
    ) -> None:
        response: N_CREATE | N_SET
        if isinstance(primitive, N_CREATE):
            response = N_CREATE()
            response.AffectedSOPClassUID = primitive.AffectedSOPClassUID
            response.AffectedSOPInstanceUID = primitive.AffectedSOPInstanceUID
        else:
            response = N_SET()
            response.AffectedSOPClassUID = primitive.RequestedSOPClassUID
            response.AffectedSOPInstanceUID = primitive.RequestedSOPInstanceUID
        response.MessageIDBeingRespondedTo = primitive.MessageID
        if handler is None:
            response.Status = _UNRECOGNIZED_OPERATION
            self._send_response(response, request.context.context_id)
            return
        try:
            status, attributes = handler(request)
        except Exception:
            logger.exception("%s handler failed", type(primitive).__name__.replace("_", "-"))
            status, attributes = _PROCESSING_FAILURE, None
        _apply_status(response, status)
        if attributes is not None and _is_success_or_warning(int(response.Status or 0)):
            if isinstance(response, N_CREATE) and "AffectedSOPInstanceUID" in attributes:
                # The handler assigned the instance UID (PS3.7 10.1.5.1.3): it goes in
                # the command set, not the attribute list (as pynetdicom does).
                response.AffectedSOPInstanceUID = attributes.AffectedSOPInstanceUID
                del attributes.AffectedSOPInstanceUID
            encoded = encode_data_set(attributes, request.context.transfer_syntax)
            response.AttributeList = BytesIO(encoded)
        self._send_response(response, request.context.context_id)

    # -- C-FIND answers -------------------------------------------------------------

    def _answer_find(
        self,
        request: DimseRequest,
        primitive: C_FIND,
        handler: Callable[[DimseRequest], FindAnswer],
    ) -> None:
        try:
            answer = handler(request)
        except Exception:
            logger.exception("C-FIND handler failed")
            answer = FindAnswer(status=_FIND_HANDLER_FAILED)
        spool = _Spool(_TLS_SPAN if self.channel.tls else _SPAN)
        self._answering, self._cancelled = int(primitive.MessageID or 0), False
        identifiers: Iterator[bytes] = iter(answer.identifiers)
        ending = AnswerEnd(None, 0, CONNECTION_LOST)
        try:
            ending = self._stream(request, primitive, answer, identifiers, spool)
        except _Ended as exc:
            ending = AnswerEnd(None, spool.responses_sent, str(exc.args[0]))
            raise
        except DeadlineError:
            ending = AnswerEnd(None, spool.responses_sent, TIMED_OUT)
            logger.info(
                "DICOM association %s from %s stopped reading an answer for %.0f s: dropped",
                self.calling_ae_title,
                self.peer,
                self.settings.network_timeout,
            )
            raise _Ended(TIMED_OUT) from None
        except ConnectionClosedError:
            reason = SHUTDOWN if self._stopping.is_set() else CONNECTION_LOST
            ending = AnswerEnd(None, spool.responses_sent, reason)
            raise _Ended(reason) from None
        finally:
            self._answering = None
            close = getattr(identifiers, "close", None)
            if close is not None:
                close()
            if answer.on_end is not None:
                try:
                    answer.on_end(ending)
                except Exception:
                    logger.exception("C-FIND end handler failed")

    def _stream(
        self,
        request: DimseRequest,
        primitive: C_FIND,
        answer: FindAnswer,
        identifiers: Iterator[bytes],
        spool: _Spool,
    ) -> AnswerEnd:
        """Send the Pending responses, then the final one; how the answer ended."""
        context_id = request.context.context_id
        status: int | Dataset = (
            answer.status if answer.status_dataset is None else answer.status_dataset
        )
        if not self._send_pending(context_id, primitive, answer, identifiers, spool):
            status = _FIND_HANDLER_FAILED
        if self._release_requested:
            self._pump(spool, everything=True)
            self._release()
            raise _Ended(RELEASED)
        if self._cancelled:
            status = _CANCEL
        final = C_FIND()
        final.MessageIDBeingRespondedTo = primitive.MessageID
        final.AffectedSOPClassUID = primitive.AffectedSOPClassUID
        _apply_status(final, status)
        spool.add(response_pdus(final, context_id, self._peer_max_length))
        self._pump(spool, everything=True)
        # The final response counts as a response sent; the matches are the others.
        reason = CANCELLED if self._cancelled else COMPLETED
        return AnswerEnd(int(final.Status or 0), spool.responses_sent - 1, reason)

    def _send_pending(
        self,
        context_id: int,
        primitive: C_FIND,
        answer: FindAnswer,
        identifiers: Iterator[bytes],
        spool: _Spool,
    ) -> bool:
        """Spool and pump the matches until they end, a C-CANCEL or an A-RELEASE-RQ.

        Returns False when encoding a match failed (a bug): the answer then ends as
        pynetdicom ends it when its handler raises, and the association goes on.
        """
        command = pending_find_command(primitive, answer.pending_status)
        first = True
        while not (self._cancelled or self._release_requested):
            try:
                identifier = next(identifiers)
            except StopIteration:
                self._read_available()
                return True
            except Exception:
                logger.exception("C-FIND answer failed while encoding a match")
                return False
            spool.add(pdata_pdus(context_id, command, identifier, self._peer_max_length))
            # The first match goes out at once (the modality shows it while the rest
            # arrive); then spans, with a look at the peer between them.
            if first or spool.pending >= spool.span:
                first = False
                self._pump(spool, everything=False)
        return True

    def _pump(self, spool: _Spool, *, everything: bool) -> None:
        """Hand the spooled responses to the socket, reading what the peer sends meanwhile.

        Waits for room as long as the socket takes a byte within the network timeout.
        Unless ``everything`` (the final response is spooled), a C-CANCEL or
        A-RELEASE-RQ that arrives drops the responses not yet started.
        """
        tls = self.channel.tls
        deadline = time.monotonic() + self.settings.network_timeout
        self._read_available()
        while spool.pending:
            if not everything and (self._cancelled or self._release_requested):
                spool.drop_after(spool.stop_point(keep_span=tls))
                if not spool.pending:
                    return
            sent = self.channel.send_some(spool.next_span(whole=not tls))
            if sent:
                spool.mark_sent(sent)
                deadline = time.monotonic() + self.settings.network_timeout
                continue
            readable, _writable = self.channel.wait_writable_or_readable(deadline)
            if readable:
                self._read_available()

    # -- ending ---------------------------------------------------------------------

    def _release(self) -> None:
        self._send_quietly(short_pdu(A_RELEASE_RP))
        logger.debug("DICOM association %s from %s released", self.calling_ae_title, self.peer)
        self._linger()

    def _reject(self, request: AssociateRequest, rejection: Rejection) -> None:
        self._send_quietly(rejection.pdu())
        logger.debug(
            "DICOM association from %s (%s) rejected: %s",
            self.peer,
            ascii(request.calling_ae_title),
            rejection.why,
        )
        self._linger()

    def _protocol_abort(self, exc: PduError) -> None:
        self._rate_log.warning(
            f"protocol:{self.address[0]}",
            "DICOM association from %s aborted: %s",
            self.peer,
            exc,
        )
        self._send_quietly(abort_pdu(reason=exc.reason))

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.channel.send_all(data, time.monotonic() + 1.0)
        except (ConnectionClosedError, DeadlineError):
            pass

    def _linger(self) -> None:
        # Let the peer read the last PDU and close first (PS3.8 9.1.5), briefly.
        deadline = time.monotonic() + min(_LINGER, self.settings.acse_timeout)
        try:
            while True:
                self.channel.recv(deadline)
        except (ConnectionClosedError, DeadlineError):
            pass

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.channel.close()
        try:
            self._on_close(self)
        except Exception:
            logger.exception("DICOM association close handler failed")


def _apply_status(response: C_FIND | C_ECHO | N_CREATE | N_SET, status: int | Dataset) -> None:
    """Set the response's Status and the status elements a handler returned (as pynetdicom)."""
    if isinstance(status, Dataset):
        response.Status = int(status.get("Status", _PROCESSING_FAILURE))
        for elem in status:
            if elem.keyword != "Status" and hasattr(response, elem.keyword):
                setattr(response, elem.keyword, elem.value)
    else:
        response.Status = int(status)


def _is_success_or_warning(status: int) -> bool:
    # PS3.7 C.1, C.2: Success 0x0000; Warning 0x0001, 0x0107, 0x0116, 0xBxxx.
    return status in (0x0000, 0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF
