"""DIMSE messages on an association: reassembled from PDVs within limits, answered as PDUs.

A request's command set and data set arrive as PDV fragments (PS3.8 Annex E).
:class:`MessageAssembler` puts them together, counting the data set's bytes as they
arrive so that an Identifier over ``max_data_bytes`` is dropped, not buffered, and
answered with a failure instead. Command sets are decoded by pydicom and turned into
pynetdicom's DIMSE primitives (:mod:`pynetdicom.dimse_messages`), so every command
field is read as pynetdicom reads it. Responses are encoded by pynetdicom too; only
their P-DATA-TF framing is :func:`~mwl.dicom.net.framing.pdata_pdus`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_messages import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_FIND_RQ,
    C_FIND_RSP,
    N_CREATE_RQ,
    N_CREATE_RSP,
    N_SET_RQ,
    N_SET_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, N_CREATE, N_SET
from pynetdicom.dsutils import decode, encode

from mwl.dicom.net.framing import (
    REASON_INVALID_PDU_PARAMETER_VALUE,
    REASON_UNEXPECTED_PDU_PARAMETER,
    PduError,
    pdata_pdus,
    pdvs,
)

# Command Field values (PS3.7 Table E.1-1) of the requests this broker serves.
C_FIND_COMMAND = 0x0020
C_ECHO_COMMAND = 0x0030
C_CANCEL_COMMAND = 0x0FFF
N_CREATE_COMMAND = 0x0140
N_SET_COMMAND = 0x0120
# Command Data Set Type (0000,0800): this value says no data set follows (PS3.7 E.1).
NO_DATA_SET = 0x0101
# Command sets are a few hundred bytes; this is generous and still bounds a hostile one.
COMMAND_CAP = 64 * 1024

_MESSAGE_CLASSES: dict[int, type[DIMSEMessage]] = {
    C_FIND_COMMAND: C_FIND_RQ,
    C_ECHO_COMMAND: C_ECHO_RQ,
    C_CANCEL_COMMAND: C_CANCEL_RQ,
    N_CREATE_COMMAND: N_CREATE_RQ,
    N_SET_COMMAND: N_SET_RQ,
}
_RESPONSE_CLASSES: dict[type[Any], type[DIMSEMessage]] = {
    C_FIND: C_FIND_RSP,
    C_ECHO: C_ECHO_RSP,
    N_CREATE: N_CREATE_RSP,
    N_SET: N_SET_RSP,
}
Request = C_FIND | C_ECHO | C_CANCEL | N_CREATE | N_SET


class DatasetTooLargeError(ValueError):
    """A data set (Identifier, attribute list) is over the limit, raw or inflated."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the data set is larger than {limit} bytes")
        self.limit = limit


@dataclass
class DimseMessage:
    """One whole DIMSE message as it arrived: command set, data set, context."""

    context_id: int
    command: Dataset
    #: The encoded data set; None when the command set says there is none.
    data: bytes | None = None
    #: The data set was over the limit: its bytes were dropped as they came.
    data_too_large: bool = False

    @property
    def command_field(self) -> int:
        """Command Field (0000,0100)."""
        return int(self.command.get("CommandField", 0) or 0)

    def primitive(self) -> Request | None:
        """The request as pynetdicom's DIMSE primitive; None for a command not served here."""
        cls = _MESSAGE_CLASSES.get(self.command_field)
        if cls is None:
            return None
        message = cls()
        message.command_set = self.command
        message.data_set = BytesIO(self.data or b"")
        message.context_id = self.context_id
        primitive = message.message_to_primitive()
        assert isinstance(primitive, (C_FIND, C_ECHO, C_CANCEL, N_CREATE, N_SET))
        return primitive


