"""The day list's priority, paging, sorting links, changes endpoint, CSV export, print, bulk."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import html
import io
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.store.models import AuditEvent, AuditQueueMessage, RequestedProcedure
from web import create_app
from web.daylist import safe_cell

DAY = dt.date(2026, 11, 21)
TODAY = dt.date(2026, 11, 24)


@pytest.fixture(autouse=True)
def today(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    monkeypatch.setattr("web.worklist.local_today", lambda: TODAY)
    monkeypatch.setattr("web.daylist.local_today", lambda: TODAY)
    return TODAY


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(hour, minute))


def set_priority(session_factory: sessionmaker[Session], accession: str, priority: str) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(RequestedProcedure)
            .where(RequestedProcedure.accession_number == accession)
            .values(requested_procedure_priority=priority)
        )


def accessions(page: str) -> list[str]:
    return re.findall(r'<td class="accession">([^<]*)</td>', page)


@pytest.fixture
def three(add_order, session_factory) -> None:
    add_order("ACC-1", at(8), patient_id="P1", patient_name="Zeta^Zoe")
    add_order("ACC-2", at(9), patient_id="P2", patient_name="Alpha^Al", station="CT02")
    add_order("ACC-3", at(10), patient_id="P3", patient_name="Eve^Eden",
        description="=SUM(1+1)", modality="MR",
              station="MR01")  # fmt: skip
    set_priority(session_factory, "ACC-3", "STAT")
    set_priority(session_factory, "ACC-2", "HIGH")


@pytest.fixture
def editor(app: Flask, session_factory, password) -> FlaskClient:
    with session_factory.begin() as session:
        add_user(session, "erin", password, "editor")
    client = app.test_client()
    assert client.post("/login", data={"username": "erin", "password": password}).status_code == 302
    return client


def test_priority_is_a_word_and_sorts_stat_first(logged_in, three):
    page = logged_in.get("/?date=2026-11-21").text
    assert '<span class="priority priority-stat">STAT</span>' in page
    assert '<span class="priority priority-high">Urgent</span>' in page
    assert page.count('class="status-scheduled urgent"') == 2
    by_priority = logged_in.get("/?date=2026-11-21&sort=priority").text
    assert accessions(by_priority) == ["ACC-3", "ACC-2", "ACC-1"]
    assert 'aria-sort="ascending"' in by_priority
    urgent = logged_in.get("/?priority=urgent&date=2026-11-21").text
    assert accessions(urgent) == ["ACC-2", "ACC-3"]
    assert "2 of 3 scheduled procedure steps" in urgent


def test_sort_and_page_links_keep_the_filters(logged_in, three):
    page = logged_in.get("/?station=ct01&date=2026-11-21&sort=patient&size=1").text
    assert accessions(page) == ["ACC-1"]  # station ignores case; CT01 only
    page = logged_in.get("/?date=2026-11-21&sort=patient&size=1").text
    assert accessions(page) == ["ACC-2"]  # Alpha, Eve, Zeta
    assert "1–1 of 3 scheduled procedure steps" in page
    assert "Page 1 of 3" in page
    nxt = re.search(r'<a rel="next" href="([^"]+)">Next page</a>', page)
    assert nxt and html.unescape(nxt.group(1)) == "/?date=2026-11-21&sort=patient&size=1&page=2"
    second = logged_in.get(html.unescape(nxt.group(1))).text
    assert accessions(second) == ["ACC-3"]
    # A column header sorts by it (page 1, filters kept); the current one reverses.
    assert 'href="/?date=2026-11-21&amp;sort=patient&amp;dir=desc&amp;size=1"' in second
    assert 'href="/?date=2026-11-21&amp;sort=priority&amp;size=1"' in second
    # Past the last page: the last page.
    beyond = logged_in.get("/?date=2026-11-21&size=1&page=9")
    assert beyond.status_code == 302 and beyond.headers["Location"].endswith("page=3")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("size=0", "The page size must be a whole number from 1 to 500."),
        ("size=501", "The page size must be a whole number from 1 to 500."),
        ("page=abc", "The page number must be a whole number from 1 to 100000."),
        ("sort=evil", "Unknown sort “evil”."),
        ("dir=up", "The sort direction must be “asc” or “desc”."),
        ("date=2026-11-21&to=2026-11-20", "must not lie before the first"),
        ("date=2026-01-01&to=2026-12-31", "A range spans at most 92 days."),
        ("priority=soon", "Unknown priority filter “soon”."),
    ],
)
def test_bad_paging_sorting_and_ranges_are_400(logged_in, query, message):
    response = logged_in.get(f"/?{query}")
    assert response.status_code == 400
    assert message in response.text


def test_a_date_range_shows_each_day_with_its_date(logged_in, add_order):
    add_order("ACC-A", at(8))
    add_order("ACC-B", dt.datetime.combine(DAY + dt.timedelta(days=2), dt.time(7)), patient_id="Q")
    page = logged_in.get("/?date=2026-11-21&to=2026-11-23").text
    assert accessions(page) == ["ACC-A", "ACC-B"]
    assert '<input type="date" id="to" name="to" value="2026-11-23">' in page
    assert 'href="/?date=2026-11-24&amp;to=2026-11-26"' in page  # the next three days
    # A range of one day is that day.
    response = logged_in.get("/?date=2026-11-21&to=2026-11-21")
    assert response.headers["Location"] == "/?date=2026-11-21"


def test_changes_answers_a_small_json_version(logged_in, add_order):
    add_order("ACC-A", at(8))
    page = logged_in.get("/?date=2026-11-21").text
    version = re.search(r'data-version="([0-9a-f]+)"', page).group(1)
    answer = logged_in.get(f"/worklist/changes?date=2026-11-21&since={version}")
    assert answer.status_code == 200 and answer.is_json
    assert answer.json == {"version": version, "changed": False}
    add_order("ACC-B", at(9), patient_id="P2")
    answer = logged_in.get(f"/worklist/changes?date=2026-11-21&since={version}").json
    assert answer["changed"] is True and answer["version"] != version
    assert len(answer.__repr__()) < 100


def test_rows_link_to_why_missing_and_test_as_this_scanner(logged_in, add_order):
    add_order("ACC-A", at(8), station="CT01")
    page = logged_in.get("/?date=2026-11-21").text
    key = re.search(r'data-key="(\d+)"', page).group(1)
    assert f'<a href="/scanners/test?step={key}&amp;ae=CT01">Why not?<span' in page
    assert "(Doe, Jane on the list of CT01)</span></a>" in page
    assert (
        '<a href="/scanners/test?ae=CT01">Test<span class="visually-hidden"> as scanner CT01'
        in page
    )


def test_csv_export_holds_the_filtered_sorted_list_escaped_and_audited(
    logged_in, three, session_factory
):
    response = logged_in.get("/worklist/export.csv?date=2026-11-21&sort=priority&modality=mr")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert 'filename="worklist-2026-11-21.csv"' in response.headers["Content-Disposition"]
    text = response.data.decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert rows[0][:4] == ["Start", "Priority", "Patient name", "Patient ID"]
    assert len(rows) == 2
    assert rows[1][:4] == ["2026-11-21 10:00", "STAT", "Eve, Eden", "P3"]
    assert rows[1][7] == "'=SUM(1+1)"  # no formula in a spreadsheet
    everything = list(csv.reader(io.StringIO(logged_in.get(
        "/worklist/export.csv?date=2026-11-21&sort=priority").data.decode()[1:])))  # fmt: skip
    assert [row[8] for row in everything[1:]] == ["ACC-3", "ACC-2", "ACC-1"]
    with session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
    assert [e.username for e in events] == ["alice", "alice"]
    assert events[0].subject == "/worklist/export.csv?date=2026-11-21&sort=priority&modality=mr"
    assert '"exported_steps": [null, 1]' in events[0].changes


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+41 44", "'+41 44"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("Doe, Jane", "Doe, Jane"),
        ("", ""),
    ],
)
def test_cells_that_start_a_formula_are_escaped(value, cell):
    assert safe_cell(value) == cell


def test_an_export_is_an_atna_export_event_when_audit_is_on(
    settings: Settings, reader_factory, session_factory, three, password
):
    audited = dataclasses.replace(
        settings, audit_syslog_host="127.0.0.1", audit_syslog_transport="udp"
    )
    app = create_app(
        audited,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        auditor=Auditor(audited),
    )
    with session_factory.begin() as session:
        add_user(session, "alice", password, "viewer")
    client = app.test_client()
    client.post("/login", data={"username": "alice", "password": password})
    assert client.get("/worklist/export.csv?date=2026-11-21").status_code == 200
    with session_factory() as session:
        queued = [e.message for e in session.scalars(select(AuditQueueMessage)).all()]
    exports = [m for m in queued if 'csd-code="110106"' in m]
    assert len(exports) == 1
    assert 'UserID="alice"' in exports[0] and 'ParticipantObjectID="P3"' in exports[0]
    assert 'csd-code="110154"' in exports[0]  # destination media


def test_print_view_lists_a_rooms_steps_without_navigation(logged_in, three):
    page = logged_in.get("/worklist/print?station=CT01&date=2026-11-21").text
    assert "Downtime list CT01" in page
    assert "ACC-1" in page and "ACC-2" not in page
    assert '<nav aria-label="Main">' not in page and 'role="search"' not in page
    assert "@media print" not in page  # the rules are in the stylesheet


def test_viewers_get_no_bulk_form(logged_in, three):
    page = logged_in.get("/?date=2026-11-21").text
    assert 'name="step"' not in page and 'id="bulk"' not in page
    assert (
        logged_in.post("/worklist/bulk", data={"action": "cancel", "step": "1"}).status_code == 403
    )


def _keys(page: str) -> dict[str, str]:
    rows = re.findall(r'data-key="(\d+)".*?<td class="accession">([^<]*)</td>', page, flags=re.S)
    return {accession: key for key, accession in rows}


def test_bulk_cancel_asks_first_then_cancels_each_audited(editor, three, session_factory):
    page = editor.get("/?date=2026-11-21").text
    assert '<form id="bulk" method="post" action="/worklist/bulk">' in page
    keys = _keys(page)
    back = "/?date=2026-11-21"
    confirm = editor.post(
        "/worklist/bulk",
        data={"action": "cancel", "step": [keys["ACC-1"], keys["ACC-3"]], "next": back},
    )
    assert confirm.status_code == 200
    assert "Confirm: Cancel for 2 steps" in confirm.text
    assert "Zeta, Zoe" in confirm.text and "Alpha, Al" not in confirm.text
    # Nothing changed yet.
    assert editor.get("/?date=2026-11-21").text.count("status-canceled") == 0
    done = editor.post(
        "/worklist/bulk/apply",
        data={
            "action": "cancel",
            "step": [keys["ACC-1"], keys["ACC-3"]],
            "next": back,
            "reason": "room closed",
        },  # fmt: skip
    )
    assert done.status_code == 302 and done.headers["Location"] == back
    after = editor.get(back).text
    assert "Cancel: 2 steps changed." in after
    assert after.count('class="status-canceled') == 2
    with session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "cancel")).all()
    assert sorted(e.sps_key for e in events) == sorted([int(keys["ACC-1"]), int(keys["ACC-3"])])
    assert {e.reason for e in events} == {"room closed"}
    # Again: each refuses on its own, and says why.
    again = editor.post(
        "/worklist/bulk/apply",
        data={"action": "cancel", "step": [keys["ACC-1"], keys["ACC-2"]], "next": back},
    )
    page = editor.get(again.headers["Location"]).text
    assert "Cancel: 1 step changed." in page
    assert f"Step {keys['ACC-1']}: The step is canceled already." in page


def test_bulk_status_change_and_bad_requests(editor, three, session_factory):
    keys = _keys(editor.get("/?date=2026-11-21").text)
    done = editor.post(
        "/worklist/bulk/apply",
        data={
            "action": "arrived",
            "step": [keys["ACC-2"]],
            "next": "/",
            "reason": "at the reception",
        },
    )
    assert done.status_code == 302
    page = editor.get("/?date=2026-11-21").text
    assert "Set status: Arrived: 1 step changed." in page
    assert 'class="status-arrived urgent"' in page
    with session_factory() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "status")).all()
    assert '"ARRIVED"' in event.changes
    # The item page's rule holds here too: a status set by hand needs a reason.
    editor.post(
        "/worklist/bulk/apply", data={"action": "ready", "step": [keys["ACC-2"]], "next": "/"}
    )
    assert "Say why the status is changed by hand." in editor.get("/?date=2026-11-21").text
    assert (
        editor.post("/worklist/bulk", data={"action": "completed", "step": "1"}).status_code == 400
    )
    assert editor.post("/worklist/bulk", data={"action": "cancel", "step": "x"}).status_code == 400
    nothing = editor.post("/worklist/bulk", data={"action": "cancel", "next": "//evil"})
    assert nothing.status_code == 302 and nothing.headers["Location"] == "/"


def test_bulk_needs_the_csrf_token(csrf_app: Flask, session_factory, password, three):
    with session_factory.begin() as session:
        add_user(session, "erin", password, "editor")
    client = csrf_app.test_client()
    login = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
    client.post("/login", data={"username": "erin", "password": password, "csrf_token": token})
    refused = client.post("/worklist/bulk/apply", data={"action": "cancel", "step": "1"})
    assert refused.status_code == 400
