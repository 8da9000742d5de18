"""The worklist SCP over real associations (pynetdicom as SCU), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging

import pytest
from pynetdicom.status import Status
from sqlalchemy import select

from mwl.dicom.handlers import (
    FAILURE_IDENTIFIER_DOES_NOT_MATCH,
    PENDING_OPTIONAL_KEYS_NOT_SUPPORTED,
)
from mwl.store.models import QueryLogEntry

pytestmark = pytest.mark.e2e


def sps_ids(result) -> list[str]:
    return [
        d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for d in result.identifiers
    ]


def test_echo_answers_success(scp, echo):
    assert echo(scp.address) == Status.SUCCESS
    host, port = scp.address
    assert host == "127.0.0.1" and port > 0


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"sps_Modality": "CT"}, ["S1", "S5"]),
        ({"sps_Modality": "MR"}, ["S2", "S3"]),
        ({"sps_ScheduledStationAETitle": "MR01"}, ["S2", "S3"]),
        ({"sps_ScheduledProcedureStepStartDate": "20261121"}, ["S1", "S2", "S5"]),
        ({"sps_ScheduledProcedureStepStartDate": "20261122-20261123"}, ["S3", "S4"]),
        ({"sps_ScheduledProcedureStepStartDate": "-20261120"}, ["S6"]),
        (
            {
                "sps_ScheduledProcedureStepStartDate": "20261121-20261122",
                "sps_ScheduledProcedureStepStartTime": "1000-0900",
            },
            ["S2", "S5", "S3"],  # combined: 21st 10:00 to 22nd 09:00, not daily
        ),
        ({"sps_ScheduledProcedureStepStartTime": "0800-0930"}, ["S1", "S3"]),  # any day
        ({"PatientID": "P2"}, ["S2", "S3"]),
        ({"PatientName": "Doe*"}, ["S6", "S2", "S3"]),
        ({"PatientName": "mül*"}, ["S1"]),
        ({"PatientName": "MÜLLER"}, ["S1"]),
        ({"PatientName": "oster^emile"}, ["S4"]),
        ({"AccessionNumber": "ACC3"}, ["S4"]),
        ({"AccessionNumber": "ACC*"}, ["S6", "S1", "S2", "S3", "S4"]),  # empty never matches
        ({"sps_Modality": "CT\\MR"}, ["S1", "S2", "S5", "S3"]),
        ({"sps_ScheduledProcedureStepStatus": "CANCELED"}, ["S7"]),
        ({"sps_ScheduledStationAETitle": "CT*"}, []),  # single value only: '*' is literal
        ({"PatientID": "NOBODY"}, []),
    ],
)
def test_matching_keys(scp, find, identifier, keys, expected):
    result = find(scp.address, identifier(**keys))
    assert result.final_status == Status.SUCCESS
    assert sps_ids(result) == expected


def test_only_requested_keys_are_returned(scp, find, identifier):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientName = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledProtocolCodeSequence = [Dataset()]
    sps.ScheduledProtocolCodeSequence[0].CodeValue = ""
    ds.ScheduledProcedureStepSequence = [sps]
    result = find(scp.address, ds)
    (found,) = result.identifiers
    assert {e.keyword for e in found} == {
        "SpecificCharacterSet",
        "PatientID",
        "PatientName",
        "ScheduledProcedureStepSequence",
    }
    item = found.ScheduledProcedureStepSequence[0]
    assert {e.keyword for e in item} == {"Modality", "ScheduledProtocolCodeSequence"}
    assert [c.CodeValue for c in item.ScheduledProtocolCodeSequence] == ["P-HEAD", "P-CON"]
    assert all(len(c) == 1 for c in item.ScheduledProtocolCodeSequence)
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert str(found.PatientName) == "Müller^Hans"
    assert item.Modality == "CT"


def test_malformed_date_fails_then_next_query_succeeds(scp, find, identifier):
    bad = find(scp.address, identifier(sps_ScheduledProcedureStepStartDate="2026-13-45"))
    assert bad.final_status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert bad.identifiers == []
    assert "ScheduledProcedureStepStartDate" in bad.statuses[-1].ErrorComment
    assert bad.statuses[-1].OffendingElement == 0x00400002
    also_bad = find(scp.address, identifier(PatientBirthDate="abc"))
    assert also_bad.final_status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
    good = find(scp.address, identifier(PatientID="P1"))
    assert good.final_status == Status.SUCCESS
    assert sps_ids(good) == ["S1"]


def test_unsupported_matching_key_is_ignored_with_warning_status(scp, find, identifier):
    result = find(scp.address, identifier(PatientID="P1", SpecialNeeds="wheelchair"))
    assert [int(s.Status) for s in result.statuses] == [
        PENDING_OPTIONAL_KEYS_NOT_SUPPORTED,
        Status.SUCCESS,
    ]
    (found,) = result.identifiers
    assert found.SpecialNeeds == ""  # Type 2 the broker does not hold: present, empty


def test_every_query_is_logged(scp, module_engine, find, identifier):
    from mwl.store.engine import make_session_factory

    find(scp.address, identifier(PatientID="P2"), calling_ae="LOGGEDSCU")
    find(scp.address, identifier(PatientBirthDate="abc"), calling_ae="LOGGEDSCU")
    with make_session_factory(module_engine)() as session:
        rows = session.scalars(
            select(QueryLogEntry)
            .where(QueryLogEntry.calling_ae_title == "LOGGEDSCU")
            .order_by(QueryLogEntry.id)
        ).all()
    assert [(r.matches, r.status) for r in rows] == [
        (2, Status.SUCCESS),
        (0, FAILURE_IDENTIFIER_DOES_NOT_MATCH),
    ]
    assert rows[0].called_ae_title == "MWLTEST"
    assert rows[0].peer_address.startswith("127.0.0.1:")
    assert json.loads(rows[0].identifier_json)["00100020"]["Value"] == ["P2"]
    assert rows[1].error and rows[0].duration_ms > 0


def test_identifiers_stay_out_of_the_logs_unless_log_phi(
    scp, module_engine, module_settings, find, identifier, caplog
):
    from mwl.dicom.scp import WorklistScp
    from mwl.store.engine import make_session_factory

    def phi(records) -> list[str]:
        # The broker's own lines (the pynetdicom client in this process logs its own).
        return [
            r.getMessage()
            for r in records
            if r.name.startswith("mwl") and ("P1" in r.getMessage() or "Müller" in r.getMessage())
        ]

    # log_phi off (the module's SCP): neither the query nor the answers, even at DEBUG.
    with caplog.at_level(logging.DEBUG):
        assert find(scp.address, identifier(PatientID="P1")).identifiers
    assert phi(caplog.records) == []
    caplog.clear()
    with WorklistScp(
        module_settings.replace(log_phi=True), make_session_factory(module_engine)
    ) as logging_scp:
        with caplog.at_level(logging.DEBUG):
            find(logging_scp.address, identifier(PatientID="P1"))
    # log_phi on: the Identifier, at DEBUG only.
    assert phi(caplog.records)
    assert {r.levelno for r in caplog.records if r.getMessage() in phi(caplog.records)} == {
        logging.DEBUG
    }
