"""Pure helpers of the web adapter: value display and the failed-login limiter."""

from __future__ import annotations

import datetime as dt

import pytest
from flask import Flask

from mwl.domain import Code
from web.display import (
    birth_date,
    code_text,
    dicom_date,
    hl7_text,
    local_time,
    person_name,
    when_text,
)
from web.i18n import init_i18n
from web.scanners import local_midnight_utc


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Doe^Jane", "Doe, Jane"),
        ("Müller^Hans^Peter^Dr.^Jr.", "Müller, Dr. Hans Peter Jr."),
        ("Doe", "Doe"),
        ("^Jane", "Jane"),
        ("Doe^Jane^^^", "Doe, Jane"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou"),
        ("=山田^太郎", "山田, 太郎"),
        ("", ""),
        ("^^^", ""),
    ],
)
def test_person_name(value, shown):
    assert person_name(value) == shown


def test_dicom_date_and_code_text():
    assert dicom_date("19700101") == "1970-01-01"
    assert dicom_date("1970") == "1970"  # shown as stored, not hidden
    assert dicom_date("") == ""
    assert code_text(Code("KNEE1", "99LOCAL", "Knee standard")) == "Knee standard (KNEE1)"
    assert code_text(Code("KNEE1", "99LOCAL")) == "KNEE1"
    assert code_text(None) == ""


@pytest.fixture
def in_locale():
    """Run a function inside a request whose browser asks for a language."""
    app = Flask(__name__)
    init_i18n(app)

    def run(accept: str, function, *args):
        with app.test_request_context(headers={"Accept-Language": accept}):
            return function(*args)

    return run


def test_local_time_converts_utc_to_local_in_the_locale_form(in_locale):
    stored = dt.datetime(2026, 11, 21, 12, 0, 0)
    local = stored.replace(tzinfo=dt.UTC).astimezone()
    assert in_locale("de-CH", local_time, stored) == local.strftime("%d.%m.%Y, %H:%M:%S")
    assert in_locale("de-CH", local_time, None) == ""


@pytest.mark.parametrize(
    ("accept", "date", "day", "minute", "time"),
    [
        ("de-CH", "03.12.2026", "Donnerstag, 3. Dezember 2026", "03.12.2026, 14:05", "14:05"),
        ("de-DE", "03.12.2026", "Donnerstag, 3. Dezember 2026", "03.12.2026, 14:05", "14:05"),
        ("de", "03.12.2026", "Donnerstag, 3. Dezember 2026", "03.12.2026, 14:05", "14:05"),
        ("en-GB", "3 Dec 2026", "Thursday, 3 December 2026", "3 Dec 2026, 14:05", "14:05"),
        (
            "en",
            "Dec 3, 2026",
            "Thursday, December 3, 2026",
            "Dec 3, 2026, 2:05\u202fPM",
            "2:05\u202fPM",
        ),
    ],
)
def test_dates_and_times_in_the_readers_locale(in_locale, accept, date, day, minute, time):
    moment = dt.datetime(2026, 12, 3, 14, 5, 9)
    assert in_locale(accept, when_text, moment.date(), "date") == date
    assert in_locale(accept, when_text, moment.date(), "day") == day
    assert in_locale(accept, when_text, moment, "minute") == minute
    assert in_locale(accept, when_text, moment, "time") == time
    assert in_locale(accept, birth_date, "20261203") == date
    assert in_locale(accept, birth_date, "2026") == "2026"  # shown, not judged
    assert dicom_date("20261203") == "2026-12-03"  # the API's form stays ISO


def test_hl7_text_one_segment_per_line_in_either_charset():
    framed = b"\x0bMSH|^~\\&|RIS\rPID|||1||M\xfcller^Hans\r\x1c\r"
    assert hl7_text(framed) == "MSH|^~\\&|RIS\nPID|||1||Müller^Hans"
    assert hl7_text("PID|||1||Müller".encode()) == "PID|||1||Müller"
    assert hl7_text(None) == ""


def test_local_midnight_utc_is_the_start_of_the_local_day():
    now = dt.datetime(2026, 11, 21, 15, 30, tzinfo=dt.UTC)
    midnight = local_midnight_utc(now)
    local = midnight.replace(tzinfo=dt.UTC).astimezone()
    assert (local.hour, local.minute) == (0, 0)
    assert local.date() == now.astimezone().date()
