"""The stored fields of a worklist item: one declaration that every layer reads.

A worklist item (:class:`~mwl.domain.WorklistItem`) is one scheduled procedure step
with its requested procedure and its patient, three rows of the store. Each
:class:`StoredField` below says, for one value of the item:

- ``name``: the attribute of :class:`~mwl.domain.WorklistItem` and of the order's
  domain type (:class:`~mwl.domain.PatientDemographics`,
  :class:`~mwl.domain.RequestedProcedure` or :class:`~mwl.domain.ScheduledStep`,
  after the row that holds it), and the name in the JSON API;
- ``columns``: the ORM column(s) that hold it, on the row's model;
- ``keywords``: the DICOM keyword(s) a modality asks for it by (the DICOM adapter
  takes VR and matching from these);
- ``hl7``: where the default HL7 mapping reads it from (documentation and lookup:
  the mapping itself is code in :mod:`mwl.hl7.order_mapping` and
  :mod:`mwl.hl7.patient_mapping`);
- ``label``: what the item page calls it (an English msgid, translated by the page);
- ``section``: where the item page shows it;
- ``kind``: how the value is held, which decides how it is copied, converted and
  shown (most are text, stored as they are).

Who reads it: the order service copies the fields of an order onto the rows
(:mod:`mwl.orders.apply`, :mod:`mwl.orders.patients`), matching turns rows into
items and keys into columns (:mod:`mwl.worklist.matching`), the DICOM key table
(:mod:`mwl.dicom.keys`), the JSON API and its document (:mod:`web.api`,
:mod:`web.openapi`) and the item page (:mod:`web.display`, ``item.html``).
``tests/core/test_fields.py`` fails when one of them misses a declared field.
docs/development.md, "How to add a stored field", says what else a new field needs.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from mwl.domain import Code, SpsStatus
from mwl.store.engine import Base
from mwl.store.models import (
    Patient,
    RequestedProcedure,
    ScheduledProcedureStep,
    format_codes,
    parse_codes,
)


def N_(message: str) -> str:
    """Mark ``message`` for the web page's translation catalog; returns it unchanged."""
    return message


class Kind(enum.Enum):
    """How a field's value is held: in the item, in its columns, on the page."""

    TEXT = "text"  # str in one column, as it is
    PERSON_NAME = "person name"  # as TEXT; the page shows it as people write names
    DATE = "date"  # as TEXT (DA, YYYYMMDD); the page and the API write YYYY-MM-DD
    CODE = "code"  # Code | None in three columns (value, scheme, meaning); None: no value
    CODES = "codes"  # tuple[Code, ...] in one text column (mwl.store.models.format_codes)
    START = "start"  # dt.datetime in two columns: the date-time, and its HHMMSS alone
    STATUS = "status"  # SpsStatus in one column; set from ORC-1/ORC-5, not from the order


# Kinds whose value is the column's value, unconverted.
TEXT_KINDS = frozenset({Kind.TEXT, Kind.PERSON_NAME, Kind.DATE})


class Section(enum.Enum):
    """The part of the item page that shows a field."""

    PATIENT = "patient"
    ORDER = "order"
    STEP = "step"
    DETAILS = "details"  # order details: shown only when the order gave them


# Codes repeat from step to step; they are immutable, so items share them.
_code = lru_cache(maxsize=1024)(Code)
_parse_codes = lru_cache(maxsize=1024)(parse_codes)


def _as_it_is(value: Any) -> Any:
    return value


def _read_code(value: str, scheme: str, meaning: str) -> Code | None:
    return _code(value, scheme, meaning) if value else None


def _read_start(start: dt.datetime, _time: str) -> dt.datetime:
    return start


# Kind -> the item's value from the column values; the text kinds take the value as it is.
_READERS: dict[Kind, Callable[..., Any]] = {
    Kind.CODE: _read_code,
    Kind.CODES: _parse_codes,
    Kind.START: _read_start,
    Kind.STATUS: SpsStatus,
}


