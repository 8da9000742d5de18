"""ATNA for reads and changes: who looked at whom, who changed settings, users and tokens.

A real ``mwl serve`` reports over UDP to rsyslogd; the web page and the API are read
and changed over HTTP as a browser and a script would, and the HL7 listener is
knocked on from an address its allow-list does not hold.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwl.hl7.client import send_messages
from tests.audit.rsyslog import SCHEMA, Received, Rsyslog
from tests.certificates import issue, make_ca
from tests.peers import OPENSSL, RSYSLOGD
from tests.serve import ADMIN_PASSWORD, Broker, WebClient, broker_env, run_mwl, start_broker
from tests.settings_page import form_values

pytestmark = [pytest.mark.e2e, RSYSLOGD.required, OPENSSL.required]

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"
ORDER = (SAMPLES / "orm_o01_nw.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
STUDY_UID = "1.2.826.0.1.3680043.10.543.20261121.1"


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[Rsyslog]:
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    repository = Rsyslog(tmp_path / "rsyslog", issue(ca, pki, "repository", server=True), ca)
    repository.folder.mkdir()
    repository.start()
    try:
        yield repository
    finally:
        repository.stop()


@pytest.fixture
def broker(database_url: str, syslog: Rsyslog, tmp_path: Path) -> Iterator[Broker]:
    env = broker_env(
        database_url,
        MWL_AUDIT_SYSLOG_HOST="127.0.0.1",
        MWL_AUDIT_SYSLOG_TRANSPORT="udp",
        MWL_AUDIT_SYSLOG_PORT=str(syslog.udp_port),
        MWL_AUDIT_SOURCE_ID="MWL-TEST",
        MWL_HL7_ALLOWED_PEERS='["127.0.0.1"]',
    )
    added = run_mwl(["user", "add", "admin", "--role", "admin"], env, tmp_path, ADMIN_PASSWORD)
    assert added.returncode == 0, added.stderr
    token = run_mwl(["token", "add", "admin", "--name", "script"], env, tmp_path)
    assert token.returncode == 0, token.stderr
    env["TEST_API_TOKEN"] = token.stdout.strip()
    started = start_broker(env, tmp_path)
    started.token = env["TEST_API_TOKEN"]  # type: ignore[attr-defined]
    try:
        yield started
    finally:
        assert started.stop() == 0


def _api(broker: Broker, path: str) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.web_port}/api/v1{path}",
        headers={"Authorization": f"Bearer {broker.token}"},  # type: ignore[attr-defined]
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _refused_with(broker: Broker, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{broker.web_port}/api/v1/items",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def _post_form(web: WebClient, path: str, values: dict[str, list[str]]) -> int:
    request = urllib.request.Request(
        web.base + path, data=urllib.parse.urlencode(values, doseq=True).encode(), method="POST"
    )
    with web.opener.open(request, timeout=30) as response:
        return int(response.status)


def _knock_from(address: str, port: int) -> bytes:
    """An HL7 order from ``address`` (not on the allow-list): what comes back."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(address, 0)
    ) as s:
        s.sendall(b"\x0b" + ORDER + b"\x1c\r")
        try:
            return s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


def _readers(messages: list[Received], action: str, text: str) -> list[Received]:
    return [
        m
        for m in messages
        if m.event_id() == "110110"
        and m.action() == action
        and m.document()
        .findtext("EventIdentification/EventOutcomeDescription", "")
        .startswith(text)
    ]


def _objects(message: Received) -> set[str]:
    return {
        o.get("ParticipantObjectID", "")
        for o in message.document().iterfind("ParticipantObjectIdentification")
    }


def _requestor(message: Received) -> tuple[str | None, str | None]:
    first = message.document().find("ActiveParticipant")
    assert first is not None and first.get("UserIsRequestor") == "true"
    return first.get("UserID"), first.get("NetworkAccessPointID")


def _alerts(messages: list[Received], event_type: str) -> list[Received]:
    return [m for m in messages if m.event_id() == "110113" and m.event_types() == [event_type]]


