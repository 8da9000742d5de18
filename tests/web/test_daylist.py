"""The day list's filters, counts per modality and refresh, through the page's URLs."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

DAY = dt.date(2026, 11, 21)
# "Today" for the page, fixed so that no test depends on the day it runs.
TODAY = dt.date(2026, 11, 24)


@pytest.fixture(autouse=True)
def today(monkeypatch: pytest.MonkeyPatch) -> dt.date:
    monkeypatch.setattr("web.worklist.local_today", lambda: TODAY)
    return TODAY


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def accessions(page: str) -> list[str]:
    """Accession numbers of the table's rows, top to bottom."""
    return re.findall(r'<td class="accession">([^<]*)</td>', page)


def modality_links(page: str) -> dict[str, tuple[str, bool]]:
    """The counts per modality: label -> (link, whether it is the current filter)."""
    nav = page.split('<nav class="modalities"', 1)[1].split("</nav>", 1)[0]
    found = re.findall(r'<a href="([^"]+)"( aria-current="true")?>([^<]*)<span class="n">', nav)
    return {label.strip(): (html.unescape(href), bool(cur)) for href, cur, label in found}


@pytest.fixture
def department(add_order) -> None:
    """One day of a CT and an MR room: five steps, one canceled, one started."""
    add_order("CT-1", at(7, 45), patient_id="SYN-1", patient_name="Müller^Hans", station="CT01")
    add_order("CT-2", at(8, 30), patient_id="SYN-2", patient_name="Strauß^Jörg", station="CT02")
    add_order("CT-3", at(9), patient_id="SYN-3", patient_name="Doe^Jane", station="CT01")
    add_order("CT-3", at(9), patient_id="SYN-3", control="CA", order_status="CA", station="CT01")
    add_order(
        "MR-1", at(8), patient_id="SYN-4", patient_name="Roe^Rita", modality="MR", station="MR01"
    )
    add_order(
        "MR-2",
        at(10),
        patient_id="SYN-5",
        patient_name="Poe^Paul",
        modality="MR",
        station="MR01",
        control="XO",
        order_status="IP",
    )
    add_order("US-X", at(9, day=DAY + dt.timedelta(days=1)), patient_id="SYN-6", modality="US")


def test_filters_by_modality_station_status_and_text(logged_in, department):
    def shown(query: str) -> list[str]:
        response = logged_in.get(f"/?date=2026-11-21&{query}")
        assert response.status_code == 200, query
        return accessions(response.text)

    assert shown("") == ["CT-1", "MR-1", "CT-2", "CT-3", "MR-2"]  # by scheduled time
    assert shown("modality=CT") == ["CT-1", "CT-2", "CT-3"]
    assert shown("modality=CT&station=CT01") == ["CT-1", "CT-3"]
    assert shown("station=MR01") == ["MR-1", "MR-2"]
    assert shown("status=canceled") == ["CT-3"]
    assert shown("status=started") == ["MR-2"]
    assert shown("status=open") == ["CT-1", "MR-1", "CT-2", "MR-2"]
    assert shown("q=muller") == ["CT-1"]
    assert shown("q=STRAUSS+j%C3%B6rg") == ["CT-2"]
    assert shown("q=syn-5") == ["MR-2"]
    assert shown("q=MR-") == ["MR-1", "MR-2"]
    assert shown("modality=MR&status=scheduled&q=roe") == ["MR-1"]
    page = logged_in.get("/?date=2026-11-21&modality=US").text
    assert "No scheduled procedure step on this day matches these filters." in page
    assert "0 of 5 scheduled procedure steps" in page


def test_counts_per_modality_link_to_the_modality_filter(logged_in, department):
    page = logged_in.get("/?date=2026-11-21&status=open").text
    assert modality_links(page) == {
        "All modalities": ("/?status=open&date=2026-11-21", True),
        "CT": ("/?modality=CT&status=open&date=2026-11-21", False),
        "MR": ("/?modality=MR&status=open&date=2026-11-21", False),
    }
    assert re.search(r'>CT <span class="n">2</span></a>\s*<span class="minor">2 open</span>', page)
    assert "4 of 5 scheduled procedure steps" in page

    page = logged_in.get("/?modality=MR&status=open&date=2026-11-21").text
    links = modality_links(page)
    assert links["MR"] == ("/?modality=MR&status=open&date=2026-11-21", True)
    assert links["All modalities"][1] is False
    assert accessions(page) == ["MR-1", "MR-2"]

    page = logged_in.get("/?date=2026-11-21").text
    assert re.search(r'>CT <span class="n">3</span></a>\s*<span class="minor">2 open</span>', page)
    assert re.search(r'>MR <span class="n">2</span></a>\s*<span class="minor">2 open</span>', page)
    assert "5 scheduled procedure steps<" in page


