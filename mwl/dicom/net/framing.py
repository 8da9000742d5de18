"""PDUs on a byte stream (PS3.8 9.3): cut them out, bounded before their bodies arrive.

Sans-IO: :class:`PduReader` is fed bytes and hands out whole PDUs, and refuses a
PDU by its 6-byte header alone when its type is unknown or its length is over what
this side accepts, so a peer can never make the broker buffer more than one PDU of
the size it agreed to. Decoding the PDUs themselves is pynetdicom's
(:mod:`pynetdicom.pdu`); only the P-DATA-TF framing, which the hot path of a
C-FIND answer writes per response, is packed here (PS3.8 9.3.5, Annex E).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

# PDU types, PS3.8 Table 9-11 and 9.3.
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

HEADER_LENGTH = 6
# A-ASSOCIATE-RQ has no length limit of its own in PS3.8. 256 KiB holds 128 presentation
# contexts with every transfer syntax and a large user identity (SAML, JWT) many times.
ASSOCIATE_RQ_CAP = 256 * 1024
# A-RELEASE-RQ/RP and A-ABORT have a fixed 4-byte body (PS3.8 9.3.6 to 9.3.8).
_FIXED_LENGTH = {A_RELEASE_RQ: 4, A_RELEASE_RP: 4, A_ABORT: 4}

# A-ABORT reasons when the service provider aborts (PS3.8 Table 9-26).
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_UNRECOGNIZED_PDU_PARAMETER = 0x04
REASON_UNEXPECTED_PDU_PARAMETER = 0x05
REASON_INVALID_PDU_PARAMETER_VALUE = 0x06
# A-ABORT sources (PS3.8 Table 9-26).
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02

_HEADER = struct.Struct(">BxL")
_PDV_ITEM = struct.Struct(">LBB")
# PDV message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment.
COMMAND_FRAGMENT = 0x01
LAST_FRAGMENT = 0x02
# A PDV item before its fragment: item length (4), context ID (1), control header (1).
PDV_OVERHEAD = 6


class PduError(ValueError):
    """The peer broke the framing: the association must be aborted with ``reason``."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Pdu:
    """One whole PDU: its type and its bytes, header included."""

    type: int
    data: bytes


