"""Every route of the web app, for every role: who gets in and who is turned away.

The table below names the least role each route needs. A route added without a line
here fails :func:`test_every_route_has_an_access_rule`, so no page can ship without
its access being decided and tested.
"""

from __future__ import annotations

import datetime as dt

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.tokens import create_token
from mwl.admin.users import Role, add_user
from tests.web.conftest import PASSWORD

PUBLIC = "public"
ROLES = (Role.VIEWER, Role.EDITOR, Role.ADMIN)
RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}

# (endpoint, method) -> least role, or PUBLIC. API routes authenticate with a
# bearer token; every other route with the session cookie.
ACCESS: dict[tuple[str, str], Role | str] = {
    ("status.healthz", "GET"): PUBLIC,
    # Monitoring: no login, but only from metrics_allowed_networks (tests/web/test_health.py).
    ("health.metrics_page", "GET"): PUBLIC,
    ("health.health", "GET"): PUBLIC,
    ("health.ready", "GET"): PUBLIC,
    ("auth.login", "GET"): PUBLIC,
    ("auth.login", "POST"): PUBLIC,
    ("auth.logout", "POST"): PUBLIC,
    ("i18n.choose", "POST"): PUBLIC,
    ("static", "GET"): PUBLIC,
    ("api.openapi_document", "GET"): PUBLIC,
    ("worklist.day", "GET"): Role.VIEWER,
    ("worklist.changes", "GET"): Role.VIEWER,
    ("daylist.export", "GET"): Role.VIEWER,
    ("daylist.print_view", "GET"): Role.VIEWER,
    ("daylist.bulk_confirm", "POST"): Role.EDITOR,
    ("daylist.bulk_apply", "POST"): Role.EDITOR,
    ("items.detail", "GET"): Role.VIEWER,
    ("items.edit", "GET"): Role.EDITOR,
    ("items.edit", "POST"): Role.EDITOR,
    ("items.cancel", "POST"): Role.EDITOR,
    ("items.restore", "POST"): Role.EDITOR,
    ("items.status", "POST"): Role.EDITOR,
    ("items.station_rules", "GET"): Role.ADMIN,
    ("items.station_rules", "POST"): Role.ADMIN,
    ("items.new_order", "GET"): Role.EDITOR,
    ("items.new_order", "POST"): Role.EDITOR,
    ("messages.index", "GET"): Role.VIEWER,
    ("messages.detail", "GET"): Role.VIEWER,
    ("messages.reprocess", "POST"): Role.EDITOR,
    ("messages.reprocess_preview", "GET"): Role.EDITOR,
    ("messages.reprocess_apply", "POST"): Role.EDITOR,
    ("scanners.index", "GET"): Role.VIEWER,
    ("scanners.history", "GET"): Role.VIEWER,
    ("scanners.test", "GET"): Role.VIEWER,
    ("tokens.index", "GET"): Role.VIEWER,
    ("tokens.create", "POST"): Role.VIEWER,
    ("tokens.revoke", "POST"): Role.VIEWER,
    ("account.password", "GET"): Role.VIEWER,
    ("account.password", "POST"): Role.VIEWER,
    ("admin.index", "GET"): Role.ADMIN,
    ("admin.aes", "GET"): Role.ADMIN,
    ("admin.aes", "POST"): Role.ADMIN,
    ("admin.hl7", "GET"): Role.ADMIN,
    ("admin.hl7", "POST"): Role.ADMIN,
    ("alerts.index", "GET"): Role.VIEWER,
    ("alerts.settings", "GET"): Role.ADMIN,
    ("alerts.settings", "POST"): Role.ADMIN,
    ("admin.reset", "POST"): Role.ADMIN,
    ("users.index", "GET"): Role.ADMIN,
    ("users.create", "POST"): Role.ADMIN,
    ("users.change_role", "POST"): Role.ADMIN,
    ("users.disable", "POST"): Role.ADMIN,
    ("users.enable", "POST"): Role.ADMIN,
    ("users.reset", "POST"): Role.ADMIN,
    ("api.list_items", "GET"): Role.VIEWER,
    ("api.show_item", "GET"): Role.VIEWER,
    ("api.create_item", "POST"): Role.EDITOR,
    ("api.update_item", "PATCH"): Role.EDITOR,
    ("api.cancel_item", "POST"): Role.EDITOR,
    ("api.restore_item", "POST"): Role.EDITOR,
    ("api.list_messages", "GET"): Role.VIEWER,
    ("api.show_message", "GET"): Role.VIEWER,
    ("api.list_aes", "GET"): Role.VIEWER,
    # DICOMweb (web/dicomweb.py): bearer tokens, as the API.
    ("dicomweb.search", "GET"): Role.VIEWER,
    ("dicomweb.retrieve", "GET"): Role.VIEWER,
    ("dicomweb.create_or_update", "POST"): Role.EDITOR,
}
TOKEN_PREFIXES = ("/api/", "/dicomweb/")

