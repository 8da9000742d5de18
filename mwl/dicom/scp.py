"""The worklist SCP: its services, its ports (plain and TLS), the calling-AE policy; start, stop."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from pydicom import config as pydicom_config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # names made at import time
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    Verification,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

import mwl
from mwl.admin.overrides import LiveSettings, current_settings
from mwl.audit import messages as audit_messages
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.dicom.find import caller_refusal
from mwl.dicom.handlers import handle_echo, handle_find
from mwl.dicom.mpps import handle_n_create, handle_n_set
from mwl.dicom.net.association import Association, LayerSettings
from mwl.dicom.net.negotiation import (
    AssociateRequest,
    Rejection,
    calling_ae_not_recognized,
    no_reason,
)
from mwl.dicom.net.server import AssociationLimits, AssociationServer
from mwl.dicom.net.service import Services
from mwl.dicom.profiles import check_profiles, find_profile
from mwl.tls import ReloadingContext, TlsFiles

logger = logging.getLogger(__name__)

#: Implementation Class UID of this broker's DICOM upper layer (PS3.7 D.3.3.2): a
#: UUID-derived UID (PS3.5 B.2), fixed for every release.
IMPLEMENTATION_CLASS_UID = "2.25.268637280548765428431555855203446307854"
#: Implementation Version Name (16 characters at most).
IMPLEMENTATION_VERSION_NAME = f"MWL_{mwl.__version__}"[:16]


def layer_settings(settings: Settings) -> LayerSettings:
    """The association layer's settings, from the broker's."""
    return LayerSettings(
        ae_title=settings.dicom_ae_title,
        acse_timeout=settings.dicom_acse_timeout_seconds,
        dimse_timeout=settings.dicom_dimse_timeout_seconds,
        network_timeout=settings.dicom_network_timeout_seconds,
        max_pdu_length=settings.dicom_max_pdu_bytes,
        max_data_bytes=settings.dicom_max_identifier_bytes,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )


class WorklistScp:
    """The Modality Worklist C-FIND SCP (plus Verification and MPPS), non-blocking.

    Parameters
    ----------
    settings
        ``dicom_ae_title``, ``bind_address``, ``dicom_port`` (0: an ephemeral port),
        the TLS port and files, the limits and timeouts, and the worklist policy
        settings (``dicom_*``).
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
        still gives the AE title, addresses, ports, limits and TLS files.

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
        auditor: Auditor | None = None,
    ) -> None:
        check_profiles(settings if live_settings is None else live_settings.current())
        self._settings = settings
        self._live_settings = live_settings
        self._session_factory = session_factory
        self._writer_factory = writer_factory or session_factory
        self._server: AssociationServer | None = None
        self._auditor = auditor

    @property
    def _policy_settings(self) -> Settings | LiveSettings:
        # What the handlers read the worklist policy from, per association and C-FIND.
        return self._settings if self._live_settings is None else self._live_settings

    def _services(self) -> Services:
        find = partial(
            handle_find,
            session_factory=self._session_factory,
            settings=self._policy_settings,
            auditor=self._auditor,
        )
        # MPPS SCP (PS3.4 F.7.2, IHE RAD-6/RAD-7): modalities report what they performed.
        n_create = partial(
            handle_n_create,
            session_factory=self._writer_factory,
            settings=self._settings,
            auditor=self._auditor,
        )
        n_set = partial(
            handle_n_set,
            session_factory=self._writer_factory,
            settings=self._settings,
            auditor=self._auditor,
        )
        return Services(
            echo={str(Verification): handle_echo},
            find={str(ModalityWorklistInformationFind): find},
            n_create={str(ModalityPerformedProcedureStep): n_create},
            n_set={str(ModalityPerformedProcedureStep): n_set},
        )

    def admit(self, association: Association, request: AssociateRequest) -> Rejection | None:
        """The calling-AE policy, per A-ASSOCIATE-RQ, from the settings in force.

        With ``dicom_restrict_calling_ae`` only the AE titles of the profiles may
        associate (A-ASSOCIATE-RJ "calling AE title not recognised", PS3.8 7.1.1.9);
        a profile with ``require_tls`` is refused on the plain port.
        """
        settings = current_settings(self._policy_settings)
        host = association.address[0]
        refusal = caller_refusal(settings, request.calling_ae_title, host)
        if refusal is not None and refusal.status is None:
            self._audit_refusal(request.calling_ae_title, host, refusal.comment)
            return calling_ae_not_recognized(refusal.comment)
        profile = find_profile(settings, request.calling_ae_title, host)
        if profile is not None and profile.require_tls and not association.channel.tls:
            comment = f"the profile of {request.calling_ae_title} requires DICOM TLS"
            self._audit_refusal(request.calling_ae_title, host, comment)
            return no_reason(comment)
        return None

    def _audit_refusal(self, calling_ae: str, host: str, comment: str) -> None:
        # ATNA 110113 Security Alert (110126 Node Authentication): its own unit of work,
        # as nothing else is written for a refused association.
        auditor = self._auditor
        if auditor is None or not auditor.enabled:
            return
        message = audit_messages.security_alert(
            auditor.source,
            audit_messages.NODE_AUTHENTICATION,
            audit_messages.Participant(calling_ae, True, address=host),
            f"{calling_ae}@{host}",
            text=comment,
        )
        try:
            with self._writer_factory.begin() as session:
                auditor.record(session, message)
        except SQLAlchemyError as exc:
            logger.error("could not queue the audit message of a refused association: %s", exc)

    def start(self) -> None:
        """Bind and listen; returns once the sockets accept associations.

        Raises
        ------
        OSError
            An address cannot be bound (port in use, no such interface), or the TLS
            files cannot be read.
        ssl.SSLError
            The TLS certificate and key do not load.
        RuntimeError
            The SCP is already running.
        """
        if self._server is not None:
            raise RuntimeError("the worklist SCP is already running")
        # Values from the wire are judged by the broker's own rules (mwl.dicom.query:
        # a failure status naming the key). pydicom's reading checks would instead
        # write warnings that quote the values (patient data) to standard error. It is
        # pydicom's process-wide setting; nothing in the broker relies on it.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        settings = self._settings
        server = AssociationServer(
            layer_settings(settings),
            self._services(),
            AssociationLimits(
                max_associations=settings.dicom_max_associations,
                max_per_address=settings.dicom_max_associations_per_address,
                max_per_ae=settings.dicom_max_associations_per_ae,
            ),
            caller_policy=self.admit,
            proxy_protocol_from=settings.proxy_protocol_from,
        )
        try:
            if not (settings.dicom_tls_only and settings.dicom_tls_cert):
                server.listen(settings.bind_address, settings.dicom_port)
            if settings.dicom_tls_cert:
                files = TlsFiles(
                    Path(settings.dicom_tls_cert),
                    Path(settings.dicom_tls_key),
                    Path(settings.dicom_tls_ca) if settings.dicom_tls_ca else None,
                )
                server.listen(
                    settings.bind_address, settings.dicom_tls_port, ReloadingContext(files)
                )
        except BaseException:
            server.shutdown()
            raise
        server.start()
        self._server = server
        for host, port, tls in server.addresses:
            logger.info(
                "worklist SCP %s listening on %s:%d%s",
                settings.dicom_ae_title,
                host,
                port,
                " (DICOM TLS)" if tls else "",
            )

    def _bound(self, tls: bool) -> tuple[str, int] | None:
        if self._server is None:
            raise RuntimeError("the worklist SCP is not running")
        for host, port, is_tls in self._server.addresses:
            if is_tls == tls:
                return host, port
        return None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the plain port (the TLS port when it is the only one)."""
        bound = self._bound(tls=False) or self._bound(tls=True)
        assert bound is not None
        return bound

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """The (host, port) of the TLS port, or None when TLS is off."""
        return self._bound(tls=True)

    @property
    def server(self) -> AssociationServer:
        """The association server (counts of open and established associations)."""
        if self._server is None:
            raise RuntimeError("the worklist SCP is not running")
        return self._server

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`shutdown` not yet."""
        return self._server is not None

    @property
    def serving(self) -> bool:
        """Whether the association server is bound and accepting (for ``/health``)."""
        server = self._server
        return server is not None and server.serving

    def shutdown(self) -> None:
        """Stop listening, end the open associations and close the sockets. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            logger.info("worklist SCP %s stopped", self._settings.dicom_ae_title)

    def __enter__(self) -> WorklistScp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
