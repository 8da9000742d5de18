"""/scanners: the calling AEs, one AE's query history, and "test as this scanner"."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydicom.datadict import tag_for_keyword
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user
from mwl.config import Settings
from mwl.dicom.preview import WorklistPreviewer
from mwl.dicom.stored_identifier import identifier_with_keys
from mwl.domain import Order, PatientDemographics, RequestedProcedure, ScheduledStep
from mwl.operations.querylog import (
    KEYWORDS_BY_TAG,
    AskedKey,
    ae_history,
    asked_keys,
    latest_query,
    typical_key_sets,
    typical_keys_by_ae,
)
from mwl.orders.apply import apply_order
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import AuditEvent, QueryLogEntry
from tests.databases import migrated_database_url
from web import create_app

PASSWORD = "correct horse battery staple"
TODAY = dt.date.today()


def at(hour: int, minute: int = 0, day: dt.date = TODAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def identifier_json(**keys: str) -> str:
    """DICOM JSON of an Identifier with the usual return keys and these matching keys."""
    return identifier_with_keys(None, keys).to_json()


def utc_of(local: dt.datetime) -> dt.datetime:
    """A local time as the naive UTC the query log stores."""
    return local.astimezone(dt.UTC).replace(tzinfo=None)


def today_text() -> str:
    return TODAY.strftime("%Y%m%d")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database per backend for this module: its tests only read it."""
    directory = tmp_path_factory.mktemp("scanners")
    yield from migrated_database_url(request.param, directory, f"mwl_scanners_{os.getpid()}")