@dataclass(frozen=True)
class StoredField:
    """One stored value of a worklist item (see the module docstring)."""

    name: str
    columns: tuple[InstrumentedAttribute[Any], ...]
    keywords: tuple[str, ...]
    hl7: str
    label: str
    section: Section
    kind: Kind = Kind.TEXT
    # The row's identity: set when the row is made and looked up by, never copied
    # onto a row that was found.
    identifies: bool = False
    # The name in the JSON API when it differs from ``name``.
    api: str = ""

    @property
    def model(self) -> type[Base]:
        """The ORM class of the row that holds the field."""
        owner = self.columns[0].class_
        assert isinstance(owner, type) and issubclass(owner, Base)
        return owner

    @property
    def api_name(self) -> str:
        """The field's name in the JSON API."""
        return self.api or self.name

    @property
    def reader(self) -> Callable[..., Any]:
        """What makes the item's value from the values of :attr:`columns` (as arguments)."""
        return _READERS.get(self.kind, _as_it_is)

    def read(self, values: Sequence[Any]) -> Any:
        """The item's value from the values of :attr:`columns`, in their order."""
        return self.reader(*values)

    def read_row(self, row: Base) -> Any:
        """The item's value from the row that holds the field."""
        return self.read([getattr(row, column.key) for column in self.columns])

    def write(self, row: Base, value: Any) -> None:
        """Store ``value`` (as the item holds it) on the row that holds the field."""
        if self.kind is Kind.CODE:
            code: Code | None = value
            for column, part in zip(
                self.columns,
                (code.value, code.scheme, code.meaning) if code else ("", "", ""),
                strict=True,
            ):
                setattr(row, column.key, part)
        elif self.kind is Kind.CODES:
            setattr(row, self.columns[0].key, format_codes(value))
        elif self.kind is Kind.START:
            start: dt.datetime = value
            setattr(row, self.columns[0].key, start)
            # HHMMSS, for queries that give a start time without a date.
            setattr(row, self.columns[1].key, start.strftime("%H%M%S"))
        elif self.kind is Kind.STATUS:
            setattr(row, self.columns[0].key, SpsStatus(value).value)
        else:
            setattr(row, self.columns[0].key, value)


