"""The PROXY protocol through a real HAProxy (``send-proxy-v2``) in front of ``mwl serve``.

HAProxy (Debian's) listens on free loopback ports and connects to the broker from
127.0.0.5 (``source`` on its server lines), the one address in
``proxy_protocol_from``. Callers bind to other 127.x addresses, so what the broker
records shows whether it took the caller's address from the header: the HL7 message
log and query log (its SQLite database, read after the fact), the audit records (by
syslog over UDP to a socket of this test), the per-AE profiles with a host, the
per-address limit and ``hl7_allowed_peers``. The TLS ports go through HAProxy as
TCP, the header before the handshake. A header from an address not listed is not
honoured, and a listed balancer's connection without one is closed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]
from pynetdicom.status import Status
from sqlalchemy import select

from mwl.hl7.mllp import MllpFramer, frame
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import Hl7Message, QueryLogEntry
from tests.certificates import Issued, issue, make_ca
from tests.peers import FINDSCU, OPENSSL, Peer
from tests.prometheus import free_port
from tests.serve import AE_TITLE, Broker, broker_env, start_broker

HAPROXY = Peer(Path("/usr/sbin/haproxy"), "haproxy")
pytestmark = [pytest.mark.e2e, HAPROXY.required, FINDSCU.required, OPENSSL.required]

BALANCER = "127.0.0.5"  # HAProxy's source address towards the broker
CLIENT = "127.0.0.2"  # a modality or RIS behind the balancer
OTHER = "127.0.0.3"
TIMEOUT_S = 20.0
REFUSED_NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.1

# The lines the cluster harness (tests/cluster/) needs too, {} filled in per port.
HAPROXY_CONFIG = """\
global
    maxconn 500
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
FRONTEND = """\
frontend {name}
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    server broker 127.0.0.1:{target} send-proxy-v2 source {source}{check}
"""


@dataclass
class Setup:
    broker: Broker
    front: dict[str, int]  # HAProxy's ports: hl7, hl7_tls, dicom, dicom_tls
    tls_port: dict[str, int]  # the broker's own TLS ports
    database_url: str
    folder: Path
    pki: dict[str, Issued]
    audit: socket.socket


