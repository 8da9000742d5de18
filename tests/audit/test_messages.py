"""Every DICOM audit message the broker writes is valid against PS3.15 A.5.1's schema."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from mwl.audit import messages as m
from tests.audit.rsyslog import SCHEMA

SOURCE = m.Source("MWL-TEST", "SITE-1")
MODALITY = m.Participant("CT01", True, address="127.0.0.1")

MESSAGES = {
    "start": m.application_activity(SOURCE, start=True),
    "stop": m.application_activity(SOURCE, start=False),
    "login": m.user_authentication(SOURCE, "alice", "127.0.0.1", login=True, success=True),
    "failed login": m.user_authentication(SOURCE, "alice", "::1", login=True, success=False),
    "logout": m.user_authentication(SOURCE, "alice", "127.0.0.1", login=False, success=True),
    "query": m.query(SOURCE, "CT01", "127.0.0.1", b"\x08\x00\x50\x00", "1.2.840.10008.1.2.1", 3),
    "order": m.record(
        m.ORDER_RECORD,
        "C",
        SOURCE,
        MODALITY,
        [m.patient_object("PAT0001"), m.study_object("1.2.3.4", ["ACC0001"])],
    ),
    "patient": m.record(m.PATIENT_RECORD, "U", SOURCE, MODALITY, [m.patient_object("PAT0001")]),
    "mpps": m.record(
        m.PROCEDURE_RECORD, "U", SOURCE, MODALITY, [m.study_object("1.2.3", ["A1"], ["1.2.3.9"])]
    ),
    "alert": m.security_alert(SOURCE, m.NODE_AUTHENTICATION, MODALITY, "CT01@127.0.0.1"),
    "read": m.patient_reads(
        SOURCE,
        m.Participant("alice", True, address="127.0.0.1"),
        [("PAT0001", "1.2.3.4", "ACC0001"), ("PAT0002", "", "")],
        what="item page 1",
    )[0],
    "user change": m.security_change(
        SOURCE,
        m.SECURITY_ROLES_CHANGED,
        m.Participant("alice", True),
        m.user_object("bob"),
        "role set to editor",
    ),
    "export": m.export(
        SOURCE,
        "alice",
        "127.0.0.1",
        "worklist-2026-11-21.csv",
        [m.patient_object("PAT0001"), m.patient_object("PAT0002")],
        "/worklist/export.csv?modality=CT",
    ),
    "role changed": m.user_change(
        SOURCE,
        m.Participant("admin", True, address="127.0.0.1"),
        "bob",
        roles=True,
        text="role: viewer -> editor",
    ),
    "user created": m.user_change(
        SOURCE, m.Participant("admin", True), "carol", roles=False, text="created (viewer)"
    ),
}


@pytest.mark.parametrize("name", MESSAGES)
def test_valid_against_the_schema(name: str):
    document = etree.fromstring(MESSAGES[name].encode())
    assert SCHEMA.validate(document), SCHEMA.error_log


def test_the_schema_refuses_a_wrong_message():
    # The check can fail: an outcome that is not 0/4/8/12 is refused.
    document = etree.fromstring(
        MESSAGES["start"].replace('Indicator="0"', 'Indicator="3"').encode()
    )
    assert not SCHEMA.validate(document)


def test_query_carries_the_identifier_the_sop_class_and_the_matches():
    document = etree.fromstring(MESSAGES["query"].encode())
    assert document.find("EventIdentification/EventID").get("csd-code") == "110112"
    obj = document.find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.31"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery")) == b"\x08\x00\x50\x00"
    details = {
        d.get("type"): base64.b64decode(d.get("value")).decode()
        for d in obj.iterfind("ParticipantObjectDetail")
    }
    assert details == {"TransferSyntax": "1.2.840.10008.1.2.1", "NumberOfMatches": "3"}
    requestor = document.find("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("CT01", "127.0.0.1")
    assert requestor.get("UserIsRequestor") == "true"


def test_application_activity_codes():
    for name, code in (("start", "110120"), ("stop", "110121")):
        document = etree.fromstring(MESSAGES[name].encode())
        assert document.find("EventIdentification/EventID").get("csd-code") == "110100"
        assert document.find("EventIdentification/EventTypeCode").get("csd-code") == code


def test_a_read_names_each_patient_once_and_splits_long_lists():
    reader = m.Participant("alice", True, address="127.0.0.1")
    steps = [(f"PAT{n:04d}", f"1.2.3.{n}", f"ACC{n:04d}") for n in range(120)]
    steps += [("PAT0001", "1.2.3.1", "ACC0001")]  # a second step of the same patient
    documents = m.patient_reads(SOURCE, reader, steps, what="GET /api/v1/items")
    assert len(documents) == 3  # 50 + 50 + 20 patients
    patients = []
    for text in documents:
        document = etree.fromstring(text.encode())
        assert SCHEMA.validate(document), SCHEMA.error_log
        assert document.find("EventIdentification").get("EventActionCode") == "R"
        patients += [
            o.get("ParticipantObjectID")
            for o in document.iterfind("ParticipantObjectIdentification")
            if o.get("ParticipantObjectTypeCodeRole") == "1"
        ]
    assert sorted(patients) == sorted({p for p, _, _ in steps})
    assert m.patient_reads(SOURCE, reader, [], what="nothing") == []


@pytest.mark.parametrize(
    ("names", "code"),
    [
        (["dicom_max_matches"], "110131"),
        (["dicom_ae_profiles", "dicom_max_matches"], "110128"),
        (["dicom_restrict_calling_ae"], "110129"),
        (["hl7_allowed_peers", "dicom_ae_profiles"], "110129"),
    ],
)
def test_a_settings_change_has_the_event_type_of_its_most_severe_setting(names, code):
    assert m.configuration_event(names).code == code


def test_export_names_the_user_the_media_and_every_patient():
    document = etree.fromstring(MESSAGES["export"].encode())
    ident = document.find("EventIdentification")
    assert ident.find("EventID").get("csd-code") == "110106"
    assert ident.get("EventActionCode") == "R"
    participants = document.findall("ActiveParticipant")
    assert [p.get("UserID") for p in participants][0] == "alice"
    assert participants[0].get("UserIsRequestor") == "true"
    roles = [p.find("RoleIDCode").get("csd-code") for p in participants[1:]]
    assert roles == ["110153", "110154"]
    objects = document.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objects] == [
        "PAT0001",
        "PAT0002",
        "/worklist/export.csv?modality=CT",
    ]


def test_user_changes_are_security_alerts_about_the_account():
    for name, event_type in (("role changed", "110136"), ("user created", "110137")):
        document = etree.fromstring(MESSAGES[name].encode())
        assert document.find("EventIdentification/EventID").get("csd-code") == "110113"
        assert document.find("EventIdentification/EventTypeCode").get("csd-code") == event_type
        assert document.find("EventIdentification").get("EventOutcomeIndicator") == "0"
        obj = document.find("ParticipantObjectIdentification")
        assert obj.get("ParticipantObjectTypeCode") == "1"
        assert obj.get("ParticipantObjectTypeCodeRole") == "6"
        assert obj.find("ParticipantObjectIDTypeCode").get("csd-code") == "11"
