"""The day list page: items of the chosen day, readable, escaped, accessible, with navigation."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest
from flask import Flask, url_for

from mwl.admin.users import add_user
from mwl.domain import Code
from mwl.worklist.daylist import items_for_day
from web.store import db_session

DAY = dt.date(2026, 11, 21)
# "Today" for the page, fixed so that no test depends on the day it runs.
TODAY = dt.date(2026, 11, 24)


@pytest.fixture(autouse=True)
def today(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    monkeypatch.setattr("web.worklist.local_today", lambda: TODAY)
    return TODAY


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return body.split("<tr")[1:]


def cells(row: str) -> list[str]:
    """The text of each cell of a table row, white space collapsed, tags removed."""
    found = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", html.unescape(c)).split()) for c in found]


def test_lists_the_days_items_and_not_other_days(logged_in, add_order):
    add_order(
        "ACC100",
        at(14, 5),
        patient_id="PID-7",
        patient_name="Müller^Hans^Peter^Dr.",
        birth_date="19700101",
        sex="M",
        modality="MR",
        station="MR_ROOM_2",
        description="MR knee left",
        protocol=(Code("KNEE1", "99LOCAL", "Knee standard"),),
    )
    add_order("ACC099", at(7, 30), patient_id="PID-8", patient_name="Doe^Jane")
    add_order("ACC-OTHER", at(10, day=DAY + dt.timedelta(days=1)), patient_name="Other^Day")

    response = logged_in.get("/?date=2026-11-21")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "Other, Day" not in page and "ACC-OTHER" not in page
    assert "2 scheduled procedure steps" in page
    first, second = rows(page)
    assert cells(first)[:3] == ["7:30 AM", "", "Doe, Jane PID-8"]
    # One line per step: time, priority, patient (name, ID), birth date (age that
    # day, sex), procedure, accession number, modality, station, status, checks.
    assert cells(second) == [
        "2:05 PM",
        "",
        "Müller, Dr. Hans Peter PID-7",
        "Jan 1, 1970 (56 years) male",
        "MR knee left",
        "ACC100",
        "MR",
        "MR_ROOM_2",
        "Scheduled",
        "Why not? (Müller, Dr. Hans Peter on the list of MR_ROOM_2) Test as scanner MR_ROOM_2",
    ]

    other_day = logged_in.get("/?date=2026-11-22").get_data(as_text=True)
    assert "ACC-OTHER" in other_day and "ACC100" not in other_day
    assert "1 scheduled procedure step<" in other_day


def test_age_in_months_for_infants_and_nothing_for_unknown_births(logged_in, add_order):
    add_order("ACC-BABY", at(8), patient_id="P1", birth_date="20260321", sex="F")
    add_order("ACC-NONE", at(9), patient_id="P2", birth_date="", sex="")
    add_order("ACC-ODD", at(10), patient_id="P3", birth_date="2026", sex="U")
    baby, unknown, odd = (cells(r) for r in rows(logged_in.get("/?date=2026-11-21").text))
    assert baby[3] == "Mar 21, 2026 (8 months) female"
    assert unknown[3] == ""
    assert odd[3] == "2026 U"  # shown as received, not judged


def test_table_and_page_are_accessible(logged_in, add_order):
    add_order("ACC1", at(9))
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    headers = [
        " ".join(re.sub(r"<[^>]+>", " ", h).split())
        for h in re.findall(r'<th scope="col"[^>]*>(.*?)</th>', page, flags=re.S)
    ]
    assert headers == [
        "Time ▲",
        "Priority",
        "Patient",
        "Birth date",
        "Procedure",
        "Accession No.",
        "Modality",
        "Station AE",
        "Status",
        "Check",
    ]
    assert '<th scope="col" aria-sort="ascending"><a href="/?date=2026-11-21&amp;dir=desc">' in page
    assert "Scheduled procedure steps, sorted by Time</caption>" in page
    assert '<th scope="row" class="patient">' in page
    # Landmarks, skip link, the current page marked in the navigation.
    assert '<a class="skip" href="#main">' in page and '<main id="main">' in page
    assert '<a href="/" aria-current="page">Worklist</a>' in page
    assert 'role="search"' in page
    # Every form control has a label.
    controls = re.findall(r'<(?:input|select)(?![^>]*type="hidden")[^>]*\bid="([^"]+)"', page)
    assert {"date", "to", "modality", "station", "status", "priority", "q", "lang"} <= set(controls)
    for control in controls:
        assert f'<label for="{control}">' in page, control
    assert 'aria-describedby="q-hint"' in page and 'id="q-hint"' in page
    assert '<html lang="en">' in page


def test_status_is_text_not_colour_alone(logged_in, add_order):
    add_order("ACC-CA", at(11))
    add_order("ACC-CA", at(11), control="CA", order_status="CA")
    add_order("ACC-IP", at(12), patient_id="P2", control="XO", order_status="IP")
    canceled, started = rows(logged_in.get("/?date=2026-11-21").get_data(as_text=True))
    assert 'class="status-canceled"' in canceled
    assert cells(canceled)[-2] == "Canceled" and "ACC-CA" in canceled
    assert 'class="status-started"' in started and cells(started)[-2] == "Started"


def test_values_are_escaped(logged_in, add_order):
    add_order("ACC<b>", at(9), patient_name="<script>alert(1)</script>^Eve")
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    assert "<script>" not in page and "ACC<b>" not in page
    assert html.escape("<script>alert(1)</script>, Eve", quote=False) in page


def test_rows_link_to_the_item_page(app: Flask, client, user, password, add_order):
    add_order("ACC1", at(9), patient_name="Doe^Jane")
    client.post("/login", data={"username": user, "password": password})
    page = client.get("/?date=2026-11-21").get_data(as_text=True)
    link = re.search(r'<th scope="row" class="patient">\s*<a href="([^"]+)">Doe, Jane</a>', page)
    assert link is not None, page
    with app.test_request_context():
        (item,) = items_for_day(db_session(), DAY)
        assert link.group(1) == url_for("items.detail", key=item.step_key)


def test_day_navigation_and_default_today(logged_in, add_order):
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    assert 'href="/?date=2026-11-20"' in page
    assert 'href="/?date=2026-11-22"' in page
    assert "Nothing is scheduled on this day." in page
    assert "0 scheduled procedure steps" in page
    assert "Saturday, November 21, 2026" in page
    assert 'http-equiv="refresh"' not in page

    add_order("ACC-TODAY", dt.datetime.combine(TODAY, dt.time(12)))
    page = logged_in.get("/").get_data(as_text=True)
    assert "ACC-TODAY" in page
    assert '<time datetime="2026-11-24">Tuesday, November 24, 2026</time>' in page
    assert "(today)" in page and 'href="/?date=2026-11-23"' in page
    # No meta refresh: the page polls /worklist/changes with its own filters.
    assert 'http-equiv="refresh"' not in page
    assert "this list updates itself" in page
    assert 'data-changes-url="/worklist/changes"' in page
    assert '<script src="/static/daylist.js" defer></script>' in page


def test_every_role_sees_the_day_list(app, session_factory, password, add_order):
    add_order("ACC1", at(9))
    for role in ("viewer", "editor", "admin"):
        with session_factory.begin() as session:
            add_user(session, f"user_{role}", password, role)
        client = app.test_client()
        client.post("/login", data={"username": f"user_{role}", "password": password})
        response = client.get("/?date=2026-11-21")
        assert response.status_code == 200, role
        assert "ACC1" in response.text
        assert f"user_{role} ({role})" in response.text


def test_logged_out_visitors_go_to_the_login_page(client, add_order):
    add_order("ACC1", at(9))
    response = client.get("/?date=2026-11-21&modality=CT")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login?next=%2F%3Fdate%3D2026-11-21%26modality%3DCT"
    assert "ACC1" not in response.text