def _start_haproxy(
    folder: Path, targets: dict[str, int]
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    front = {name: free_port() for name in targets}
    parts = [HAPROXY_CONFIG]
    for name, target in targets.items():
        # HAProxy's health check on the MLLP port: a PROXY header with the LOCAL
        # command, then a close (the broker takes it for the balancer's own).
        check = " check check-send-proxy inter 1s fall 1 rise 1" if name == "hl7" else ""
        parts.append(
            FRONTEND.format(
                name=name, port=front[name], target=target, source=BALANCER, check=check
            )
        )
    config = folder / "haproxy.cfg"
    config.write_text("".join(parts))
    checked = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with open(folder / "haproxy.log", "w") as log:
        process = subprocess.Popen(
            [str(HAPROXY), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + TIMEOUT_S
    for port in front.values():
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, "haproxy ended"
                assert time.monotonic() < deadline, "haproxy does not listen"
                time.sleep(0.1)
    return process, front


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("proxy")
    ca = make_ca(folder / "pki", "ca")
    pki = {"ca": ca, "server": issue(ca, folder / "pki", "server", server=True)}
    audit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    audit.bind(("127.0.0.1", 0))
    audit.settimeout(0.5)
    tls_port = {"hl7": free_port(), "dicom": free_port()}
    database_url = f"sqlite:///{folder / 'mwl.db'}"
    profiles = [
        {"ae_title": "CT01", "host": CLIENT},
        {"ae_title": "MR01", "host": "127.0.0.9"},
        {"ae_title": "FINDSCU"},
        {"ae_title": "US01"},
    ]
    env = broker_env(
        database_url,
        MWL_PROXY_PROTOCOL_FROM=json.dumps([BALANCER]),
        MWL_HL7_ALLOWED_PEERS=json.dumps(["127.0.0.1", CLIENT, BALANCER]),
        MWL_DICOM_RESTRICT_CALLING_AE="true",
        MWL_DICOM_AE_PROFILES=json.dumps(profiles),
        MWL_DICOM_MAX_ASSOCIATIONS_PER_ADDRESS="1",
        MWL_HL7_TLS_PORT=str(tls_port["hl7"]),
        MWL_HL7_TLS_CERT=str(pki["server"].cert),
        MWL_HL7_TLS_KEY=str(pki["server"].key),
        MWL_DICOM_TLS_PORT=str(tls_port["dicom"]),
        MWL_DICOM_TLS_CERT=str(pki["server"].cert),
        MWL_DICOM_TLS_KEY=str(pki["server"].key),
        MWL_AUDIT_SYSLOG_HOST="127.0.0.1",
        MWL_AUDIT_SYSLOG_PORT=str(audit.getsockname()[1]),
        MWL_AUDIT_SYSLOG_TRANSPORT="udp",
    )
    broker = start_broker(env, folder)
    haproxy = None
    try:
        haproxy, front = _start_haproxy(
            folder,
            {
                "hl7": broker.hl7_port,
                "hl7_tls": tls_port["hl7"],
                "dicom": broker.dicom_port,
                "dicom_tls": tls_port["dicom"],
            },
        )
        yield Setup(broker, front, tls_port, database_url, folder, pki, audit)
    finally:
        if haproxy is not None:
            haproxy.terminate()
            try:
                haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                haproxy.kill()
                haproxy.wait(timeout=10)
        code = broker.stop()
        audit.close()
    assert code == 0, "\n".join(broker.output[-40:])


# -- peers -------------------------------------------------------------------------


def order(number: int) -> bytes:
    """A new-order ORM^O01 with identifiers of its own (synthetic)."""
    n = f"{number:05d}"
    segments = [
        f"MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|PXY{n}|P|2.3.1",
        f"PID|1||PXP{n}^^^HOSPITAL^MR||Proxy^Patient{n}||19800115|F",
        "PV1|1|O",
        f"ORC|NW|PLC{n}|FIL{n}||SC||^^^20261121093000^^R",
        f"OBR|1|PLC{n}|FIL{n}|CTHEAD^CT Head^LOCAL||||||||||||||ACC{n}|RP{n}|SPS{n}||||CT",
    ]
    return "\r".join(segments).encode() + b"\r"


def mllp(
    port: int,
    payload: bytes,
    *,
    source: str,
    prefix: bytes = b"",
    tls: ssl.SSLContext | None = None,
) -> bytes | None:
    """Send one message from ``source`` and return its ACK; None when closed without one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT_S)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if prefix:
            sock.sendall(prefix)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(frame(payload))
        framer = MllpFramer(1 << 20)
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            frames = framer.feed(data)
            if frames:
                return frames[0]
    except (ConnectionError, ssl.SSLError):
        return None
    finally:
        sock.close()


def worklist_query() -> Dataset:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledProcedureStepStartDate = ""
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def c_find(
    port: int, calling_ae: str, *, source: str, tls: ssl.SSLContext | None = None
) -> int | None:
    """One C-FIND from ``source``; the final status, None when not associated."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=AE_TITLE,
        bind_address=(source, 0),
        tls_args=(tls, "127.0.0.1") if tls is not None else None,
    )
    if not assoc.is_established:
        return None
    final = -1
    try:
        for status, _found in assoc.send_c_find(worklist_query(), ModalityWorklistInformationFind):
            if status and status.Status not in (Status.PENDING, 0xFF01):
                final = status.Status
    finally:
        assoc.release()
    return final


def client_tls(setup: Setup) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=setup.pki["ca"].cert)


def messages_from(setup: Setup, control_id: str) -> list[str]:
    engine = make_engine(setup.database_url)
    try:
        with make_session_factory(engine)() as session:
            found = session.scalars(
                select(Hl7Message.peer_address).where(Hl7Message.message_control_id == control_id)
            )
            return list(found)
    finally:
        engine.dispose()


def queries_of(setup: Setup, calling_ae: str) -> list[tuple[str, int]]:
    engine = make_engine(setup.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(QueryLogEntry.peer_address, QueryLogEntry.status)
                .where(QueryLogEntry.calling_ae_title == calling_ae)
                .order_by(QueryLogEntry.id)
            )
            return [(host_of(str(address)), int(status)) for address, status in rows]
    finally:
        engine.dispose()


def host_of(peer: str) -> str:
    return peer.rsplit(":", 1)[0]


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


# -- HL7 ---------------------------------------------------------------------------


def test_hl7_through_haproxy_is_logged_and_audited_with_the_callers_address(setup: Setup):
    ack = mllp(setup.front["hl7"], order(1), source=CLIENT)
    assert ack is not None and b"MSA|AA|PXY00001" in ack
    assert [host_of(p) for p in messages_from(setup, "PXY00001")] == [CLIENT]
    # The ATNA Order Record of the new order names the RIS by its own address.
    found: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not any("ACC00001" in m for m in found):
        with contextlib.suppress(TimeoutError):
            found.append(setup.audit.recv(65536).decode("utf-8", "replace"))
    record = next((m for m in found if "ACC00001" in m), "")
    assert f'NetworkAccessPointID="{CLIENT}"' in record, found
    assert BALANCER not in "".join(found)


def test_hl7_allowed_peers_apply_to_the_caller_behind_the_balancer(setup: Setup):
    # 127.0.0.3 is not in hl7_allowed_peers, HAProxy's 127.0.0.5 is: the caller counts.
    assert mllp(setup.front["hl7"], order(2), source=OTHER) is None
    assert messages_from(setup, "PXY00002") == []
    # The broker's output is read by a thread of its own: give the line time to arrive.
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not any(
        "HL7 connection from 127.0.0.3 closed at once" in line for line in setup.broker.output
    ):
        time.sleep(0.1)
    assert any(
        "HL7 connection from 127.0.0.3 closed at once" in line for line in setup.broker.output
    )


def test_hl7_tls_through_haproxy_header_before_handshake(setup: Setup):
    ack = mllp(setup.front["hl7_tls"], order(3), source=CLIENT, tls=client_tls(setup))
    assert ack is not None and b"MSA|AA|PXY00003" in ack
    assert [host_of(p) for p in messages_from(setup, "PXY00003")] == [CLIENT]


def test_a_header_from_an_unlisted_address_is_not_honoured(setup: Setup):
    from tests.core.test_proxy_protocol import v2

    forged = v2(source="127.0.0.9")
    # Straight to the broker from 127.0.0.2: the header is bytes outside a frame.
    ack = mllp(setup.broker.hl7_port, order(4), source=CLIENT, prefix=forged)
    assert ack is not None and b"MSA|AA|PXY00004" in ack
    assert [host_of(p) for p in messages_from(setup, "PXY00004")] == [CLIENT]
    # On the DICOM port it is no PDU: the association does not come about.
    sock = socket.create_connection(("127.0.0.1", setup.broker.dicom_port), timeout=TIMEOUT_S)
    with sock:
        sock.sendall(forged + b"\x01\x00\x00\x00\x00\x10" + bytes(16))
        with contextlib.suppress(ConnectionError):
            while sock.recv(4096):
                pass
    assert all(address != "127.0.0.9" for address, _ in queries_of(setup, "CT01"))


def test_the_balancer_without_a_header_is_closed_with_one_log_line(setup: Setup):
    for number in (5, 6):
        assert mllp(setup.broker.hl7_port, order(number), source=BALANCER) is None
    assert messages_from(setup, "PXY00005") == messages_from(setup, "PXY00006") == []
    lines = [
        line
        for line in setup.broker.output
        if "HL7 connection from balancer 127.0.0.5 closed: no valid PROXY protocol header" in line
    ]
    assert len(lines) == 1, lines  # rate-limited: one line a minute
    # The same on the DICOM port: an A-ASSOCIATE-RQ where the header should be.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(TIMEOUT_S)
        sock.bind((BALANCER, 0))
        sock.connect(("127.0.0.1", setup.broker.dicom_port))
        sock.sendall(b"\x01\x00\x00\x00\x00\x10" + bytes(16))
        with contextlib.suppress(ConnectionError):
            assert sock.recv(4096) == b""  # closed, nothing answered
    wait_for(
        lambda: any(
            "DICOM connection from balancer 127.0.0.5 closed: no valid PROXY" in line
            for line in setup.broker.output
        ),
        "the DICOM listener logs the balancer's connection without a header",
    )


def test_haproxy_health_checks_with_local_are_served(setup: Setup):
    # HAProxy checks every second with a LOCAL header; one failed check would mark the server DOWN
    # (and stop forwarding) if the broker closed those connections at once.
    time.sleep(2.5)
    assert mllp(setup.front["hl7"], order(7), source=CLIENT) is not None
    log = (setup.folder / "haproxy.log").read_text()
    assert "is DOWN" not in log, log


# -- DICOM -------------------------------------------------------------------------


def test_findscu_through_haproxy_is_logged_with_its_address(setup: Setup):
    done = subprocess.run(
        [
            str(FINDSCU),
            "-W",
            "-aec",
            AE_TITLE,
            "-k",
            "ScheduledProcedureStepSequence[0].Modality=CT",
            "-k",
            "PatientName",
            "127.0.0.1",
            str(setup.front["dicom"]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # findscu cannot bind a source address: it calls from 127.0.0.1, HAProxy from .5.
    assert queries_of(setup, "FINDSCU") == [("127.0.0.1", Status.SUCCESS)]


def test_ae_profiles_with_a_host_see_the_callers_address(setup: Setup):
    assert c_find(setup.front["dicom"], "CT01", source=CLIENT) == Status.SUCCESS
    # MR01's profile names 127.0.0.9: from 127.0.0.2 it is refused.
    assert c_find(setup.front["dicom"], "MR01", source=CLIENT) == REFUSED_NOT_AUTHORIZED
    # Without the balancer, CT01 from 127.0.0.1 is not the host of its profile.
    assert c_find(setup.broker.dicom_port, "CT01", source="127.0.0.1") == REFUSED_NOT_AUTHORIZED
    assert queries_of(setup, "CT01") == [
        (CLIENT, Status.SUCCESS),
        ("127.0.0.1", REFUSED_NOT_AUTHORIZED),
    ]
    assert queries_of(setup, "MR01") == [(CLIENT, REFUSED_NOT_AUTHORIZED)]


def test_dicom_tls_through_haproxy(setup: Setup):
    tls = client_tls(setup)
    assert c_find(setup.front["dicom_tls"], "US01", source=CLIENT, tls=tls) == Status.SUCCESS
    assert queries_of(setup, "US01") == [(CLIENT, Status.SUCCESS)]


def test_the_per_address_limit_counts_callers_not_the_balancer(setup: Setup):
    # dicom_max_associations_per_address is 1 here: a second association from
    # 127.0.0.2 is rejected, while 127.0.0.3 behind the same balancer is served.
    ae = AE(ae_title="US01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    first = ae.associate(
        "127.0.0.1", setup.front["dicom"], ae_title=AE_TITLE, bind_address=(CLIENT, 0)
    )
    try:
        assert first.is_established
        assert c_find(setup.front["dicom"], "US01", source=CLIENT) is None
        assert c_find(setup.front["dicom"], "US01", source=OTHER) == Status.SUCCESS
    finally:
        first.release()
    wait_for(
        lambda: c_find(setup.front["dicom"], "US01", source=CLIENT) == Status.SUCCESS,
        "127.0.0.2 is served again once its association ended",
    )
    assert any("associations from 127.0.0.2 already" in line for line in setup.broker.output)
