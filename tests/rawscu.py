"""A DICOM SCU on a raw socket, for tests and benchmarks that need exact control of the wire.

It sends what a test says when the test says it (a C-CANCEL right after the first
response, an A-ABORT or a TCP reset in the middle of an answer, a PDU longer than
agreed, nothing at all) and times what comes back. PDUs and DIMSE messages are
encoded and decoded by pynetdicom, never by the broker's own code, so the broker's
framing is judged by an independent reader.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_ECHO_RQ, C_FIND_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

FIND = "1.2.840.10008.5.1.4.31"
ECHO = "1.2.840.10008.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


# Every RawScu made, so a fixture can close what a test left open.
OPENED: list[RawScu] = []


def close_all() -> None:
    """Close every RawScu still open (a test's teardown)."""
    while OPENED:
        OPENED.pop().close()


class AssociationRejectedError(Exception):
    """The SCP answered A-ASSOCIATE-RJ: ``result``, ``source``, ``reason``."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"rejected: result {result}, source {source}, reason {reason}")
        self.result, self.source, self.reason = result, source, reason


class AbortedError(Exception):
    """The SCP sent A-ABORT (``source``, ``reason``) or closed the connection."""

    def __init__(self, source: int | None = None, reason: int | None = None) -> None:
        super().__init__(f"aborted: source {source}, reason {reason}")
        self.source, self.reason = source, reason


@dataclass
class Response:
    """One DIMSE response: its command set, its data set bytes, when it arrived."""

    command: Dataset
    data: bytes | None
    at: float

    @property
    def status(self) -> int:
        return int(self.command.Status)

    def dataset(self, transfer_syntax: str = EXPLICIT_LE) -> Dataset:
        implicit = transfer_syntax == IMPLICIT_LE
        return decode(BytesIO(self.data or b""), implicit, True, transfer_syntax == DEFLATED)


@dataclass
class RawScu:
    """One connection to an SCP, driven step by step."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    bind: tuple[str, int] | None = None
    timeout: float = 20.0
    #: SO_RCVBUF before connecting (a small one makes a reader that stalls the SCP).
    rcvbuf: int = 0
    sock: socket.socket = field(init=False)
    contexts: dict[int, str] = field(default_factory=dict)  # context ID -> transfer syntax
    peer_max_length: int = 0
    _buffer: bytearray = field(default_factory=bytearray)

    def __enter__(self) -> RawScu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __post_init__(self) -> None:
        OPENED.append(self)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        if self.bind is not None:
            sock.bind(self.bind)
        sock.connect((self.host, self.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

    # -- association --------------------------------------------------------------------

    def associate(
        self,
        calling: str = "RAWSCU",
        called: str = "MWL",
        abstract_syntaxes: tuple[str, ...] = (FIND, ECHO),
        transfer_syntaxes: tuple[str, ...] = (EXPLICIT_LE,),
        max_length: int = 16384,
    ) -> dict[int, str]:
        """Send A-ASSOCIATE-RQ; return the accepted contexts (ID -> transfer syntax).

        Raises
        ------
        AssociationRejectedError, AbortedError
        """
        rq = A_ASSOCIATE()
        rq.application_context_name = "1.2.840.10008.3.1.1.1"
        rq.calling_ae_title = calling
        rq.called_ae_title = called
        contexts = []
        for index, uid in enumerate(abstract_syntaxes):
            cx = build_context(uid, list(transfer_syntaxes))
            cx.context_id = 2 * index + 1
            contexts.append(cx)
        rq.presentation_context_definition_list = contexts
        length = MaximumLengthNotification()
        length.maximum_length_received = max_length
        rq.user_information = [length]
        self.send(A_ASSOCIATE_RQ(rq).encode())
        pdu = self.read_pdu()
        if pdu[0] == 0x03:
            rj = A_ASSOCIATE_RJ()
            rj.decode(pdu)
            raise AssociationRejectedError(rj.result, rj.source, rj.reason_diagnostic)
        if pdu[0] != 0x02:
            raise AbortedError()
        ac = A_ASSOCIATE_AC()
        ac.decode(pdu)
        primitive = ac.to_primitive()
        for item in primitive.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_length = int(item.maximum_length_received or 0)
        self.contexts = {
            int(cx.context_id): str(cx.transfer_syntax[0])
            for cx in primitive.presentation_context_definition_results_list
            if cx.result == 0
        }
        return self.contexts

    def context_for(self, index: int = 0) -> int:
        """The context ID asked for the ``index``-th abstract syntax (1, 3, 5, ...)."""
        return 2 * index + 1

    def release(self) -> bytes:
        """Send A-RELEASE-RQ, close; return the type byte of the answer (0x06: A-RELEASE-RP)."""
        self.send(b"\x05\x00" + struct.pack(">L", 4) + b"\x00\x00\x00\x00")
        try:
            while True:
                pdu = self.read_pdu()
                if pdu[0] in (0x06, 0x07):
                    return pdu[:1]
        finally:
            self.close()

    def abort(self) -> None:
        """Send A-ABORT (service user) and close."""
        self.send(b"\x07\x00" + struct.pack(">L", 4) + b"\x00\x00\x00\x00")
        self.close()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a crashed or killed modality does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- DIMSE ----------------------------------------------------------------------------

    def send_message(self, message: DIMSEMessage, context_id: int) -> None:
        for primitive in message.encode_msg(context_id, self.peer_max_length):
            self.send(P_DATA_TF(primitive).encode())

    def send_find(self, identifier: Dataset, context_id: int = 1, message_id: int = 1) -> None:
        ts = self.contexts[context_id]
        request = C_FIND()
        request.MessageID = message_id
        request.AffectedSOPClassUID = FIND
        request.Priority = 2
        request.Identifier = BytesIO(
            encode(identifier, ts == IMPLICIT_LE, True, ts == DEFLATED) or b""
        )
        message = C_FIND_RQ()
        message.primitive_to_message(request)
        self.send_message(message, context_id)

    def send_find_bytes(self, data: bytes, context_id: int = 1, message_id: int = 1) -> None:
        """A C-FIND-RQ whose Identifier is ``data`` as given (garbage, a bomb, ...)."""
        request = C_FIND()
        request.MessageID = message_id
        request.AffectedSOPClassUID = FIND
        request.Priority = 2
        request.Identifier = BytesIO(data)
        message = C_FIND_RQ()
        message.primitive_to_message(request)
        self.send_message(message, context_id)

    def send_cancel(self, context_id: int = 1, message_id: int = 1) -> None:
        request = C_CANCEL()
        request.MessageIDBeingRespondedTo = message_id
        message = C_CANCEL_RQ()
        message.primitive_to_message(request)
        self.send_message(message, context_id)

    def send_echo(self, context_id: int, message_id: int = 1) -> None:
        request = C_ECHO()
        request.MessageID = message_id
        request.AffectedSOPClassUID = ECHO
        message = C_ECHO_RQ()
        message.primitive_to_message(request)
        self.send_message(message, context_id)

    def responses(self) -> Iterator[Response]:
        """Each DIMSE message the SCP sends, as it arrives."""
        message = DIMSEMessage()
        while True:
            pdu = self.read_pdu()
            if pdu[0] == 0x07:
                raise AbortedError(pdu[8], pdu[9])
            if pdu[0] != 0x04:
                raise AbortedError()
            decoded = P_DATA_TF()
            decoded.decode(pdu)
            if message.decode_msg(decoded.to_primitive()):
                data = message.data_set.getvalue() if message.data_set is not None else None
                yield Response(message.command_set, data or None, time.perf_counter())
                message = DIMSEMessage()

    def find(self, identifier: Dataset, context_id: int = 1) -> list[Response]:
        """One whole C-FIND: every response up to the final one."""
        self.send_find(identifier, context_id)
        out = []
        for response in self.responses():
            out.append(response)
            if response.status not in (0xFF00, 0xFF01):
                return out
        return out

    def echo(self, context_id: int) -> int:
        self.send_echo(context_id)
        return next(self.responses()).status

    # -- bytes ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> bytes:
        """One whole PDU, header included.

        Raises
        ------
        AbortedError
            The connection closed first.
        """
        while True:
            if len(self._buffer) >= 6:
                length = struct.unpack_from(">L", self._buffer, 2)[0]
                if len(self._buffer) >= 6 + length:
                    pdu = bytes(self._buffer[: 6 + length])
                    del self._buffer[: 6 + length]
                    return pdu
            try:
                data = self.sock.recv(1 << 20)
            except (ConnectionError, ssl.SSLError) as exc:
                raise AbortedError() from exc
            if not data:
                raise AbortedError()
            self._buffer += data

    def closed_by_peer(self, within: float) -> bool:
        """Whether the SCP closes the connection within ``within`` seconds."""
        self.sock.settimeout(within)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)


def association_rejection(
    address: tuple[str, int], calling: str, called: str, bind: tuple[str, int] | None = None
) -> tuple[int, int, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ ``calling`` gets, or None if accepted.

    pynetdicom as a requestor may report a quick rejection as an abort (its main thread
    checks the socket after its reader thread has already closed it on the RJ); the
    raw client reads the RJ itself.
    """
    scu = RawScu(address[0], address[1], bind=bind)
    try:
        scu.associate(calling=calling, called=called)
    except AssociationRejectedError as exc:
        return exc.result, exc.source, exc.reason
    finally:
        scu.close()
    return None
