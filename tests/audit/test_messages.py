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
