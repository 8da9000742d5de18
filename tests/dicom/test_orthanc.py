"""Orthanc as a worklist client: its REST API ``/modalities/{id}/find-worklist`` against our SCP."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_session_factory
from tests.certificates import Issued, issue, make_ca
from tests.dicom.key_cases import KEY_CASES
from tests.peers import ORTHANC

pytestmark = [
    pytest.mark.e2e,
    ORTHANC.required,
]

STARTUP_SECONDS = 30.0
HTTP_TIMEOUT = 30.0


def free_port() -> int:
    # Orthanc takes fixed ports from its configuration; ask the kernel for free ones.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """A private Orthanc process on loopback ports with a temporary storage folder."""

    def __init__(
        self, folder: Path, scp_address: tuple[str, int], tls: dict[str, Issued] | None = None
    ) -> None:
        self.http_port = free_port()
        storage = folder / "storage"
        storage.mkdir()
        config = {
            "Name": "mwl-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": free_port(),
            "DicomAet": "ORTHANCSCU",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomScuTimeout": 20,
            "DicomModalities": {"mwl": ["MWLTEST", scp_address[0], scp_address[1]]},
        }
        if tls is not None:
            # Orthanc's DICOM TLS as a client (since 1.9.0): its certificate, the CA it
            # trusts, and the modality marked as TLS.
            config.update(
                {
                    "DicomTlsEnabled": True,
                    "DicomTlsCertificate": str(tls["client"].cert),
                    "DicomTlsPrivateKey": str(tls["client"].key),
                    "DicomTlsTrustedCertificates": str(tls["ca"].cert),
                    "DicomModalities": {
                        "mwl": {
                            "AET": "MWLTEST",
                            "Host": scp_address[0],
                            "Port": scp_address[1],
                            "UseDicomTls": True,
                        }
                    },
                }
            )
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config), encoding="utf-8")
        self.log = folder / "orthanc.log"

    def start(self) -> None:
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(self.config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = STARTUP_SECONDS
        while deadline > 0:
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    return
            except OSError:
                pass
            try:
                # Waiting on the process both paces the poll and notices an early exit.
                self.process.wait(timeout=0.1)
                raise RuntimeError(f"Orthanc exited: {self.log.read_text(errors='replace')}")
            except subprocess.TimeoutExpired:
                deadline -= 0.1
        self.stop()
        raise RuntimeError("Orthanc did not open its HTTP port")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def find_worklist(self, query: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/modalities/mwl/find-worklist",
            data=json.dumps(query).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            exc.close()
            return exc.code, body


@pytest.fixture(scope="module")
def orthanc(scp: WorklistScp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), scp.address)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def query(**keys: str) -> dict[str, Any]:
    top: dict[str, Any] = {"PatientName": "", "PatientID": "", "AccessionNumber": ""}
    sps: dict[str, Any] = {"Modality": "", "ScheduledProcedureStepID": ""}
    for keyword, value in keys.items():
        if keyword.startswith("sps_"):
            sps[keyword[4:]] = value
        else:
            top[keyword] = value
    top["ScheduledProcedureStepSequence"] = [sps]
    return top


def sps_ids(answers: list[dict[str, Any]]) -> list[str]:
    return [a["ScheduledProcedureStepSequence"][0]["ScheduledProcedureStepID"] for a in answers]


@pytest.mark.parametrize(("keys", "expected"), KEY_CASES)
def test_orthanc_find_worklist(orthanc, keys, expected):
    status, answers = orthanc.find_worklist(query(**keys))
    assert status == 200, answers
    assert sps_ids(answers) == expected


def test_orthanc_gets_non_ascii_names(orthanc):
    status, answers = orthanc.find_worklist(query(PatientID="P3"))
    assert status == 200
    (answer,) = answers
    assert answer["PatientName"] == "Øster^Émile"
    assert set(answer) >= {"PatientName", "PatientID", "ScheduledProcedureStepSequence"}
    assert "StudyInstanceUID" not in answer  # only what was asked


def test_orthanc_malformed_date_fails_then_next_query_succeeds(orthanc):
    status, body = orthanc.find_worklist(query(sps_ScheduledProcedureStepStartDate="2026-13-45"))
    assert status == 500
    assert "0xA900" in body.get("Details", "")
    status, answers = orthanc.find_worklist(query(PatientID="P1"))
    assert status == 200 and sps_ids(answers) == ["S1"]


@pytest.fixture(scope="module")
def tls_orthanc(
    module_engine, module_settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Orthanc]:
    folder = tmp_path_factory.mktemp("orthanc-tls")
    ca = make_ca(folder, "Test CA")
    pki = {
        "ca": ca,
        "server": issue(ca, folder, "mwl-server", server=True),
        "client": issue(ca, folder, "ORTHANCSCU", server=False, rsa=True),
    }
    settings = module_settings.replace(
        dicom_tls_port=0,
        dicom_tls_cert=str(pki["server"].cert),
        dicom_tls_key=str(pki["server"].key),
        dicom_tls_ca=str(ca.cert),
    )
    with WorklistScp(settings, make_session_factory(module_engine)) as scp:
        (folder / "orthanc").mkdir()
        server = Orthanc(folder / "orthanc", scp.tls_address, tls=pki)  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.mark.parametrize(("keys", "expected"), KEY_CASES[:4])
def test_orthanc_find_worklist_over_tls(tls_orthanc, keys, expected):
    status, answers = tls_orthanc.find_worklist(query(**keys))
    assert status == 200, answers
    assert sps_ids(answers) == expected
