"""A modality's side of the worklist, for tests: one C-FIND over a new association."""

from __future__ import annotations

import socket

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from pynetdicom.status import Status

TIMEOUT_S = 20.0
# PS3.4 C.4.1.1.4: pending, some optional keys not supported.
PENDING_WARNING = 0xFF01


def _nodelay(event: Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def c_find(
    port: int, identifier: Dataset, *, calling_ae: str = "CT01", called_ae: str = "MWLTEST"
) -> tuple[list[Dataset], int]:
    """Send one worklist C-FIND to 127.0.0.1:``port``; return the matches and final status."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established, "association rejected or failed"
    matches: list[Dataset] = []
    final = -1
    try:
        for status, found in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
            assert status, "no answer from the SCP (timeout or abort)"
            if status.Status in (Status.PENDING, PENDING_WARNING):
                matches.append(found)
            else:
                final = status.Status
    finally:
        assoc.release()
    return matches, final
