"""Association negotiation as the acceptor (PS3.7 Annex D, PS3.8 7.1): accept or reject.

The A-ASSOCIATE-RQ is decoded by pynetdicom and the presentation contexts are
negotiated by pynetdicom's :func:`~pynetdicom.presentation.negotiate_as_acceptor`
(with SCP/SCU role selection); this module adds the checks the broker makes
before it accepts, and builds the A-ASSOCIATE-AC or -RJ with pynetdicom's PDUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from mwl.dicom.net.framing import REASON_INVALID_PDU_PARAMETER_VALUE, PduError

#: DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# Transfer syntaxes offered for every SOP class: the uncompressed ones of PS3.5
# Annex A (pynetdicom's defaults). Explicit VR Little Endian first: it is preferred.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
)


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result, source and reason/diagnostic (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int
    why: str

    def pdu(self) -> bytes:
        """The encoded A-ASSOCIATE-RJ."""
        primitive = A_ASSOCIATE()
        primitive.result = self.result
        primitive.result_source = self.source
        primitive.diagnostic = self.reason
        return A_ASSOCIATE_RJ(primitive).encode()


PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_ACSE, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x02, 0x03


def no_reason(why: str) -> Rejection:
    """Rejected permanent by the service user, no reason given."""
    return Rejection(PERMANENT, SERVICE_USER, 0x01, why)


def calling_ae_not_recognized(why: str) -> Rejection:
    """Rejected permanent: calling AE title not recognised (PS3.8 7.1.1.9)."""
    return Rejection(PERMANENT, SERVICE_USER, 0x03, why)


def local_limit_exceeded(why: str) -> Rejection:
    """Rejected transient by the presentation-related provider: local limit exceeded."""
    return Rejection(TRANSIENT, SERVICE_PROVIDER_PRESENTATION, 0x02, why)


@dataclass(frozen=True)
class AssociateRequest:
    """The parts of an A-ASSOCIATE-RQ that the broker decides on."""

    primitive: A_ASSOCIATE
    protocol_version: int
    calling_ae_title: str
    called_ae_title: str
    #: The peer's Maximum Length (0: no limit), PS3.8 D.1.
    max_length: int


def read_request(pdu: bytes) -> AssociateRequest:
    """Decode an A-ASSOCIATE-RQ PDU.

    Raises
    ------
    PduError
        It cannot be decoded (an A-ABORT answers it, PS3.8 9.3.1).
    """
    rq = A_ASSOCIATE_RQ()
    try:
        rq.decode(pdu)
        primitive = rq.to_primitive()
    except Exception as exc:  # pynetdicom raises a mix of types on garbage
        raise PduError(
            REASON_INVALID_PDU_PARAMETER_VALUE,
            f"undecodable A-ASSOCIATE-RQ ({type(exc).__name__})",
        ) from None
    max_length = 0
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            max_length = int(item.maximum_length_received or 0)
    return AssociateRequest(
        primitive,
        int(rq.protocol_version),
        str(primitive.calling_ae_title).strip(),
        str(primitive.called_ae_title).strip(),
        max_length,
    )


def valid_ae_title(title: str) -> bool:
    """An AE value (PS3.5 Table 6.2-1): 1-16 characters of ASCII, no backslash or controls."""
    return 0 < len(title) <= 16 and title.isascii() and title.isprintable() and "\\" not in title


def protocol_rejection(request: AssociateRequest) -> Rejection | None:
    """A rejection the standard itself calls for, or None (PS3.8 7.1.1.2, 9.3.2)."""
    if not request.protocol_version & 0x0001:
        return Rejection(PERMANENT, SERVICE_PROVIDER_ACSE, 0x02, "protocol version not supported")
    if str(request.primitive.application_context_name or "") != APPLICATION_CONTEXT:
        return Rejection(PERMANENT, SERVICE_USER, 0x02, "application context name not supported")
    if not valid_ae_title(request.calling_ae_title):
        return calling_ae_not_recognized("calling AE title is not a valid AE value")
    return None


def supported_contexts(abstract_syntaxes: tuple[str, ...]) -> list[PresentationContext]:
    """The contexts this AE accepts as SCP, in pynetdicom's form."""
    return [build_context(uid, list(TRANSFER_SYNTAXES)) for uid in abstract_syntaxes]


@dataclass(frozen=True)
class Acceptance:
    """An accepted association: the A-ASSOCIATE-AC and the contexts by ID."""

    pdu: bytes
    contexts: dict[int, PresentationContext]


def accept(
    request: AssociateRequest,
    supported: list[PresentationContext],
    *,
    max_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> Acceptance:
    """Negotiate the presentation contexts and build the A-ASSOCIATE-AC (PS3.7 D.3.3).

    User Identity, Asynchronous Operations Window and SOP Class Extended items are
    not answered: the acceptor then supports none of them, which the requestor
    reads as "not supported" (one operation at a time, no identity check).
    """
    rq = request.primitive
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in rq.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    contexts, role_items = negotiate_as_acceptor(
        rq.presentation_context_definition_list, supported, roles or None
    )
    ac = A_ASSOCIATE()
    ac.application_context_name = UID(APPLICATION_CONTEXT)
    ac.calling_ae_title = rq.calling_ae_title
    ac.called_ae_title = rq.called_ae_title
    ac.result = 0x00
    ac.result_source = 0x01
    ac.presentation_context_definition_results_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(implementation_class_uid)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = implementation_version_name
    ac.user_information = [length, implementation, version, *role_items]
    accepted = {int(cx.context_id): cx for cx in contexts if cx.result == 0x00}  # type: ignore[arg-type]
    return Acceptance(A_ASSOCIATE_AC(ac).encode(), accepted)