# Values for the variable parts of the rules.
ARGUMENTS = {
    "key": 1,
    "name": "hl7_modality_map",
    "filename": "style.css",
    "uid": "1.2.826.0.1.3680043.10.543.77",
}


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (rule.endpoint, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }


def _url(app: Flask, endpoint: str) -> str:
    with app.test_request_context():
        rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
        from flask import url_for

        return url_for(endpoint, **{name: ARGUMENTS[name] for name in rule.arguments})


def _guarded() -> list[tuple[str, str, Role]]:
    return sorted(
        (endpoint, method, role)
        for (endpoint, method), role in ACCESS.items()
        if isinstance(role, Role)
    )


def test_every_route_has_an_access_rule(app: Flask) -> None:
    routes = _routes(app)
    missing = routes - ACCESS.keys()
    assert not missing, f"routes without an access rule in this test: {sorted(missing)}"
    gone = ACCESS.keys() - routes
    assert not gone, f"access rules for routes that no longer exist: {sorted(gone)}"


@pytest.fixture
def accounts(session_factory: sessionmaker[Session]) -> dict[Role, str]:
    """One account per role, plus an API token for each; returns role -> token."""
    tokens = {}
    with session_factory.begin() as session:
        for role in ROLES:
            add_user(session, f"user-{role.value}", PASSWORD, role)
        session.flush()
        for role in ROLES:
            tokens[role] = create_token(session, f"user-{role.value}", "route test")
    return tokens


def _client_as(app: Flask, role: Role) -> FlaskClient:
    client = app.test_client()
    response = client.post("/login", data={"username": f"user-{role.value}", "password": PASSWORD})
    assert response.status_code == 302, f"log in as {role.value} failed"
    return client


def _call(client: FlaskClient, method: str, url: str, **kwargs: object):  # noqa: ANN202
    if method == "PATCH" or (method == "POST" and url.startswith(TOKEN_PREFIXES)):
        kwargs.setdefault("json", {})
    return client.open(url, method=method, **kwargs)


def test_anonymous_visitors_are_sent_to_log_in_or_refused(app: Flask, accounts) -> None:
    client = app.test_client()
    for endpoint, method, _role in _guarded():
        url = _url(app, endpoint)
        response = _call(client, method, url)
        if url.startswith(TOKEN_PREFIXES):
            assert response.status_code == 401, (endpoint, method, response.status_code)
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
        else:
            assert response.status_code == 302, (endpoint, method, response.status_code)
            assert response.headers["Location"].startswith("/login"), (endpoint, method)


def test_each_role_gets_exactly_the_routes_it_may_use(
    app: Flask, accounts: dict[Role, str], add_order
) -> None:
    add_order("ACC-ROUTES", dt.datetime.combine(dt.date.today(), dt.time(9, 0)))
    clients = {role: _client_as(app, role) for role in ROLES}
    for endpoint, method, least in _guarded():
        url = _url(app, endpoint)
        for role in ROLES:
            if url.startswith(TOKEN_PREFIXES):
                client = app.test_client()
                headers = {"Authorization": f"Bearer {accounts[role]}"}
                response = _call(client, method, url, headers=headers)
            else:
                response = _call(clients[role], method, url)
            allowed = RANK[role] >= RANK[least]
            where = (endpoint, method, role.value, response.status_code)
            if allowed:
                assert response.status_code not in (401, 403), where
                assert response.status_code < 500, where
                if response.status_code == 302:
                    assert not response.headers["Location"].startswith("/login"), where
            else:
                assert response.status_code == 403, where


def test_forms_need_the_csrf_token(csrf_app: Flask, accounts: dict[Role, str]) -> None:
    client = _client_as_with_csrf(csrf_app)
    for (endpoint, method), least in sorted(ACCESS.items(), key=str):
        if method != "POST" or endpoint.startswith(("api.", "dicomweb.")) or least == PUBLIC:
            continue
        response = client.post(_url(csrf_app, endpoint), data={})
        assert response.status_code == 400, (endpoint, response.status_code)
        assert "security token" in response.get_data(as_text=True), endpoint


def _client_as_with_csrf(app: Flask) -> FlaskClient:
    import re

    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    found = re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', page)
    assert found, "no CSRF token on the login form"
    response = client.post(
        "/login",
        data={"username": "user-admin", "password": PASSWORD, "csrf_token": found.group(1)},
    )
    assert response.status_code == 302
    return client
