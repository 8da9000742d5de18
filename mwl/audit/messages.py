"""DICOM audit messages (PS3.15 A.5.3): the XML of each event the broker records.

Each function returns one ``AuditMessage`` document as text. Codes are DICOM's
(codeSystemName ``DCM``) unless named otherwise; the element order follows the
schema (PS3.15 A.5.1), which the tests check.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

MWL_SOP_CLASS = "1.2.840.10008.5.1.4.31"


@dataclass(frozen=True)
class CodedValue:
    code: str
    meaning: str
    system: str = "DCM"

    def element(self, tag: str, parent: ET.Element) -> ET.Element:
        return ET.SubElement(
            parent,
            tag,
            {"csd-code": self.code, "codeSystemName": self.system, "originalText": self.meaning},
        )


# Event IDs (PS3.15 A.5.3, DCM codes).
APPLICATION_ACTIVITY = CodedValue("110100", "Application Activity")
PATIENT_RECORD = CodedValue("110110", "Patient Record")
ORDER_RECORD = CodedValue("110109", "Order Record")
PROCEDURE_RECORD = CodedValue("110111", "Procedure Record")
QUERY = CodedValue("110112", "Query")
SECURITY_ALERT = CodedValue("110113", "Security Alert")
USER_AUTHENTICATION = CodedValue("110114", "User Authentication")
EXPORT = CodedValue("110106", "Export")
# Event types.
APPLICATION_START = CodedValue("110120", "Application Start")
APPLICATION_STOP = CodedValue("110121", "Application Stop")
LOGIN = CodedValue("110122", "Login")
LOGOUT = CodedValue("110123", "Logout")
NODE_AUTHENTICATION = CodedValue("110126", "Node Authentication")
NETWORK_CONFIGURATION = CodedValue("110128", "Network Configuration")
SECURITY_CONFIGURATION = CodedValue("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = CodedValue("110131", "Software Configuration")
RESTRICTED_FUNCTION = CodedValue("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = CodedValue("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = CodedValue("110137", "User Security Attributes Changed")
# Audit source type (CP 1362: a coded value).
APPLICATION_SERVER = CodedValue("4", "Application Server process or thread")
# Roles.
APPLICATION = CodedValue("110150", "Application")
SOURCE = CodedValue("110153", "Source Role ID")
DESTINATION = CodedValue("110152", "Destination Role ID")
DESTINATION_MEDIA = CodedValue("110154", "Destination Media")
# Participant object ID types.
PATIENT_NUMBER = CodedValue("2", "Patient Number", "RFC-3881")
SOP_CLASS_UID = CodedValue("110181", "SOP Class UID")
STUDY_INSTANCE_UID = CodedValue("110180", "Study Instance UID")
NODE_ID = CodedValue("110182", "Node ID")
URI = CodedValue("12", "URI", "RFC-3881")
USER_IDENTIFIER = CodedValue("11", "User Identifier", "RFC-3881")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: who reports (the broker); type 4 = application server."""

    source_id: str
    site_id: str = ""

    @classmethod
    def named(cls, source_id: str = "", site_id: str = "") -> Source:
        return cls(source_id or socket.gethostname(), site_id)


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: a user, an AE or the broker itself."""

    user_id: str
    requestor: bool
    role: CodedValue | None = None
    address: str = ""  # an IP address (NetworkAccessPointTypeCode 2)
    alternative_id: str = ""
    user_name: str = ""


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: what the event concerns."""

    object_id: str
    id_type: CodedValue
    type_code: str  # 1 person, 2 system object
    role: str  # 1 patient, 3 report, 6 user, 13 security resource, 24 query
    name: str = ""
    query: bytes | None = None
    details: tuple[tuple[str, bytes], ...] = ()
    accessions: tuple[str, ...] = ()
    mpps_uids: tuple[str, ...] = ()
    sop_class: str = ""
    studies: tuple[str, ...] = ()
    lifecycle: str = ""


def _datetime(at: dt.datetime | None) -> str:
    when = at or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.isoformat(timespec="milliseconds")


def build(
    event: CodedValue,
    action: str,
    outcome: str,
    source: Source,
    participants: Sequence[Participant],
    objects: Sequence[ParticipantObject] = (),
    *,
    event_type: CodedValue | None = None,
    outcome_text: str = "",
    at: dt.datetime | None = None,
) -> str:
    """One AuditMessage document as text."""
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": _datetime(at),
            "EventOutcomeIndicator": outcome,
        },
    )
    event.element("EventID", ident)
    if event_type is not None:
        event_type.element("EventTypeCode", ident)
    if outcome_text:
        ET.SubElement(ident, "EventOutcomeDescription").text = outcome_text
    for p in participants:
        attrs = {"UserID": p.user_id, "UserIsRequestor": "true" if p.requestor else "false"}
        if p.alternative_id:
            attrs["AlternativeUserID"] = p.alternative_id
        if p.user_name:
            attrs["UserName"] = p.user_name
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = "2"
        element = ET.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            p.role.element("RoleIDCode", element)
    attrs = {"AuditSourceID": source.source_id}
    if source.site_id:
        attrs["AuditEnterpriseSiteID"] = source.site_id
    src = ET.SubElement(root, "AuditSourceIdentification", attrs)
    APPLICATION_SERVER.element("AuditSourceTypeCode", src)
    for o in objects:
        _object(root, o)
    return ET.tostring(root, encoding="unicode")


