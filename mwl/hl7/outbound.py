"""Status events as outbound HL7 v2.5.1 messages: ORM^O01 (ORC-1 SC) or OMI^O23, to the RIS.

IHE Scheduled Workflow leaves the DSS/OF -> Order Placer status message to the
site; this follows what RIS expect from brokers (and dcm4chee's
``mpps2hl7-psu.xsl``): a "status changed" order control (ORC-1 ``SC``) whose order
status (ORC-5) is ``IP`` (in progress), ``CM`` (completed) or ``DC`` (discontinued),
with the order numbers the RIS gave (ORC-2/ORC-3) and the DICOM identifiers in
OBR-18 (accession number), OBR-19 (requested procedure ID), OBR-20 (SPS ID) or, for
OMI^O23, in IPC-1..5. One ORC/OBR pair (ORM) or IPC segment (OMI) per step.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mwl.config import Settings
from mwl.domain import MppsStatus, StatusEvent
from mwl.hl7.ack import escape

ORM_O01 = "ORM^O01"
OMI_O23 = "OMI^O23"
VERSION = "2.5.1"
CHARSET = "UNICODE UTF-8"  # MSH-18; the payload is encoded in UTF-8

#: ORC-5 Order Status (HL7 table 0038) for each MPPS status.
ORDER_STATUS: dict[MppsStatus, str] = {
    MppsStatus.IN_PROGRESS: "IP",
    MppsStatus.COMPLETED: "CM",
    MppsStatus.DISCONTINUED: "DC",
}


@dataclass(frozen=True)
class OutboundOptions:
    """Who we are and who the RIS is (MSH-3..6), and which message to send."""

    message_type: str = ORM_O01
    sending_application: str = "MWL"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundOptions:
        """The ``ris_*`` settings."""
        return cls(
            message_type=settings.ris_message_type,
            sending_application=settings.ris_sending_application,
            sending_facility=settings.ris_sending_facility,
            receiving_application=settings.ris_receiving_application,
            receiving_facility=settings.ris_receiving_facility,
        )


def _ts(moment: dt.datetime) -> str:
    """HL7 TS with the UTC offset, from a naive UTC time (HL7 v2.5.1 2A.3.72 DTM)."""
    return moment.replace(tzinfo=dt.UTC).astimezone().strftime("%Y%m%d%H%M%S%z")


def _components(*parts: str) -> str:
    """Escape each component, join with ``^`` and drop empty trailing components."""
    return "^".join(escape(p) for p in parts).rstrip("^")


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from ``{position: ER7 value}``; positions not given are empty."""
    last = max(fields, default=0)
    return "|".join([name] + [fields.get(i, "") for i in range(1, last + 1)])


def _person_name(pn: str) -> str:
    # DICOM PN (alphabetic group) and HL7 XPN share the component order
    # family^given^middle^prefix^suffix.
    return _components(*pn.split("=")[0].split("^"))


def render(
    event: StatusEvent,
    control_id: str,
    options: OutboundOptions | None = None,
    *,
    now: dt.datetime | None = None,
) -> bytes:
    """Render a status event as one HL7 message (segments separated by CR, UTF-8).

    Parameters
    ----------
    event
        The status change (from the outbox).
    control_id
        MSH-10; the same on every retry of the message.
    options
        Message type (ORM^O01 or OMI^O23) and MSH-3..6.
    now
        MSH-7 (naive UTC); defaults to the current time.

    Returns
    -------
    bytes
        The payload, without MLLP framing.
    """
    options = options or OutboundOptions()
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    structure = "ORM_O01" if options.message_type == ORM_O01 else "OMI_O23"
    msh = "|".join(
        [
            "MSH",
            "^~\\&",
            escape(options.sending_application),
            escape(options.sending_facility),
            escape(options.receiving_application),
            escape(options.receiving_facility),
            _ts(now),
            "",
            f"{options.message_type}^{structure}",
            escape(control_id),
            "P",
            VERSION,
            "",
            "",
            "",
            "",
            "",
            CHARSET,
        ]
    )
    pid = _segment(
        "PID",
        {
            1: "1",
            3: _components(event.patient_id, "", "", event.issuer_of_patient_id),
            5: _person_name(event.patient_name),
            7: escape(event.patient_birth_date),
            8: escape(event.patient_sex),
        },
    )
    order_status = ORDER_STATUS[event.mpps_status]
    when = _ts(event.occurred_at)
    code = event.requested_procedure_code
    service = (
        _components(code.value, code.meaning, code.scheme)
        if code
        else _components("", event.requested_procedure_description)
    )
    orc = _segment(
        "ORC",
        {
            1: "SC",
            2: escape(event.placer_order_number),
            3: escape(event.filler_order_number),
            5: order_status,
            9: when,
        },
    )
    segments = [msh, pid]
    sps_ids = event.scheduled_procedure_step_ids or ("",)
    if options.message_type == ORM_O01:
        for index, sps_id in enumerate(sps_ids, start=1):
            segments.append(orc)
            segments.append(
                _segment(
                    "OBR",
                    {
                        1: str(index),
                        2: escape(event.placer_order_number),
                        3: escape(event.filler_order_number),
                        4: service,
                        18: escape(event.accession_number),
                        19: escape(event.requested_procedure_id),
                        20: escape(sps_id),
                        22: when,
                        24: escape(event.modality),
                    },
                )
            )
    else:
        segments.append(orc)
        segments.append(
            _segment(
                "OBR",
                {
                    1: "1",
                    2: escape(event.placer_order_number),
                    3: escape(event.filler_order_number),
                    4: service,
                    22: when,
                    24: escape(event.modality),
                },
            )
        )
        for sps_id in sps_ids:
            segments.append(
                _segment(
                    "IPC",
                    {
                        1: escape(event.accession_number),
                        2: escape(event.requested_procedure_id),
                        3: escape(event.study_instance_uid),
                        4: escape(sps_id),
                        5: escape(event.modality),
                    },
                )
            )
    return ("\r".join(segments) + "\r").encode("utf-8")
