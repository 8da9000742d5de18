"""Domain types that cross layers: orders in, worklist queries and items out.

Names follow the DICOM keywords in snake_case (``accession_number``,
``scheduled_station_ae_title``) so that each adapter needs one keyword table only.
Values are text as the domain knows it (Unicode, DICOM formats for names and
dates: ``Family^Given`` for a person name), never encoded bytes.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class SpsStatus(enum.StrEnum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELED = "CANCELED"
    # Not a DICOM defined term: an order held by the RIS (ORC-1 HD) stays off the
    # worklist until released (RL); it is never sent to a modality.
    HELD = "HELD"


# Statuses a modality does not see unless it asks for them by name (dcm4chee's
# dcmHideSPSWithStatusFromMWL default, plus HELD).
HIDDEN_BY_DEFAULT: frozenset[SpsStatus] = frozenset(
    {
        SpsStatus.STARTED,
        SpsStatus.DEPARTED,
        SpsStatus.COMPLETED,
        SpsStatus.DISCONTINUED,
        SpsStatus.CANCELED,
        SpsStatus.HELD,
    }
)


@dataclass(frozen=True)
class Code:
    """A coded entry (Code Sequence item): value, scheme and meaning."""

    value: str
    scheme: str
    meaning: str = ""


@dataclass(frozen=True)
class PatientDemographics:
    """Who the order is for, as the RIS identifies them (PID segment)."""

    patient_id: str
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""  # DA, YYYYMMDD, or empty
    patient_sex: str = ""  # M, F, O or empty
    other_fields: tuple[tuple[str, str], ...] = ()  # further Patient module values by attribute
    # Visit and patient medical values that patient messages carry too (PV1, AL1).
    # None: the message did not carry them, so the stored values stay as they are.
    admission_id: str | None = None  # LO
    current_patient_location: str | None = None  # LO
    pregnancy_status: str | None = None  # US as text: "3" (pregnant) or ""
    allergies: str | None = None  # LO, several values separated by a backslash


@dataclass(frozen=True)
class ScheduledStep:
    """One scheduled procedure step of an order, as the order describes it."""

    scheduled_procedure_step_id: str
    modality: str = ""
    scheduled_station_ae_title: str = ""
    scheduled_station_name: str = ""
    scheduled_procedure_step_location: str = ""
    start: dt.datetime | None = None  # local time of the department
    scheduled_performing_physician_name: str = ""
    scheduled_procedure_step_description: str = ""
    scheduled_protocol_codes: tuple[Code, ...] = ()


@dataclass(frozen=True)
class RequestedProcedure:
    """A requested procedure (one study) with its scheduled steps."""

    study_instance_uid: str
    requested_procedure_id: str
    accession_number: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code: Code | None = None
    requested_procedure_priority: str = ""
    requesting_physician: str = ""
    referring_physician_name: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    steps: tuple[ScheduledStep, ...] = ()
    # Order details (docs/hl7-mapping.md). The patient's state, alerts, weight
    # and size come with each order (OBR, OBX), so they are kept per order.
    institution_name: str = ""
    institutional_department_name: str = ""
    reason_for_the_requested_procedure: str = ""
    requested_procedure_comments: str = ""  # LT: may hold line breaks
    confidentiality_code: str = ""
    patient_transport_arrangements: str = ""
    patient_state: str = ""
    medical_alerts: str = ""
    patient_weight: str = ""  # DS, kilograms
    patient_size: str = ""  # DS, metres


@dataclass(frozen=True)
class Order:
    """An order message in domain terms: what the RIS wants the worklist to hold.

    ``order_control`` and ``order_status`` are the HL7 code values (ORC-1, ORC-5);
    :func:`mwl.orders.apply.apply_order` turns them into a step status through the
    configured table.
    """

    order_control: str
    order_status: str
    patient: PatientDemographics
    procedures: tuple[RequestedProcedure, ...]
    sending_application: str = ""
    sending_facility: str = ""
    # The field that carries the scheduled start in this message's style (TQ1-7 or
    # ORC-7.4): named in the error when a start is required and missing.
    start_location: str = "TQ1-7"
    # What the message log should show of an accepted message (fields that disagree).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorklistItem:
    """One scheduled procedure step with everything a modality may ask about it.

    Read model of the worklist: flat, detached from the database, safe to hand to a
    thread that writes it to a slow modality.
    """

    # Patient
    patient_name: str
    patient_id: str
    issuer_of_patient_id: str
    patient_birth_date: str
    patient_sex: str
    # Imaging service request / requested procedure
    study_instance_uid: str
    requested_procedure_id: str
    accession_number: str
    requested_procedure_description: str
    requested_procedure_code: Code | None
    requested_procedure_priority: str
    requesting_physician: str
    referring_physician_name: str
    placer_order_number: str
    filler_order_number: str
    # Scheduled procedure step
    scheduled_procedure_step_id: str
    modality: str
    scheduled_station_ae_title: str
    scheduled_station_name: str
    scheduled_procedure_step_location: str
    start: dt.datetime
    scheduled_performing_physician_name: str
    scheduled_procedure_step_description: str
    scheduled_protocol_codes: tuple[Code, ...]
    scheduled_procedure_step_status: SpsStatus
    # Database key of the step, for links in the admin page; never sent to a modality.
    step_key: int = 0
    # Visit and patient medical values ("" when unknown: returned empty, Type 2).
    admission_id: str = ""
    current_patient_location: str = ""
    pregnancy_status: str = ""
    allergies: str = ""
    patient_state: str = ""
    medical_alerts: str = ""
    patient_weight: str = ""
    patient_size: str = ""
    # Order details.
    institution_name: str = ""
    institutional_department_name: str = ""
    reason_for_the_requested_procedure: str = ""
    requested_procedure_comments: str = ""
    confidentiality_code: str = ""
    patient_transport_arrangements: str = ""


class MatchKind(enum.Enum):
    """How a query value selects items: PS3.4 C.2.2.2."""

    SINGLE = "single"  # C.2.2.2.1
    UID_LIST = "uid_list"  # C.2.2.2.2: any of several values
    WILDCARD = "wildcard"  # C.2.2.2.4: '*' and '?'
    RANGE = "range"  # C.2.2.2.5: low and/or high, inclusive


@dataclass(frozen=True)
class KeyMatch:
    """One matching key of a query, on a :class:`WorklistItem` attribute.

    Universal matching is the absence of a ``KeyMatch``. For ``SINGLE`` and
    ``WILDCARD`` ``values`` has one element; for ``UID_LIST`` several; for ``RANGE``
    ``low``/``high`` bound the value (either may be ``None`` for an open range).
    """

    attribute: str
    kind: MatchKind
    values: tuple[str, ...] = ()
    low: str | None = None
    high: str | None = None


@dataclass(frozen=True)
class WorklistQuery:
    """A worklist query in domain terms.

    ``start_from``/``start_until`` bound the SPS start as one date-time, inclusive;
    they come from SPS Start Date and Time matched together (PS3.4 K.6-1).
    ``statuses`` restricts the step status; empty means "all but the hidden ones".
    """

    keys: tuple[KeyMatch, ...] = ()
    start_from: dt.datetime | None = None
    start_until: dt.datetime | None = None
    statuses: frozenset[SpsStatus] = field(default_factory=frozenset)
    limit: int | None = None


class MppsStatus(enum.StrEnum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14 enumerated values."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


# A performed step in one of these states may no longer be updated (PS3.4 F.7.2.2.2).
MPPS_FINAL: frozenset[MppsStatus] = frozenset({MppsStatus.COMPLETED, MppsStatus.DISCONTINUED})


@dataclass(frozen=True)
class ScheduledStepReference:
    """One Scheduled Step Attributes Sequence item of an MPPS: which step was performed.

    Empty values are unknown (all empty, or a UID no order has: an unscheduled step).
    """

    study_instance_uid: str = ""
    accession_number: str = ""
    requested_procedure_id: str = ""
    scheduled_procedure_step_id: str = ""


@dataclass(frozen=True)
class PerformedStep:
    """A Modality Performed Procedure Step as the modality reported it (N-CREATE or N-SET).

    ``dataset_json`` is the whole attribute list as DICOM JSON (PS3.18 F.2), kept as
    received. On an update, ``status`` is ``None`` when the N-SET leaves it alone,
    ``references`` is ignored (it may not be set, PS3.4 F.7.2.2), and ``dataset_json``
    holds only the modified attributes, merged over the stored ones.
    """

    sop_instance_uid: str
    status: MppsStatus | None
    dataset_json: str = "{}"
    references: tuple[ScheduledStepReference, ...] = ()
    performed_station_ae_title: str = ""
    modality: str = ""
    start: dt.datetime | None = None
    end: dt.datetime | None = None


@dataclass(frozen=True)
class StatusEvent:
    """A step status change to report to the RIS (one per affected order).

    Serialised as the outbox payload; the HL7 adapter renders it (ORC-5, OBR-18..20).
    """

    study_instance_uid: str
    requested_procedure_id: str
    accession_number: str
    placer_order_number: str
    filler_order_number: str
    scheduled_procedure_step_ids: tuple[str, ...]
    status: SpsStatus
    mpps_status: MppsStatus
    mpps_sop_instance_uid: str
    occurred_at: dt.datetime  # UTC, naive
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    modality: str = ""
    requested_procedure_description: str = ""
    requested_procedure_code: Code | None = None


# Specific Character Set defined term -> Python codec (PS3.3 C.12.1.1.2, single-byte
# sets without code extensions, and UTF-8).
CHARSET_CODECS: Mapping[str, str] = {
    "": "ascii",
    "ISO_IR 6": "ascii",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 144": "iso_ir_144",
    "ISO_IR 127": "iso_ir_127",
    "ISO_IR 126": "iso_ir_126",
    "ISO_IR 138": "iso_ir_138",
    "ISO_IR 148": "iso_ir_148",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 166": "iso_ir_166",
    "ISO_IR 192": "UTF8",
    "GB18030": "GB18030",
    "GBK": "GBK",
}
