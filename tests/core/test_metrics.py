"""What the core records: housekeeping runs and failed logins, switched off or on."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy.orm import Session, sessionmaker

from mwl.admin import login_limits
from mwl.config import Settings
from mwl.operations import metrics
from mwl.operations.retention import Housekeeper


def _value(counter: object, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())  # type: ignore[attr-defined]


def test_a_housekeeping_run_is_counted(settings: Settings, session_factory: sessionmaker[Session]):
    before = _value(metrics.RETENTION_RUNS, "ok")
    keeper = Housekeeper(settings.replace(retention_interval_seconds=3600), session_factory)
    keeper.start()
    try:
        deadline = time.monotonic() + 30
        while keeper.runs < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        keeper.shutdown()
    assert keeper.runs == 1
    assert _value(metrics.RETENTION_RUNS, "ok") == before + 1


def test_failed_and_refused_logins_are_counted(session_factory: sessionmaker[Session]):
    policy = login_limits.LoginPolicy(
        free_per_user=5,
        free_per_address=20,
        first_delay=dt.timedelta(seconds=5),
        max_delay=dt.timedelta(seconds=60),
    )
    failed, throttled = (
        _value(metrics.LOGIN_FAILURES, "password"),
        _value(metrics.LOGIN_FAILURES, "throttled"),
    )
    with session_factory.begin() as session:
        login_limits.record_failure(session, "mallory", "192.0.2.9", policy)
        login_limits.record_refusal(session, "mallory", "192.0.2.9", 5.0)
    assert _value(metrics.LOGIN_FAILURES, "password") == failed + 1
    assert _value(metrics.LOGIN_FAILURES, "throttled") == throttled + 1
    metrics.configure(enabled=False)
    try:
        with session_factory.begin() as session:
            login_limits.record_failure(session, "mallory", "192.0.2.9", policy)
    finally:
        metrics.configure(enabled=True)
    assert _value(metrics.LOGIN_FAILURES, "password") == failed + 1
