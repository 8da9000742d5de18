"""/account/tokens: each user's own API tokens (created, shown once, revoked); admins see all."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mwl.admin.tokens import create_token, list_tokens
from mwl.admin.users import add_user
from tests.web.conftest import PASSWORD


def log_in(app: Flask, username: str) -> FlaskClient:
    client = app.test_client()
    response = client.post("/login", data={"username": username, "password": PASSWORD})
    assert response.status_code == 302
    return client


def tokens_of(session_factory, username: str | None = None):
    with session_factory() as session:
        return list_tokens(session, username)


@pytest.fixture
def others(session_factory) -> None:
    """An admin ``root`` and a viewer ``bob`` with a token called ``bob's script``."""
    with session_factory.begin() as session:
        add_user(session, "root", PASSWORD, "admin")
        add_user(session, "bob", PASSWORD, "viewer")
        create_token(session, "bob", "bob's script")


def test_the_page_needs_a_login(client):
    response = client.get("/account/tokens")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.post("/account/tokens", data={"name": "x"}).status_code == 302


def test_a_token_is_shown_once_and_then_works_for_the_api(logged_in, session_factory, others):
    page = logged_in.get("/account/tokens").get_data(as_text=True)
    assert 'href="/account/tokens" aria-current="page"' in page  # the header link
    assert "No tokens yet." in page and "bob&#39;s script" not in page

    response = logged_in.post("/account/tokens", data={"name": "RIS import"})
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    (token,) = re.findall(r'<code class="token-value" id="token-value">(mwl_[\w-]+)</code>', page)
    assert "shown only this once" in page
    assert '<th scope="row">RIS import</th>' in page  # listed at once
    assert response.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response.headers or token not in response.headers["Set-Cookie"]
    (info,) = tokens_of(session_factory, "alice")
    assert info.name == "RIS import"

    listed = logged_in.get("/account/tokens").get_data(as_text=True)
    assert "RIS import" in listed and token not in listed and "never" in listed

    api = logged_in.application.test_client()
    answer = api.get("/api/v1/aes", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    after = logged_in.get("/account/tokens").get_data(as_text=True)
    assert "never" not in after  # last use is shown


def test_a_bad_name_is_refused_and_nothing_stored(logged_in, session_factory):
    for name in ("x" * 65, "tab\there"):
        response = logged_in.post("/account/tokens", data={"name": name})
        assert response.status_code == 400
        page = response.get_data(as_text=True)
        assert 'aria-invalid="true"' in page and 'aria-describedby="name-hint name-error"' in page
        assert 'class="field-error" id="name-error"' in page
        assert "token-value" not in page
    assert tokens_of(session_factory) == []


def test_a_user_revokes_their_own_tokens_only(logged_in, session_factory, others):
    logged_in.post("/account/tokens", data={"name": "mine"})
    (mine,) = tokens_of(session_factory, "alice")
    (bobs,) = tokens_of(session_factory, "bob")

    refused = logged_in.post(f"/account/tokens/{bobs.key}/revoke")
    assert refused.status_code == 404
    assert [t.key for t in tokens_of(session_factory, "bob")] == [bobs.key]

    # The button asks first; the confirmation page posts again with confirm=yes.
    asked = logged_in.post(f"/account/tokens/{mine.key}/revoke")
    assert asked.status_code == 200 and "Revoke this token?" in asked.get_data(as_text=True)
    assert "This cannot be undone" in asked.get_data(as_text=True)
    assert [t.key for t in tokens_of(session_factory, "alice")] == [mine.key]
    response = logged_in.post(
        f"/account/tokens/{mine.key}/revoke", data={"confirm": "yes"}, follow_redirects=True
    )
    assert response.status_code == 200
    assert "Token mine revoked." in response.get_data(as_text=True)
    assert tokens_of(session_factory, "alice") == []
    assert logged_in.post(f"/account/tokens/{mine.key}/revoke").status_code == 404


def test_an_admin_sees_and_revokes_everyones_tokens(app, session_factory, others):
    admin = log_in(app, "root")
    page = admin.get("/account/tokens").get_data(as_text=True)
    assert "All tokens" in page and "bob&#39;s script" in page
    assert '<th scope="col">User</th>' in page and "<td>bob</td>" in page
    (bobs,) = tokens_of(session_factory, "bob")
    response = admin.post(f"/account/tokens/{bobs.key}/revoke", data={"confirm": "yes"})
    assert response.status_code == 302
    assert tokens_of(session_factory) == []


def test_forms_need_the_csrf_token(csrf_app, session_factory, others):
    client = csrf_app.test_client()
    page = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    login = {"username": "bob", "password": PASSWORD, "csrf_token": csrf}
    assert client.post("/login", data=login).status_code == 302
    (bobs,) = tokens_of(session_factory, "bob")

    assert client.post("/account/tokens", data={"name": "forged"}).status_code == 400
    assert client.post(f"/account/tokens/{bobs.key}/revoke").status_code == 400
    assert [t.name for t in tokens_of(session_factory)] == ["bob's script"]

    page = client.get("/account/tokens").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)[1]
    created = client.post("/account/tokens", data={"name": "real", "csrf_token": csrf})
    assert created.status_code == 200 and "token-value" in created.get_data(as_text=True)
    assert (
        client.post(
            f"/account/tokens/{bobs.key}/revoke", data={"csrf_token": csrf, "confirm": "yes"}
        ).status_code
        == 302
    )
    assert [t.name for t in tokens_of(session_factory)] == ["real"]
