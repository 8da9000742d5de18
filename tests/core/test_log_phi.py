"""``MWL_LOG_PHI=true`` puts patient data in the log at DEBUG only, never at INFO.

A real ``mwl serve`` runs a full flow for one synthetic patient: an order over MLLP,
an ADT^A08 that renames the patient, a C-FIND, an MPPS N-CREATE and N-SET
(COMPLETED), and its web pages (a search by name, the item page, the scanner test
by patient ID). Every record it logs at INFO and above, in the text and the JSON
log format, is searched for the patient's names, ID and birth date. The same run at
DEBUG shows that the search would see them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from tests.logs import LEVELS_ABOVE_DEBUG, records
from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl, start_broker

pytestmark = pytest.mark.e2e

# Synthetic, and unlike anything else in a log line.
PATIENT_ID = "PHIX4711"
FAMILY, GIVEN = "Zzyzxphi", "Quentinia"
# The ADT^A08 renames the patient and corrects the birth date.
NEW_FAMILY = "Xyvvaphi"
BIRTH_DATE, NEW_BIRTH_DATE = "19800115", "19790823"
PHI = (
    PATIENT_ID,
    FAMILY,
    GIVEN,
    NEW_FAMILY,
    BIRTH_DATE,
    NEW_BIRTH_DATE,
    "1980-01-15",
    "1979-08-23",
)
ORDER = (
    "MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|PHI00001|P|2.3.1\r"
    f"PID|1||{PATIENT_ID}^^^HOSPITAL^MR||{FAMILY}^{GIVEN}||{BIRTH_DATE}|F\r"
    "PV1|1|O\r"
    "ORC|NW|PLCPHI|FILPHI||SC||^^^20261121093000^^R\r"
    "OBR|1|PLCPHI|FILPHI|CTHEAD^CT Head^LOCAL||||||||||||||ACCPHI|RPPHI|SPSPHI||||CT\r"
)
UPDATE = (
    "MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120150000||ADT^A08^ADT_A01|PHI00002|P|2.5\r"
    "EVN|A08|20261120150000\r"
    f"PID|1||{PATIENT_ID}^^^HOSPITAL^MR||{NEW_FAMILY}^{GIVEN}||{NEW_BIRTH_DATE}|F\r"
    "PV1|1|O\r"
)


def _exercise(broker: Broker, tmp_path: Path) -> None:
    env = broker_env("sqlite:///unused.db")
    for name, message in (("order", ORDER), ("update", UPDATE)):
        path = tmp_path / f"{name}.hl7"
        path.write_bytes(message.encode("latin-1"))
        sent = run_mwl(["hl7", "send", str(path), "--port", str(broker.hl7_port)], env, tmp_path)
        assert sent.returncode == 0 and "AA" in sent.stdout, sent.stdout + sent.stderr

    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", broker.dicom_port, ae_title=broker.ae_title)
    assert assoc.is_established
    try:
        answers = _find(assoc)
        assert [(str(a.PatientName), a.PatientBirthDate) for a in answers] == [
            (f"{NEW_FAMILY}^{GIVEN}", NEW_BIRTH_DATE)
        ]
        uid = "1.2.826.0.1.3680043.10.543.9"
        status, _ = assoc.send_n_create(_n_create(answers[0]), ModalityPerformedProcedureStep, uid)
        assert status and status.Status == 0x0000, status
        status, _ = assoc.send_n_set(_n_set(), ModalityPerformedProcedureStep, uid)
        assert status and status.Status == 0x0000, status
    finally:
        assoc.release()

    # The web page: a search by name, the item, and the scanner test by patient ID.
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    assert web.login("admin", ADMIN_PASSWORD)[0] == 200
    status, _, page = web.get(f"/?date=2026-11-21&q={NEW_FAMILY}")
    assert status == 200 and NEW_FAMILY in page
    key = re.search(r'href="/items/(\d+)"', page)
    assert key, "the day list links the item"
    assert web.get(f"/items/{key[1]}")[0] == 200
    assert web.get(f"/scanners/test?ae=CT01&patient_id={PATIENT_ID}")[0] == 200


def _find(assoc: Any) -> list[Dataset]:
    query = Dataset()
    query.PatientID = PATIENT_ID
    query.PatientName = ""
    query.PatientBirthDate = ""
    query.StudyInstanceUID = ""
    query.AccessionNumber = ""
    query.RequestedProcedureID = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledProcedureStepID = ""
    query.ScheduledProcedureStepSequence = [step]
    return [
        identifier
        for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind)
        if status and status.Status in (0xFF00, 0xFF01)
    ]


def _n_create(item: Dataset) -> Dataset:
    """RAD-6 for ``item`` (a C-FIND answer): the patient's data goes with it."""
    scheduled = Dataset()
    scheduled.StudyInstanceUID = item.StudyInstanceUID
    scheduled.ReferencedStudySequence = []
    scheduled.AccessionNumber = item.AccessionNumber
    scheduled.RequestedProcedureID = item.RequestedProcedureID
    scheduled.ScheduledProcedureStepID = item.ScheduledProcedureStepSequence[
        0
    ].ScheduledProcedureStepID
    scheduled.RequestedProcedureDescription = ""
    scheduled.ScheduledProcedureStepDescription = ""
    scheduled.ScheduledProtocolCodeSequence = []
    mpps = Dataset()
    mpps.SpecificCharacterSet = "ISO_IR 192"
    mpps.PatientName = item.PatientName
    mpps.PatientID = PATIENT_ID
    mpps.PatientBirthDate = item.PatientBirthDate
    mpps.PatientSex = "F"
    mpps.ReferencedPatientSequence = []
    mpps.ScheduledStepAttributesSequence = [scheduled]
    mpps.PerformedProcedureStepID = "PPSPHI"
    mpps.PerformedStationAETitle = "CT01"
    mpps.PerformedStationName = ""
    mpps.PerformedLocation = ""
    mpps.PerformedProcedureStepStartDate = "20261121"
    mpps.PerformedProcedureStepStartTime = "093000"
    mpps.PerformedProcedureStepStatus = "IN PROGRESS"
    mpps.PerformedProcedureStepDescription = ""
    mpps.PerformedProcedureTypeDescription = ""
    mpps.ProcedureCodeSequence = []
    mpps.PerformedProcedureStepEndDate = ""
    mpps.PerformedProcedureStepEndTime = ""
    mpps.Modality = "CT"
    mpps.StudyID = ""
    mpps.PerformedProtocolCodeSequence = []
    mpps.PerformedSeriesSequence = []
    return mpps


