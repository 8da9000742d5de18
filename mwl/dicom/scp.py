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

from mwl.admin.overrides import LiveSettings
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


def allowed_calling_aets(settings: Settings) -> list[str]:
    """The calling AE titles that may associate: the profiles' when restricted, else all."""
    if not settings.dicom_restrict_calling_ae:
        return []
    return sorted({p.ae_title.strip() for p in settings.dicom_ae_profiles})


class LivePolicyAe(AE):
    """An AE whose calling-AE restriction follows settings changed on the admin page.

    pynetdicom reads ``require_calling_aet`` while it negotiates each association and
    rejects a caller not listed with A-ASSOCIATE-RJ "calling AE title not recognised"
    (PS3.8 7.1.1.9), so answering from the live settings applies a change to the next
    association, with pynetdicom's own rejection.
    """

    def __init__(self, ae_title: str, live_settings: LiveSettings) -> None:
        super().__init__(ae_title=ae_title)
        self._live_settings = live_settings

    @property
    def require_calling_aet(self) -> list[str]:
        """The AE titles of the profiles while the restriction is on; else empty (any)."""
        return allowed_calling_aets(self._live_settings.current())

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("the calling AE titles come from the settings (dicom_ae_profiles)")


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
        (:func:`mwl.store.engine.make_session_factory` with ``writer=True``). Defaults to
        ``session_factory``.
    live_settings
        When given, the worklist policy (profiles, calling-AE restriction, match
        limit, response character set) is read from it per association and C-FIND,
        so changes made on the admin page apply without a restart; ``settings``
        still gives the AE title, address and port.

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
        *,
        live_settings: LiveSettings | None = None,
    ) -> None:
        check_profiles(settings if live_settings is None else live_settings.current())
        self._settings = settings
        self._live_settings = live_settings
        self._session_factory = session_factory
        self._writer_factory = writer_factory or session_factory
        self._server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        settings = self._settings
        ae = (
            AE(ae_title=settings.dicom_ae_title)
            if self._live_settings is None
            else LivePolicyAe(settings.dicom_ae_title, self._live_settings)
        )
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
        if settings.dicom_restrict_calling_ae and self._live_settings is None:
            # Unknown callers are rejected at association (A-ASSOCIATE-RJ, PS3.8 7.1.1.9).
            ae.require_calling_aet = allowed_calling_aets(settings)
        return ae

    @property
    def _policy_settings(self) -> Settings | LiveSettings:
        # What the C-FIND handler reads the worklist policy from, per C-FIND.
        return self._settings if self._live_settings is None else self._live_settings

    def _handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_FIND, handle_find, [self._session_factory, self._policy_settings]),
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
        # pynetdicom's standard handlers describe every PDU and DIMSE message for its
        # logger; when that logger drops them (the default, WARNING) they only cost time.
        _config.LOG_HANDLER_LEVEL = (
            "standard" if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO) else "none"
        )
        address = (self._settings.bind_address, self._settings.dicom_port)
        # start_server binds and listens before it returns; the serving thread
        # accepts from then on.
        self._server = self.ae.start_server(address, block=False, evt_handlers=self._handlers())
        host, port = self.address
        logger.info("worklist SCP %s listening on %s:%d", self._settings.dicom_ae_title, host, port)

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
