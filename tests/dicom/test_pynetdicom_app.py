"""pynetdicom's own findscu app (``python -m pynetdicom findscu -W``) as an external client."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.dicom.key_cases import KEY_CASES, SPS_PATH, command_line_keys

pytestmark = pytest.mark.e2e

TIMEOUT = 60
SPS = SPS_PATH
RETURN_KEYS = (
    "SpecificCharacterSet=ISO_IR 192",
    "PatientName=",
    "PatientID=",
    "AccessionNumber=",
    f"{SPS}.Modality=",
    f"{SPS}.ScheduledProcedureStepID=",
)


def app_findscu(address: tuple[str, int], folder: Path, *keys: str) -> tuple[int, list]:
    """Run the app in ``folder`` (it writes rsp000001.dcm, ... there): final status, responses."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pynetdicom", "findscu", "-v", "-W", "-w"]
    args += ["-aet", "PYAPP", "-aec", "MWLTEST", "-ta", "20", "-td", "20", "-tn", "20"]
    args += [address[0], str(address[1])]
    for key in keys:
        args += ["-k", key]
    done = subprocess.run(args, capture_output=True, timeout=TIMEOUT, cwd=folder, check=False)
    log = (done.stdout + done.stderr).decode("utf-8", "replace")
    final = re.findall(r"Find SCP Result: (0x[0-9A-Fa-f]{4})", log)
    assert final, log
    return int(final[-1], 16), [dcmread(f) for f in sorted(folder.glob("rsp*.dcm"))]


@pytest.mark.parametrize(("case", "expected"), KEY_CASES)
def test_app_findscu_matching(scp, tmp_path, case, expected):
    status, responses = app_findscu(scp.address, tmp_path, *RETURN_KEYS, *command_line_keys(case))
    assert status == 0x0000
    ids = [r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID for r in responses]
    assert ids == expected


def test_app_findscu_malformed_date_then_good_query(scp, tmp_path):
    status, responses = app_findscu(
        scp.address,
        tmp_path / "bad",
        *RETURN_KEYS,
        f"{SPS}.ScheduledProcedureStepStartDate=abc",
    )
    assert status == 0xA900 and responses == []
    status, responses = app_findscu(scp.address, tmp_path / "good", *RETURN_KEYS, "PatientID=P3")
    assert status == 0x0000
    (response,) = responses
    assert str(response.PatientName) == "Øster^Émile"