def _n_set() -> Dataset:
    """RAD-7: the step completed, with its series."""
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndDate = "20261121"
    done.PerformedProcedureStepEndTime = "094500"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.826.0.1.3680043.10.543.99"
    series.PerformingPhysicianName = ""
    series.ProtocolName = "HEAD"
    series.OperatorsName = ""
    series.SeriesDescription = ""
    series.RetrieveAETitle = ""
    series.ReferencedImageSequence = []
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    done.PerformedSeriesSequence = [series]
    return done


def _phi_lines(output: list[str], log_format: str, levels: frozenset[str]) -> list[str]:
    found = []
    for record in records(output, log_format):
        if record.level in levels and any(value in record.text for value in PHI):
            found.extend(record.lines)
    return found


@pytest.mark.parametrize(
    ("level", "log_format"),
    [
        ("INFO", "text"),
        # DEBUG shows what the setting lets through; the guarantee is INFO's: the sweep.
        pytest.param("DEBUG", "text", marks=pytest.mark.sweep),
        ("INFO", "json"),
        pytest.param("DEBUG", "json", marks=pytest.mark.sweep),
    ],
)
def test_patient_data_is_logged_at_debug_only(
    database_url: str, tmp_path: Path, level: str, log_format: str
):
    env = broker_env(
        database_url, MWL_LOG_PHI="true", MWL_LOG_LEVEL=level, MWL_LOG_FORMAT=log_format
    )
    added = run_mwl(["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    broker = start_broker(env, tmp_path)
    try:
        _exercise(broker, tmp_path)
    finally:
        assert broker.stop() == 0
    above_debug = _phi_lines(broker.output, log_format, LEVELS_ABOVE_DEBUG)
    assert above_debug == [], "patient data above DEBUG:\n" + "\n".join(above_debug)
    if level == "DEBUG":
        # What log_phi promises, so the search above is not blind: every value is seen.
        debug = "\n".join(r.text for r in records(broker.output, log_format) if r.level == "DEBUG")
        assert [value for value in PHI[:-2] if value not in debug] == []
