"""The day list page: items of the chosen day, readable, escaped, with day navigation."""

from __future__ import annotations

import datetime as dt
import html

from mwl.domain import Code

DAY = dt.date(2026, 11, 21)


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return body.split("<tr")[1:]


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
    assert "07:30" in first and "ACC099" in first and "Doe, Jane" in first
    for text in (
        "14:05",
        "Müller, Dr. Hans Peter",
        "PID-7",
        "1970-01-01",
        ">M<",
        "ACC100",
        "MR knee left",
        "Protocol: Knee standard (KNEE1)",
        ">MR<",
        "MR_ROOM_2",
        "Scheduled",
    ):
        assert text in second, text

    other_day = logged_in.get("/?date=2026-11-22").get_data(as_text=True)
    assert "ACC-OTHER" in other_day and "ACC100" not in other_day
    assert "1 scheduled procedure step<" in other_day


def test_table_is_accessible(logged_in, add_order):
    add_order("ACC1", at(9))
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    for column in (
        "Time",
        "Patient name",
        "Patient ID",
        "Birth date",
        "Sex",
        "Accession",
        "Procedure",
        "Modality",
        "Station AE",
        "Status",
    ):
        assert f'<th scope="col">{column}</th>' in page
    assert "<caption>" in page
    assert '<th scope="row" class="patient">' in page


def test_canceled_steps_stay_visible_with_their_status(logged_in, add_order):
    add_order("ACC-CA", at(11))
    add_order("ACC-CA", at(11), control="CA", order_status="CA")
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    (row,) = rows(page)
    assert 'class="status-canceled"' in row
    assert "Canceled" in row and "ACC-CA" in row


def test_values_are_escaped(logged_in, add_order):
    add_order("ACC<b>", at(9), patient_name="<script>alert(1)</script>^Eve")
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    assert "<script>" not in page
    assert html.escape("<script>alert(1)</script>, Eve", quote=False) in page


def test_day_navigation_and_default_today(logged_in, add_order):
    page = logged_in.get("/?date=2026-11-21").get_data(as_text=True)
    assert 'href="/?date=2026-11-20"' in page
    assert 'href="/?date=2026-11-22"' in page
    assert "Nothing is scheduled on this day." in page
    assert "0 scheduled procedure steps" in page

    today = dt.date.today()
    add_order("ACC-TODAY", dt.datetime.combine(today, dt.time(12)))
    page = logged_in.get("/").get_data(as_text=True)
    assert "ACC-TODAY" in page
    assert f"{today.isoformat()}</time> (today)" in page
    assert 'http-equiv="refresh"' in page  # today's list refreshes itself


def test_bad_date_is_a_400_with_a_clear_message(logged_in):
    for value in ("bad", "2026-13-01", "2026-02-30", "20261121", "2026-11-21T00:00"):
        response = logged_in.get("/", query_string={"date": value})
        assert response.status_code == 400, value
        assert "YYYY-MM-DD" in response.get_data(as_text=True)
    assert logged_in.get("/?date=").status_code == 200  # empty means today
