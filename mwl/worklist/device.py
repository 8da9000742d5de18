"""What a modality would drop or truncate: a worklist item checked against its device.

A calling AE's profile (``[[dicom.ae_profiles]]``) may say what the device accepts:
longest value of given keys (``max_length``), longest PN component, longest LO and
SH values, characters it refuses, keys it requires a value for (Type 1 for it, e.g.
Study Instance UID), and the character set it is answered in. Vendors state such
limits in their DICOM Conformance Statements (samples/profiles/). The check is pure
(no protocol, no database): the items a station gets are checked against the
profile of that station's AE title, for the scanner page, the item page and the
``mwl_items_failing_profile`` gauge.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from mwl.config import DicomAeProfile, Settings
from mwl.domain import (
    CHARSET_CODECS,
    HIDDEN_BY_DEFAULT,
    KeyMatch,
    MatchKind,
    SpsStatus,
    WorklistItem,
    WorklistQuery,
)
from mwl.worklist.fields import FIELDS, TEXT_KINDS
from mwl.worklist.matching import find_items

# What the device does with the item.
TRUNCATED = "truncated"
DROPPED = "dropped"
REPLACED = "replaced"

# The VR of each stored text field's keyword (PS3.6; tests/core/test_device_checks.py
# compares this with pydicom's data dictionary). The core names them itself because
# it imports no DICOM library.
VR: Mapping[str, str] = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "AccessionNumber": "SH",
    "RequestedProcedureID": "SH",
    "RequestedProcedureDescription": "LO",
    "RequestedProcedurePriority": "SH",
    "ReferringPhysicianName": "PN",
    "RequestingPhysician": "PN",
    "PlacerOrderNumberImagingServiceRequest": "LO",
    "FillerOrderNumberImagingServiceRequest": "LO",
    "StudyInstanceUID": "UI",
    "ScheduledProcedureStepID": "SH",
    "Modality": "CS",
    "ScheduledStationAETitle": "AE",
    "ScheduledStationName": "SH",
    "ScheduledProcedureStepLocation": "SH",
    "ScheduledProcedureStepDescription": "LO",
    "ScheduledPerformingPhysicianName": "PN",
    "InstitutionName": "LO",
    "InstitutionalDepartmentName": "LO",
    "ReasonForTheRequestedProcedure": "LO",
    "RequestedProcedureComments": "LT",
    "ConfidentialityCode": "LO",
    "PatientTransportArrangements": "LO",
    "PatientState": "LO",
    "MedicalAlerts": "LO",
    "Allergies": "LO",
    "PregnancyStatus": "US",
    "PatientWeight": "DS",
    "PatientSize": "DS",
    "AdmissionID": "LO",
    "CurrentPatientLocation": "LO",
}

# The Python codec of each Specific Character Set: the core's one table.
CODECS: Mapping[str, str] = CHARSET_CODECS


@dataclass(frozen=True)
class DeviceLimits:
    """What one device accepts (empty values: no limit)."""

    max_length: Mapping[str, int] = field(default_factory=dict)
    max_pn_component_length: int = 0
    max_lo_length: int = 0
    max_sh_length: int = 0
    forbidden_characters: str = ""
    required_keys: tuple[str, ...] = ()
    charset: str = ""

    @property
    def declared(self) -> bool:
        """Whether the profile declares any limit at all (the charset alone is none)."""
        return bool(
            self.max_length
            or self.max_pn_component_length
            or self.max_lo_length
            or self.max_sh_length
            or self.forbidden_characters
            or self.required_keys
        )


@dataclass(frozen=True)
class Finding:
    """One value of an item the device would not take as it is.

    ``problem`` is one of ``too long``, ``component too long``, ``forbidden
    character``, ``missing``, ``not in charset``; ``effect`` what the device (or
    the broker, for the character set) does: :data:`TRUNCATED`, :data:`DROPPED`,
    :data:`REPLACED`; ``limit`` the limit passed (a length, the characters).
    """

    keyword: str
    problem: str
    effect: str
    limit: str = ""

    def __str__(self) -> str:
        limit = f" ({self.limit})" if self.limit else ""
        return f"{self.keyword}: {self.problem}{limit}, {self.effect}"


def limits_of(profile: DicomAeProfile, default_charset: str = "") -> DeviceLimits:
    """The device limits a configured profile declares."""
    return DeviceLimits(
        max_length=dict(profile.max_length),
        max_pn_component_length=profile.max_pn_component_length,
        max_lo_length=profile.max_lo_length,
        max_sh_length=profile.max_sh_length,
        forbidden_characters=profile.forbidden_characters,
        required_keys=profile.required_keys,
        charset=profile.response_charset or default_charset,
    )


def station_limits(settings: Settings) -> dict[str, DeviceLimits]:
    """The declared limits by AE title (the station that gets the items)."""
    out: dict[str, DeviceLimits] = {}
    for profile in settings.dicom_ae_profiles:
        limits = limits_of(profile, settings.dicom_response_charset)
        if limits.declared:
            out.setdefault(profile.ae_title.strip(), limits)
    return out


def limits_for_ae(settings: Settings, ae_title: str, host: str = "") -> DeviceLimits | None:
    """The declared limits of the device that queries as ``ae_title`` (from ``host``), or None."""
    for profile in settings.dicom_ae_profiles:
        if profile.ae_title.strip() == ae_title.strip() and profile.host in ("", host):
            limits = limits_of(profile, settings.dicom_response_charset)
            return limits if limits.declared else None
    return None


def failing_counts(session: Session, settings: Settings) -> dict[str, int]:
    """Per station AE title with declared limits: its open items that fail them."""
    out: dict[str, int] = {}
    for station, limits in station_limits(settings).items():
        query = WorklistQuery(
            keys=(KeyMatch("scheduled_station_ae_title", MatchKind.SINGLE, (station,)),),
            statuses=open_statuses(),
        )
        out[station] = sum(1 for item in find_items(session, query) if check_item(item, limits))
    return out


def check_item(item: WorklistItem, limits: DeviceLimits) -> list[Finding]:
    """Every value of ``item`` the device of ``limits`` would drop, truncate or not show."""
    findings: list[Finding] = []
    # No character set named: the broker's default (UTF-8), which holds every value.
    encoding = CODECS.get(limits.charset, "") if limits.charset else ""
    for stored in FIELDS:
        if stored.kind not in TEXT_KINDS:
            continue
        (keyword,) = stored.keywords
        text = str(getattr(item, stored.name) or "")
        if keyword in limits.required_keys and not text.strip():
            findings.append(Finding(keyword, "missing", DROPPED))
        if text:
            findings.extend(_value_findings(keyword, text, limits, encoding))
    return findings


def _value_findings(
    keyword: str, text: str, limits: DeviceLimits, encoding: str
) -> Iterable[Finding]:
    vr = VR.get(keyword, "")
    values = text.split("\\") if keyword == "Allergies" else [text]
    longest = max(len(v) for v in values)
    limit = limits.max_length.get(keyword, 0)
    by_vr = {"LO": limits.max_lo_length, "SH": limits.max_sh_length}.get(vr, 0)
    for bound in (limit, by_vr):
        if bound and longest > bound:
            yield Finding(keyword, "too long", TRUNCATED, str(bound))
            break
    if vr == "PN" and limits.max_pn_component_length:
        components = [c for group in text.split("=") for c in group.split("^")]
        if any(len(c) > limits.max_pn_component_length for c in components):
            yield Finding(
                keyword, "component too long", TRUNCATED, str(limits.max_pn_component_length)
            )
    bad = sorted({c for c in text if c in limits.forbidden_characters})
    if bad:
        yield Finding(keyword, "forbidden character", DROPPED, "".join(bad))
    if encoding and not _encodable(text, encoding):
        yield Finding(keyword, "not in charset", REPLACED, limits.charset)


def _encodable(text: str, encoding: str) -> bool:
    try:
        codecs.encode(text, encoding)
    except UnicodeEncodeError:
        return False
    except LookupError:
        return True
    return True


def open_statuses() -> frozenset[SpsStatus]:
    """The statuses a modality sees by default: the items worth checking."""
    return frozenset(SpsStatus) - HIDDEN_BY_DEFAULT - {SpsStatus.HELD}