def test_active_filters_are_listed_with_links_to_remove_them(logged_in, department):
    page = logged_in.get("/?modality=CT&station=CT01&q=doe&date=2026-11-21").text
    chips = page.split('<ul class="chips">', 1)[1].split("</ul>", 1)[0]
    removals = dict(
        re.findall(r'<a href="([^"]+)" class="chip-remove">.*?Remove filter ([^<]+)</span>', chips)
    )
    assert {html.unescape(k): v for k, v in removals.items()} == {
        "/?station=CT01&q=doe&date=2026-11-21": "Modality: CT",
        "/?modality=CT&q=doe&date=2026-11-21": "Station AE: CT01",
        "/?modality=CT&station=CT01&date=2026-11-21": "Search: doe",
    }
    assert '<a class="clear-filters" href="/?date=2026-11-21">Clear filters</a>' in page
    # The form shows the filters in force.
    assert 'name="modality" value="CT"' in page and 'name="q" value="doe"' in page
    assert accessions(page) == ["CT-3"]
    assert "Clear filters" not in logged_in.get("/?date=2026-11-21").text


def test_form_submissions_redirect_to_the_address_to_bookmark(logged_in, department):
    # The GET form sends every field, empty or not, and the date shown.
    response = logged_in.get(
        "/?date=2026-11-24&modality=ct&station=&status=all&q=++m%C3%BCller++hans+"
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/?modality=CT&q=m%C3%BCller+hans"
    response = logged_in.get("/?date=2026-11-21&modality=&station=&status=&q=")
    assert response.headers["Location"] == "/?date=2026-11-21"
    response = logged_in.get("/?date=")
    assert response.headers["Location"] == "/"
    assert logged_in.get("/?date=2026-11-21&status=open&q=x").status_code == 200


def test_the_list_updates_itself_by_polling_keeping_its_filters(logged_in, add_order, today):
    add_order("CT-NOW", dt.datetime.combine(today, dt.time(9)))
    page = logged_in.get("/?modality=CT&station=CT01").text
    # No meta refresh (it reset scroll and typed text): the page's script polls the
    # changes endpoint with the page's own filters; today's address has no date, so
    # a console left on it overnight shows the next day.
    assert 'http-equiv="refresh"' not in page
    assert 'data-changes-url="/worklist/changes?modality=CT&amp;station=CT01"' in page
    assert 'data-poll-seconds="10"' in page
    assert accessions(page) == ["CT-NOW"]
    stop = re.search(r'<a href="([^"]+)">Stop updating</a>', page)
    assert stop and html.unescape(stop.group(1)) == "/?modality=CT&station=CT01&refresh=off"

    paused = logged_in.get("/?modality=CT&station=CT01&refresh=off").text
    assert 'data-poll-seconds="0"' in paused
    assert "Automatic updates are off." in paused
    assert '<input type="hidden" name="refresh" value="off">' in paused
    assert 'href="/?modality=CT&amp;station=CT01&amp;date=2026-11-23&amp;refresh=off"' in paused
    resume = re.search(r'<a href="([^"]+)">Update automatically</a>', paused)
    assert resume and html.unescape(resume.group(1)) == "/?modality=CT&station=CT01"

    other_day = logged_in.get("/?modality=CT&date=2026-11-21").text
    assert 'href="/?modality=CT"' in other_day  # "Today" keeps the filters


BAD_INPUT = [
    ("date=bad", "YYYY-MM-DD"),
    ("date=2026-13-01", "YYYY-MM-DD"),
    ("date=2026-02-30", "YYYY-MM-DD"),
    ("date=20261121", "YYYY-MM-DD"),
    ("date=2026-11-21T00:00", "YYYY-MM-DD"),
    ("modality=C%2FT", "The modality must be a DICOM modality code"),
    ("modality=ABCDEFGHIJKLMNOPQ", "at most 16 letters"),
    ("station=CT%5C01", "The station AE title must be at most 16 characters"),
    ("station=CT%0001", "without backslashes or control characters"),
    ("station=" + "S" * 17, "The station AE title must be at most 16 characters"),
    ("status=finished", "Unknown status “finished”. Choose one of: all, open, scheduled,"),
    ("status=%3Cb%3E", "Unknown status “&lt;b&gt;”"),
    ("q=" + "x" * 65, "The search text is too long: at most 64 characters."),
    ("q=a%00b", "The search text must not contain control characters."),
    ("refresh=sometimes", "The refresh parameter must be “on” or “off”."),
]


def test_bad_input_is_a_400_with_a_clear_message(logged_in):
    for query, message in BAD_INPUT:
        response = logged_in.get(f"/?{query}")
        assert response.status_code == 400, query
        page = response.text
        assert message in page, query
        assert "<h1>400 Bad Request</h1>" in page, query
        assert "<b>" not in page, query


def test_longest_accepted_values_work(logged_in, add_order):
    add_order("ACC1", at(9), station="S" * 16, modality="OPT_1")
    response = logged_in.get(f"/?date=2026-11-21&station={'S' * 16}&q={'x' * 64}")
    assert response.status_code == 200
    response = logged_in.get(f"/?date=2026-11-21&station={'S' * 16}&modality=OPT_1")
    assert accessions(response.text) == ["ACC1"]
