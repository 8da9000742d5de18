"""/messages: filters, one message with named fields and its ACK, re-processing, per role."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re

import pytest
from babel.dates import format_datetime
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import hash_password
from mwl.config import Settings
from mwl.domain import WorklistQuery
from mwl.hl7.describe import describe_message
from mwl.hl7.reprocess import reprocess_message
from mwl.hl7.server import Hl7Server
from mwl.store.models import AuditEvent, Hl7Message, User, utcnow
from mwl.worklist.matching import find_items
from tests.web.conftest import PASSWORD
from web import create_app

SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "samples" / "hl7"
ORDER = (SAMPLES / "orm_o01_nw.hl7").read_bytes()
# OBR-24 longer than a DICOM modality (CS, 16): AE until hl7_modality_map maps it.
BAD_ORDER = ORDER.replace(b"||||CT||", b"||||COMPUTEDTOMOGRAPHY||")
ROLES = ("viewer", "editor", "admin")
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


@pytest.fixture
def fixed_settings(settings: Settings) -> Settings:
    """The settings after the mapping fix: the long modality value maps to CT."""
    return Settings(**{**settings.__dict__, "hl7_modality_map": (("COMPUTEDTOMOGRAPHY", "CT"),)})


def make_app(
    settings: Settings,
    readers: sessionmaker[Session],
    writers: sessionmaker[Session],
    *,
    csrf: bool = False,
    services: bool = True,
) -> Flask:
    """The app as mwl.cli wires it (services bound to settings and writer sessions)."""
    return create_app(
        settings,
        readers,
        config={"TESTING": True, "WTF_CSRF_ENABLED": csrf},
        writer_factory=writers,
        hl7_reprocessor=functools.partial(reprocess_message, settings, writers)
        if services
        else None,
        hl7_describer=describe_message if services else None,
    )


@pytest.fixture
def web(fixed_settings, reader_factory, session_factory) -> Flask:
    return make_app(fixed_settings, reader_factory, session_factory)


def log_in(app: Flask, role: str) -> FlaskClient:
    """A client logged in as a user named after ``role`` (created on first use)."""
    writers = app.extensions["mwl"].writer_factory
    with writers.begin() as session:
        if session.scalar(select(func.count()).select_from(User).where(User.username == role)) == 0:
            # One scrypt hash for all tests: hashing is slow on purpose.
            session.add(User(username=role, password_hash=password_hash(), role=role))
    client = app.test_client()
    data = {"username": role, "password": PASSWORD}
    if app.config.get("WTF_CSRF_ENABLED"):
        data["csrf_token"] = token(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data=data).status_code == 302
    return client


@functools.cache
def password_hash() -> str:
    return hash_password(PASSWORD)


def token(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the page has no csrf_token input"
    return found.group(1)


def received(settings: Settings, writers: sessionmaker[Session], raw: bytes) -> int:
    """Pass ``raw`` through the listener's message path; return its log key."""
    server = Hl7Server(settings, writers)
    server.handle_message(raw, "10.0.0.7:4000")
    with writers() as session:
        return int(session.scalar(select(func.max(Hl7Message.id))))


def outcome_of(writers: sessionmaker[Session], key: int) -> tuple[str, bytes | None]:
    with writers() as session:
        row = session.get(Hl7Message, key)
        return row.outcome, row.ack


def audit_count(writers: sessionmaker[Session]) -> int:
    with writers() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)))


def local(value: dt.datetime, fmt: str = "%Y-%m-%dT%H:%M") -> str:
    return value.replace(tzinfo=dt.UTC).astimezone().strftime(fmt)


# --------------------------------------------------------------------------- the list


@pytest.fixture
def log(session_factory) -> dt.datetime:
    """Five messages an hour apart (UTC): types and outcomes mixed; returns the first time."""
    first = dt.datetime(2026, 11, 21, 6, 0)
    rows = [
        ("ORM^O01", "AA", "C-1", ""),
        ("ADT^A08", "AA", "C-2", ""),
        ("ORM^O01", "AE", "C-3", "102 at OBR-24: longer than 16 characters" + " x" * 80),
        ("ADT^A40", "AR", "C-4", "unsupported"),
        ("OMI^O23", "RECEIVED", "C-5", ""),
    ]
    with session_factory.begin() as session:
        for hour, (kind, outcome, control, error) in enumerate(rows):
            session.add(
                Hl7Message(
                    received_at=first + dt.timedelta(hours=hour),
                    peer_address="10.1.2.3:4000",
                    sending_application="RIS",
                    sending_facility="HOSP",
                    message_control_id=control,
                    message_type=kind,
                    raw=b"MSH|^~\\&|RIS|HOSP|||||" + kind.encode() + b"|" + control.encode(),
                    outcome=outcome,
                    error=error,
                )
            )
    return first


