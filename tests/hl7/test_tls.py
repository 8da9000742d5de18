"""MLLP over TLS against real peers: openssl s_client, Python's ssl, and the RIS sender.

Certificates are made for the test (tests/certificates.py). These tests are about
the transport, so they run on SQLite only.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

import mwl.tls
from mwl.domain import MppsStatus, SpsStatus, StatusEvent
from mwl.hl7.mllp import MllpFramer, frame
from mwl.hl7.sender import OutboxSender
from mwl.hl7.server import Hl7Server
from mwl.operations.outbox import enqueue
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import upgrade
from mwl.store.models import OutboxMessage
from mwl.tls import ReloadingContext, TlsFiles, server_context
from tests.certificates import Issued, issue, make_ca

from .edges import ack_code, exchange, message, tls_client, transport_settings

pytestmark = pytest.mark.e2e

OPENSSL = "/usr/bin/openssl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "Test CA")
    rogue = make_ca(folder / "rogue", "Rogue CA")
    return {
        "ca": ca,
        "rogue_ca": rogue,
        "server": issue(ca, folder, "mwl-hl7", server=True),
        "server2": issue(ca, folder, "mwl-hl7-renewed", server=True),
        "ris": issue(ca, folder, "ris-server", server=True),
        "rogue_server": issue(rogue, folder / "rogue", "fake-ris", server=True),
        "client": issue(ca, folder, "RIS01", server=False),
        "rogue_client": issue(rogue, folder / "rogue", "intruder", server=False),
    }


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hl7tls') / 'mwl.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url


@pytest.fixture(scope="module")
def server(database_url: str, pki: dict[str, Issued]) -> Iterator[Hl7Server]:
    settings = transport_settings(
        database_url,
        hl7_tls_cert=str(pki["server"].cert),
        hl7_tls_key=str(pki["server"].key),
        hl7_tls_ca=str(pki["ca"].cert),
        hl7_idle_timeout_seconds=3.0,
    )
    engine = make_engine(database_url)
    with Hl7Server(settings, make_session_factory(engine, writer=True)) as running:
        yield running
    engine.dispose()


def s_client(server: Hl7Server, pki: dict[str, Issued], *args: str, data: bytes = b"") -> str:
    host, port = server.tls_address  # type: ignore[misc]
    command = [OPENSSL, "s_client", "-connect", f"{host}:{port}", "-CAfile", str(pki["ca"].cert)]
    command += ["-cert", str(pki["client"].cert), "-key", str(pki["client"].key), *args]
    done = subprocess.run(command, input=data, capture_output=True, timeout=30)
    return (done.stdout + done.stderr).decode("latin-1")


@pytest.mark.parametrize(("flag", "protocol"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_s_client_sends_a_message_over_tls_1_2_and_1_3_and_gets_aa(
    server, pki, flag, protocol
):
    # -ign_eof: s_client waits for the answer; the listener closes after its idle timeout.
    output = s_client(server, pki, flag, "-ign_eof", data=frame(message(f"S{protocol[-1]}")))
    assert f"Protocol: {protocol}" in output.replace("Protocol  :", "Protocol:")
    assert "Verify return code: 0 (ok)" in output
    assert f"MSA|AA|S{protocol[-1]}" in output


def test_tls_1_1_is_refused(server, pki):
    # OpenSSL's client refuses TLS 1.1 at its default security level: lowered for the probe.
    output = s_client(server, pki, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert "alert protocol version" in output or "unsupported protocol" in output
    assert "Cipher is (NONE)" in output or "Cipher    : 0000" in output
    # The listener goes on serving.
    assert "MSA|AA" in s_client(server, pki, "-ign_eof", data=frame(message("AFTER11")))


def test_mllp_over_tls_with_a_client_certificate_gets_aa(server, pki):
    context = tls_client(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    with (
        socket.create_connection(server.tls_address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}
        assert ack_code(exchange(sock, message("TLS1"))) == "AA"
        assert ack_code(exchange(sock, message("TLS2"))) == "AA"


@pytest.mark.parametrize("cert", ["rogue_client", None], ids=["foreign CA", "no certificate"])
def test_a_client_without_a_certificate_of_the_ca_gets_no_ack(server, pki, cert, caplog):
    files = pki[cert] if cert else None
    context = tls_client(
        pki["ca"].cert, files.cert if files else None, files.key if files else None
    )
    with socket.create_connection(server.tls_address, timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                # TLS 1.3: the client finishes first; the refusal comes with the next read.
                ack = exchange(sock, message("ROGUE"))
        except (ssl.SSLError, ConnectionError):
            ack = b""
    assert ack == b""
    context = tls_client(pki["ca"].cert, pki["client"].cert, pki["client"].key)
    with (
        socket.create_connection(server.tls_address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert ack_code(exchange(sock, message("GOOD"))) == "AA"


def test_the_plain_port_still_serves_beside_tls(server):
    with socket.create_connection(server.address, timeout=10) as sock:
        assert ack_code(exchange(sock, message("PLAIN"))) == "AA"


def test_a_renewed_certificate_is_used_without_a_restart(database_url, pki, tmp_path, caplog):
    cert, key = tmp_path / "hl7.crt", tmp_path / "hl7.key"
    shutil.copy(pki["server"].cert, cert)
    shutil.copy(pki["server"].key, key)
    settings = transport_settings(database_url, hl7_tls_cert=str(cert), hl7_tls_key=str(key))
    engine = make_engine(database_url)
    caplog.set_level("INFO", logger="mwl.tls")
    with Hl7Server(settings, make_session_factory(engine, writer=True)) as running:

        def served_subject() -> str:
            context = tls_client(pki["ca"].cert)
            with (
                socket.create_connection(running.tls_address, timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            ):
                assert ack_code(exchange(sock, message("RENEW"))) == "AA"
                subject = dict(x[0] for x in sock.getpeercert()["subject"])
                return subject["commonName"]

        assert served_subject() == "mwl-hl7"
        shutil.copy(pki["server2"].cert, cert)
        shutil.copy(pki["server2"].key, key)
        # The files are looked at once a second, at a connection.
        time.sleep(1.2)
        assert served_subject() == "mwl-hl7-renewed"
    engine.dispose()
    loaded = [r.getMessage() for r in caplog.records if "HL7 TLS certificate" in r.getMessage()]
    assert any("loaded" in line and "days left" in line for line in loaded)
    assert any("reloaded" in line and "mwl-hl7-renewed" in line for line in loaded)


class TlsRis:
    """A RIS listening for MLLP over TLS (Python's ssl), answering AA to every message."""

    def __init__(self, pki: dict[str, Issued], server: str, client_ca: bool) -> None:
        ca = pki["ca"].cert if client_ca else None
        self.context = server_context(TlsFiles(pki[server].cert, pki[server].key, ca))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.clients: list[str] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(10)
                    peer = conn.getpeercert()
                    self.clients.append(
                        dict(x[0] for x in peer["subject"])["commonName"] if peer else ""
                    )
                    framer = MllpFramer()
                    while data := conn.recv(65536):
                        for payload in framer.feed(data):
                            self.received.append(payload)
                            control = payload.split(b"\r")[0].split(b"|")[9].decode()
                            conn.sendall(
                                frame(
                                    b"MSH|^~\\&|RIS||MWL||20261122000000||ACK^O01^ACK|A1|P|2.5.1\r"
                                    + f"MSA|AA|{control}\r".encode()
                                )
                            )
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))

    def close(self) -> None:
        self.sock.close()
        self._thread.join(10)


