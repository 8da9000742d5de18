"""Pure helpers of the web adapter: value display and the failed-login limiter."""

from __future__ import annotations

import datetime as dt

import pytest

from mwl.domain import Code
from web.display import code_text, dicom_date, hl7_text, local_time, person_name
from web.ratelimit import LoginRateLimiter
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_blocks_after_max_failures_within_the_window():
    clock = FakeClock()
    limiter = LoginRateLimiter(max_failures=3, window_seconds=60, clock=clock)
    key = ("alice", "10.0.0.1")
    for _ in range(3):
        assert limiter.retry_after(key) == 0
        limiter.record_failure(key)
        clock.now += 10
    assert limiter.retry_after(key) == pytest.approx(30)  # first failure at t=0 expires at 60
    assert limiter.retry_after(("alice", "10.0.0.2")) == 0
    clock.now += 30
    assert limiter.retry_after(key) == 0  # the first failure left the window


def test_limiter_reset_and_bounded_memory():
    clock = FakeClock()
    limiter = LoginRateLimiter(max_failures=1, window_seconds=60, clock=clock, max_keys=2)
    limiter.record_failure("a")
    assert limiter.retry_after("a") > 0
    limiter.reset("a")
    assert limiter.retry_after("a") == 0
    for key in ("x", "y", "z"):
        limiter.record_failure(key)
    assert limiter.retry_after("x") == 0  # forgotten: only the two newest keys are kept
    assert limiter.retry_after("y") > 0 and limiter.retry_after("z") > 0
