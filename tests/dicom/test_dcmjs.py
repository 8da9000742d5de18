"""Interop with dcmjs-dimse (Node.js), a DICOM stack nobody here wrote: plain and over TLS.

The client is tests/node/mwl_find.js on dcmjs-dimse, installed by ``.ci/run``
(``npm ci --prefix tests/node``). Its answers must be those pynetdicom gets.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_session_factory
from tests.certificates import Issued, issue, make_ca
from tests.peers import NODE

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
if NODE.missing:
    pytest.skip(NODE.missing, allow_module_level=True)
if not (NODE_DIR / "node_modules" / "dcmjs-dimse").is_dir():
    pytest.skip("dcmjs-dimse is not installed: npm ci --prefix tests/node", allow_module_level=True)


def dcmjs(address: tuple[str, int], query: object, tls: dict[str, Issued] | None = None):
    args = [
        str(NODE),
        str(NODE_DIR / "mwl_find.js"),
        address[0],
        str(address[1]),
        "MWLTEST",
        "DCMJS",
        json.dumps(query),
    ]
    if tls is not None:
        args += [str(tls["client"].key), str(tls["client"].cert), str(tls["ca"].cert)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert not [line for line in lines if "error" in line], done.stdout + done.stderr
    assert "done" in done.stdout, done.stdout + done.stderr
    return lines


def sps(**values: str) -> dict[str, object]:
    item = {
        "Modality": "",
        "ScheduledStationAETitle": "",
        "ScheduledProcedureStepStartDate": "",
        "ScheduledProcedureStepID": "",
    }
    item.update(values)
    return item


QUERIES = [
    {
        "PatientName": "",
        "PatientID": "",
        "AccessionNumber": "",
        "ScheduledProcedureStepSequence": [sps(Modality="CT")],
    },
    {"PatientName": "", "PatientID": "P2", "ScheduledProcedureStepSequence": [sps()]},
    {"PatientName": "M*", "PatientID": "", "ScheduledProcedureStepSequence": [sps()]},
]


def _matches(lines: list[dict]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if line["status"] in (0xFF00, 0xFF01):
            ds = line["dataset"]
            step = ds["ScheduledProcedureStepSequence"][0]
            out.append((ds["PatientID"], step["ScheduledProcedureStepID"]))
    return sorted(out)


@pytest.mark.parametrize("query", QUERIES)
def test_dcmjs_dimse_gets_what_pynetdicom_gets(scp, find, identifier, query):
    lines = dcmjs(scp.address, query)
    assert lines[-1]["status"] == 0x0000
    top = {k: v for k, v in query.items() if k != "ScheduledProcedureStepSequence"}
    step = {f"sps_{k}": v for k, v in query["ScheduledProcedureStepSequence"][0].items() if v}
    reference = find(scp.address, identifier(**top, **step))
    expected = sorted(
        (str(ds.PatientID), str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
        for ds in reference.identifiers
    )
    assert expected, "the query should match something"
    assert _matches(lines) == expected


def test_dcmjs_dimse_echo(scp):
    (line,) = dcmjs(scp.address, "echo")
    assert line["status"] == 0x0000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    folder = tmp_path_factory.mktemp("dcmjs-pki")
    ca = make_ca(folder, "Test CA")
    return {
        "ca": ca,
        "server": issue(ca, folder, "mwl-server", server=True),
        "client": issue(ca, folder, "DCMJS", server=False),
    }


@pytest.fixture(scope="module")
def tls_scp(module_engine, module_settings, pki) -> Iterator[WorklistScp]:
    settings = module_settings.replace(
        dicom_tls_port=0,
        dicom_tls_cert=str(pki["server"].cert),
        dicom_tls_key=str(pki["server"].key),
        dicom_tls_ca=str(pki["ca"].cert),
    )
    with WorklistScp(settings, make_session_factory(module_engine)) as server:
        yield server


def test_dcmjs_dimse_over_tls_gets_the_same_answer(scp, tls_scp, pki):
    plain = dcmjs(scp.address, QUERIES[0])
    secure = dcmjs(tls_scp.tls_address, QUERIES[0], tls=pki)
    assert secure[-1]["status"] == 0x0000
    assert _matches(secure) == _matches(plain)
