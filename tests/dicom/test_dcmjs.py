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
from sqlalchemy import select

from mwl.config import DicomAeProfile, Settings
from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_session_factory
from mwl.store.models import QueryLogEntry
from tests.certificates import Issued, issue, make_ca
from tests.peers import NODE

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
if NODE.missing:
    pytest.skip(NODE.missing, allow_module_level=True)
if not (NODE_DIR / "node_modules" / "dcmjs-dimse").is_dir():
    pytest.skip("dcmjs-dimse is not installed: npm ci --prefix tests/node", allow_module_level=True)


def dcmjs(
    address: tuple[str, int],
    query: object,
    tls: dict[str, Issued] | None = None,
    calling: str = "DCMJS",
    client_errors: bool = False,
):
    args = [
        str(NODE),
        str(NODE_DIR / "mwl_find.js"),
        address[0],
        str(address[1]),
        "MWLTEST",
        calling,
        json.dumps(query),
    ]
    if tls is not None:
        args += [str(tls["client"].key), str(tls["client"].cert), str(tls["ca"].cert)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if client_errors:
        return [line for line in lines if "error" not in line]
    assert not [line for line in lines if "error" in line], done.stdout + done.stderr
    assert "done" in done.stdout, done.stdout + done.stderr
    return lines


@pytest.fixture(scope="module")
def module_settings(module_settings: Settings) -> Settings:
    """The package's, with a profile for dcmjs-dimse: ignored keys answered with 0xFF00.

    Its worklist template sends Pregnancy Status 0 in every query, which the broker
    ignores (0xFF01), and dcmjs-dimse 0.3.3 takes every status but 0xFF00 for the
    final one: it releases the association after the first match.
    """
    return module_settings.replace(
        dicom_ae_profiles=(DicomAeProfile("DCMJS", warn_ignored_keys=False),)
    )


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
    assert {line["status"] for line in lines[:-1]} == {0xFF00}
    top = {k: v for k, v in query.items() if k != "ScheduledProcedureStepSequence"}
    step = {f"sps_{k}": v for k, v in query["ScheduledProcedureStepSequence"][0].items() if v}
    reference = find(scp.address, identifier(**top, **step))
    expected = sorted(
        (str(ds.PatientID), str(ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID))
        for ds in reference.identifiers
    )
    assert expected, "the query should match something"
    assert _matches(lines) == expected


def test_dcmjs_dimse_template_pregnancy_status_0_is_ignored_not_matched(scp, module_engine):
    # Without a profile: the template's Pregnancy Status 0 filters nothing; the broker
    # says so with 0xFF01, which dcmjs-dimse 0.3.3 takes for the end of the answer.
    query = {"PatientName": "", "PatientID": "P2", "ScheduledProcedureStepSequence": [sps()]}
    lines = dcmjs(scp.address, query, calling="DCMJSRAW", client_errors=True)
    first = lines[0]
    assert first["status"] == 0xFF01
    assert first["dataset"]["PatientID"] == "P2"
    assert first["dataset"]["PregnancyStatus"] in (0, None)  # returned: unknown (Type 2)
    with make_session_factory(module_engine)() as session:
        row = session.scalars(
            select(QueryLogEntry)
            .where(QueryLogEntry.calling_ae_title == "DCMJSRAW")
            .order_by(QueryLogEntry.id.desc())
        ).first()
    assert row is not None
    assert "PregnancyStatus '0' ignored" in row.error


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
