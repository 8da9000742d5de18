"""DCMTK findscu -W against the worklist SCP (external peer, subprocess, loopback)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.dicom.key_cases import KEY_CASES, SPS_PATH, command_line_keys
from tests.peers import DUMP2DCM, FINDSCU

pytestmark = [
    pytest.mark.e2e,
    FINDSCU.required,
]

TIMEOUT = 30
SPS = SPS_PATH
RETURN_KEYS = (
    "SpecificCharacterSet=ISO_IR 192",
    "PatientName",
    "PatientID",
    "AccessionNumber",
    f"{SPS}.Modality",
    f"{SPS}.ScheduledStationAETitle",
    f"{SPS}.ScheduledProcedureStepStartDate",
    f"{SPS}.ScheduledProcedureStepID",
)


def findscu(
    address: tuple[str, int], out: Path, *keys: str, query_file: Path | None = None
) -> tuple[str, list]:
    """Run ``findscu -W``; return the final status text and the responses, in order."""
    out.mkdir(parents=True, exist_ok=True)
    args = [str(FINDSCU), "-v", "-W", "-aet", "DCMTKSCU", "-aec", "MWLTEST"]
    args += ["-to", "20", "-ta", "20", "-td", "20", "-X", "-od", str(out)]
    args += [address[0], str(address[1])]
    for key in keys:
        args += ["-k", key]
    if query_file is not None:
        args.append(str(query_file))
    # DCMTK leaves Nagle on unless told (shared/peers/README.md).
    env = {**os.environ, "TCP_NODELAY": "1"}
    done = subprocess.run(args, capture_output=True, timeout=TIMEOUT, env=env, check=False)
    # findscu echoes the query in its own character set: read its log as Latin-1.
    log = (done.stdout + done.stderr).decode("latin-1")
    final = re.search(r"Received Final Find Response \(([^)]*)\)", log)
    assert final, log
    files = sorted(out.glob("rsp*.dcm"))
    return final.group(1), [dcmread(f) for f in files]


def sps_ids(responses: list) -> list[str]:
    return [r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for r in responses]


@pytest.mark.parametrize(("case", "expected"), KEY_CASES)
def test_findscu_matching(scp, tmp_path, case, expected):
    status, responses = findscu(scp.address, tmp_path, *RETURN_KEYS, *command_line_keys(case))
    assert status == "Success"
    assert sps_ids(responses) == expected


def test_findscu_gets_only_requested_keys_in_utf8(scp, tmp_path):
    status, responses = findscu(
        scp.address,
        tmp_path,
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName",
        "PatientID=P3",
        f"{SPS}.Modality",
    )
    assert status == "Success"
    (response,) = responses
    assert {e.keyword for e in response} == {
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "ScheduledProcedureStepSequence",
    }
    assert [e.keyword for e in response.ScheduledProcedureStepSequence[0]] == ["Modality"]
    assert str(response.PatientName) == "Øster^Émile"


def test_findscu_malformed_date_fails_and_server_goes_on(scp, tmp_path):
    status, responses = findscu(
        scp.address,
        tmp_path / "bad",
        *RETURN_KEYS,
        f"{SPS}.ScheduledProcedureStepStartDate=2026-13-45",
    )
    assert "DoesNotMatchSOPClass" in status  # 0xA900
    assert responses == []
    status, responses = findscu(scp.address, tmp_path / "good", *RETURN_KEYS, "PatientID=P1")
    assert status == "Success"
    assert sps_ids(responses) == ["S1"]


def test_findscu_query_file_in_latin1(scp, tmp_path):
    """A query file made with dump2dcm, in ISO_IR 100: the name is decoded before matching."""
    dump = tmp_path / "query.dump"
    dump.write_bytes(
        "(0008,0005) CS [ISO_IR 100]\n"
        "(0010,0010) PN [MÜLLER*]\n"
        "(0010,0020) LO []\n"
        "(0040,0100) SQ (Sequence with explicit length #=1)\n"
        "  (fffe,e000) na (Item with explicit length #=1)\n"
        "    (0008,0060) CS []\n"
        "  (fffe,e00d) na (ItemDelimitationItem)\n"
        "(fffe,e0dd) na (SequenceDelimitationItem)\n".encode("latin-1")
    )
    query = tmp_path / "query.dcm"
    subprocess.run([str(DUMP2DCM), str(dump), str(query)], check=True, timeout=TIMEOUT)
    status, responses = findscu(scp.address, tmp_path / "out", query_file=query)
    assert status == "Success"
    (response,) = responses
    assert response.PatientID == "P1"
    assert str(response.PatientName) == "Müller^Hans"
