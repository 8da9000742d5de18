"""DICOM TLS (PS3.15 B.12, BCP 195) against real peers: DCMTK, openssl s_client, nmap, pynetdicom.

The SCP serves a TLS port beside the plain one with certificates made for the test
(tests/certificates.py). These tests are about the transport, so they run on SQLite.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
)
from sqlalchemy.engine import Engine

from mwl.config import DicomAeProfile, Settings
from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_engine, make_session_factory
from mwl.tls import TLS12_CIPHERS
from tests.certificates import Issued, issue, make_ca
from tests.databases import migrated_sqlite_url
from tests.factories import load_steps
from tests.peers import ECHOSCU, FINDSCU, NMAP, OPENSSL
from tests.rawscu import AbortedError, AssociationRejectedError, RawScu, close_all

pytestmark = pytest.mark.e2e

# The TLS 1.2 suites RFC 9325 recommends (the server's list, in IANA names as nmap prints).
ALLOWED_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "Test CA")
    rogue = make_ca(folder / "rogue", "Rogue CA")
    return {
        "ca": ca,
        "server": issue(ca, folder, "mwl-server", server=True),
        "server_rsa": issue(ca, folder, "mwl-server-rsa", server=True, rsa=True),
        "client": issue(ca, folder, "CT01", server=False),
        "rogue_client": issue(rogue, folder / "rogue", "intruder", server=False),
    }


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url(tmp_path_factory.mktemp("tlsdb")))
    load_steps(make_session_factory(engine, writer=True), 30, modality="CT", station="CT01")
    yield engine
    engine.dispose()


def tls_settings(engine: Engine, pki: dict[str, Issued], *, ca: bool = True, **changes) -> Settings:
    return Settings(
        database_url=str(engine.url),
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_tls_port=0,
        dicom_ae_title="MWLTEST",
        dicom_tls_cert=str(pki["server"].cert),
        dicom_tls_key=str(pki["server"].key),
        dicom_tls_ca=str(pki["ca"].cert) if ca else "",
    ).replace(**changes)


@pytest.fixture(scope="module")
def scp(engine: Engine, pki: dict[str, Issued]) -> Iterator[WorklistScp]:
    server = WorklistScp(tls_settings(engine, pki), make_session_factory(engine))
    server.start()
    yield server
    server.shutdown()


def client_context(pki: dict[str, Issued], cert: str | None = "client") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"].cert)
    if cert is not None:
        context.load_cert_chain(pki[cert].cert, pki[cert].key)
    return context


def dcmtk(tool: str, scp: WorklistScp, pki: dict[str, Issued], *args: str, cert: str = "client"):
    host, port = scp.tls_address  # type: ignore[misc]
    command = [
        tool,
        "-aet",
        "CT01",
        "-aec",
        "MWLTEST",
        "+tls",
        str(pki[cert].key),
        str(pki[cert].cert),
        "+cf",
        str(pki["ca"].cert),
        *args,
        host,
        str(port),
    ]
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


def test_dcmtk_echoscu_and_findscu_over_tls_with_a_client_certificate(scp, pki):
    echo = dcmtk(ECHOSCU, scp, pki)
    assert echo.returncode == 0, echo.stderr
    found = dcmtk(
        FINDSCU,
        scp,
        pki,
        "-W",
        "-v",
        "-k",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "-k",
        "PatientID=",
        "-k",
        "AccessionNumber=",
    )
    assert found.returncode == 0, found.stderr
    log = found.stdout + found.stderr
    assert len(re.findall(r"Find Response:? \d+ \(Pending\)", log)) == 30
    assert "Received Final Find Response (Success)" in log


def test_a_client_without_a_certificate_or_with_a_foreign_one_is_refused(scp, pki):
    host, port = scp.tls_address
    for cert in (None, "rogue_client"):
        context = client_context(pki, cert)
        with pytest.raises((ssl.SSLError, ConnectionError, AbortedError)):
            scu = RawScu(host, port, tls=context)
            scu.associate(calling="NOCERT", called="MWLTEST")
    refused = dcmtk(ECHOSCU, scp, pki, cert="rogue_client")
    assert refused.returncode != 0


def test_tls_1_1_is_refused_and_1_2_and_1_3_are_accepted(scp, pki):
    host, port = scp.tls_address
    client = ["-cert", str(pki["client"].cert), "-key", str(pki["client"].key)]

    def handshake(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(OPENSSL), "s_client", "-connect", f"{host}:{port}", *client, *args],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )

    # OpenSSL's client refuses TLS 1.1 on its own unless told otherwise (SECLEVEL=0):
    # then it is the server that answers "protocol version".
    old = handshake("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0
    assert "New, (NONE), Cipher is (NONE)" in old.stdout
    assert "alert protocol version" in old.stderr
    for version in ("TLSv1.2", "TLSv1.3"):
        done = handshake("-" + version.lower().replace("v", "").replace(".", "_"))
        assert done.returncode == 0, done.stderr
        assert f"New, {version}, Cipher is " in done.stdout


@NMAP.required
def test_the_tls_1_2_suites_offered_are_only_the_bcp_195_ones(engine, pki):
    # Without a client CA, so that nmap's handshakes complete; with an RSA and an EC
    # certificate the server could offer both families, so both are tried.
    for server in ("server", "server_rsa"):
        settings = tls_settings(
            engine,
            pki,
            ca=False,
            dicom_tls_cert=str(pki[server].cert),
            dicom_tls_key=str(pki[server].key),
        )
        with WorklistScp(settings, make_session_factory(engine)) as scp:
            host, port = scp.tls_address
            scan = subprocess.run(
                [str(NMAP), "-Pn", "-n", "--script", "ssl-enum-ciphers", "-p", str(port), host],
                capture_output=True,
                text=True,
                timeout=180,
            )
        assert scan.returncode == 0, scan.stderr
        out = scan.stdout
        assert "TLSv1.2:" in out and "TLSv1.0:" not in out and "TLSv1.1:" not in out, out
        section = out.split("TLSv1.2:", 1)[1].split("TLSv1.3:", 1)[0]
        offered = set(re.findall(r"(TLS_\w+)", section))
        assert offered, out
        assert offered <= ALLOWED_TLS12, offered - ALLOWED_TLS12


def test_pynetdicom_find_and_mpps_over_tls(scp, pki):
    ae = AE(ae_title="CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    host, port = scp.tls_address
    assoc = ae.associate(host, port, ae_title="MWLTEST", tls_args=(client_context(pki), host))
    assert assoc.is_established
    try:
        query = Dataset()
        query.PatientID = ""
        sps = Dataset()
        sps.Modality = "CT"
        query.ScheduledProcedureStepSequence = [sps]
        statuses = [s.Status for s, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)]
        assert statuses.count(0xFF00) == 30 and statuses[-1] == 0x0000
        attributes = Dataset()
        attributes.PerformedProcedureStepStatus = "IN PROGRESS"
        status, _ = assoc.send_n_create(
            attributes, ModalityPerformedProcedureStep, "1.2.826.0.1.3680043.9.3811.99.1"
        )
        # Refused for its missing Type 1 attributes: the answer came over TLS.
        assert status.Status == 0x0120
    finally:
        assoc.release()


def test_a_profile_that_requires_tls_is_refused_on_the_plain_port(engine, pki):
    settings = tls_settings(
        engine,
        pki,
        dicom_ae_profiles=(DicomAeProfile(ae_title="CT01", require_tls=True),),
    )
    with WorklistScp(settings, make_session_factory(engine)) as scp:
        plain = RawScu(*scp.address)
        with pytest.raises(AssociationRejectedError) as refused:
            plain.associate(calling="CT01", called="MWLTEST")
        assert (refused.value.result, refused.value.source) == (1, 1)
        secure = RawScu(*scp.tls_address, tls=client_context(pki))
        secure.associate(calling="CT01", called="MWLTEST")
        assert secure.echo(secure.context_for(1)) == 0x0000
        secure.release()


def test_the_calling_ae_allow_list_applies_over_tls(engine, pki):
    settings = tls_settings(
        engine,
        pki,
        dicom_ae_profiles=(DicomAeProfile(ae_title="CT01"),),
        dicom_restrict_calling_ae=True,
    )
    with WorklistScp(settings, make_session_factory(engine)) as scp:
        stranger = RawScu(*scp.tls_address, tls=client_context(pki))
        with pytest.raises(AssociationRejectedError) as refused:
            stranger.associate(calling="STRANGER", called="MWLTEST")
        assert (refused.value.result, refused.value.source, refused.value.reason) == (1, 1, 3)


def test_changed_certificate_files_are_used_without_a_restart(engine, pki, tmp_path):
    ca = pki["ca"]
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    settings = tls_settings(engine, pki, dicom_tls_cert=str(cert), dicom_tls_key=str(key))
    with WorklistScp(settings, make_session_factory(engine)) as scp:

        def served_serial() -> int:
            scu = RawScu(*scp.tls_address, tls=client_context(pki))
            try:
                from cryptography import x509

                der = scu.sock.getpeercert(binary_form=True)
                return x509.load_der_x509_certificate(der).serial_number
            finally:
                scu.close()

        first = served_serial()
        renewed = issue(ca, tmp_path, "mwl-server-renewed", server=True)
        # Key first, then certificate, as an ACME client writes them.
        shutil.copy(renewed.key, key)
        shutil.copy(renewed.cert, cert)
        deadline = time.monotonic() + 10
        while served_serial() == first and time.monotonic() < deadline:
            time.sleep(0.3)
        assert served_serial() != first


def test_tls_settings_are_checked_at_start(pki):
    from mwl.errors import SettingsError

    with pytest.raises(SettingsError, match="MWL_DICOM_TLS_KEY"):
        Settings(dicom_tls_cert=str(pki["server"].cert))
    with pytest.raises(SettingsError, match="MWL_DICOM_TLS_CA"):
        Settings(dicom_tls_ca=str(pki["ca"].cert))
    with pytest.raises(SettingsError, match="MWL_DICOM_TLS_CERT"):
        Settings(dicom_tls_cert="/nonexistent.crt", dicom_tls_key=str(pki["server"].key))
    assert TLS12_CIPHERS.count("ECDHE") == 6