# In the order the item page shows them, section by section.
FIELDS: tuple[StoredField, ...] = (
    # --- Patient (PID): the patient row, shared by the patient's orders.
    StoredField(
        "patient_name",
        (Patient.patient_name,),
        ("PatientName",),
        "PID-5",
        N_("Name"),
        Section.PATIENT,
        Kind.PERSON_NAME,
    ),
    StoredField(
        "patient_id",
        (Patient.patient_id,),
        ("PatientID",),
        "PID-3.1",
        N_("Patient ID"),
        Section.PATIENT,
        identifies=True,
    ),
    StoredField(
        "issuer_of_patient_id",
        (Patient.issuer_of_patient_id,),
        ("IssuerOfPatientID",),
        "PID-3.4",
        N_("Issuer of patient ID"),
        Section.PATIENT,
        identifies=True,
    ),
    StoredField(
        "patient_birth_date",
        (Patient.patient_birth_date,),
        ("PatientBirthDate",),
        "PID-7",
        N_("Birth date"),
        Section.PATIENT,
        Kind.DATE,
    ),
    StoredField(
        "patient_sex", (Patient.patient_sex,), ("PatientSex",), "PID-8", N_("Sex"), Section.PATIENT
    ),
    # --- Order: the requested procedure row (ORC, OBR; one study).
    StoredField(
        "accession_number",
        (RequestedProcedure.accession_number,),
        ("AccessionNumber",),
        "OBR-18 (OMI: IPC-1)",
        N_("Accession number"),
        Section.ORDER,
    ),
    StoredField(
        "requested_procedure_id",
        (RequestedProcedure.requested_procedure_id,),
        ("RequestedProcedureID",),
        "OBR-19 (OMI: IPC-2)",
        N_("Requested procedure ID"),
        Section.ORDER,
    ),
    StoredField(
        "requested_procedure_description",
        (RequestedProcedure.requested_procedure_description,),
        ("RequestedProcedureDescription",),
        "OBR-44.2, else OBR-4.2",
        N_("Procedure"),
        Section.ORDER,
    ),
    StoredField(
        "requested_procedure_code",
        (
            RequestedProcedure.requested_procedure_code_value,
            RequestedProcedure.requested_procedure_code_scheme,
            RequestedProcedure.requested_procedure_code_meaning,
        ),
        ("RequestedProcedureCodeSequence",),
        "OBR-44, else OBR-4.1-3",
        N_("Procedure code"),
        Section.ORDER,
        Kind.CODE,
    ),
    StoredField(
        "requested_procedure_priority",
        (RequestedProcedure.requested_procedure_priority,),
        ("RequestedProcedurePriority",),
        "TQ1-9, else ORC-7.6, OBR-27.6",
        N_("Priority"),
        Section.ORDER,
    ),
    StoredField(
        "referring_physician_name",
        (RequestedProcedure.referring_physician_name,),
        ("ReferringPhysicianName",),
        "PV1-8",
        N_("Referring physician"),
        Section.ORDER,
        Kind.PERSON_NAME,
    ),
    StoredField(
        "requesting_physician",
        (RequestedProcedure.requesting_physician,),
        ("RequestingPhysician",),
        "OBR-16",
        N_("Requesting physician"),
        Section.ORDER,
        Kind.PERSON_NAME,
    ),
    StoredField(
        "placer_order_number",
        (RequestedProcedure.placer_order_number,),
        ("PlacerOrderNumberImagingServiceRequest",),
        "ORC-2.1, else OBR-2.1",
        N_("Placer order number"),
        Section.ORDER,
    ),
    StoredField(
        "filler_order_number",
        (RequestedProcedure.filler_order_number,),
        ("FillerOrderNumberImagingServiceRequest",),
        "ORC-3.1, else OBR-3.1",
        N_("Filler order number"),
        Section.ORDER,
    ),
    StoredField(
        "study_instance_uid",
        (RequestedProcedure.study_instance_uid,),
        ("StudyInstanceUID",),
        "ZDS-1.1 (OMI: IPC-3)",
        N_("Study instance UID"),
        Section.ORDER,
        identifies=True,
    ),
    # --- Scheduled procedure step: the step row (one worklist item).
    StoredField(
        "scheduled_procedure_step_id",
        (ScheduledProcedureStep.scheduled_procedure_step_id,),
        ("ScheduledProcedureStepID",),
        "OBR-20 (OMI: IPC-4)",
        N_("Step ID"),
        Section.STEP,
        identifies=True,
    ),
    StoredField(
        "scheduled_procedure_step_status",
        (ScheduledProcedureStep.status,),
        ("ScheduledProcedureStepStatus",),
        "ORC-1 + ORC-5",
        N_("Status"),
        Section.STEP,
        Kind.STATUS,
    ),
    StoredField(
        "start",
        (ScheduledProcedureStep.start_datetime, ScheduledProcedureStep.start_time),
        ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"),
        "TQ1-7, else ORC-7.4, OBR-27.4",
        N_("Start"),
        Section.STEP,
        Kind.START,
    ),
    StoredField(
        "modality",
        (ScheduledProcedureStep.modality,),
        ("Modality",),
        "OBR-24 (OMI: IPC-5)",
        N_("Modality"),
        Section.STEP,
    ),
    StoredField(
        "scheduled_station_ae_title",
        (ScheduledProcedureStep.scheduled_station_ae_title,),
        ("ScheduledStationAETitle",),
        "IPC-9, else ORC-18.1 (opt-in), else station rules",
        N_("Station AE title"),
        Section.STEP,
    ),
    StoredField(
        "scheduled_station_name",
        (ScheduledProcedureStep.scheduled_station_name,),
        ("ScheduledStationName",),
        "IPC-7, else station rules",
        N_("Station name"),
        Section.STEP,
    ),
    StoredField(
        "scheduled_procedure_step_location",
        (ScheduledProcedureStep.scheduled_procedure_step_location,),
        ("ScheduledProcedureStepLocation",),
        "IPC-8",
        N_("Location (room)"),
        Section.STEP,
    ),
    StoredField(
        "scheduled_procedure_step_description",
        (ScheduledProcedureStep.scheduled_procedure_step_description,),
        ("ScheduledProcedureStepDescription",),
        "OBR-4.5 (protocol meaning; OMI: IPC-6.2), else the procedure description",
        N_("Step description"),
        Section.STEP,
    ),
    StoredField(
        "scheduled_performing_physician_name",
        (ScheduledProcedureStep.scheduled_performing_physician_name,),
        ("ScheduledPerformingPhysicianName",),
        "OBR-34",
        N_("Performing physician"),
        Section.STEP,
        Kind.PERSON_NAME,
    ),
    StoredField(
        "scheduled_protocol_codes",
        (ScheduledProcedureStep.scheduled_protocol_codes,),
        ("ScheduledProtocolCodeSequence",),
        "OBR-4.4-6 (OMI: IPC-6)",
        N_("Protocol"),
        Section.STEP,
        Kind.CODES,
    ),
    # --- Order details (docs/hl7-mapping.md; visit values from PV1 and AL1).
    # Patient State, Medical Alerts, weight and size come with each order, so they
    # are kept on the requested procedure row; the visit values on the patient row.
    StoredField(
        "institution_name",
        (RequestedProcedure.institution_name,),
        ("InstitutionName",),
        "ORC-17, else MSH-4.1",
        N_("Institution"),
        Section.DETAILS,
    ),
    StoredField(
        "institutional_department_name",
        (RequestedProcedure.institutional_department_name,),
        ("InstitutionalDepartmentName",),
        "ORC-13.9",
        N_("Department"),
        Section.DETAILS,
    ),
    StoredField(
        "reason_for_the_requested_procedure",
        (RequestedProcedure.reason_for_the_requested_procedure,),
        ("ReasonForTheRequestedProcedure",),
        "OBR-31",
        N_("Reason for the procedure"),
        Section.DETAILS,
    ),
    StoredField(
        "requested_procedure_comments",
        (RequestedProcedure.requested_procedure_comments,),
        ("RequestedProcedureComments",),
        "NTE-3 (after OBR)",
        N_("Comments"),
        Section.DETAILS,
    ),
    StoredField(
        "confidentiality_code",
        (RequestedProcedure.confidentiality_code,),
        ("ConfidentialityCode",),
        "ORC-28",
        N_("Confidentiality"),
        Section.DETAILS,
    ),
    StoredField(
        "patient_transport_arrangements",
        (RequestedProcedure.patient_transport_arrangements,),
        ("PatientTransportArrangements",),
        "OBR-30",
        N_("Transport"),
        Section.DETAILS,
    ),
    StoredField(
        "patient_state",
        (RequestedProcedure.patient_state,),
        ("PatientState",),
        "OBR-12",
        N_("Patient state"),
        Section.DETAILS,
    ),
    StoredField(
        "medical_alerts",
        (RequestedProcedure.medical_alerts,),
        ("MedicalAlerts",),
        "OBR-13",
        N_("Medical alerts"),
        Section.DETAILS,
    ),
    StoredField(
        "allergies", (Patient.allergies,), ("Allergies",), "AL1-3", N_("Allergies"), Section.DETAILS
    ),
    StoredField(
        "pregnancy_status",
        (Patient.pregnancy_status,),
        ("PregnancyStatus",),
        "PV1-15",
        N_("Pregnancy status"),
        Section.DETAILS,
    ),
    StoredField(
        "patient_weight",
        (RequestedProcedure.patient_weight,),
        ("PatientWeight",),
        "OBX-5 (BODY WEIGHT)",
        N_("Weight (kg)"),
        Section.DETAILS,
    ),
    StoredField(
        "patient_size",
        (RequestedProcedure.patient_size,),
        ("PatientSize",),
        "OBX-5 (BODY HEIGHT)",
        N_("Size (m)"),
        Section.DETAILS,
    ),
    StoredField(
        "admission_id",
        (Patient.admission_id,),
        ("AdmissionID",),
        "PV1-19.1, else PID-18.1",
        N_("Admission ID"),
        Section.DETAILS,
    ),
    StoredField(
        "current_patient_location",
        (Patient.current_patient_location,),
        ("CurrentPatientLocation",),
        "PV1-3",
        N_("Current location"),
        Section.DETAILS,
    ),
)

BY_NAME: dict[str, StoredField] = {f.name: f for f in FIELDS}


def fields_of(model: type[Base]) -> tuple[StoredField, ...]:
    """The fields held on rows of ``model``, in declaration order."""
    return tuple(f for f in FIELDS if f.model is model)


def order_fields(model: type[Base]) -> tuple[StoredField, ...]:
    """The fields an order (or patient) message writes onto a row of ``model`` it found.

    All of the row's fields but the identifying ones (the row was found by them) and
    the status, which the order control decides (ORC-1/ORC-5).
    """
    return tuple(f for f in fields_of(model) if not f.identifies and f.kind is not Kind.STATUS)


def in_section(section: Section) -> tuple[StoredField, ...]:
    """The fields the item page shows in ``section``, in order."""
    return tuple(f for f in FIELDS if f.section is section)