def _queue_event(database_url: str) -> None:
    engine = make_engine(database_url)
    event = StatusEvent(
        study_instance_uid="1.2.826.0.1.3680043.10.1074.9001",
        requested_procedure_id="RP1",
        accession_number="ACC1",
        placer_order_number="PL1",
        filler_order_number="FI1",
        scheduled_procedure_step_ids=("S1",),
        status=SpsStatus.STARTED,
        mpps_status=MppsStatus.IN_PROGRESS,
        mpps_sop_instance_uid="1.2.3",
        occurred_at=dt.datetime(2026, 11, 22, 8, 30),
        patient_id="P1",
        issuer_of_patient_id="HOSP",
        patient_name="Test^Patient",
        patient_birth_date="19700101",
        patient_sex="M",
        modality="CT",
    )
    with make_session_factory(engine, writer=True).begin() as session:
        session.query(OutboxMessage).delete()
        enqueue(session, event, "ris")
    engine.dispose()


def _states(database_url: str) -> list[str]:
    engine = make_engine(database_url)
    with make_session_factory(engine)() as session:
        states = [str(s) for s in session.scalars(select(OutboxMessage.state))]
    engine.dispose()
    return states


def test_the_ris_sender_delivers_over_tls_with_its_client_certificate(database_url, pki):
    ris = TlsRis(pki, "ris", client_ca=True)
    _queue_event(database_url)
    settings = transport_settings(
        database_url,
        ris_host="127.0.0.1",
        ris_port=ris.port,
        ris_tls_ca=str(pki["ca"].cert),
        ris_tls_cert=str(pki["client"].cert),
        ris_tls_key=str(pki["client"].key),
    )
    engine = make_engine(database_url)
    sender = OutboxSender(settings, make_session_factory(engine, writer=True))
    try:
        assert sender.run_once() is True
    finally:
        sender.shutdown()
        ris.close()
        engine.dispose()
    assert len(ris.received) == 1 and b"ORC|SC|PL1|FI1||IP" in ris.received[0]
    assert ris.clients == ["RIS01"]
    assert _states(database_url) == ["DELIVERED"]