@dataclass
class MessageAssembler:
    """Joins the PDV fragments of one association into DIMSE messages (PS3.8 E.2).

    Parameters
    ----------
    max_data_bytes
        A data set longer than this is not kept: its message comes out with
        ``data_too_large`` set and no data.
    """

    max_data_bytes: int
    _context_id: int | None = None
    _command: bytearray = field(default_factory=bytearray)
    _decoded: Dataset | None = None
    _data: bytearray = field(default_factory=bytearray)
    _data_too_large: bool = False

    @property
    def in_progress(self) -> bool:
        """Fragments of a message have arrived, but not all of them."""
        return self._context_id is not None

    def add(self, pdu: bytes) -> list[DimseMessage]:
        """Take one P-DATA-TF PDU; return the messages it completes.

        Raises
        ------
        PduError
            Fragments out of order (data before its command, a context that
            changes within a message) or an undecodable command set.
        """
        done: list[DimseMessage] = []
        for pdv in pdvs(pdu):
            if self._context_id is None:
                self._context_id = pdv.context_id
            elif pdv.context_id != self._context_id:
                raise PduError(
                    REASON_UNEXPECTED_PDU_PARAMETER, "a message's fragments change context"
                )
            message = self._command_fragment(pdv) if pdv.is_command else self._data_fragment(pdv)
            if message is not None:
                done.append(message)
        return done

    def _command_fragment(self, pdv: Any) -> DimseMessage | None:
        if self._decoded is not None:
            raise PduError(REASON_UNEXPECTED_PDU_PARAMETER, "a command fragment after the command")
        if len(self._command) + len(pdv.fragment) > COMMAND_CAP:
            raise PduError(REASON_INVALID_PDU_PARAMETER_VALUE, "command set too long")
        self._command += pdv.fragment
        if not pdv.is_last:
            return None
        try:
            command = decode(BytesIO(bytes(self._command)), True, True)
            # Touching the elements decodes them (pydicom reads lazily).
            data_set_type = int(command.get("CommandDataSetType", NO_DATA_SET))
            int(command.get("CommandField", 0) or 0)
        except Exception as exc:  # whatever pydicom raises on garbage: abort, named
            raise PduError(
                REASON_INVALID_PDU_PARAMETER_VALUE,
                f"undecodable command set ({type(exc).__name__})",
            ) from None
        if data_set_type == NO_DATA_SET:
            return self._finish(command, None)
        self._decoded = command
        return None

    def _data_fragment(self, pdv: Any) -> DimseMessage | None:
        if self._decoded is None:
            raise PduError(REASON_UNEXPECTED_PDU_PARAMETER, "a data fragment before its command")
        if not self._data_too_large:
            if len(self._data) + len(pdv.fragment) > self.max_data_bytes:
                self._data_too_large = True
                self._data = bytearray()
            else:
                self._data += pdv.fragment
        if not pdv.is_last:
            return None
        return self._finish(self._decoded, bytes(self._data))

    def _finish(self, command: Dataset, data: bytes | None) -> DimseMessage:
        assert self._context_id is not None
        message = DimseMessage(
            self._context_id,
            command,
            None if self._data_too_large else data,
            self._data_too_large,
        )
        self._context_id, self._decoded, self._data_too_large = None, None, False
        self._command, self._data = bytearray(), bytearray()
        return message


def decode_data_set(data: bytes, transfer_syntax: str, limit: int) -> Dataset:
    """Decode a data set in ``transfer_syntax``, inflating at most ``limit`` bytes.

    Deflated Explicit VR Little Endian (PS3.5 A.5) is inflated in steps that stop
    at the limit: a small deflated Identifier that would inflate to hundreds of
    megabytes costs at most ``limit`` bytes of memory.

    Raises
    ------
    DatasetTooLargeError
        The inflated data set is over ``limit``.
    """
    syntax = UID(transfer_syntax)
    if syntax.is_deflated:
        data = _inflate(data, limit)
    # pydicom reads lazily: the caller touches the elements and meets bad bytes there.
    return decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)


def _inflate(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"the deflated data set cannot be inflated: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise DatasetTooLargeError(limit)
    return out


def encode_data_set(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` encoded in ``transfer_syntax`` (pydicom, through pynetdicom's helper)."""
    syntax = UID(transfer_syntax)
    encoded = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if encoded is None:
        raise ValueError("the data set cannot be encoded")
    return encoded


def response_pdus(
    response: C_FIND | C_ECHO | N_CREATE | N_SET, context_id: int, max_length: int
) -> bytes:
    """A response primitive encoded by pynetdicom, framed for a peer taking ``max_length``."""
    message = _RESPONSE_CLASSES[type(response)]()
    message.primitive_to_message(response)
    command = encode(message.command_set, True, True)
    assert command is not None
    data = None
    if int(message.command_set.CommandDataSetType) != NO_DATA_SET and message.data_set is not None:
        data = message.data_set.getvalue()
    return pdata_pdus(context_id, command, data, max_length)


def pending_find_command(request: C_FIND, status: int) -> bytes:
    """The command set of every Pending C-FIND-RSP of one answer, encoded once.

    pynetdicom builds and encodes a command set per response; the Pending ones of an
    answer differ in nothing, so they are encoded once (by pynetdicom, so the bytes
    are pynetdicom's).
    """
    response = C_FIND()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.Status = status
    # Any Identifier: the command set then says that a data set follows.
    response.Identifier = BytesIO(b"\x00\x00")
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded
