"""ATNA audit end to end: a real ``mwl serve`` reports to rsyslogd over TLS and over UDP.

rsyslogd (Debian's, with its GnuTLS driver) is the audit repository; every message
it received is checked for its syslog header (MSGID IHE+RFC-3881) and validated
against the DICOM audit message schema (tests/audit/audit-message.xsd).
"""

from __future__ import annotations

import base64
import re
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from mwl.hl7.client import send_messages
from tests import scu
from tests.audit.rsyslog import SCHEMA, Received, Rsyslog
from tests.certificates import issue, make_ca
from tests.mpps.conftest import n_create, n_create_dataset, reference
from tests.peers import OPENSSL, RSYSLOGD
from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl, start_broker

pytestmark = [pytest.mark.e2e, RSYSLOGD.required, OPENSSL.required]

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"
ORDER = (SAMPLES / "orm_o01_nw.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
PATIENT_UPDATE = (
    (SAMPLES / "adt_a08_update.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
)
STUDY_UID = "1.2.826.0.1.3680043.10.543.20261121.1"


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[Rsyslog]:
    """rsyslogd with a TLS input (client certificates required) and a UDP input."""
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    server = issue(ca, pki, "repository", server=True)
    repository = Rsyslog(tmp_path / "rsyslog", server, ca)
    repository.folder.mkdir()
    repository.start()
    try:
        yield repository
    finally:
        repository.stop()


def _audit_env(
    database_url: str, syslog: Rsyslog, transport: str, tmp_path: Path
) -> dict[str, str]:
    env = broker_env(
        database_url,
        MWL_AUDIT_SYSLOG_HOST="127.0.0.1",
        MWL_AUDIT_SYSLOG_TRANSPORT=transport,
        MWL_AUDIT_SOURCE_ID="MWL-TEST",
        MWL_DICOM_AE_PROFILES='[{"ae_title": "CT01"}, {"ae_title": "MR01"}]',
        MWL_DICOM_RESTRICT_CALLING_AE="true",
    )
    if transport == "udp":
        env["MWL_AUDIT_SYSLOG_PORT"] = str(syslog.udp_port)
    else:
        client = issue(
            Path(syslog.ca.cert).parent and _ca(syslog), tmp_path / "pki", "broker", server=False
        )
        env.update(
            MWL_AUDIT_SYSLOG_PORT=str(syslog.tcp_port),
            MWL_AUDIT_SYSLOG_CA=str(syslog.ca.cert),
            MWL_AUDIT_SYSLOG_CERT=str(client.cert),
            MWL_AUDIT_SYSLOG_KEY=str(client.key),
        )
    return env


def _ca(syslog: Rsyslog):  # type: ignore[no-untyped-def]
    return syslog.ca


def _serve(env: dict[str, str], tmp_path: Path) -> Broker:
    added = run_mwl(
        ["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD + "\n"
    )
    assert added.returncode == 0, added.stderr
    return start_broker(env, tmp_path)


def _web_logins(broker: Broker) -> None:
    """A failed login, a login and a logout on the web page."""
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    status, _, page = web.login("admin", "wrong password, surely")
    assert status == 200 and 'name="password"' in page
    status, url, page = web.login("admin", ADMIN_PASSWORD)
    assert status == 200 and not url.endswith("/login")
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token, "no CSRF token on the page after login"
    request = urllib.request.Request(
        web.base + "/logout",
        data=urllib.parse.urlencode({"csrf_token": token[1]}).encode(),
        method="POST",
    )
    with web.opener.open(request, timeout=30) as response:
        assert response.geturl().endswith("/login")


def _worklist_query() -> Dataset:
    ds = Dataset()
    ds.PatientID = ""
    ds.PatientName = ""
    sps = Dataset()
    sps.Modality = "CT"
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


def _rejected_association(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MWLTEST")
    rejected = bool(assoc.is_rejected)
    if assoc.is_established:
        assoc.release()
    return rejected


def _by_event(messages: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for message in messages:
        out.setdefault(message.event_id(), []).append(message)
    return out


def _assert_valid(messages: list[Received]) -> None:
    for message in messages:
        assert message.msgid == "IHE+RFC-3881", message.header
        assert message.header[0].startswith("<85>1"), message.header  # authpriv.notice, v1
        assert SCHEMA.validate(message.document()), (SCHEMA.error_log, message.xml)


def _exercise(broker: Broker) -> None:
    acks = send_messages("127.0.0.1", broker.hl7_port, [ORDER, PATIENT_UPDATE])
    assert all(b"MSA|AA" in ack for ack in acks), acks
    matches, status = scu.c_find(broker.dicom_port, _worklist_query())
    assert status == 0 and len(matches) == 1
    created = n_create(
        ("127.0.0.1", broker.dicom_port),
        n_create_dataset(reference(STUDY_UID, "SPS0001", "ACC0001", "RP0001")),
        "1.2.826.0.1.3680043.10.543.99.1",
    )
    assert created.code == 0
    assert _rejected_association(broker.dicom_port)
    _web_logins(broker)


def test_events_reach_the_repository_over_mutual_tls(
    database_url: str, syslog: Rsyslog, tmp_path: Path
):
    broker = _serve(_audit_env(database_url, syslog, "tls", tmp_path), tmp_path)
    try:
        _exercise(broker)
    finally:
        assert broker.stop() == 0
    # Stopping sends the Application Stop before the sender ends.
    messages = syslog.wait_for(lambda found: any("110121" in m.xml for m in found))
    _assert_valid(messages)
    events = _by_event(messages)
    starts = [m.event_types() for m in events["110100"]]
    assert starts == [["110120"], ["110121"]]
    (order,) = events["110109"]
    assert order.action() == "C"
    order_ids = {
        o.get("ParticipantObjectID")
        for o in order.document().iterfind("ParticipantObjectIdentification")
    }
    assert {"PAT0001", STUDY_UID} <= order_ids
    assert "ACC0001" in order.xml
    (patient,) = events["110110"]
    assert patient.action() == "U"
    (query,) = events["110112"]
    obj = query.document().find("ParticipantObjectIdentification")
    assert obj.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.31"
    assert base64.b64decode(obj.findtext("ParticipantObjectQuery"))  # the identifier as sent
    requestor = query.document().find("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("CT01", "127.0.0.1")
    assert "NumberOfMatches" in query.xml and "1 matches" in query.xml
    (mpps,) = events["110111"]
    assert mpps.action() == "C" and "1.2.826.0.1.3680043.10.543.99.1" in mpps.xml
    # The CLI's `user add` is a 110113 too (110137 User Security Attributes Changed).
    (alert,) = [m for m in events["110113"] if m.event_types() == ["110126"]]
    assert "INTRUDER" in alert.xml
    logins = [
        (m.event_types(), m.document().find("EventIdentification").get("EventOutcomeIndicator"))
        for m in events["110114"]
    ]
    assert logins == [(["110122"], "4"), (["110122"], "0"), (["110123"], "0")]
    assert all('UserID="admin"' in m.xml for m in events["110114"])


def test_events_reach_the_repository_over_udp(database_url: str, syslog: Rsyslog, tmp_path: Path):
    broker = _serve(_audit_env(database_url, syslog, "udp", tmp_path), tmp_path)
    try:
        matches, status = scu.c_find(broker.dicom_port, _worklist_query())
        assert status == 0
    finally:
        assert broker.stop() == 0
    messages = syslog.wait_for(lambda found: any("110121" in m.xml for m in found))
    _assert_valid(messages)
    events = _by_event(messages)
    assert [m.event_types() for m in events["110100"]] == [["110120"], ["110121"]]
    assert len(events["110112"]) == 1


def _ack_times(port: int, numbers: range) -> list[float]:
    times = []
    for n in numbers:
        # A new order each time (its own control ID, accession and study).
        message = (
            ORDER.replace(b"ACC0001", b"ACC%04d" % n)
            .replace(b"MSG00001", b"MSG%05d" % n)
            .replace(b"PLC0001", b"PLC%04d" % n)
            .replace(b"FIL0001", b"FIL%04d" % n)
            .replace(b"RP0001", b"RP%04d" % n)
            .replace(b"SPS0001", b"SPS%04d" % n)
            .replace(STUDY_UID.encode(), b"1.2.826.0.1.3680043.10.543.77.%d" % n)
        )
        started = time.perf_counter()
        (ack,) = send_messages("127.0.0.1", port, [message])
        times.append(time.perf_counter() - started)
        assert b"MSA|AA" in ack
    return times


def test_nothing_is_lost_while_the_repository_is_down(
    database_url: str, syslog: Rsyslog, tmp_path: Path
):
    broker = _serve(_audit_env(database_url, syslog, "tls", tmp_path), tmp_path)
    try:
        assert syslog.wait_for(lambda found: len(found) >= 1)  # Application Start
        up = _ack_times(broker.hl7_port, range(100, 120))
        syslog.stop()
        down = _ack_times(broker.hl7_port, range(120, 140))
        syslog.start()
        # All 40 orders arrive once the repository is back (retries back off to 60 s at most;
        # the first ones come within a few seconds).
        messages = syslog.wait_for(
            lambda found: sum(m.event_id() == "110109" for m in found) >= 40, timeout=90
        )
    finally:
        assert broker.stop() == 0
    orders = [m for m in messages if m.event_id() == "110109"]
    accessions = {
        n for n in range(100, 140) if any(b"ACC%04d" % n in m.xml.encode() for m in orders)
    }
    assert accessions == set(range(100, 140)), "\n".join(broker.output[-60:])
    _assert_valid(messages)
    # The broker never waits for the repository: HL7 ACKs are as fast with it down.
    assert statistics.median(down) < statistics.median(up) * 2 + 0.02, (up, down)
