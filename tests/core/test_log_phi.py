"""``MWL_LOG_PHI=true`` puts patient data in the log at DEBUG only, never at INFO.

A real ``mwl serve`` gets a synthetic order over MLLP, a C-FIND and an MPPS N-CREATE
for its patient, and its web pages are searched for the patient; every line it logs
at INFO and above is searched for the patient's name and ID. The same run at DEBUG
shows that the search would see them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)

from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl, start_broker

pytestmark = pytest.mark.e2e

# Synthetic, and unlike anything else in a log line.
PATIENT_ID = "PHIX4711"
FAMILY, GIVEN = "Zzyzxphi", "Quentinia"
ORDER = (
    "MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|PHI00001|P|2.3.1\r"
    f"PID|1||{PATIENT_ID}^^^HOSPITAL^MR||{FAMILY}^{GIVEN}||19800115|F\r"
    "PV1|1|O\r"
    "ORC|NW|PLCPHI|FILPHI||SC||^^^20261121093000^^R\r"
    "OBR|1|PLCPHI|FILPHI|CTHEAD^CT Head^LOCAL||||||||||||||ACCPHI|RPPHI|SPSPHI||||CT\r"
)
_LEVEL = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _exercise(broker: Broker, tmp_path: Path) -> None:
    order = tmp_path / "order.hl7"
    order.write_bytes(ORDER.encode("latin-1"))
    env = broker_env("sqlite:///unused.db")
    sent = run_mwl(["hl7", "send", str(order), "--port", str(broker.hl7_port)], env, tmp_path)
    assert sent.returncode == 0 and "AA" in sent.stdout, sent.stdout + sent.stderr

    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", broker.dicom_port, ae_title=broker.ae_title)
    assert assoc.is_established
    try:
        query = Dataset()
        query.PatientID = PATIENT_ID
        query.PatientName = ""
        step = Dataset()
        step.Modality = ""
        query.ScheduledProcedureStepSequence = [step]
        answers = [
            identifier
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind)
            if status and status.Status in (0xFF00, 0xFF01)
        ]
        assert [str(a.PatientName) for a in answers] == [f"{FAMILY}^{GIVEN}"]

        mpps = Dataset()
        mpps.PatientName = f"{FAMILY}^{GIVEN}"
        mpps.PatientID = PATIENT_ID
        mpps.PerformedProcedureStepStatus = "IN PROGRESS"
        mpps.PerformedProcedureStepID = "PPSPHI"
        mpps.PerformedStationAETitle = "CT01"
        mpps.PerformedProcedureStepStartDate = "20261121"
        mpps.PerformedProcedureStepStartTime = "093000"
        mpps.Modality = "CT"
        mpps.ScheduledStepAttributesSequence = []
        assoc.send_n_create(mpps, ModalityPerformedProcedureStep, "1.2.826.0.1.3680043.10.543.9")
    finally:
        assoc.release()

    # The web page: a search by name, the item, and the scanner test by patient ID.
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    assert web.login("admin", ADMIN_PASSWORD)[0] == 200
    status, _, page = web.get(f"/?date=2026-11-21&q={FAMILY}")
    assert status == 200 and FAMILY in page
    key = re.search(r'href="/items/(\d+)"', page)
    assert key, "the day list links the item"
    assert web.get(f"/items/{key[1]}")[0] == 200
    assert web.get(f"/scanners/test?ae=CT01&patient_id={PATIENT_ID}")[0] == 200


def _phi_lines(output: list[str], levels: set[str]) -> list[str]:
    found = []
    for line in output:
        level = _LEVEL.match(line)
        if level and level[1] in levels and (PATIENT_ID in line or FAMILY in line):
            found.append(line)
    return found


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_patient_data_is_logged_at_debug_only(database_url: str, tmp_path: Path, level: str):
    env = broker_env(database_url, MWL_LOG_PHI="true", MWL_LOG_LEVEL=level)
    added = run_mwl(["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    broker = start_broker(env, tmp_path)
    try:
        _exercise(broker, tmp_path)
    finally:
        assert broker.stop() == 0
    above_debug = _phi_lines(broker.output, {"INFO", "WARNING", "ERROR", "CRITICAL"})
    assert above_debug == [], "patient data above DEBUG:\n" + "\n".join(above_debug)
    if level == "DEBUG":
        # What log_phi promises, so the search above is not blind.
        assert _phi_lines(broker.output, {"DEBUG"})