def test_reads_and_changes_are_audited(broker: Broker, syslog: Rsyslog):
    (ack,) = send_messages("127.0.0.1", broker.hl7_port, [ORDER])
    assert b"MSA|AA" in ack
    # The API: the day list and one item, as the token's user.
    day = _api(broker, "/items?date=2026-11-21")
    assert isinstance(day, dict) and len(day["items"]) == 1, day
    key = day["items"][0]["key"]
    _api(broker, f"/items/{key}")
    messages_page = _api(broker, "/messages")
    assert isinstance(messages_page, dict)
    message_key = messages_page["messages"][0]["key"]
    _api(broker, f"/messages/{message_key}")
    # DICOMweb MWL-RS: the same worklist over REST is a read too.
    search = urllib.request.Request(
        f"http://127.0.0.1:{broker.web_port}/dicomweb/modality-scheduled-procedure-steps",
        headers={
            "Authorization": f"Bearer {broker.token}",  # type: ignore[attr-defined]
            "Accept": "application/dicom+json",
        },
    )
    with urllib.request.urlopen(search, timeout=30) as response:
        assert len(json.load(response)) == 1
    # The page: the item and the message, then a change of a setting.
    web = WebClient(f"http://127.0.0.1:{broker.web_port}")
    status, url, _ = web.login("admin", ADMIN_PASSWORD)
    assert status == 200 and not url.endswith("/login")
    assert web.get(f"/items/{key}")[0] == 200
    assert web.get(f"/messages/{message_key}")[0] == 200
    _, _, page = web.get("/admin/aes")
    values = form_values(page, "/admin/aes")
    values["max_matches"] = ["77"]
    assert _post_form(web, "/admin/aes", values) == 200
    # A wrong token twice: one failed login, not one per request.
    assert _refused_with(broker, "not-a-token") == 401
    assert _refused_with(broker, "still-not-a-token") == 401
    # An HL7 sender not on the allow-list is turned away, and that is an alert.
    assert b"MSA|AA" not in _knock_from("127.0.0.3", broker.hl7_port)

    found = syslog.wait_for(
        lambda ms: (
            len(_readers(ms, "R", "message page")) >= 1
            and len(_alerts(ms, "110131")) >= 1
            and any("127.0.0.3" in m.xml for m in ms if m.event_id() == "110113")
        ),
        timeout=30,
    )
    for message in found:
        assert SCHEMA.validate(message.document()), (SCHEMA.error_log, message.xml)

    (api_list,) = _readers(found, "R", "GET /api/v1/items?date=")
    (api_item,) = _readers(found, "R", f"GET /api/v1/items/{key}")
    (page_item,) = _readers(found, "R", f"item page {key}")
    for read in (api_list, api_item, page_item):
        assert {"PAT0001", STUDY_UID} <= _objects(read), read.xml
        assert "ACC0001" in read.xml
        assert _requestor(read) == ("admin", "127.0.0.1")
    (rest,) = _readers(found, "R", "MWL-RS search")
    assert {"PAT0001", STUDY_UID} <= _objects(rest) and "ACC0001" in rest.xml
    (api_message,) = _readers(found, "R", f"GET /api/v1/messages/{message_key}")
    (page_message,) = _readers(found, "R", f"message page {message_key}")
    assert "PAT0001" in _objects(api_message) and "PAT0001" in _objects(page_message)
    # The list of messages shows no patient data: no read is recorded for it.
    assert not _readers(found, "R", "GET /api/v1/messages?")

    (setting,) = _alerts(found, "110131")
    assert _requestor(setting) == ("admin", "127.0.0.1")
    assert "dicom_max_matches" in setting.xml
    user_changes = _alerts(found, "110137")
    texts = [
        m.document().findtext("EventIdentification/EventOutcomeDescription") for m in user_changes
    ]
    assert any(t and t.startswith("user created with role admin") for t in texts), texts
    assert any(t and t.startswith("API token created") for t in texts), texts
    assert all(_requestor(m)[0].startswith("os:") for m in user_changes)  # type: ignore[union-attr]
    logins = [m for m in found if m.event_id() == "110114"]
    outcomes = [
        (_requestor(m)[0], m.document().find("EventIdentification").get("EventOutcomeIndicator"))
        for m in logins
    ]
    # The token's first use, the page login, and one refusal for the two wrong tokens.
    assert sorted(outcomes) == [("(API token)", "4"), ("admin", "0"), ("admin", "0")], outcomes
    (refused,) = [m for m in _alerts(found, "110126") if "127.0.0.3" in m.xml]
    assert re.search(r'NetworkAccessPointID="127\.0\.0\.3"', refused.xml), refused.xml


def test_a_read_of_nobody_records_nothing(broker: Broker, syslog: Rsyslog):
    # A day without steps: nobody's data was shown, so no 110110 R is sent.
    day = (dt.date.today() + dt.timedelta(days=400)).isoformat()
    assert _api(broker, f"/items?date={day}") == {"date": day, "items": []}
    (ack,) = send_messages("127.0.0.1", broker.hl7_port, [ORDER])
    assert b"MSA|AA" in ack
    found = syslog.wait_for(lambda ms: any(m.event_id() == "110109" for m in ms), timeout=30)
    assert not [m for m in found if m.event_id() == "110110" and m.action() == "R"]