class PduReader:
    """Cuts whole PDUs out of the bytes read from one association's socket.

    Parameters
    ----------
    max_pdata_length
        The Maximum Length this side advertised in its A-ASSOCIATE-AC (PS3.8 D.1):
        a P-DATA-TF whose PDU length is larger is refused. 0 while no association
        is established (a P-DATA-TF is then unexpected anyway).
    """

    def __init__(self, max_pdata_length: int = 0) -> None:
        self.max_pdata_length = max_pdata_length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet a whole PDU."""
        return len(self._buffer)

    def next_pdu(self) -> Pdu | None:
        """The next whole PDU, or None until more bytes are fed.

        Raises
        ------
        PduError
            An unknown PDU type, or a length this side does not accept.
        """
        buffer = self._buffer
        if len(buffer) < HEADER_LENGTH:
            return None
        pdu_type, length = _HEADER.unpack_from(buffer)
        self._check(pdu_type, length)
        end = HEADER_LENGTH + length
        if len(buffer) < end:
            return None
        data = bytes(buffer[:end])
        del buffer[:end]
        return Pdu(pdu_type, data)

    def _check(self, pdu_type: int, length: int) -> None:
        if pdu_type == P_DATA_TF:
            if length > self.max_pdata_length:
                raise PduError(
                    REASON_INVALID_PDU_PARAMETER_VALUE,
                    f"P-DATA-TF of {length} bytes, over the {self.max_pdata_length} advertised",
                )
        elif pdu_type == A_ASSOCIATE_RQ:
            if length > ASSOCIATE_RQ_CAP:
                raise PduError(
                    REASON_INVALID_PDU_PARAMETER_VALUE,
                    f"A-ASSOCIATE-RQ of {length} bytes, over the {ASSOCIATE_RQ_CAP} accepted",
                )
        elif pdu_type in _FIXED_LENGTH:
            if length != _FIXED_LENGTH[pdu_type]:
                raise PduError(
                    REASON_INVALID_PDU_PARAMETER_VALUE,
                    f"PDU type 0x{pdu_type:02X} with a length of {length}",
                )
        elif pdu_type in (A_ASSOCIATE_AC, A_ASSOCIATE_RJ):
            # An acceptor never expects these; refuse them unread, whatever their size.
            raise PduError(REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02X}")
        else:
            raise PduError(REASON_UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")


@dataclass(frozen=True)
class Pdv:
    """One presentation data value of a P-DATA-TF (PS3.8 9.3.5.1, E.2)."""

    context_id: int
    is_command: bool
    is_last: bool
    fragment: memoryview


def pdvs(pdu: bytes) -> Iterator[Pdv]:
    """The PDVs of one P-DATA-TF PDU, in order.

    Raises
    ------
    PduError
        A PDV item that overruns the PDU or is too short for its header.
    """
    view = memoryview(pdu)
    offset, end = HEADER_LENGTH, len(pdu)
    if offset == end:
        raise PduError(REASON_INVALID_PDU_PARAMETER_VALUE, "P-DATA-TF without a PDV")
    while offset < end:
        if end - offset < PDV_OVERHEAD:
            raise PduError(REASON_INVALID_PDU_PARAMETER_VALUE, "truncated PDV item")
        item_length, context_id, control = _PDV_ITEM.unpack_from(pdu, offset)
        item_end = offset + 4 + item_length
        if item_length < 2 or item_end > end:
            raise PduError(REASON_INVALID_PDU_PARAMETER_VALUE, "PDV item length out of bounds")
        yield Pdv(
            context_id,
            bool(control & COMMAND_FRAGMENT),
            bool(control & LAST_FRAGMENT),
            view[offset + PDV_OVERHEAD : item_end],
        )
        offset = item_end


def pdata_pdus(context_id: int, command: bytes, data: bytes | None, max_length: int) -> bytes:
    """One DIMSE message as P-DATA-TF PDUs, each within the peer's ``max_length``.

    The command set goes first, then the data set, each cut into fragments so that
    every PDU's PDV list fits ``max_length`` (the peer's Maximum Length, PS3.8
    D.1; 0 = unlimited). A message that fits is one PDU with two PDVs: the usual
    case for a C-FIND response, and what this function is fastest at.
    """
    parts: tuple[tuple[bytes, int], ...] = ((command, COMMAND_FRAGMENT),)
    if data is not None:
        parts += ((data, 0),)
    whole = sum(PDV_OVERHEAD + len(p) for p, _ in parts)
    if not max_length or whole <= max_length:
        out = bytearray(_HEADER.pack(P_DATA_TF, whole))
        for part, kind in parts:
            out += _PDV_ITEM.pack(len(part) + 2, context_id, kind | LAST_FRAGMENT)
            out += part
        return bytes(out)
    # One PDV per PDU, each fragment as long as the peer takes: simple and valid (E.2).
    step = max_length - PDV_OVERHEAD
    if step < 1:
        raise ValueError(f"maximum length {max_length} leaves no room for a fragment")
    out = bytearray()
    for part, kind in parts:
        # range(0, 0) would send no PDV for an empty data set: send one empty fragment.
        for start in range(0, max(len(part), 1), step):
            fragment = part[start : start + step]
            last = LAST_FRAGMENT if start + step >= len(part) else 0
            out += _HEADER.pack(P_DATA_TF, PDV_OVERHEAD + len(fragment))
            out += _PDV_ITEM.pack(len(fragment) + 2, context_id, kind | last)
            out += fragment
    return bytes(out)


def short_pdu(pdu_type: int, first: int = 0, second: int = 0) -> bytes:
    """A-RELEASE-RQ/RP or A-ABORT (PS3.8 9.3.6 to 9.3.8): two reserved, two given bytes."""
    return _HEADER.pack(pdu_type, 4) + bytes((0, 0, first, second))


def abort_pdu(source: int = SOURCE_SERVICE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8): the reason only counts when the provider aborts."""
    return short_pdu(A_ABORT, source, reason if source == SOURCE_SERVICE_PROVIDER else 0)