def _object(root: ET.Element, o: ParticipantObject) -> None:
    attrs = {
        "ParticipantObjectID": o.object_id,
        "ParticipantObjectTypeCode": o.type_code,
        "ParticipantObjectTypeCodeRole": o.role,
    }
    if o.lifecycle:
        attrs["ParticipantObjectDataLifeCycle"] = o.lifecycle
    element = ET.SubElement(root, "ParticipantObjectIdentification", attrs)
    o.id_type.element("ParticipantObjectIDTypeCode", element)
    if o.query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode()
    elif o.name:
        ET.SubElement(element, "ParticipantObjectName").text = o.name
    for kind, value in o.details:
        ET.SubElement(
            element,
            "ParticipantObjectDetail",
            {"type": kind, "value": base64.b64encode(value).decode()},
        )
    description = ET.SubElement(element, "ParticipantObjectDescription")
    for uid in o.mpps_uids:
        ET.SubElement(description, "MPPS", {"UID": uid})
    for number in o.accessions:
        ET.SubElement(description, "Accession", {"Number": number})
    if o.sop_class:
        ET.SubElement(description, "SOPClass", {"UID": o.sop_class, "NumberOfInstances": "0"})
    contains = ET.SubElement(description, "ParticipantObjectContainsStudy")
    for uid in o.studies:
        ET.SubElement(contains, "StudyIDs", {"UID": uid})


def broker(source: Source, role: CodedValue | None = None) -> Participant:
    """The broker as a participant (never the requestor of what it answers)."""
    return Participant(source.source_id, False, role, alternative_id=str(os.getpid()))


def application_activity(source: Source, *, start: bool, user: str = "") -> str:
    """110100 with 110120 Application Start or 110121 Application Stop."""
    participants = [broker(source, APPLICATION)]
    if user:
        participants.append(Participant(user, True))
    return build(
        APPLICATION_ACTIVITY,
        "E",
        SUCCESS,
        source,
        participants,
        event_type=APPLICATION_START if start else APPLICATION_STOP,
    )


def user_authentication(
    source: Source, user: str, address: str, *, login: bool, success: bool
) -> str:
    """110114 with 110122 Login (failed: outcome 4) or 110123 Logout."""
    return build(
        USER_AUTHENTICATION,
        "E",
        SUCCESS if success else MINOR_FAILURE,
        source,
        [Participant(user, True, address=address), broker(source)],
        event_type=LOGIN if login else LOGOUT,
    )


def query(
    source: Source,
    calling_ae: str,
    address: str,
    identifier: bytes,
    transfer_syntax: str,
    matches: int,
    *,
    outcome: str = SUCCESS,
) -> str:
    """110112 Query: a C-FIND on the worklist; the identifier as received (base64)."""
    sop = ParticipantObject(
        MWL_SOP_CLASS,
        SOP_CLASS_UID,
        "2",
        "3",
        query=identifier,
        details=(
            ("TransferSyntax", transfer_syntax.encode()),
            ("NumberOfMatches", str(matches).encode()),
        ),
    )
    return build(
        QUERY,
        "E",
        outcome,
        source,
        [
            Participant(calling_ae, True, SOURCE, address=address),
            broker(source, DESTINATION),
        ],
        [sop],
        outcome_text=f"{matches} matches",
    )


def patient_object(patient_id: str, name: str = "", lifecycle: str = "") -> ParticipantObject:
    return ParticipantObject(patient_id, PATIENT_NUMBER, "1", "1", name=name, lifecycle=lifecycle)


def study_object(
    study_uid: str, accessions: Sequence[str] = (), mpps: Sequence[str] = ()
) -> ParticipantObject:
    return ParticipantObject(
        study_uid,
        STUDY_INSTANCE_UID,
        "2",
        "3",
        accessions=tuple(a for a in accessions if a),
        mpps_uids=tuple(mpps),
        studies=(study_uid,),
    )


def record(
    event: CodedValue,
    action: str,
    source: Source,
    requestor: Participant,
    objects: Sequence[ParticipantObject],
    *,
    outcome: str = SUCCESS,
) -> str:
    """110109 Order Record, 110110 Patient Record, 110111 Procedure Record (action C/R/U/D)."""
    return build(event, action, outcome, source, [requestor, broker(source)], objects)


