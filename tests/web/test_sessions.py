"""Login sessions kept in the database: opaque cookie, revocation, idle and absolute limits.

Each test runs on SQLite and on PostgreSQL. Two test clients stand for two
browsers; two apps on one database stand for two brokers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user, remove_user, set_password, set_role
from mwl.config import Settings
from mwl.store.models import WebSession
from web import create_app

COOKIE = "mwl_session"


def make_app(settings: Settings, readers: sessionmaker[Session], **changes: object) -> Flask:
    return create_app(
        settings.replace(**changes),
        readers,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )


def log_in(client: FlaskClient, username: str, password: str) -> None:
    response = client.post("/login", data={"username": username, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert client.get("/").status_code == 200


def cookie_of(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def with_cookie(app: Flask, value: str) -> FlaskClient:
    """Another browser, holding a copy of a session cookie."""
    other = app.test_client()
    other.set_cookie(COOKIE, value)
    return other


def test_the_cookie_holds_a_random_id_and_the_database_only_its_hash(
    app, client, user, password, session_factory
):
    log_in(client, user, password)
    content = app.session_interface.get_signing_serializer(app).loads(cookie_of(client))
    session_id = content["_user_id"]
    assert len(session_id) == 43 and user not in session_id
    with session_factory() as session:
        rows = session.scalars(select(WebSession)).all()
    assert len(rows) == 1
    assert rows[0].token_hash == hashlib.sha256(session_id.encode()).hexdigest()
    assert session_id not in {rows[0].token_hash, str(rows[0].id)}

    # A second login is a second, unrelated id.
    other = app.test_client()
    log_in(other, user, password)
    second = app.session_interface.get_signing_serializer(app).loads(cookie_of(other))
    assert second["_user_id"] != session_id


def test_a_copied_cookie_stops_working_at_logout(app, client, user, password):
    log_in(client, user, password)
    copy = with_cookie(app, cookie_of(client))
    assert copy.get("/").status_code == 200
    assert client.post("/logout").status_code == 302
    refused = copy.get("/")
    assert refused.status_code == 302
    assert refused.headers["Location"].startswith("/login")


def test_a_session_is_seen_and_ended_by_every_broker_on_the_database(
    settings, reader_factory, user, password
):
    first, second = make_app(settings, reader_factory), make_app(settings, reader_factory)
    client = first.test_client()
    log_in(client, user, password)
    elsewhere = with_cookie(second, cookie_of(client))
    assert elsewhere.get("/").status_code == 200
    assert elsewhere.post("/logout").status_code == 302
    assert client.get("/").status_code == 302


Change = Callable[[Session, str], object]
CHANGES: dict[str, Change] = {
    "password": lambda session, name: set_password(session, name, "a brand new passphrase"),
    "role": lambda session, name: set_role(session, name, "editor"),
    "removal": lambda session, name: remove_user(session, name),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_an_account_change_ends_every_session_of_that_user_only(
    app, user, password, session_factory, change
):
    with session_factory.begin() as session:
        add_user(session, "bob", password, "viewer")
    browsers = [app.test_client(), app.test_client()]
    for browser in browsers:
        log_in(browser, user, password)
    bob = app.test_client()
    log_in(bob, "bob", password)

    with session_factory.begin() as session:
        CHANGES[change](session, user)
    for browser in browsers:
        assert browser.get("/").status_code == 302
    assert bob.get("/").status_code == 200
    with session_factory() as session:
        assert len(session.scalars(select(WebSession)).all()) == 1


# Waits out real timeouts of a few seconds: not for the inner loop.
@pytest.mark.slow
def test_a_session_ends_after_the_idle_timeout_but_use_keeps_it(
    settings, reader_factory, user, password
):
    idle = 3.0  # seconds
    app = make_app(settings, reader_factory, web_session_idle_minutes=idle / 60)
    client = app.test_client()
    log_in(client, user, password)
    for _ in range(2):
        # Used within the idle time, twice, for longer than the idle time in all.
        time.sleep(idle * 0.6)
        assert client.get("/").status_code == 200
    time.sleep(idle * 1.2)
    refused = client.get("/")
    assert refused.status_code == 302
    assert refused.headers["Location"].startswith("/login")


# Waits out real timeouts of a few seconds: not for the inner loop.
@pytest.mark.slow
def test_a_session_ends_after_its_lifetime_even_in_use(
    settings, reader_factory, user, password, session_factory
):
    lifetime = 3.0  # seconds
    app = make_app(settings, reader_factory, web_session_lifetime_hours=lifetime / 3600)
    client = app.test_client()
    log_in(client, user, password)
    time.sleep(lifetime * 0.5)
    assert client.get("/").status_code == 200
    time.sleep(lifetime * 0.7)
    assert client.get("/").status_code == 302
    # The next login clears out what has expired.
    log_in(app.test_client(), user, password)
    with session_factory() as session:
        assert len(session.scalars(select(WebSession)).all()) == 1