@pytest.fixture(scope="module")
def module_engine(module_url: str) -> Iterator[Engine]:
    engine = make_engine(module_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def writer(module_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(module_engine, writer=True)


@pytest.fixture(scope="module")
def readers(module_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(module_engine)


@pytest.fixture(scope="module")
def module_settings(module_url: str) -> Settings:
    return Settings(database_url=module_url, web_secret_key="test-secret-key")


def make_app(
    settings: Settings, readers: sessionmaker[Session], *, csrf: bool, dicom: bool
) -> Flask:
    return create_app(
        settings,
        readers,
        config={"TESTING": True, "WTF_CSRF_ENABLED": csrf},
        query_previewer=WorklistPreviewer(settings, readers) if dicom else None,
    )


def order(
    accession: str,
    start: dt.datetime,
    patient_id: str,
    name: str,
    *,
    modality: str = "CT",
    station: str = "CT01",
    control: str = "NW",
    status: str = "SC",
) -> Order:
    step = ScheduledStep(
        f"S-{accession}", modality=modality, scheduled_station_ae_title=station, start=start
    )
    procedure = RequestedProcedure(
        "", accession, accession, placer_order_number=f"PL-{accession}", steps=(step,)
    )
    return Order(
        control,
        status,
        PatientDemographics(patient_id, "HOSP", name),
        (procedure,),
        sending_facility="HOSP",
    )


def log_query(
    factory: sessionmaker[Session],
    ae: str,
    received: dt.datetime,
    identifier: str,
    *,
    matches: int = 0,
    status: int = 0,
    error: str = "",
    peer: str = "10.0.0.5:40000",
) -> int:
    with factory.begin() as session:
        entry = QueryLogEntry(
            received_at=utc_of(received),
            calling_ae_title=ae,
            called_ae_title="MWL",
            peer_address=peer,
            identifier_json=identifier,
            matches=matches,
            duration_ms=3.25,
            status=status,
            error=error,
        )
        session.add(entry)
        session.flush()
        return entry.id


@pytest.fixture(scope="module")
def queries(writer: sessionmaker[Session]) -> dict[str, int]:
    """Today's worklist, and the query log of CT01, MR01 and BUSY; returns CT01's row keys.

    Worklist today: CT on CT01 at 09:00 and 11:00, CT on CT02 at 10:00, MR on MR01 at
    12:00, a canceled CT on CT01 at 13:00. CT01 asked for its station "today"
    yesterday and today, once for a patient ID, and was refused once; MR01 sent a
    bad date; BUSY queried 55 times.
    """
    orders = [
        order("ACC-CT01-A", at(9), "PA", "Alpha^Anna"),
        order("ACC-CT02", at(10), "PB", "Beta^Bert", station="CT02"),
        order("ACC-CT01-B", at(11), "PC", "Gamma^Carl"),
        order("ACC-MR", at(12), "PD", "Delta^Dora", modality="MR", station="MR01"),
        order("ACC-GONE", at(13), "PE", "Omega^Olga"),
        order("ACC-GONE", at(13), "PE", "Omega^Olga", control="CA", status="CA"),
    ]
    for one in orders:
        with writer.begin() as session:
            apply_order(session, one)
    yesterday = TODAY - dt.timedelta(days=1)
    station_today = {"ScheduledStationAETitle": "CT01", "Modality": "CT"}
    keys = {
        "old": log_query(
            writer,
            "CT01",
            at(8, day=yesterday),
            identifier_json(
                **station_today, ScheduledProcedureStepStartDate=yesterday.strftime("%Y%m%d")
            ),
            matches=2,
        ),
        "by_patient": log_query(writer, "CT01", at(7), identifier_json(PatientID="PB"), matches=1),
        "latest": log_query(
            writer,
            "CT01",
            at(8),
            identifier_json(**station_today, ScheduledProcedureStepStartDate=today_text()),
            matches=2,
            peer="10.0.0.6:40001",
        ),
        "refused": log_query(
            writer, "CT01", at(8, 5), "", status=0x0124, error="calling AE not allowed"
        ),
    }
    log_query(
        writer,
        "MR01",
        at(8, 30),
        identifier_json(ScheduledProcedureStepStartDate="2026-13-45"),
        status=0xA900,
        error="ScheduledProcedureStepStartDate: '2026-13-45' is not a date",
    )
    for minute in range(55):
        log_query(writer, "BUSY", at(6, minute), identifier_json(Modality="CT"))
    return keys


@pytest.fixture(scope="module")
def accounts(writer: sessionmaker[Session], queries: dict[str, int]) -> None:
    with writer.begin() as session:
        for role in ("viewer", "editor", "admin"):
            add_user(session, f"user-{role}", PASSWORD, role)


def logged_in(app: Flask, role: str) -> FlaskClient:
    """A test client of ``app`` logged in through the form (with its CSRF token)."""
    client = app.test_client()
    form = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    data = {"username": f"user-{role}", "password": PASSWORD}
    if token:
        data["csrf_token"] = token.group(1)
    assert client.post("/login", data=data).status_code == 302
    return client


@pytest.fixture(scope="module")
def app(module_settings: Settings, readers: sessionmaker[Session], accounts: None) -> Flask:
    """The app with the real preview service, as ``mwl serve`` wires it (CSRF off)."""
    return make_app(module_settings, readers, csrf=False, dicom=True)


@pytest.fixture(scope="module")
def viewer(app: Flask) -> FlaskClient:
    return logged_in(app, "viewer")


# --- the query log as the pages read it (mwl.operations.querylog) ---


def test_keyword_table_agrees_with_the_dicom_dictionary():
    for tag, keyword in KEYWORDS_BY_TAG.items():
        assert f"{tag_for_keyword(keyword):08X}" == tag


def test_asked_keys_reads_values_at_both_levels():
    text = identifier_json(
        PatientName="Doe*",
        PatientID="",
        Modality="CT\\MR",
        ScheduledStationAETitle="*",
        ScheduledProcedureStepStartDate="20261121",
    )
    data = json.loads(text)
    data["00091001"] = {"vr": "LO", "Value": ["private"]}
    keys = asked_keys(json.dumps(data), received_at=None)
    assert keys == (
        AskedKey("PatientName", "Doe*"),
        AskedKey("ScheduledProcedureStepStartDate", "20261121"),
        AskedKey("Modality", "CT\\MR"),
        AskedKey("(0009,1001)", "private"),
    )
    received = utc_of(dt.datetime(2026, 11, 21, 23, 30))
    assert asked_keys(text, received)[1] == AskedKey(
        "ScheduledProcedureStepStartDate", "20261121", True
    )
    for garbage in ("", "not json", "[]", '{"00100010": 5}'):
        assert asked_keys(garbage) == ()


def test_history_paging_latest_and_typical_keys(readers, queries):
    with readers() as session:
        page = ae_history(session, "CT01", limit=2)
        assert [q.key for q in page] == [queries["refused"], queries["latest"]]
        older = ae_history(session, "CT01", limit=2, before_key=page[-1].key)
        assert [q.key for q in older] == [queries["by_patient"], queries["old"]]
        assert ae_history(session, "CT01", before_key=older[-1].key) == []
        newest = latest_query(session, "CT01")
        usable = latest_query(session, "CT01", with_identifier=True)
        assert newest is not None and newest.key == queries["refused"]
        assert usable is not None and usable.key == queries["latest"]
        assert usable.peer_host == "10.0.0.6"
        assert latest_query(session, "NOBODY") is None
        sets = typical_key_sets(session, "CT01")
        by_ae = typical_keys_by_ae(session)
    # Yesterday's "today" and today's "today" are one habit; the refused query
    # (no identifier stored) is not counted.
    assert [(s.count, s.out_of) for s in sets] == [(2, 3), (1, 3)]
    assert sets[0].keys == (
        AskedKey("ScheduledStationAETitle", "CT01"),
        AskedKey("ScheduledProcedureStepStartDate", "", True),
        AskedKey("Modality", "CT"),
    )
    assert sets[1].keys == (AskedKey("PatientID", "PB"),)
    assert by_ae["CT01"] == sets[0]
    assert (by_ae["BUSY"].count, by_ae["BUSY"].out_of) == (50, 50)
    assert set(by_ae) == {"CT01", "MR01", "BUSY"}


# --- who may see what ---

PAGES = ["/scanners", "/scanners/history?ae=CT01", "/scanners/test?ae=CT01&modality=CT"]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_visitors_go_to_login(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert b"ACC-" not in response.data


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_every_role_may_view_and_test(app, role):
    client = logged_in(app, role)
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
    assert "ACC-CT01-A" in client.get(PAGES[2]).get_data(as_text=True)


def test_nothing_but_get(viewer):
    for path in PAGES:
        assert viewer.post(path).status_code == 405


def test_test_page_needs_no_csrf_token_and_changes_nothing(module_settings, readers):
    """A GET form: with CSRF protection on it runs without a token, and stores nothing."""
    client = logged_in(make_app(module_settings, readers, csrf=True, dicom=True), "viewer")

    def counts() -> tuple[int, int]:
        with readers() as session:
            return (
                session.scalar(select(func.count()).select_from(QueryLogEntry)) or 0,
                session.scalar(select(func.count()).select_from(AuditEvent)) or 0,
            )

    before = counts()
    response = client.get("/scanners/test?ae=CT01&station=CT01&why=ACC-CT02")
    assert response.status_code == 200
    assert "ACC-CT01-A" in response.get_data(as_text=True)
    assert client.post("/scanners/test", data={"ae": "CT01"}).status_code == 405
    assert counts() == before


# --- the list ---


def test_list_shows_typical_keys_failures_and_links(viewer):
    page = viewer.get("/scanners").get_data(as_text=True)
    for ae in ("CT01", "MR01", "BUSY"):
        assert f'<th scope="row">{ae}</th>' in page
        assert f'href="/scanners/history?ae={ae}"' in page
    assert "3 calling AE titles seen" in page
    ct01 = page[page.index('<th scope="row">CT01</th>') :]
    ct01 = ct01[: ct01.index("</tr>")]
    assert "Scheduled station AE title = CT01, SPS start date = today, Modality = CT" in ct01
    assert "2 of the last 3 queries" in ct01
    cells = re.findall(r'<td class="num[^"]*">(\d+)</td>', ct01)
    assert cells == ["3", "3", "1", "4"]  # queries, matches, failed today; in total


# --- one AE's page ---


def test_history_lists_queries_in_words_and_prefills_the_test(viewer, queries):
    response = viewer.get("/scanners/history?ae=CT01")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    rows = re.findall(r'<tr>\s*<th scope="row" class="nowrap">.*?</tr>', page, re.S)
    assert len(rows) == 4
    assert "Refused 0x0124" in rows[0] and "Send again as a test" not in rows[0]
    assert f"SPS start date = {TODAY.isoformat()}" in rows[1]
    assert "Success" in rows[1] and "10.0.0.6:40001" in rows[1]
    assert f"query={queries['latest']}" in html.unescape(rows[1])
    assert "Patient ID = PB" in rows[2]
    assert f"SPS start date = {(TODAY - dt.timedelta(days=1)).isoformat()}" in rows[3]
    # The form holds the latest query's keys, its "today" as today's date.
    assert re.search(r'<input[^>]*id="ae"[^>]*value="CT01"', page)
    assert re.search(r'<input[^>]*id="station"[^>]*value="CT01"', page)
    assert re.search(r'<input[^>]*id="modality"[^>]*value="CT"', page)
    for name in ("date_from", "date_to"):
        assert re.search(rf'<input[^>]*id="{name}"[^>]*value="{TODAY.isoformat()}"', page)
    assert f'name="query" value="{queries["latest"]}"' in page
    assert re.search(r'<input[^>]*id="host"[^>]*value="10.0.0.6"', page)
    assert "What it usually asks" in page


def test_history_shows_failures_and_pages(viewer):
    page = viewer.get("/scanners/history?ae=MR01").get_data(as_text=True)
    assert "Failure 0xA900" in page and "is not a date" in html.unescape(page)
    first = viewer.get("/scanners/history?ae=BUSY").get_data(as_text=True)
    assert first.count("Send again as a test") == 50
    older = re.search(r'href="(/scanners/history\?ae=BUSY&amp;before=\d+)"', first)
    assert older is not None
    second = viewer.get(html.unescape(older.group(1))).get_data(as_text=True)
    assert second.count("Send again as a test") == 5
    assert 'rel="next"' not in second


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("ae=NOBODY", 404, "No query from the calling AE title NOBODY is logged."),
        ("ae=" + "X" * 17, 400, "Give a calling AE title of 1 to 16 printable characters."),
        ("", 400, "Give a calling AE title"),
    ],
)
def test_history_of_unknown_or_bad_ae(viewer, query, status, message):
    response = viewer.get(f"/scanners/history?{query}")
    assert response.status_code == status
    assert message in response.get_data(as_text=True)


# --- test as this scanner ---


def test_edited_keys_show_what_the_ae_gets(viewer):
    day = TODAY.isoformat()
    response = viewer.get(
        f"/scanners/test?ae=CT01&station=CT01&modality=CT&date_from={day}&date_to={day}"
    )
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<strong>Success</strong>" in page and "2 items." in page
    answer = page[page.index("Items in the answer") : page.index("Why is an item missing?")]
    assert answer.index("ACC-CT01-A") < answer.index("ACC-CT01-B")
    assert "ACC-CT02" not in answer and "ACC-MR" not in answer and "ACC-GONE" not in answer
    assert "AccessionNumber</th>" in answer  # the response as sent, key by key
    words = page[page.index("The query in words") : page.index("Items in the answer")]
    assert "Scheduled station AE title" in words and "any status except" in words
    assert f"{day} 00:00 to {day} 23:59" in words
    # The other steps of the day are offered for "why not?".
    assert "Why not: 10:00 AM Beta, Bert, ACC-CT02" in page
    assert "Why not: 12:00 PM Delta, Dora, ACC-MR" in page
    assert "Why not: 1:00 PM Omega, Olga, ACC-GONE" in page
    assert "Why not: 09:00" not in page


def test_why_names_the_station_key(viewer):
    page = viewer.get("/scanners/test?ae=CT01&station=CT01&modality=CT&why=ACC-CT02")
    why = page.get_data(as_text=True)
    why = why[why.index("Why is an item missing?") :]
    assert "CT01 does not get this item:" in why
    reasons = re.findall(r"<li>(.*?)</li>", why[: why.index("</ul>")], re.S)
    assert reasons == ["Scheduled station AE title: asked CT01, the item has CT02."]
    table = why[why.index('class="verdicts"') :]
    # The failing condition comes first, marked; the others passed.
    assert table.index("verdict-fail") < table.index("verdict-pass")
    assert table.count('class="verdict-fail"') == 1


def test_why_by_patient_id_and_by_step_link(viewer):
    page = viewer.get("/scanners/test?ae=CT01&station=CT01&why=PA").get_data(as_text=True)
    assert "CT01 gets this item: it meets every condition." in page
    link = re.search(r'href="([^"]*step=\d+[^"]*)"[^>]*>Why not: 12:00 PM Delta', page)
    assert link is not None
    explained = viewer.get(html.unescape(link.group(1))).get_data(as_text=True)
    assert "Scheduled station AE title: asked CT01, the item has MR01." in explained
    unknown = viewer.get("/scanners/test?ae=CT01&why=NO-SUCH-ACC").get_data(as_text=True)
    assert "No stored step has this accession number or patient ID." in unknown


def test_hidden_status_and_wildcard_name_are_explained(viewer):
    page = viewer.get("/scanners/test?ae=CT01&patient_name=Alpha*&why=ACC-GONE")
    why = html.unescape(page.get_data(as_text=True))
    why = why[why.index("Why is an item missing?") :]
    reasons = re.findall(r"<li>(.*?)</li>", why[: why.index("</ul>")], re.S)
    assert reasons == [
        "Patient's name: asked matches Alpha*, the item has Omega^Olga.",
        "SPS status: steps that are CANCELED are not shown unless the query asks for that status.",
    ]


def test_as_sent_uses_the_stored_identifier(viewer, queries):
    stored = viewer.get(
        f"/scanners/test?ae=CT01&query={queries['by_patient']}&as_sent=y&station=CT01"
    ).get_data(as_text=True)
    # The stored query asked for patient PB only; the edited station is not sent.
    assert "1 item." in stored and "ACC-CT02" in stored
    edited = viewer.get(
        f"/scanners/test?ae=CT01&query={queries['by_patient']}&station=CT01"
    ).get_data(as_text=True)
    assert "2 items." in edited and "ACC-CT01-A" in edited


def test_an_ae_that_never_queried_can_be_tested(viewer):
    blank = viewer.get("/scanners/test")
    assert blank.status_code == 200 and 'name="ae"' in blank.get_data(as_text=True)
    page = viewer.get("/scanners/test?ae=NEWCT&modality=MR").get_data(as_text=True)
    assert "1 item." in page and "ACC-MR" in page


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("ae=" + "A" * 17, "ae", "An AE title has at most 16 characters."),
        ("ae=CT%5C01", "ae", "An AE title holds printable ASCII characters only, no backslash."),
        ("modality=CT", "ae", "Give the calling AE title of the scanner."),
        ("ae=CT01&date_from=2026-13-45", "date_from", "Not a valid date value."),
        (
            "ae=CT01&date_from=2026-11-22&date_to=2026-11-21",
            "date_to",
            "The end date is before the start date.",
        ),
        ("ae=CT01&patient_name=Doe%01", "patient_name", "Only printable characters are allowed."),
        ("ae=CT01&host=10.0.0.5%3Bx", "host", "Give an IP address, e.g. 10.0.0.5."),
        ("ae=CT01&query=999999", "query", "There is no stored query with this number."),
        ("ae=NEWCT&as_sent=y", "as_sent", "No query of this AE title is stored"),
    ],
)
def test_bad_input_is_explained_in_the_form(viewer, query, field, message):
    response = viewer.get(f"/scanners/test?{query}")
    assert response.status_code == 400
    page = html.unescape(response.get_data(as_text=True))
    assert message in page
    assert "would get" not in page and "Items in the answer" not in page  # nothing was run
    if field != "query":
        assert f'id="{field}-error"' in page
        assert re.search(rf'aria-describedby="[^"]*{field}-error"', page)