def listed(client: FlaskClient, query: str = "") -> list[str]:
    response = client.get("/messages" + query)
    assert response.status_code == 200, response.get_data(as_text=True)
    return re.findall(r"<td>(C-\d)</td>", response.get_data(as_text=True))


FILTERS = [
    ("", ["C-5", "C-4", "C-3", "C-2", "C-1"]),
    ("?type=ADT", ["C-4", "C-2"]),
    ("?type=orm%5Eo01", ["C-3", "C-1"]),
    ("?type=ORM%5EO01&outcome=ae", ["C-3"]),
    ("?outcome=RECEIVED", ["C-5"]),
    ("?type=MDM", []),
    ("?type=&outcome=&from=&until=", ["C-5", "C-4", "C-3", "C-2", "C-1"]),
]


def test_filters_and_what_the_list_shows(web, log) -> None:
    client = log_in(web, "viewer")
    for query, expected in FILTERS:
        assert listed(client, query) == expected, query

    page = client.get("/messages?outcome=AE").get_data(as_text=True)
    assert "RIS / HOSP" in page
    assert ">AE<" in page
    assert "102 at OBR-24: longer than 16 characters" in page
    assert "x x …" in page or "x…" in page  # shortened, full text on hover
    assert 'title="102 at OBR-24' in page
    assert "1 matching message shown" in page
    shown = (log + dt.timedelta(hours=2)).replace(tzinfo=dt.UTC).astimezone()
    assert format_datetime(shown.replace(tzinfo=None), "medium", locale="en") in page

    # Received from/until, in local time; "until 09:00" includes the minute 09:00.
    since = local(log + dt.timedelta(hours=1))
    until = local(log + dt.timedelta(hours=3))
    assert listed(client, f"?from={since}&until={until}") == ["C-4", "C-3", "C-2"]
    assert listed(client, f"?from={since}:01") == ["C-5", "C-4", "C-3"]
    assert listed(client, f"?until={local(log, '%Y-%m-%d %H:%M:%S')}") == ["C-1"]
    day = local(log, "%Y-%m-%d")
    assert set(listed(client, f"?from={day}&until={day}")) <= {"C-1", "C-2", "C-3", "C-4", "C-5"}


