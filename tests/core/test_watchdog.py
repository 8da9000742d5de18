"""The watchdog's rounds on SQLite and PostgreSQL: what fires, what resolves, what is audited."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.operations.audit import recent_events
from mwl.operations.watchdog import (
    RESOLVED,
    Alert,
    Watchdog,
    firing_alerts,
    firing_counts,
    watched_since,
)
from mwl.orders.apply import apply_order
from mwl.store.models import Hl7Message, OutboxMessage, QueryLogEntry, WatchdogAlert, utcnow
from tests.factories import one_step_order

# A Tuesday, 10:00 local: inside the default hours (07-19 on weekdays).
TUESDAY_10 = dt.datetime(2026, 12, 8, 10, 0)
# The watchdogs of these tests have watched since long before the rows they read.
LONG_AGO = utcnow() - dt.timedelta(days=2)


def _watchdog(
    settings: Settings,
    factory: sessionmaker[Session],
    local_now: dt.datetime,
    sent: list[Alert] | None = None,
    **changes: object,
) -> Watchdog:
    current = settings.replace(**changes)

    def notify(_settings: Settings, alert: Alert) -> bool:
        if sent is not None:
            sent.append(alert)
        return True

    return Watchdog(lambda: current, factory, notify, local_now=lambda: local_now, started=LONG_AGO)


def _message(factory: sessionmaker[Session], minutes_ago: float) -> None:
    with factory.begin() as session:
        session.add(
            Hl7Message(
                received_at=utcnow() - dt.timedelta(minutes=minutes_ago),
                message_type="ORM^O01",
                message_control_id=f"M{minutes_ago}",
                raw=b"MSH|^~\\&|",
                outcome="AA",
            )
        )


def _query(factory: sessionmaker[Session], ae: str, minutes_ago: float, status: int = 0) -> None:
    with factory.begin() as session:
        session.add(
            QueryLogEntry(
                received_at=utcnow() - dt.timedelta(minutes=minutes_ago),
                calling_ae_title=ae,
                status=status,
            )
        )


def _firing(factory: sessionmaker[Session]) -> dict[str, Alert]:
    with factory() as session:
        return {a.alert_key: a for a in firing_alerts(session)}


def test_watched_hours_follow_the_weekday():
    settings = Settings()
    assert watched_since(settings, TUESDAY_10) == dt.datetime(2026, 12, 8, 7, 0)
    assert watched_since(settings, dt.datetime(2026, 12, 8, 19, 0)) is None
    assert watched_since(settings, dt.datetime(2026, 12, 12, 10, 0)) is None  # Saturday
    weekend = settings.replace(watchdog_hours=("",) * 5 + ("00-24", "08-12"))
    assert watched_since(weekend, dt.datetime(2026, 12, 13, 9, 0)) == dt.datetime(
        2026, 12, 13, 8, 0
    )


def test_a_silent_feed_fires_once_and_a_message_resolves_it(
    settings: Settings, session_factory: sessionmaker[Session]
):
    _message(session_factory, minutes_ago=90)
    sent: list[Alert] = []
    dog = _watchdog(settings, session_factory, TUESDAY_10, sent, watchdog_missing_station=False)
    try:
        (fired,) = dog.run_once()
        assert (fired.alert_key, fired.state) == ("hl7_silent", "firing")
        assert "no HL7 message for 90 minutes" in fired.summary
        assert dog.run_once() == []  # still firing: no second alert, no second notice
        assert [a.state for a in sent] == ["firing"]
        _message(session_factory, minutes_ago=0)
        (resolved,) = dog.run_once()
        assert resolved.state == RESOLVED and resolved.resolved_at is not None
        assert [a.state for a in sent] == ["firing", "resolved"]
    finally:
        dog.shutdown()
    with session_factory() as session:
        trail = [(e.username, e.action, e.subject) for e in recent_events(session)]
    assert ("watchdog", "alert firing", "hl7_silent") in trail
    assert ("watchdog", "alert resolved", "hl7_silent") in trail


def test_outside_the_watched_hours_a_silence_neither_fires_nor_resolves(
    settings: Settings, session_factory: sessionmaker[Session]
):
    _message(session_factory, minutes_ago=600)
    evening = TUESDAY_10.replace(hour=20)
    quiet = _watchdog(settings, session_factory, evening, watchdog_missing_station=False)
    try:
        assert quiet.run_once() == []
    finally:
        quiet.shutdown()
    day = _watchdog(settings, session_factory, TUESDAY_10, watchdog_missing_station=False)
    try:
        assert [a.alert_key for a in day.run_once()] == ["hl7_silent"]
    finally:
        day.shutdown()
    quiet = _watchdog(settings, session_factory, evening, watchdog_missing_station=False)
    try:
        assert quiet.run_once() == []  # not evaluated: stays firing
        assert "hl7_silent" in _firing(session_factory)
    finally:
        quiet.shutdown()


def test_scanners_silent_and_failing(settings: Settings, session_factory: sessionmaker[Session]):
    _message(session_factory, minutes_ago=0)
    _query(session_factory, "CT01", minutes_ago=200)
    _query(session_factory, "MR01", minutes_ago=5)
    for minutes in (3, 2, 1):
        _query(session_factory, "US01", minutes_ago=minutes, status=0xA900)
    _query(session_factory, "DX01", minutes_ago=3, status=0xC000)
    _query(session_factory, "DX01", minutes_ago=1, status=0)  # recovered
    dog = _watchdog(settings, session_factory, TUESDAY_10, watchdog_missing_station=False)
    try:
        keys = {a.alert_key for a in dog.run_once()}
    finally:
        dog.shutdown()
    assert keys == {"scanner_silent:CT01", "scanner_failing:US01"}
    firing = _firing(session_factory)
    assert firing["scanner_failing:US01"].details["status"] == "0xA900"
    with session_factory() as session:
        counts = firing_counts(session)
    assert counts["scanner_silent"] == 1 and counts["scanner_failing"] == 1
    assert counts["outbox_backlog"] == 0


def test_outbox_steps_without_station_and_overdue_steps(
    settings: Settings, session_factory: sessionmaker[Session]
):
    _message(session_factory, minutes_ago=0)
    local = dt.datetime.now().replace(microsecond=0)
    with session_factory.begin() as session:
        apply_order(session, one_step_order("ACC1", local, station="", modality="MR"))
        apply_order(session, one_step_order("ACC2", local - dt.timedelta(hours=5)))
        session.add(
            OutboxMessage(
                created_at=utcnow() - dt.timedelta(minutes=30),
                order_key="o1",
                payload="{}",
                state="PENDING",
            )
        )
    if local.hour < 5:
        pytest.skip("a step 5 hours before now would fall on yesterday")
    dog = _watchdog(settings, session_factory, local, watchdog_hours=("",) * 7)
    try:
        keys = {a.alert_key for a in dog.run_once()}
    finally:
        dog.shutdown()
    assert keys == {"outbox_backlog", "missing_station:MR", "overdue_steps:CT01"}
    firing = _firing(session_factory)
    assert firing["outbox_backlog"].details["count"] == 1
    assert "1 MR step(s) today have no Scheduled Station AE Title" in (
        firing["missing_station:MR"].summary
    )
    # Thresholds are read each round: off now, so those alerts resolve.
    off = _watchdog(
        settings,
        session_factory,
        local,
        watchdog_hours=("",) * 7,
        watchdog_outbox_minutes=0,
        watchdog_missing_station=False,
        watchdog_overdue_minutes=0,
    )
    try:
        assert {a.state for a in off.run_once()} == {RESOLVED}
    finally:
        off.shutdown()
    assert _firing(session_factory) == {}


def test_a_failed_notification_is_sent_again(
    settings: Settings, session_factory: sessionmaker[Session]
):
    _message(session_factory, minutes_ago=90)
    attempts: list[str] = []

    def flaky(_settings: Settings, alert: Alert) -> bool:
        attempts.append(alert.state)
        return len(attempts) > 1

    current = settings.replace(watchdog_missing_station=False)
    dog = Watchdog(
        lambda: current, session_factory, flaky, local_now=lambda: TUESDAY_10, started=LONG_AGO
    )
    try:
        dog.run_once()
        dog.run_once()
        dog.run_once()
    finally:
        dog.shutdown()
    assert attempts == ["firing", "firing"]
    with session_factory() as session:
        (row,) = session.scalars(select(WatchdogAlert)).all()
    assert row.notified == "firing"


def test_silence_before_the_watchdog_started_is_not_counted(
    settings: Settings, session_factory: sessionmaker[Session]
):
    _message(session_factory, minutes_ago=600)
    current = settings.replace(watchdog_missing_station=False)
    fresh = Watchdog(
        lambda: current,
        session_factory,
        lambda _s, _a: True,
        local_now=lambda: TUESDAY_10,
        started=utcnow() - dt.timedelta(minutes=10),
    )
    try:
        assert fresh.run_once() == []  # 10 minutes watched < 60 minutes threshold
    finally:
        fresh.shutdown()