def test_the_ris_sender_does_not_send_to_a_ris_its_ca_did_not_sign(database_url, pki):
    ris = TlsRis(pki, "rogue_server", client_ca=False)
    _queue_event(database_url)
    settings = transport_settings(
        database_url, ris_host="127.0.0.1", ris_port=ris.port, ris_tls_ca=str(pki["ca"].cert)
    )
    engine = make_engine(database_url)
    sender = OutboxSender(settings, make_session_factory(engine, writer=True))
    try:
        assert sender.run_once() is False
    finally:
        sender.shutdown()
        ris.close()
        engine.dispose()
    assert ris.received == []
    assert _states(database_url) == ["PENDING"]


def _client_hello(pki: dict[str, Issued]) -> bytes:
    """The first flight of a real TLS client (its ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client(pki["ca"].cert).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_handshake_that_drips_in_is_closed_at_the_frame_deadline(database_url, pki, caplog):
    settings = transport_settings(
        database_url,
        hl7_tls_cert=str(pki["server"].cert),
        hl7_tls_key=str(pki["server"].key),
        hl7_frame_timeout_seconds=1.5,
        hl7_idle_timeout_seconds=5.0,
    )
    hello = _client_hello(pki)
    engine = make_engine(database_url)
    with (
        Hl7Server(settings, make_session_factory(engine, writer=True)) as running,
        socket.create_connection(running.tls_address, timeout=10) as sock,
    ):
        started, closed_at = time.monotonic(), None
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.3)
                if sock.recv(65536) == b"":
                    closed_at = time.monotonic()
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_at = time.monotonic()
                break
        assert closed_at is not None
        assert 1.2 <= closed_at - started <= 3.5, closed_at - started
        assert running.open_connections == 0
    engine.dispose()
    assert any("no handshake within 1.5s" in r.getMessage() for r in caplog.records)


def test_a_certificate_near_its_end_is_named_again_while_in_use(pki, tmp_path, caplog, monkeypatch):
    short = issue(make_ca(tmp_path, "Short CA"), tmp_path, "mwl-hl7-short", server=True, days=10)
    caplog.set_level("INFO", logger="mwl.tls")
    context = ReloadingContext(TlsFiles(short.cert, short.key), service="HL7")
    monkeypatch.setattr(mwl.tls, "EXPIRY_REMINDER_SECONDS", 0.0)  # a day, shortened
    context.current()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mwl.tls"]
    assert [level for level, _ in lines] == ["WARNING", "WARNING"]
    assert "loaded" in lines[0][1] and "in use" in lines[1][1]
    assert "mwl-hl7-short" in lines[1][1] and "days left" in lines[1][1]
