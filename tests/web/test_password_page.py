"""The change-password page and the forced change of a weak password (CSRF on)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.users import add_user, authenticate, hash_password
from mwl.store.models import User
from tests.browser import chromium, screenshot, serving
from tests.web.test_auth import csrf_token_in

GOOD = "correct horse battery staple"
NEW = "a brand new pass phrase"


def _log_in(client: FlaskClient, username: str, password: str):  # noqa: ANN202
    token = csrf_token_in(client.get("/login").get_data(as_text=True))
    return client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}
    )


def _change(client: FlaskClient, current: str, new: str, repeat: str | None = None):  # noqa: ANN202
    token = csrf_token_in(client.get("/account/password").get_data(as_text=True))
    return client.post(
        "/account/password",
        data={
            "current_password": current,
            "new_password": new,
            "repeat_password": new if repeat is None else repeat,
            "csrf_token": token,
        },
    )


def _weak_account(session_factory: sessionmaker[Session], name: str, password: str) -> None:
    # As made before the policy (an older release stored any non-empty password).
    with session_factory.begin() as session:
        session.add(User(username=name, password_hash=hash_password(password), role="admin"))


def _flag(session_factory: sessionmaker[Session], name: str) -> bool:
    with session_factory() as session:
        user = session.query(User).filter_by(username=name).one()
        return user.must_change_password


def _password_works(session_factory: sessionmaker[Session], name: str, password: str) -> bool:
    with session_factory() as session:
        return authenticate(session, name, password) is not None


@pytest.fixture
def admin(session_factory: sessionmaker[Session]) -> str:
    with session_factory.begin() as session:
        add_user(session, "root", GOOD, "admin")
    return "root"


@pytest.mark.parametrize(
    ("weak", "message"),
    [
        ("a", "Use at least 15 characters."),
        (" ", "Use at least 15 characters."),
        ("password", "Use at least 15 characters."),
        ("1q2w3e4r5t6y7u8i9o0p", "This password is too common."),
        ("Root, the one and only", "must not contain your user name"),
        ("x" * 129, "Use at most 128 characters."),
    ],
)
def test_weak_new_passwords_are_refused_on_the_page(
    csrf_app: Flask, session_factory, admin, weak, message
):
    client = csrf_app.test_client()
    assert _log_in(client, admin, GOOD).status_code == 302
    response = _change(client, GOOD, weak)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert _password_works(session_factory, admin, GOOD)
    assert not _password_works(session_factory, admin, weak)


def test_wrong_current_password_and_a_mistyped_repeat_are_refused(
    csrf_app: Flask, session_factory, admin
):
    client = csrf_app.test_client()
    assert _log_in(client, admin, GOOD).status_code == 302
    wrong = _change(client, "not the current password", NEW)
    assert wrong.status_code == 400
    assert "The current password is wrong." in wrong.get_data(as_text=True)
    mistyped = _change(client, GOOD, NEW, NEW + "!")
    assert mistyped.status_code == 400
    assert "The two new passwords are not the same." in mistyped.get_data(as_text=True)
    assert _password_works(session_factory, admin, GOOD)


def test_a_good_new_password_is_set_and_the_session_goes_on(
    csrf_app: Flask, session_factory, admin
):
    client = csrf_app.test_client()
    other = csrf_app.test_client()
    assert _log_in(client, admin, GOOD).status_code == 302
    assert _log_in(other, admin, GOOD).status_code == 302
    response = _change(client, GOOD, NEW)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "Your password has been changed." in client.get("/").get_data(as_text=True)
    assert client.get("/").status_code == 200
    # The other session ended with the old password.
    assert other.get("/").status_code == 302
    assert _password_works(session_factory, admin, NEW)
    assert not _password_works(session_factory, admin, GOOD)


def test_policy_messages_are_in_german(csrf_app: Flask, admin):
    client = csrf_app.test_client()
    assert _log_in(client, admin, GOOD).status_code == 302
    token = csrf_token_in(client.get("/").get_data(as_text=True))
    client.post("/language", data={"lang": "de", "next": "/", "csrf_token": token})
    page = _change(client, GOOD, "kurz").get_data(as_text=True)
    assert "Verwenden Sie mindestens 15 Zeichen." in page
    assert "Passwort ändern" in page


# Not " ": the login form (web.auth) refuses a blank password before checking it.
@pytest.mark.parametrize("weak", ["a", "password"])
def test_a_weak_existing_password_must_be_changed_before_anything_else(
    csrf_app: Flask, session_factory, weak
):
    _weak_account(session_factory, "old", weak)
    client = csrf_app.test_client()
    # The login itself succeeds: the account keeps working, but only for the change.
    login = _log_in(client, "old", weak)
    assert login.status_code == 302
    assert _flag(session_factory, "old") is True
    for url in ("/", "/messages", "/scanners", "/items/1", "/admin", "/account/tokens"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"] == "/account/password", url
    token = csrf_token_in(client.get("/account/password").get_data(as_text=True))
    posted = client.post("/orders/new", data={"csrf_token": token})
    assert posted.headers["Location"] == "/account/password"
    page = client.get("/account/password")
    assert page.status_code == 200
    assert "does not meet the password policy" in page.get_data(as_text=True)

    # Still weak: refused; a good one ends the detour.
    assert _change(client, weak, "password").status_code == 400
    assert client.get("/").headers["Location"] == "/account/password"
    assert _change(client, weak, NEW).status_code == 302
    assert _flag(session_factory, "old") is False
    assert client.get("/").status_code == 200
    assert client.get("/admin").status_code == 200
    assert "does not meet" not in client.get("/account/password").get_data(as_text=True)


def test_a_good_password_at_login_is_not_sent_to_change_it(csrf_app: Flask, session_factory, admin):
    client = csrf_app.test_client()
    assert _log_in(client, admin, GOOD).headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert _flag(session_factory, admin) is False


@pytest.mark.browser
def test_in_chromium_a_weak_password_is_changed_at_first_login(
    settings, reader_factory, session_factory
):
    from playwright.sync_api import expect

    from web import create_app

    _weak_account(session_factory, "old", "password")
    app = create_app(settings, reader_factory, config={"TESTING": True})  # CSRF on
    with serving(app) as base, chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/login")
        page.get_by_label("User name").fill("old")
        page.get_by_label("Password").fill("password")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Change password")
        expect(page.get_by_role("alert")).to_contain_text("does not meet the password policy")
        page.goto(f"{base}/messages")
        expect(page.get_by_role("heading", level=1)).to_have_text("Change password")

        page.get_by_label("Current password").fill("password")
        page.get_by_label("New password", exact=True).fill("old password 2")
        page.get_by_label("New password again").fill("old password 2")
        page.get_by_role("button", name="Change password").click()
        expect(page.locator("#new-error")).to_have_text("Use at least 15 characters.")
        screenshot(page, "password-refused")

        page.get_by_label("Current password").fill("password")
        page.get_by_label("New password", exact=True).fill(NEW)
        page.get_by_label("New password again").fill(NEW)
        page.get_by_role("button", name="Change password").click()
        expect(
            page.get_by_role("status").filter(has_text="Your password has been changed.")
        ).to_be_visible()
        expect(page.get_by_role("heading", level=1)).not_to_have_text("Change password")
        page.goto(f"{base}/messages")
        expect(page.get_by_role("heading", level=1)).not_to_have_text("Change password")
    assert _flag(session_factory, "old") is False
    assert _password_works(session_factory, "old", NEW)
