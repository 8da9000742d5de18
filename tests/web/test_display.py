"""Pure helpers of the web adapter: value display and the failed-login limiter."""

from __future__ import annotations

import datetime as dt

import pytest

from mwl.domain import Code
from web.display import code_text, dicom_date, hl7_text, local_time, person_name
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


def test_local_time_converts_utc_to_local():
    stored = dt.datetime(2026, 11, 21, 12, 0, 0)
    expected = stored.replace(tzinfo=dt.UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert local_time(stored) == expected
    assert local_time(None) == ""


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
