"""The one table of worklist keys: DICOM keyword <-> WorklistItem attribute, VR, level, matching.

Both the query translation (:mod:`mwl.dicom.query`) and the response builder
(:mod:`mwl.dicom.response`) read this table, so a key is matched and returned
the same way. Rows follow PS3.4 Table K.6-1 (Modality Worklist Information
Model attributes); a row whose ``attribute`` is ``None`` is a Type 2 return key
the broker does not hold: it is returned present and empty (PS3.4 K.6.1.2.2) and
a value given for it is ignored for matching (an unsupported optional matching
key, PS3.4 K.2.2.1.1.2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mwl.domain import MatchKind


class Level(enum.Enum):
    """Where a key sits in the Identifier."""

    TOP = "top"  # the Identifier itself (patient, visit, request, procedure)
    SPS = "sps"  # inside the single Scheduled Procedure Step Sequence item
    CODE = "code"  # inside a code sequence item (PS3.3 Table 8.8-1 basic code attributes)


# Start of the SPS: the two keys are matched together (PS3.4 Table K.6-1, C.2.2.2.5.1).
START = "start"

_NONE: frozenset[MatchKind] = frozenset()
_TEXT = frozenset({MatchKind.SINGLE, MatchKind.WILDCARD})
_SINGLE = frozenset({MatchKind.SINGLE})
_DATE = frozenset({MatchKind.SINGLE, MatchKind.RANGE})
_UID = frozenset({MatchKind.SINGLE, MatchKind.UID_LIST})


@dataclass(frozen=True)
class KeySpec:
    """One worklist key.

    Attributes
    ----------
    keyword
        DICOM keyword (pydicom's data dictionary spelling).
    attribute
        :class:`~mwl.domain.WorklistItem` attribute holding the value, ``None``
        when the broker holds none, or :data:`START` for the SPS start date/time.
    vr
        Value representation, deciding which matching the value may ask for.
    level
        Top level, SPS item or code item.
    matching
        Kinds of matching supported (PS3.4 C.2.2.2); empty: returned only.
    multiple_values
        Whether several values (``A\\B``) are accepted and ORed (PS3.4 C.2.2.2.8).
    """

    keyword: str
    attribute: str | None
    vr: str
    level: Level
    matching: frozenset[MatchKind] = _NONE
    multiple_values: bool = False


KEYS: tuple[KeySpec, ...] = (
    # Patient identification and demographics (K.6-1 Patient modules).
    KeySpec("PatientName", "patient_name", "PN", Level.TOP, _TEXT),
    KeySpec("PatientID", "patient_id", "LO", Level.TOP, _TEXT, multiple_values=True),
    KeySpec("IssuerOfPatientID", "issuer_of_patient_id", "LO", Level.TOP, _TEXT),
    KeySpec("PatientBirthDate", "patient_birth_date", "DA", Level.TOP, _DATE),
    KeySpec("PatientSex", "patient_sex", "CS", Level.TOP, _TEXT, multiple_values=True),
    # DS and US values are matched as stored (single value; no wildcards, C.2.2.2.4).
    KeySpec("PatientWeight", "patient_weight", "DS", Level.TOP, _SINGLE),
    KeySpec("PatientSize", "patient_size", "DS", Level.TOP, _SINGLE),
    KeySpec("ConfidentialityConstraintOnPatientDataDescription", None, "LO", Level.TOP),
    KeySpec("PatientState", "patient_state", "LO", Level.TOP, _TEXT),
    KeySpec("PregnancyStatus", "pregnancy_status", "US", Level.TOP, _SINGLE),
    KeySpec("MedicalAlerts", "medical_alerts", "LO", Level.TOP, _TEXT),
    # LO 1-n: a key matches any one of the patient's allergies; several key values
    # are ORed (C.2.2.2.8).
    KeySpec("Allergies", "allergies", "LO", Level.TOP, _TEXT, multiple_values=True),
    KeySpec("SpecialNeeds", None, "LO", Level.TOP),
    # Visit (K.6-1 Visit modules).
    KeySpec("AdmissionID", "admission_id", "LO", Level.TOP, _TEXT),
    KeySpec("CurrentPatientLocation", "current_patient_location", "LO", Level.TOP, _TEXT),
    KeySpec("InstitutionName", "institution_name", "LO", Level.TOP, _TEXT),
    KeySpec("InstitutionalDepartmentName", "institutional_department_name", "LO", Level.TOP, _TEXT),
    KeySpec("ReferencedPatientSequence", None, "SQ", Level.TOP),
    # Imaging service request.
    KeySpec("AccessionNumber", "accession_number", "SH", Level.TOP, _TEXT, multiple_values=True),
    KeySpec("RequestingPhysician", "requesting_physician", "PN", Level.TOP, _TEXT),
    KeySpec("ReferringPhysicianName", "referring_physician_name", "PN", Level.TOP, _TEXT),
    KeySpec(
        "PlacerOrderNumberImagingServiceRequest", "placer_order_number", "LO", Level.TOP, _TEXT
    ),
    KeySpec(
        "FillerOrderNumberImagingServiceRequest", "filler_order_number", "LO", Level.TOP, _TEXT
    ),
    # Requested procedure.
    KeySpec("StudyInstanceUID", "study_instance_uid", "UI", Level.TOP, _UID),
    KeySpec(
        "RequestedProcedureID",
        "requested_procedure_id",
        "SH",
        Level.TOP,
        _TEXT,
        multiple_values=True,
    ),
    KeySpec(
        "RequestedProcedureDescription",
        "requested_procedure_description",
        "LO",
        Level.TOP,
        _TEXT,
    ),
    KeySpec("RequestedProcedureCodeSequence", "requested_procedure_code", "SQ", Level.TOP),
    KeySpec(
        "RequestedProcedurePriority",
        "requested_procedure_priority",
        "SH",
        Level.TOP,
        _TEXT,
        multiple_values=True,
    ),
    KeySpec(
        "PatientTransportArrangements",
        "patient_transport_arrangements",
        "LO",
        Level.TOP,
        _TEXT,
    ),
    KeySpec(
        "ReasonForTheRequestedProcedure",
        "reason_for_the_requested_procedure",
        "LO",
        Level.TOP,
        _TEXT,
    ),
    KeySpec("RequestedProcedureComments", "requested_procedure_comments", "LT", Level.TOP, _TEXT),
    KeySpec("ConfidentialityCode", "confidentiality_code", "LO", Level.TOP, _TEXT),
    KeySpec("ReferencedStudySequence", None, "SQ", Level.TOP),
    # The Scheduled Procedure Step Sequence: one item per response (K.6-1).
    KeySpec("ScheduledProcedureStepSequence", None, "SQ", Level.TOP),
    # Scheduled Station AE Title: single value matching only (K.6-1 remark).
    KeySpec("ScheduledStationAETitle", "scheduled_station_ae_title", "AE", Level.SPS, _SINGLE),
    KeySpec("ScheduledProcedureStepStartDate", START, "DA", Level.SPS, _DATE),
    KeySpec("ScheduledProcedureStepStartTime", START, "TM", Level.SPS, _DATE),
    KeySpec("Modality", "modality", "CS", Level.SPS, _TEXT, multiple_values=True),
    KeySpec(
        "ScheduledPerformingPhysicianName",
        "scheduled_performing_physician_name",
        "PN",
        Level.SPS,
        _TEXT,
    ),
    KeySpec(
        "ScheduledProcedureStepDescription",
        "scheduled_procedure_step_description",
        "LO",
        Level.SPS,
        _TEXT,
    ),
    KeySpec("ScheduledProtocolCodeSequence", "scheduled_protocol_codes", "SQ", Level.SPS),
    KeySpec("ScheduledStationName", "scheduled_station_name", "SH", Level.SPS, _TEXT),
    KeySpec(
        "ScheduledProcedureStepLocation",
        "scheduled_procedure_step_location",
        "SH",
        Level.SPS,
        _TEXT,
    ),
    KeySpec("PreMedication", None, "LO", Level.SPS),
    KeySpec("RequestedContrastAgent", None, "LO", Level.SPS),
    KeySpec(
        "ScheduledProcedureStepID",
        "scheduled_procedure_step_id",
        "SH",
        Level.SPS,
        _TEXT,
        multiple_values=True,
    ),
    KeySpec(
        "ScheduledProcedureStepStatus",
        "scheduled_procedure_step_status",
        "CS",
        Level.SPS,
        _SINGLE,
        multiple_values=True,
    ),
    # Code sequence items (Scheduled Protocol / Requested Procedure Code Sequence).
    KeySpec("CodeValue", "value", "SH", Level.CODE),
    KeySpec("CodingSchemeDesignator", "scheme", "SH", Level.CODE),
    KeySpec("CodeMeaning", "meaning", "LO", Level.CODE),
)

_BY_LEVEL: dict[Level, dict[str, KeySpec]] = {level: {} for level in Level}
for _spec in KEYS:
    _BY_LEVEL[_spec.level][_spec.keyword] = _spec

SPS_SEQUENCE = "ScheduledProcedureStepSequence"
# Code sequences: keyword -> whether it holds several items (a tuple) or at most one.
CODE_SEQUENCES: dict[str, bool] = {
    "ScheduledProtocolCodeSequence": True,
    "RequestedProcedureCodeSequence": False,
}


def spec(keyword: str, level: Level) -> KeySpec | None:
    """The key ``keyword`` at ``level``, or ``None`` when the broker does not know it."""
    return _BY_LEVEL[level].get(keyword)


def keys_at(level: Level) -> tuple[KeySpec, ...]:
    """All keys at ``level``, in table order (for a zero-item sequence, C.2.2.2.6)."""
    return tuple(_BY_LEVEL[level].values())
