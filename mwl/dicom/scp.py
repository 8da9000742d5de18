"""The worklist SCP: builds the pynetdicom AE, applies the calling-AE policy, starts, stops."""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # names made at import time
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.dicom.handlers import handle_echo, handle_find
from mwl.dicom.mpps import handle_n_create, handle_n_set
from mwl.dicom.profiles import check_profiles

logger = logging.getLogger(__name__)

# Timeouts (seconds) so a silent peer never holds an association thread for ever.
ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 30.0
NETWORK_TIMEOUT = 60.0


def apply_phi_policy(log_phi: bool) -> None:
    """Let pynetdicom log C-FIND Identifiers (patient data) only when ``log_phi`` is on.

    By default pynetdicom logs each C-FIND request Identifier at INFO and each
    response Identifier at DEBUG. These are its documented ``_config`` switches;
    they are process-wide. :meth:`WorklistScp.start` applies the setting.
    """
    _config.LOG_REQUEST_IDENTIFIERS = log_phi
    _config.LOG_RESPONSE_IDENTIFIERS = log_phi


def set_nodelay(event: Event) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle's algorithm off on the accepted socket.

    pynetdicom offers no option for it. With Nagle on, each small PDU waits for the
    peer's delayed ACK (about 40 ms per request/response on Linux).
    """
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class WorklistScp:
    """The Modality Worklist C-FIND SCP (plus Verification and MPPS), non-blocking.

    Parameters
    ----------
    settings
        ``dicom_ae_title``, ``bind_address``, ``dicom_port`` (0: an ephemeral port)
        and the worklist policy settings (``dicom_*``).
    session_factory
        Makes one unit of work per C-FIND (reading) and one per query log row.
        A plain (non-writer) factory is best: on SQLite a reader then never
        waits for the HL7 writer.
    writer_factory
        Makes one unit of work per MPPS N-CREATE/N-SET (writing); a writer factory
        (:func:`mwl.db.make_session_factory` with ``writer=True``). Defaults to
        ``session_factory``.

    Raises
    ------
    mwl.errors.SettingsError
        A response character set or profile status pydicom cannot handle.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        writer_factory: sessionmaker[Session] | None = None,
    ) -> None:
        check_profiles(settings)
        self._settings = settings
        self._session_factory = session_factory
        self._writer_factory = writer_factory or session_factory
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        settings = self._settings
        ae = AE(ae_title=settings.dicom_ae_title)
        # pynetdicom's default transfer syntaxes: Explicit VR LE, Implicit VR LE,
        # Deflated Explicit VR LE and Explicit VR BE.
        ae.add_supported_context(ModalityWorklistInformationFind)
        ae.add_supported_context(Verification)
        # MPPS SCP (PS3.4 F.7.2, IHE RAD-6/RAD-7): modalities report what they performed.
        ae.add_supported_context(ModalityPerformedProcedureStep)
        ae.acse_timeout = ACSE_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.network_timeout = NETWORK_TIMEOUT
        ae.maximum_associations = settings.dicom_max_associations
        if settings.dicom_restrict_calling_ae:
            # Unknown callers are rejected at association (A-ASSOCIATE-RJ, PS3.8 7.1.1.9).
            ae.require_calling_aet = sorted({p.ae_title for p in settings.dicom_ae_profiles})
        return ae

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_FIND, handle_find, [self._session_factory, self._settings]),
            (evt.EVT_N_CREATE, handle_n_create, [self._writer_factory, self._settings]),
            (evt.EVT_N_SET, handle_n_set, [self._writer_factory, self._settings]),
        ]

    def start(self) -> None:
        """Bind and listen; returns once the socket accepts associations.

        Raises
        ------
        OSError
            The address cannot be bound (port in use, no such interface).
        RuntimeError
            The SCP is already running.
        """
        if self._server is not None:
            raise RuntimeError("the worklist SCP is already running")
        # pynetdicom logs every request Identifier at INFO unless told otherwise.
        apply_phi_policy(self._settings.log_phi)
        address = (self._settings.bind_address, self._settings.dicom_port)
        # start_server binds and listens before it returns; the serving thread
        # accepts from then on.
        self._server = self.ae.start_server(address, block=False, evt_handlers=self._handlers())
        host, port = self.address
        logger.info(
            "worklist SCP %s listening on %s:%d", self._settings.dicom_ae_title, host, port
        )

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound; the real port when ``dicom_port`` was 0."""
        if self._server is None:
            raise RuntimeError("the worklist SCP is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`shutdown` not yet."""
        return self._server is not None

    def shutdown(self) -> None:
        """Stop listening, end the open associations and close the socket. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            logger.info("worklist SCP %s stopped", self._settings.dicom_ae_title)

    def __enter__(self) -> WorklistScp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