def test_a_key_the_modality_could_not_send_gives_its_dicom_failure(viewer):
    response = viewer.get("/scanners/test?ae=CT01&station=CT01%5CCT02")
    assert response.status_code == 200
    page = html.unescape(response.get_data(as_text=True))
    assert "Failure 0xA900" in page
    assert (
        "Error comment sent to the modality: ScheduledStationAETitle takes a single value" in page
    )
    assert "Offending key: Scheduled station AE title" in page
    assert "Items in the answer" not in page


def test_without_the_dicom_service_the_page_says_so(module_settings, readers):
    client = logged_in(make_app(module_settings, readers, csrf=False, dicom=False), "viewer")
    response = client.get("/scanners/test?ae=CT01&station=CT01")
    assert response.status_code == 503
    assert "The DICOM service is not available" in response.get_data(as_text=True)
    history = client.get("/scanners/history?ae=CT01").get_data(as_text=True)
    assert "The DICOM service is not available" in history


def test_test_page_shows_what_the_device_would_truncate(module_settings, readers, accounts):
    """A profile that declares device limits: each item of the answer gets the verdict."""
    from mwl.config import DicomAeProfile

    settings = module_settings.replace(
        dicom_ae_profiles=(DicomAeProfile("CT01", max_length=(("AccessionNumber", 9),)),)
    )
    client = logged_in(make_app(settings, readers, csrf=False, dicom=True), "viewer")
    page = client.get("/scanners/test?ae=CT01&station=CT01").get_data(as_text=True)
    assert 'id="device-check"' in page
    assert "would drop or truncate" in page
    assert "is longer than 9 characters: truncated" in page  # ACC-CT01-A: 10 characters
    # Without limits the page says nothing of devices.
    plain = logged_in(make_app(module_settings, readers, csrf=False, dicom=True), "viewer")
    page = plain.get("/scanners/test?ae=CT01&station=CT01").get_data(as_text=True)
    assert 'id="device-check"' not in page and "device-findings" not in page


def test_item_page_macro_names_what_the_station_would_truncate(module_settings, readers, accounts):
    """templates/_device_checks.html, for the item page: the note on the station's device."""
    from flask import render_template_string

    from mwl.config import DicomAeProfile
    from mwl.worklist.daylist import items_for_day

    settings = module_settings.replace(
        dicom_ae_profiles=(DicomAeProfile("CT01", max_length=(("AccessionNumber", 9),)),)
    )
    app = make_app(settings, readers, csrf=False, dicom=True)
    with readers() as session:
        items = [i for i in items_for_day(session, TODAY) if i.scheduled_station_ae_title == "CT01"]
    assert items
    template = (
        '{% from "_device_checks.html" import device_note with context %}{{ device_note(item) }}'
    )
    with app.test_request_context("/"):
        html = render_template_string(template, item=items[0])
    assert 'id="device-findings"' in html and "characters: truncated" in html