def test_paging_keeps_the_filter(web, log, monkeypatch) -> None:
    monkeypatch.setattr("web.messages.PAGE_SIZE", 1)
    client = log_in(web, "viewer")
    page = client.get("/messages?type=ORM").get_data(as_text=True)
    assert re.findall(r"<td>(C-\d)</td>", page) == ["C-3"]
    older = re.search(r'rel="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert "type=ORM" in older
    assert listed(client, older.removeprefix("/messages")) == ["C-1"]
    last = client.get(older).get_data(as_text=True)
    assert 'rel="next"' not in last


BAD_FILTERS = [
    ("?type=%3Cscript%3E", "A message type is letters and digits"),
    ("?type=" + "A" * 33, "at most 32 characters"),
    ("?outcome=OK", "Choose one of the outcomes"),
    ("?from=yesterday", "Enter a date and time like 2026-11-21 09:30"),
    ("?until=2026-13-01T10:00", "Enter a date and time"),
    ("?until=9999-12-31", "Enter a date and time"),
    ("?from=2026-11-21T10:00&until=2026-11-21T09:00", "must be after its start"),
    ("?before=abc", "The page link is not valid"),
    ("?before=-5", "The page link is not valid"),
]


def test_bad_filter_values_are_explained_not_listed(web, log) -> None:
    client = log_in(web, "viewer")
    for query, message in BAD_FILTERS:
        response = client.get("/messages" + query)
        assert response.status_code == 400, query
        page = response.get_data(as_text=True)
        assert message in page, query
        assert "no messages are listed until they are corrected" in page
        assert "C-1" not in page
        if "before" not in query:
            assert 'aria-invalid="true"' in page
            error_id = re.search(r'class="field-error" id="([^"]+)"', page).group(1)
            assert re.search(rf'aria-describedby="[^"]*{error_id}"', page), query
        assert "<script>" not in page


def test_empty_log_and_empty_result(web) -> None:
    client = log_in(web, "viewer")
    assert "No HL7 message has been received" in client.get("/messages").get_data(as_text=True)
    assert "No message matches this filter" in client.get("/messages?type=ADT").get_data(
        as_text=True
    )


# --------------------------------------------------------------------------- one message


def test_message_page_names_every_field_and_shows_the_ack(web, settings, session_factory) -> None:
    key = received(settings, session_factory, BAD_ORDER)
    page = log_in(web, "viewer").get(f"/messages/{key}").get_data(as_text=True)
    assert '<abbr title="Patient Identification" translate="no">PID</abbr>' in page
    assert (
        '<span class="hl7-field" translate="no" title="PID-5 Patient Name">'
        "Sample^Anna^Maria^^Dr.</span>" in page
    )
    assert 'title="OBR-24 Diagnostic Serv Sect ID">COMPUTEDTOMOGRAPHY</span>' in page
    # The same names without a mouse: a field list per segment (details/summary).
    assert "<summary>Fields of PID (" in page
    assert (
        '<th scope="row">PID-5.1</th>' in page
        and '<td translate="no">Family Last Name</td>' in page
    )
    assert "Field names from HL7 v2.3.1" in page
    # The ACK we sent (AE with ERR), segment by segment and as text.
    assert 'title="MSA-1 Acknowledgment Code">AE</span>' in page
    assert "Segments of the acknowledgement" in page
    assert re.search(r'<pre class="hl7"[^>]*>MSH\|\^~\\&amp;\|MWL', page)
    assert "OBR-24" in page and "longer than 16 characters" in page
    assert "This message has not been re-processed." in page
    assert "Nothing on the worklist was created or changed by this message." in page


def test_unreadable_message_shows_its_raw_lines(web, session_factory) -> None:
    with session_factory.begin() as session:
        row = Hl7Message(raw=b"garbage line\rPID|1", outcome="AR", received_at=utcnow())
        session.add(row)
        session.flush()
        key = row.id
    page = log_in(web, "viewer").get(f"/messages/{key}").get_data(as_text=True)
    assert "could not be read completely (the message has no readable MSH segment)" in page
    assert "garbage line\nPID|1" in page
    assert "No acknowledgement was sent." in page


def test_without_the_hl7_services_the_page_shows_text_and_says_why(
    settings, reader_factory, session_factory
) -> None:
    key = received(settings, session_factory, BAD_ORDER)
    app = make_app(settings, reader_factory, session_factory, services=False)
    client = log_in(app, "editor")
    page = client.get(f"/messages/{key}").get_data(as_text=True)
    assert "Field names are not available" in page
    assert "Re-processing is not available" in page
    assert 'class="hl7-field"' not in page
    assert "Re-process this message</button>" not in page
    assert "PID|1||PAT0001" in page  # the raw text
    response = client.post(f"/messages/{key}/reprocess")
    assert response.status_code == 503
    assert outcome_of(session_factory, key)[0] == "AE"


# --------------------------------------------------------------------------- roles


def test_roles_anonymous_and_unknown_messages(web, settings, session_factory) -> None:
    key = received(settings, session_factory, BAD_ORDER)
    anonymous = web.test_client()
    for path in ("/messages", f"/messages/{key}", "/messages?type=ADT"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
    response = anonymous.post(f"/messages/{key}/reprocess")
    assert response.status_code == 302 and "/login" in response.headers["Location"]

    clients = {role: log_in(web, role) for role in ROLES}
    for role, client in clients.items():
        assert client.get("/messages").status_code == 200
        page = client.get(f"/messages/{key}").get_data(as_text=True)
        button = "Re-process this message</button>" in page
        assert button is (role != "viewer"), role
        assert client.get("/messages/999999").status_code == 404
        assert "no message with this number" in client.get("/messages/999999").get_data(
            as_text=True
        )
        assert client.get("/messages/abc").status_code == 404

    response = clients["viewer"].post(f"/messages/{key}/reprocess")
    assert response.status_code == 403
    assert "needs the editor role" in response.get_data(as_text=True)
    assert clients["editor"].post("/messages/999999/reprocess").status_code == 404
    # Nothing was re-processed by anyone.
    assert outcome_of(session_factory, key)[0] == "AE"
    assert audit_count(session_factory) == 0


@pytest.mark.parametrize("role", ["editor", "admin"])
def test_editor_and_admin_reprocess_after_the_mapping_fix(
    web, settings, session_factory, role, caplog
) -> None:
    caplog.set_level(logging.INFO)
    key = received(settings, session_factory, BAD_ORDER)
    _, ack = outcome_of(session_factory, key)
    client = log_in(web, role)
    response = client.post(f"/messages/{key}/reprocess")
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/messages/{key}")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Message re-processed and accepted (AE → AA)" in page
    assert outcome_of(session_factory, key) == ("AA", ack)  # the ACK sent is kept
    # The trail and what the message changed.
    assert f"<td>{role}</td>" in page and "AE &rarr; AA" in page
    assert "<td>ACC0001</td>" in page and "<td>CT Head without contrast</td>" in page
    assert "Re-process this message</button>" not in page  # AA now
    with session_factory() as session:
        assert [i.accession_number for i in find_items(session, WorklistQuery())] == ["ACC0001"]
        event = session.scalars(select(AuditEvent)).one()
        assert (event.username, event.subject) == (role, f"hl7:{key}")
        assert json.loads(event.changes)["outcome"] == ["AE", "AA"]
    listed_page = client.get("/messages?outcome=AA").get_data(as_text=True)
    assert f'href="/messages/{key}"' in listed_page
    # Message bodies are patient data: nothing of them in the log above DEBUG.
    assert f"re-processed by {role}: AE -> AA" in caplog.text
    for phi in ("Sample", "PAT0001", "19800115", "ACC0001"):
        assert phi not in caplog.text


def test_a_message_that_still_fails_says_so(settings, reader_factory, session_factory) -> None:
    key = received(settings, session_factory, BAD_ORDER)
    unfixed = make_app(settings, reader_factory, session_factory)  # no mapping fix
    client = log_in(unfixed, "editor")
    page = client.post(f"/messages/{key}/reprocess", follow_redirects=True).get_data(as_text=True)
    assert "Message re-processed, still not accepted (AE): 102 at OBR-24" in page
    assert "AE &rarr; AE" in page
    assert outcome_of(session_factory, key)[0] == "AE"
    assert audit_count(session_factory) == 1


def test_accepted_message_is_not_reprocessed(web, settings, session_factory) -> None:
    key = received(settings, session_factory, ORDER)
    client = log_in(web, "editor")
    assert "Re-process this message</button>" not in client.get(f"/messages/{key}").get_data(
        as_text=True
    )
    response = client.post(f"/messages/{key}/reprocess", follow_redirects=True)
    assert response.status_code == 200
    assert "Not re-processed: the message was accepted (AA)" in response.get_data(as_text=True)
    assert outcome_of(session_factory, key)[0] == "AA"
    assert audit_count(session_factory) == 0


def test_reprocess_needs_the_csrf_token(
    fixed_settings, reader_factory, session_factory, settings
) -> None:
    key = received(settings, session_factory, BAD_ORDER)
    app = make_app(fixed_settings, reader_factory, session_factory, csrf=True)
    client = log_in(app, "editor")
    refused = client.post(f"/messages/{key}/reprocess")
    assert refused.status_code == 400
    assert "security token" in refused.get_data(as_text=True)
    assert outcome_of(session_factory, key)[0] == "AE"
    assert audit_count(session_factory) == 0
    page = client.get(f"/messages/{key}").get_data(as_text=True)
    accepted = client.post(f"/messages/{key}/reprocess", data={"csrf_token": token(page)})
    assert accepted.status_code == 303
    assert outcome_of(session_factory, key)[0] == "AA"


# --------------------------------------------------------------------------- browser


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_message_page_in_a_browser(web, settings, session_factory) -> None:
    """Hover names, keyboard field lists, no CSP violation, re-process by button."""
    from playwright.sync_api import expect

    from tests.browser import chromium, screenshot, serving
    from tests.browser import log_in as browser_log_in

    key = received(settings, session_factory, BAD_ORDER)
    log_in(web, "editor")  # creates the account
    with serving(web) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        # A CSP violation shows as a console error; the browser's own favicon
        # request (there is none) as a 404 and is no problem of this page.
        page.on(
            "console",
            lambda m: (
                problems.append(m.text)
                if m.type == "error" and "Failed to load resource" not in m.text
                else None
            ),
        )
        page.on(
            "response",
            lambda r: (
                problems.append(r.url)
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        browser_log_in(page, base, "editor", PASSWORD)
        page.goto(f"{base}/messages?outcome=AE")
        page.get_by_role("link", name=re.compile(r"\w{3} \d+, \d{4}")).first.click()
        name = page.locator("#message-segments .hl7-field[title='PID-5 Patient Name']")
        expect(name).to_have_text("Sample^Anna^Maria^^Dr.")
        # Without a mouse: tab to the PID field list and open it with the keyboard.
        summary = page.locator("#message-segments summary", has_text="Fields of PID")
        summary.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("cell", name="Patient Name", exact=True).first).to_be_visible()
        screenshot(page, "hl7-message")
        page.get_by_role("button", name="Re-process this message").click()
        expect(page.get_by_role("status")).to_contain_text("re-processed and accepted")
        expect(page.locator("dd .status")).to_have_text("AA")
        assert problems == []
    assert outcome_of(session_factory, key)[0] == "AA"
