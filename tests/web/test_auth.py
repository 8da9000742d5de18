"""Login, logout, CSRF, the failed-login limit and what an anonymous visitor can see."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from flask import Flask

from mwl.admin.users import set_password

DAY = dt.date(2026, 11, 21)
_CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token_in(html: str) -> str:
    """The CSRF token of the first form in ``html``."""
    found = _CSRF_INPUT.search(html)
    assert found, "the page has no csrf_token input"
    return found.group(1)


@pytest.mark.parametrize(
    "path", ["/", "/?date=2026-11-21", "/messages", "/messages/1", "/scanners"]
)
def test_pages_with_patient_data_redirect_to_login(client, add_order, path):
    add_order("ACC-SECRET", dt.datetime(2026, 11, 21, 9), patient_name="Hidden^Patient")
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert b"Hidden" not in response.data and b"ACC-SECRET" not in response.data


def test_login_form_is_accessible(client):
    response = client.get("/login")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="en">' in html
    assert '<label for="username">' in html and 'id="username"' in html
    assert '<label for="password">' in html and 'type="password"' in html


def test_wrong_password_and_unknown_user_get_the_same_answer_and_no_access(client, user, password):
    wrong = client.post("/login", data={"username": user, "password": password + "x"})
    unknown = client.post("/login", data={"username": "mallory", "password": password})
    for response in (wrong, unknown):
        assert response.status_code == 200
        assert "Unknown user name or wrong password." in response.get_data(as_text=True)
    # The CSRF token is signed with a timestamp, so it may differ between two requests.
    token = re.compile(rb'name="csrf_token" value="[^"]*"')
    assert token.sub(b"", wrong.get_data()) == token.sub(
        b"", unknown.get_data().replace(b"mallory", user.encode())
    )
    assert client.get("/").status_code == 302


def test_empty_fields_do_not_log_in(client, user):
    response = client.post("/login", data={"username": user, "password": ""})
    assert response.status_code == 200
    assert client.get("/").status_code == 302


def test_login_then_logout(client, user, password):
    response = client.post("/login", data={"username": "ALICE", "password": password})
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert "alice (viewer)" in page.get_data(as_text=True)
    # Logged-in users asking for the form go where they wanted.
    assert client.get("/login?next=/scanners").headers["Location"] == "/scanners"

    assert client.get("/logout").status_code == 405  # no logout by link or image
    response = client.post("/logout", follow_redirects=True)
    assert response.request.path == "/login"
    assert "You are logged out." in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/scanners", "/scanners"),
        ("/?date=2026-11-20", "/?date=2026-11-20"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
    ],
)
def test_login_returns_to_local_pages_only(client, user, password, target, expected):
    response = client.post(
        "/login", query_string={"next": target}, data={"username": user, "password": password}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == expected


def test_csrf_protects_login_and_logout(csrf_app: Flask, user, password):
    client = csrf_app.test_client()
    refused = client.post("/login", data={"username": user, "password": password})
    assert refused.status_code == 400
    assert "security token" in refused.get_data(as_text=True)
    assert client.get("/").status_code == 302

    token = csrf_token_in(client.get("/login").get_data(as_text=True))
    response = client.post(
        "/login", data={"username": user, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302
    page = client.get("/")
    assert page.status_code == 200

    assert client.post("/logout").status_code == 400  # forged logout: still logged in
    assert client.get("/").status_code == 200
    logout_token = csrf_token_in(page.get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": logout_token}).status_code == 302
    assert client.get("/").status_code == 302


def test_session_cookie_flags(settings, reader_factory, user, password):
    from web import create_app

    for secure in (False, True):
        app = create_app(
            settings.replace(web_secure_cookies=secure),
            reader_factory,
            config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        )
        response = app.test_client().post("/login", data={"username": user, "password": password})
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Expires=" in cookie  # a login does not outlive the idle lifetime
        assert ("Secure" in cookie) is secure


def test_repeated_failures_are_limited_per_username_and_address(client, user, password):
    for _ in range(5):
        response = client.post("/login", data={"username": user, "password": "guess"})
        assert response.status_code == 200
    blocked = client.post("/login", data={"username": user, "password": password})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many failed logins" in blocked.get_data(as_text=True)
    assert client.get("/").status_code == 302  # the right password did not get through
    # Another address is not held back by these failures.
    elsewhere = client.post(
        "/login",
        data={"username": user, "password": password},
        environ_base={"REMOTE_ADDR": "127.0.0.2"},
    )
    assert elsewhere.status_code == 302


def test_a_password_change_ends_existing_sessions(logged_in, session_factory, user):
    assert logged_in.get("/").status_code == 200
    with session_factory.begin() as session:
        set_password(session, user, "a new password, long enough")
    assert logged_in.get("/").status_code == 302


def test_pages_forbid_framing_and_caching(logged_in):
    response = logged_in.get("/")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
