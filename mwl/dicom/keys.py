"""The one table of worklist keys: DICOM keyword <-> WorklistItem attribute, VR, level, matching.

Both the query translation (:mod:`mwl.dicom.query`) and the response builder
(:mod:`mwl.dicom.response`) read this table, so a key is matched and returned
the same way. Rows follow PS3.4 Table K.6-1 (Modality Worklist Information
Model attributes). The keys the broker holds come from the declaration of the
stored fields (:mod:`mwl.worklist.fields`: keyword and attribute), with the VR of
the data dictionary, the SPS item level for the step's fields, and the matching
the VR allows (with the exceptions named below). A row whose ``attribute`` is
``None`` is a Type 2 return key the broker does not hold: it is returned present
and empty (PS3.4 K.6.1.2.2) and a value given for it is ignored for matching (an
unsupported optional matching key, PS3.4 K.2.2.1.1.2). A row with ``on_request``
is a key the broker holds and returns but matches on only for callers whose
profile asks for it (``match_keys``): devices fill such keys from a template
(dcmjs-dimse sends Pregnancy Status 0 in every query), and matching on them by
default would empty their worklist.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

from mwl.domain import MatchKind
from mwl.store.models import ScheduledProcedureStep
from mwl.worklist.fields import FIELDS, Kind, StoredField


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
    on_request
        Matched only when the caller's profile lists the key in ``match_keys``;
        otherwise a value given for it is ignored (0xFF01, PS3.4 K.2.2.1.1.2).
    """

    keyword: str
    attribute: str | None
    vr: str
    level: Level
    matching: frozenset[MatchKind] = _NONE
    multiple_values: bool = False
    on_request: bool = False


# How a key the broker holds may be matched, by its VR (PS3.4 C.2.2.2): wildcards
# where C.2.2.2.4 allows them, ranges on dates and times (C.2.2.2.5), lists of UIDs
# (C.2.2.2.2), nothing on a code sequence (returned only), else single values (DS
# and US are matched as stored).
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_MATCHING_BY_VR: dict[str, frozenset[MatchKind]] = {
    "DA": _DATE,
    "TM": _DATE,
    "DT": _DATE,
    "UI": _UID,
    "SQ": _NONE,
}
_SINGLE_VALUE_ONLY = frozenset(
    {
        # K.6-1 remark on Scheduled Station AE Title: single value matching only.
        "ScheduledStationAETitle",
        # Defined terms, matched as a set of statuses (WorklistQuery.statuses).
        "ScheduledProcedureStepStatus",
    }
)
# Keys whose query may list several values, ORed (C.2.2.2.8). Allergies (LO 1-n):
# a key matches any one of the patient's allergies, and several key values are ORed.
_MULTIPLE_VALUES = frozenset(
    {
        "PatientID",
        "PatientSex",
        "Allergies",
        "AccessionNumber",
        "RequestedProcedureID",
        "RequestedProcedurePriority",
        "Modality",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepStatus",
    }
)


# Optional matching keys (PS3.4 Table K.6-1, "O") that describe the patient rather
# than select the work: returned always, matched only when a profile asks for it.
MATCHED_ON_REQUEST = frozenset({"PregnancyStatus"})


def _held(keyword: str, field: StoredField) -> KeySpec:
    """The key of a stored field: VR from the data dictionary, the step's fields in the SPS item."""
    vr = dictionary_VR(keyword)
    if keyword in _SINGLE_VALUE_ONLY:
        matching = _SINGLE
    else:
        matching = _MATCHING_BY_VR.get(vr, _TEXT if vr in _WILDCARD_VRS else _SINGLE)
    return KeySpec(
        keyword,
        START if field.kind is Kind.START else field.name,
        vr,
        Level.SPS if field.model is ScheduledProcedureStep else Level.TOP,
        matching,
        multiple_values=keyword in _MULTIPLE_VALUES,
        on_request=keyword in MATCHED_ON_REQUEST,
    )


KEYS: tuple[KeySpec, ...] = (
    # The keys the broker holds: one per stored field of a worklist item (two for the
    # SPS start), from the declaration in mwl.worklist.fields.
    *(_held(keyword, field) for field in FIELDS for keyword in field.keywords),
    # Type 2 keys of PS3.4 Table K.6-1 the broker holds nothing for: returned empty.
    KeySpec("ConfidentialityConstraintOnPatientDataDescription", None, "LO", Level.TOP),
    KeySpec("SpecialNeeds", None, "LO", Level.TOP),
    KeySpec("ReferencedPatientSequence", None, "SQ", Level.TOP),
    KeySpec("ReferencedStudySequence", None, "SQ", Level.TOP),
    KeySpec("PreMedication", None, "LO", Level.SPS),
    KeySpec("RequestedContrastAgent", None, "LO", Level.SPS),
    # The Scheduled Procedure Step Sequence: one item per response (K.6-1).
    KeySpec("ScheduledProcedureStepSequence", None, "SQ", Level.TOP),
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
    keyword: field.kind is Kind.CODES
    for field in FIELDS
    if field.kind in (Kind.CODE, Kind.CODES)
    for keyword in field.keywords
}


def spec(keyword: str, level: Level) -> KeySpec | None:
    """The key ``keyword`` at ``level``, or ``None`` when the broker does not know it."""
    return _BY_LEVEL[level].get(keyword)


def keys_at(level: Level) -> tuple[KeySpec, ...]:
    """All keys at ``level``, in table order (for a zero-item sequence, C.2.2.2.6)."""
    return tuple(_BY_LEVEL[level].values())
