"""HL7 v2 frames to domain terms: ORM^O01 / OMI^O23 to ``Order``, ADT to patient changes.

Reads MSH (:mod:`mwl.hl7.grammar`), refuses what the broker does not handle, splits
the segments and hands them to :mod:`mwl.hl7.order_mapping` or
:mod:`mwl.hl7.patient_mapping`. Only the segments and fields the mapping reads are
looked at (docs/hl7-interface.md, docs/hl7-mapping.md). Lenient on input: unknown
segments are ignored, optional fields may be empty; a field that is present but
wrong (bad date, bad UID) is an error naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping

from mwl.domain import Order
from mwl.hl7.errors import (
    REQUIRED_FIELD_MISSING,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_VERSION_ID,
    Hl7MessageError,
)
from mwl.hl7.grammar import MessageHeader, read_header, split_segments
from mwl.hl7.order_mapping import MappingOptions, map_order
from mwl.hl7.patient_mapping import map_patient_messages
from mwl.orders.patients import PatientMessage

SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
# Message type (MSH-9.1) -> accepted trigger events (MSH-9.2).
SUPPORTED_EVENTS: Mapping[str, frozenset[str]] = {
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
    "ADT": frozenset({"A08", "A31", "A40", "A47"}),
}


def check_supported(header: MessageHeader) -> None:
    """Reject what the broker does not handle: message type, event, version.

    Raises
    ------
    Hl7MessageError
        200 / 201 / 203 (all answered AR), 101 for an empty MSH-9 or MSH-10.
    """
    if not header.message_type:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MSH-9", "message type is empty", "AR")
    events = SUPPORTED_EVENTS.get(header.message_type)
    if events is None:
        raise Hl7MessageError(
            UNSUPPORTED_MESSAGE_TYPE,
            "MSH-9",
            f"message type {header.message_type} is not supported",
        )
    if header.trigger_event not in events:
        raise Hl7MessageError(
            UNSUPPORTED_EVENT_CODE,
            "MSH-9.2",
            f"event {header.message_type}^{header.trigger_event or '(empty)'} is not supported",
        )
    if header.version_id not in SUPPORTED_VERSIONS:
        raise Hl7MessageError(
            UNSUPPORTED_VERSION_ID,
            "MSH-12",
            f"version {header.version_id or '(empty)'} is not supported"
            f" (supported: {', '.join(sorted(SUPPORTED_VERSIONS))})",
        )
    if not header.message_control_id:
        raise Hl7MessageError(REQUIRED_FIELD_MISSING, "MSH-10", "message control ID is empty")


def parse_message(
    raw: bytes, options: MappingOptions | None = None
) -> Order | tuple[PatientMessage, ...]:
    """Map one supported frame to domain terms: an order, or patient changes (ADT).

    Raises
    ------
    Hl7MessageError
        As :func:`parse_order`.
    """
    options = options or MappingOptions()
    header = read_header(raw, options.default_charset)
    check_supported(header)
    segments = split_segments(raw, header)
    if header.message_type == "ADT":
        return map_patient_messages(header, segments)
    return map_order(header, segments, options)


def parse_order(raw: bytes, options: MappingOptions | None = None) -> Order:
    """Map one ORM^O01 or OMI^O23 frame to a domain :class:`~mwl.domain.Order`.

    Parameters
    ----------
    raw
        The frame payload as received.
    options
        Site choices; defaults follow docs/hl7-mapping.md.

    Returns
    -------
    Order
        One requested procedure per ORC/OBR group (ORM) or per distinct IPC-1/2/3
        (OMI), with their scheduled steps.

    Raises
    ------
    Hl7MessageError
        For anything the sender must fix (AE) or that the broker never accepts (AR).
    """
    result = parse_message(raw, options)
    if not isinstance(result, Order):
        raise Hl7MessageError(UNSUPPORTED_MESSAGE_TYPE, "MSH-9", "not an order message")
    return result
