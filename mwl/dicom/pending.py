"""Pending C-FIND responses sent as encoded bytes: one P-DATA-TF per response.

pynetdicom turns each ``(status, Dataset)`` a C-FIND handler yields into a new
DIMSE message whose command set it builds and encodes twice, then encodes the
Dataset, and queues command and Identifier as two PDUs: about 1 ms of CPU per
response on the development machine, more than finding the item. A query that
returns hundreds of items spends nearly all its time there (docs/performance.md).

:class:`PendingSender` sends the same bytes for less: the command set of the
Pending response is encoded once per query (by pynetdicom, so it is exactly
pynetdicom's), and each response is one P-DATA-TF PDU carrying the command PDV
and the Identifier PDV (split into fragments as the peer's maximum PDU length
requires, PS3.8 9.3.5 and Annex E), handed to the association's DUL in order.
The final response (Success, Cancel or a failure) is still pynetdicom's, so it
follows the pending ones on the same queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from io import BytesIO

from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import P_DATA

# PDV message control header (PS3.8 E.2): bit 0 command, bit 1 last fragment.
_DATA_FRAGMENT, _COMMAND_FRAGMENT, _LAST = 0x00, 0x01, 0x02
_LAST_COMMAND = bytes([_COMMAND_FRAGMENT | _LAST])
_LAST_DATA = bytes([_DATA_FRAGMENT | _LAST])
# A PDV item: item length (4), presentation context ID (1), then the PDV (header + fragment).
_ITEM_HEADER = 5
# At most this many PDUs wait in the DUL's queue. Queuing every response at once would
# finish the handler before a C-CANCEL could be read (the SCU would get every match
# anyway) and hold a large answer in memory for a slow modality; a short queue keeps
# both bounded and costs nothing while the socket keeps up.
_MAX_QUEUED = 32
_QUEUE_POLL_S = 0.0005


class PendingSender:
    """Sends the Pending responses of one C-FIND (``EVT_C_FIND``) as encoded Identifiers.

    Parameters
    ----------
    event
        The ``EVT_C_FIND`` event being answered.
    status
        The Pending status of every response (``0xFF00``, or ``0xFF01`` when
        optional keys were not supported).
    """

    def __init__(self, event: Event, status: int) -> None:
        self._assoc = event.assoc
        self._context_id = int(event.context.context_id)
        #: The Identifiers must be encoded in this transfer syntax.
        self.transfer_syntax = str(event.context.transfer_syntax)
        # The peer's maximum length of a P-DATA-TF's PDV list; 0: unlimited.
        self._max_length = int(event.assoc.dimse.maximum_pdu_size or 0)
        request = event.request
        assert isinstance(request, C_FIND)
        self._command = _command_set(request, status)

    def send(self, identifier: bytes) -> bool:
        """Queue one Pending response with ``identifier`` (encoded) for the peer.

        Returns
        -------
        bool
            False when the association has ended (released or aborted): stop.
        """
        queue = self._assoc.dul.to_provider_queue
        while queue.qsize() > _MAX_QUEUED:
            if not self._assoc.is_established:
                return False
            time.sleep(_QUEUE_POLL_S)
        if not self._assoc.is_established:
            return False
        for pdu in _pdus(self._context_id, self._command, identifier, self._max_length):
            self._assoc.dul.send_pdu(pdu)
        return True


def _command_set(request: C_FIND, status: int) -> bytes:
    """The C-FIND-RSP command set (Implicit VR Little Endian), as pynetdicom encodes it."""
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


def _pdus(context_id: int, command: bytes, identifier: bytes, max_length: int) -> Iterator[P_DATA]:
    """P-DATA primitives for one message: PDVs packed while they fit ``max_length``."""
    whole = 2 * (_ITEM_HEADER + 1) + len(command) + len(identifier)
    if not max_length or whole <= max_length:
        # The usual case, a few times cheaper than fragmenting: one PDU, one PDV each.
        pdu = P_DATA()
        pdu.presentation_data_value_list.append((context_id, _LAST_COMMAND + command))
        pdu.presentation_data_value_list.append((context_id, _LAST_DATA + identifier))
        yield pdu
        return
    pdu = P_DATA()
    used = 0
    for pdv in _pdvs(command, identifier, max_length):
        size = _ITEM_HEADER + len(pdv)
        if max_length and used and used + size > max_length:
            yield pdu
            pdu, used = P_DATA(), 0
        pdu.presentation_data_value_list.append((context_id, pdv))
        used += size
    yield pdu


def _pdvs(command: bytes, identifier: bytes, max_length: int) -> Iterator[bytes]:
    """Message control header + fragment, command set first (PS3.8 E.2)."""
    for data, kind in ((command, _COMMAND_FRAGMENT), (identifier, _DATA_FRAGMENT)):
        step = max_length - _ITEM_HEADER - 1 if max_length else len(data)
        for start in range(0, len(data), step):
            last = start + step >= len(data)
            yield bytes([kind | (_LAST if last else 0)]) + data[start : start + step]