def export(
    source: Source,
    user: str,
    address: str,
    destination: str,
    patients: Sequence[ParticipantObject],
    what: str,
    *,
    outcome: str = SUCCESS,
) -> str:
    """110106 Export (PS3.15 A.5.3.6): data leaves the broker, e.g. a CSV download.

    ``user`` asked for it from ``address``; ``destination`` names the media (a file
    name); ``what`` identifies the exported list (its URL), as an object of its own
    besides one object per patient in it.
    """
    listing = ParticipantObject(what, URI, "2", "3", name=destination)
    return build(
        EXPORT,
        "R",
        outcome,
        source,
        [
            Participant(user, True, address=address),
            broker(source, SOURCE),
            Participant(destination, False, DESTINATION_MEDIA, address=address),
        ],
        [*patients, listing],
    )


def security_alert(
    source: Source,
    event_type: CodedValue,
    reporter: Participant,
    subject: str,
    *,
    outcome: str = MINOR_FAILURE,
    text: str = "",
    subject_type: CodedValue = NODE_ID,
) -> str:
    """110113 Security Alert: a refused association, a settings or user change."""
    alerted = ParticipantObject(subject, subject_type, "2", "13", details=())
    return build(
        SECURITY_ALERT,
        "E",
        outcome,
        source,
        [reporter, broker(source)],
        [alerted],
        event_type=event_type,
        outcome_text=text,
    )


def user_object(username: str) -> ParticipantObject:
    """A user as what a security event concerns (person, role 6 User)."""
    return ParticipantObject(username, USER_IDENTIFIER, "1", "6")


def security_change(
    source: Source,
    event_type: CodedValue,
    actor: Participant,
    subject: ParticipantObject,
    text: str,
) -> str:
    """110113 Security Alert for a change made on purpose (a setting, a user, a token).

    DICOM uses Security Alert for configuration and user changes too; the event type
    says which, the outcome is success (the change was allowed and made).
    """
    return build(
        SECURITY_ALERT,
        "E",
        SUCCESS,
        source,
        [actor, broker(source)],
        [subject],
        event_type=event_type,
        outcome_text=text,
    )


# Settings whose change alters who may do what (110129), or where the broker listens
# and whom it talks to (110128); every other one is 110131 Software Configuration.
_SECURITY_WORDS = (
    "tls",
    "password",
    "login",
    "session",
    "allow",
    "restrict",
    "token",
    "audit",
    "trust",
)
_NETWORK_WORDS = ("port", "host", "ae_title", "profiles", "peer", "address", "ris_")


def configuration_event(names: Sequence[str]) -> CodedValue:
    """The event type of a change of the settings ``names`` (the most severe one wins)."""
    if any(word in name for name in names for word in _SECURITY_WORDS):
        return SECURITY_CONFIGURATION
    if any(word in name for name in names for word in _NETWORK_WORDS):
        return NETWORK_CONFIGURATION
    return SOFTWARE_CONFIGURATION


# A read of a long day list fills several messages rather than one unbounded one (a
# UDP datagram holds at most 64 KiB; repositories cut long TCP records too).
PATIENTS_PER_MESSAGE = 50


def patient_reads(
    source: Source,
    requestor: Participant,
    patients: Sequence[tuple[str, str, str]],
    *,
    what: str,
) -> list[str]:
    """110110 Patient Record, action R: ``requestor`` was shown these patients' data.

    ``patients`` holds (patient ID, study instance UID, accession number), one per
    step shown; repeats are merged. ``what`` (the page or resource) is the outcome
    text, so a privacy officer sees where the data was shown. Empty for no patient.
    """
    studies: dict[str, dict[str, set[str]]] = {}
    for patient_id, study_uid, accession in patients:
        by_study = studies.setdefault(patient_id or "-", {})
        if study_uid:
            by_study.setdefault(study_uid, set()).update([accession] if accession else [])
    ids = list(studies)
    found = []
    for start in range(0, len(ids), PATIENTS_PER_MESSAGE):
        objects: list[ParticipantObject] = []
        for patient_id in ids[start : start + PATIENTS_PER_MESSAGE]:
            objects.append(patient_object(patient_id))
            objects.extend(
                study_object(uid, sorted(accessions))
                for uid, accessions in sorted(studies[patient_id].items())
            )
        found.append(
            build(
                PATIENT_RECORD,
                "R",
                SUCCESS,
                source,
                [requestor, broker(source)],
                objects,
                outcome_text=what,
            )
        )
    return found


def user_change(
    source: Source,
    reporter: Participant,
    username: str,
    *,
    roles: bool,
    text: str,
) -> str:
    """110113 Security Alert about a user account that was changed (page or command).

    The event type is 110136 Security Roles Changed for a role given or taken, else
    110137 User Security Attributes Changed (created, disabled, enabled, password
    reset, removed); ``text`` says which. The account is the alert subject.
    """
    event_type = SECURITY_ROLES_CHANGED if roles else USER_SECURITY_ATTRIBUTES_CHANGED
    return security_change(source, event_type, reporter, user_object(username), text)
