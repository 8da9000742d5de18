"""Failed-login delays kept in the database: per user name, per address, over several brokers.

Each test runs on SQLite and on PostgreSQL; two apps on one database stand for two
brokers, and ``REMOTE_ADDR`` for the client's address.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin import login_limits
from mwl.admin.login_limits import LoginPolicy
from mwl.config import Settings
from mwl.store.models import AuditEvent
from web import create_app

DELAYED = "Too many failed logins"


def brokers(settings: Settings, readers: sessionmaker[Session], **changes: object) -> list[Flask]:
    """Two apps on one database, as two brokers behind a load balancer."""
    limits = {"web_login_first_delay_seconds": 60.0, **changes}
    return [
        create_app(
            settings.replace(**limits), readers, config={"TESTING": True, "WTF_CSRF_ENABLED": False}
        )
        for _ in range(2)
    ]


def attempt(app: Flask, username: str, password: str, address: str) -> tuple[int, str]:
    response = app.test_client().post(
        "/login",
        data={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )
    return response.status_code, response.get_data(as_text=True)


def test_failures_for_one_user_spread_over_brokers_and_addresses_count_together(
    settings, reader_factory, user, password
):
    a, b = brokers(settings, reader_factory, web_login_failures_per_user=3)
    assert attempt(a, user, "guess 1", "10.0.0.1")[0] == 200
    assert attempt(a, user, "guess 2", "10.0.0.1")[0] == 200
    assert attempt(b, user, "guess 3", "10.0.0.2")[0] == 200
    # Three failures in all: the guessing addresses wait, even with the right password.
    for app, address in ((b, "10.0.0.1"), (a, "10.0.0.2")):
        status, page = attempt(app, user, password, address)
        assert status == 429 and DELAYED in page
    # The real user, from an address that has not failed, gets in at once.
    assert attempt(a, user, password, "10.0.0.3")[0] == 302


def test_an_address_trying_many_user_names_is_delayed_while_the_real_user_gets_in(
    settings, reader_factory, user, password
):
    a, b = brokers(settings, reader_factory, web_login_failures_per_address=4)
    names = [f"user{n}" for n in range(4)]
    for n, name in enumerate(names):
        assert attempt((a, b)[n % 2], name, "guess", "192.0.2.66")[0] == 200
    for app in (a, b):
        assert attempt(app, "user9", "guess", "192.0.2.66")[0] == 429
        assert attempt(app, user, password, "192.0.2.66")[0] == 429
    assert attempt(b, user, password, "192.0.2.10")[0] == 302


def test_a_delayed_attempt_gets_one_answer_whatever_the_password_or_user(
    settings, reader_factory, user, password
):
    (app, _) = brokers(settings, reader_factory, web_login_failures_per_address=1)
    assert attempt(app, user, "guess", "10.1.1.1")[0] == 200
    answers = {
        "right password": attempt(app, user, password, "10.1.1.1"),
        "wrong password": attempt(app, user, "guess again", "10.1.1.1"),
        "unknown user": attempt(app, "mallory", password, "10.1.1.1"),
    }
    token = re.compile(r'name="csrf_token" value="[^"]*"')
    pages = {token.sub("", page).replace("mallory", user) for _, page in answers.values()}
    assert {status for status, _ in answers.values()} == {429}
    assert len(pages) == 1 and DELAYED in pages.pop()
    # The right password during the delay did not log in.
    client = app.test_client()
    assert client.get("/", environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code == 302


def test_every_failure_and_refusal_is_audited(
    settings, reader_factory, user, password, session_factory
):
    (app, _) = brokers(settings, reader_factory, web_login_failures_per_user=2)
    for guess in ("one", "two"):
        assert attempt(app, user, guess, "10.2.2.2")[0] == 200
    assert attempt(app, user, password, "10.2.2.2")[0] == 429
    assert attempt(app, "nobody", "x", "10.2.2.3")[0] == 200
    with session_factory() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.username, e.action, e.subject) for e in events] == [
        (user, "login failed", "10.2.2.2"),
        (user, "login failed", "10.2.2.2"),
        (user, "login delayed", "10.2.2.2"),
        ("nobody", "login failed", "10.2.2.3"),
    ]
    assert "to wait" in events[2].reason


def test_a_good_login_forgets_the_failures_of_the_user_name(
    settings, reader_factory, user, password
):
    (app, _) = brokers(settings, reader_factory, web_login_failures_per_user=3)
    for _ in range(2):
        assert attempt(app, user, "typo", "10.3.3.3")[0] == 200
    assert attempt(app, user, password, "10.3.3.3")[0] == 302
    for _ in range(2):
        assert attempt(app, user, "typo", "10.3.3.3")[0] == 200
    assert attempt(app, user, password, "10.3.3.3")[0] == 302


def test_delays_double_per_failure_up_to_the_cap_and_are_forgotten(session_factory):
    policy = LoginPolicy(
        free_per_user=2,
        free_per_address=100,
        first_delay=dt.timedelta(seconds=10),
        max_delay=dt.timedelta(seconds=60),
        forget_after=dt.timedelta(hours=1),
    )
    start = dt.datetime(2026, 12, 7, 8, 0)
    waits = []
    for n in range(6):
        at = start + dt.timedelta(minutes=n)
        with session_factory.begin() as session:
            login_limits.record_failure(session, "alice", "10.4.4.4", policy, now=at)
        with session_factory() as session:
            waits.append(login_limits.retry_after(session, "alice", "10.4.4.4", policy, now=at))
    assert waits == [0, 10, 20, 40, 60, 60]
    last = start + dt.timedelta(minutes=5)
    with session_factory() as session:
        half = login_limits.retry_after(
            session, "alice", "10.4.4.4", policy, now=last + dt.timedelta(seconds=45)
        )
        clean = login_limits.retry_after(session, "alice", "10.4.4.5", policy, now=last)
        later = last + dt.timedelta(hours=1)
        forgotten = login_limits.retry_after(session, "alice", "10.4.4.4", policy, now=later)
    assert half == pytest.approx(15)
    assert clean == 0  # an address that has not failed is not held back
    assert forgotten == 0
    with session_factory.begin() as session:
        login_limits.record_failure(session, "alice", "10.4.4.4", policy, now=later)
    with session_factory() as session:
        # The count started again: one failure, below the free ones.
        assert login_limits.retry_after(session, "alice", "10.4.4.4", policy, now=later) == 0


def test_failures_counted_at_the_same_moment_by_two_brokers_are_all_counted(database_url, engine):
    from concurrent.futures import ThreadPoolExecutor

    from mwl.store.engine import make_engine, make_session_factory
    from mwl.store.models import LoginFailure

    policy = LoginPolicy()
    other = make_engine(database_url)  # the second broker's own connection pool
    factories = [
        make_session_factory(engine, writer=True),
        make_session_factory(other, writer=True),
    ]

    def fail(n: int) -> None:
        with factories[n % 2].begin() as session:
            login_limits.record_failure(session, "carol", "10.5.5.5", policy)

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(fail, range(24)))
        with factories[0]() as session:
            counts = sorted(row.failures for row in session.scalars(select(LoginFailure)))
    finally:
        other.dispose()
    assert counts == [24, 24]  # the user name's row and the address's row
