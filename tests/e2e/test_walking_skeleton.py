"""The whole path through a real ``mwl serve``: HL7 order in, C-FIND and web page out.

Every peer is real: the broker runs as its own process, the RIS is ``mwl hl7 send``
and a raw MLLP socket, the modalities are pynetdicom and DCMTK ``findscu``, the
browser side is an HTTP client with cookies and the CSRF token of the login form.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.status import Status

from mwl.hl7.client import send_messages
from tests import scu
from tests.peers import FINDSCU
from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"
ORDER = SAMPLES / "orm_o01_nw.hl7"
# What samples/hl7/orm_o01_nw.hl7 says, in DICOM terms.
EXPECTED = {
    "PatientName": "Sample^Anna^Maria^Dr.",
    "PatientID": "PAT0001",
    "PatientBirthDate": "19800115",
    "PatientSex": "F",
    "AccessionNumber": "ACC0001",
    "RequestedProcedureID": "RP0001",
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.543.20261121.1",
}
EXPECTED_STEP = {
    "Modality": "CT",
    "ScheduledProcedureStepID": "SPS0001",
    "ScheduledProcedureStepStartDate": "20261121",
    "ScheduledProcedureStepStartTime": "093000",
}


def worklist_identifier(**step: str) -> Dataset:
    """A typical modality query: patient keys and an SPS item, everything else universal."""
    ds = Dataset()
    for keyword in EXPECTED:
        setattr(ds, keyword, "")
    sps = Dataset()
    for keyword in (*EXPECTED_STEP, "ScheduledStationAETitle"):
        setattr(sps, keyword, "")
    for keyword, value in step.items():
        setattr(sps, keyword, value)
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def c_find(broker: Broker, identifier: Dataset) -> tuple[list[Dataset], int]:
    """Run one C-FIND as modality CT01; return the matches and the final status."""
    return scu.c_find(broker.dicom_port, identifier, called_ae=broker.ae_title)


def send_sample(broker: Broker, path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = broker_env("sqlite:///unused.db")
    return run_mwl(["hl7", "send", str(path), "--port", str(broker.hl7_port)], env, tmp_path)


def test_order_reaches_worklist_findscu_and_web_page(broker: Broker, tmp_path: Path):
    sent = send_sample(broker, ORDER, tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "AA" in sent.stdout

    # pynetdicom as the modality: by modality and date.
    matches, final = c_find(
        broker, worklist_identifier(Modality="CT", ScheduledProcedureStepStartDate="20261121")
    )
    assert final == Status.SUCCESS
    assert len(matches) == 1
    found = matches[0]
    for keyword, value in EXPECTED.items():
        assert str(found[keyword].value) == value, keyword
    for keyword, value in EXPECTED_STEP.items():
        assert str(found.ScheduledProcedureStepSequence[0][keyword].value) == value, keyword
    # Only the requested keys come back (plus Specific Character Set).
    assert set(found.dir()) <= {*EXPECTED, "ScheduledProcedureStepSequence", "SpecificCharacterSet"}

    # Another day and another modality find nothing.
    none, final = c_find(broker, worklist_identifier(Modality="MR"))
    assert (none, final) == ([], Status.SUCCESS)
    none, final = c_find(broker, worklist_identifier(ScheduledProcedureStepStartDate="20261122"))
    assert (none, final) == ([], Status.SUCCESS)

    # DCMTK findscu as the modality: a date range, answers written as files.
    if FINDSCU.missing:
        pytest.fail(FINDSCU.missing)
    out = tmp_path / "findscu"
    out.mkdir()
    result = subprocess.run(
        [
            str(FINDSCU),
            "-W",
            "-aet",
            "MR01",
            "-aec",
            broker.ae_title,
            "-X",
            "-od",
            str(out),
            "-k",
            "PatientName=",
            "-k",
            "PatientID=PAT0001",
            "-k",
            "AccessionNumber=",
            "-k",
            "ScheduledProcedureStepSequence[0].Modality=",
            "-k",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261120-20261121",
            "-k",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=",
            "127.0.0.1",
            str(broker.dicom_port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    answers = sorted(out.glob("rsp*.dcm"))
    assert len(answers) == 1, result.stderr
    answer = dcmread(answers[0])
    assert answer.PatientName == EXPECTED["PatientName"]
    assert answer.AccessionNumber == "ACC0001"
    assert answer.ScheduledProcedureStepSequence[0].Modality == "CT"

    # The web page lists it for that day, after login only.
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    status, url, page = web.get("/?date=2026-11-21")
    assert "/login" in url and "PAT0001" not in page
    status, url, page = web.login("admin", "wrong password")
    assert "PAT0001" not in page
    status, url, page = web.login("admin", ADMIN_PASSWORD)
    assert status == 200
    status, url, page = web.get("/?date=2026-11-21")
    assert status == 200
    assert "PAT0001" in page and "ACC0001" in page and "Sample" in page
    status, url, page = web.get("/?date=2026-11-22")
    assert "ACC0001" not in page

    # `mwl serve` lends the page the DICOM and HL7 services: the item page lists what
    # the modality receives, the message page names HL7 fields, and "test as this
    # scanner" answers as the SCP did for MR01's findscu query above.
    _, _, page = web.get("/?date=2026-11-21")
    item = re.search(r'href="(/items/\d+)"', page)
    assert item, "the day list links no item page"
    status, _, page = web.get(item[1])
    assert status == 200
    assert "(0008,0050)" in page and "ACC0001" in page  # Accession Number, by tag
    status, _, page = web.get("/messages")
    message = re.search(r'href="(/messages/\d+)"', page)
    assert status == 200 and message
    status, _, page = web.get(message[1])
    assert status == 200 and "Patient Name" in page
    status, _, page = web.get("/scanners/test?ae=MR01&as_sent=y")
    assert status == 200, page
    assert "ACC0001" in page

    # SIGTERM stops every service cleanly.
    assert broker.stop() == 0
    assert "mwl stopped" in broker.output


def test_bad_input_gets_an_error_answer_and_the_broker_keeps_serving(broker: Broker):
    # Garbage without MLLP framing, then a framed non-HL7 payload.
    with socket.create_connection(("127.0.0.1", broker.hl7_port), timeout=10) as sock:
        sock.sendall(b"\x00\x00GET / HTTP/1.1\r\n\r\n\x0bTHIS IS NOT HL7\x1c\r")
        answer = sock.recv(65536)
    # Either a NAK (AE/AR) or a closed connection; never an AA.
    assert b"MSA|AA" not in answer
    if answer:
        assert b"MSA|AE" in answer or b"MSA|AR" in answer

    (ack,) = send_messages("127.0.0.1", broker.hl7_port, [ORDER.read_bytes().strip()])
    assert b"MSA|AA|MSG00001" in ack

    # A malformed date in the identifier: a failure status (0xA900), not a crash.
    malformed = worklist_identifier()
    # As a modality may send it: pydicom's own check of the value is off.
    malformed.ScheduledProcedureStepSequence[0]["ScheduledProcedureStepStartDate"] = DataElement(
        0x00400002, "DA", "2026-13-45", validation_mode=config.IGNORE
    )
    _, final = c_find(broker, malformed)
    assert final == 0xA900  # PS3.4 C.4.1.1.4: Identifier does not match SOP Class

    matches, final = c_find(broker, worklist_identifier(Modality="CT"))
    assert final == Status.SUCCESS and len(matches) == 1
    assert broker.stop() == 0


def test_db_upgrade_is_repeatable(empty_database_url: str, tmp_path: Path):
    env = broker_env(empty_database_url)
    for _ in range(2):
        result = run_mwl(["db", "upgrade"], env, tmp_path)
        assert result.returncode == 0, result.stderr
    duplicate = run_mwl(["user", "add", "Ann"], env, tmp_path, "the first pass phrase\n")
    assert duplicate.returncode == 0, duplicate.stderr
    again = run_mwl(["user", "add", "ann"], env, tmp_path, "the second pass phrase\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert again.stderr.startswith("mwl: ") and len(again.stderr.strip().splitlines()) == 1


def test_module_is_runnable_as_console_script():
    result = subprocess.run(
        [sys.executable, "-m", "mwl.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("serve", "db", "user", "hl7"):
        assert command in result.stdout
