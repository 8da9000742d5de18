"""The users page: admins create, disable, enable, reset and change roles, all audited."""

from __future__ import annotations

import dataclasses
import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.admin.external import LDAP, external_login
from mwl.admin.passwords import password_problem
from mwl.admin.tokens import authenticate_token, create_token
from mwl.admin.users import Role, add_user, find_user
from mwl.audit.auditor import Auditor
from mwl.config import Settings
from mwl.store.models import AuditEvent, AuditQueueMessage
from tests.audit.rsyslog import SCHEMA
from web import create_app

ADMIN_PASSWORD = "admin passphrase for the tests"
PASSWORD = "a long enough passphrase 7"


@pytest.fixture
def audited_app(settings: Settings, reader_factory: sessionmaker[Session]) -> Flask:
    """The app with ATNA audit on (messages stay in the queue: no sender runs)."""
    audited = dataclasses.replace(
        settings, audit_syslog_host="127.0.0.1", audit_syslog_transport="udp"
    )
    return create_app(
        audited,
        reader_factory,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
        auditor=Auditor(audited),
    )


@pytest.fixture
def admin(audited_app: Flask, session_factory: sessionmaker[Session]) -> FlaskClient:
    with session_factory.begin() as session:
        add_user(session, "root", ADMIN_PASSWORD, Role.ADMIN)
    client = audited_app.test_client()
    response = client.post("/login", data={"username": "root", "password": ADMIN_PASSWORD})
    assert response.status_code == 302
    return client


def _create(client: FlaskClient, name: str, role: str = "viewer", password: str = PASSWORD):
    return client.post(
        "/admin/users",
        data={
            "new-username": name,
            "new-role": role,
            "new-password": password,
            "new-repeat_password": password,
        },
    )


def _alerts(session_factory: sessionmaker[Session]) -> list[etree._Element]:
    with session_factory() as session:
        texts = session.scalars(select(AuditQueueMessage.message).order_by(AuditQueueMessage.id))
        documents = [etree.fromstring(text.encode()) for text in texts]
    for document in documents:
        assert SCHEMA.validate(document), SCHEMA.error_log
    return [
        d for d in documents if d.find("EventIdentification/EventID").get("csd-code") == "110113"
    ]


def _trail(session_factory: sessionmaker[Session]) -> list[tuple[str, str, dict]]:
    with session_factory() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith("user-")).order_by(AuditEvent.id)
        )
        return [(r.action, r.subject, json.loads(r.changes)) for r in rows]


def test_admin_creates_a_user_who_must_change_the_first_password(admin, session_factory):
    response = _create(admin, "Bob", "editor")
    assert response.status_code == 302
    page = admin.get("/admin/users").text
    assert "User bob created." in page and "must change the password" in page
    with session_factory() as session:
        bob = find_user(session, "bob")
        assert bob is not None and bob.role == "editor" and bob.must_change_password
    assert _trail(session_factory)[-1] == ("user-create", "user:bob", {"role": [None, "editor"]})
    (alert,) = _alerts(session_factory)
    assert alert.find("EventIdentification/EventTypeCode").get("csd-code") == "110137"
    subject = alert.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "bob"
    assert alert.find("ActiveParticipant").get("UserID") == "root"


@pytest.mark.parametrize(
    "password", ["short", "polniypizdec0211", "bobbobbob is my password", "x" * 20]
)
def test_the_page_refuses_what_the_cli_policy_refuses(admin, session_factory, password):
    # The same rules as `mwl user add` (both call mwl.admin.passwords).
    assert password_problem(password, "bob") is not None
    response = _create(admin, "bob", password=password)
    assert response.status_code == 400
    assert 'aria-invalid="true"' in response.text and "field-error" in response.text
    with session_factory() as session:
        assert find_user(session, "bob") is None
    assert _alerts(session_factory) == []


def test_all_errors_at_once_and_values_kept(admin):
    response = admin.post(
        "/admin/users",
        data={
            "new-username": "",
            "new-role": "editor",
            "new-password": "a",
            "new-repeat_password": "b",
        },
    )
    assert response.status_code == 400
    # No name, a password too short, and the two differ: all three at once.
    assert response.text.count('class="field-error"') == 3
    assert '<option selected value="editor">' in response.text


def test_a_taken_name_is_refused(admin, user):
    response = _create(admin, "Alice")
    assert response.status_code == 400 and "This user name is taken." in response.text


def test_disable_is_confirmed_then_ends_login_and_tokens(
    admin, audited_app, session_factory, user, password
):
    with session_factory.begin() as session:
        token = create_token(session, user, "script")
    alice_key = _key(session_factory, user)
    victim = audited_app.test_client()
    assert victim.post("/login", data={"username": user, "password": password}).status_code == 302

    asked = admin.post(f"/admin/users/{alice_key}/disable")
    assert asked.status_code == 200 and "Disable the account alice?" in asked.text
    assert 'name="confirmed" value="yes"' in asked.text
    with session_factory() as session:
        assert not find_user(session, user).disabled  # nothing happened yet

    done = admin.post(f"/admin/users/{alice_key}/disable", data={"confirmed": "yes"})
    assert done.status_code == 303
    assert victim.get("/").status_code == 302  # its session ended
    assert victim.post("/login", data={"username": user, "password": password}).status_code == 200
    with session_factory.begin() as session:
        assert authenticate_token(session, token) is None
    assert _trail(session_factory)[-1][:2] == ("user-disable", "user:alice")

    admin.post(f"/admin/users/{alice_key}/enable")
    assert victim.post("/login", data={"username": user, "password": password}).status_code == 302
    with session_factory.begin() as session:
        assert authenticate_token(session, token) is not None
    kinds = [
        a.find("EventIdentification/EventOutcomeDescription").text for a in _alerts(session_factory)
    ]
    assert kinds == ["disabled", "enabled"]


def test_reset_password_forces_a_change_at_next_login(admin, audited_app, session_factory, user):
    key = _key(session_factory, user)
    weak = admin.post(
        f"/admin/users/{key}/password",
        data={f"r{key}-password": "short", f"r{key}-repeat_password": "short"},
    )
    assert weak.status_code == 400 and "Use at least 15 characters." in weak.text
    new = "a brand new passphrase 9"
    done = admin.post(
        f"/admin/users/{key}/password",
        data={f"r{key}-password": new, f"r{key}-repeat_password": new},
    )
    assert done.status_code == 303
    client = audited_app.test_client()
    client.post("/login", data={"username": user, "password": new})
    assert client.get("/").headers["Location"] == "/account/password"
    action, subject, changes = _trail(session_factory)[-1]
    assert (action, subject) == ("user-password", "user:alice")
    assert new not in json.dumps(changes)
    (alert,) = _alerts(session_factory)
    assert alert.find("EventIdentification/EventTypeCode").get("csd-code") == "110137"


def test_lowering_a_role_is_confirmed_raising_is_not(admin, session_factory, user):
    key = _key(session_factory, user)
    raised = admin.post(f"/admin/users/{key}/role", data={f"u{key}-role": "editor"})
    assert raised.status_code == 303
    asked = admin.post(f"/admin/users/{key}/role", data={f"u{key}-role": "viewer"})
    assert asked.status_code == 200 and "from editor to viewer" in asked.text
    with session_factory() as session:
        assert find_user(session, user).role == "editor"
    admin.post(f"/admin/users/{key}/role", data={f"u{key}-role": "viewer", "confirmed": "yes"})
    with session_factory() as session:
        assert find_user(session, user).role == "viewer"
    alerts = _alerts(session_factory)
    assert [a.find("EventIdentification/EventTypeCode").get("csd-code") for a in alerts] == [
        "110136",
        "110136",
    ]
    assert [t[2] for t in _trail(session_factory) if t[0] == "user-role"] == [
        {"role": ["viewer", "editor"]},
        {"role": ["editor", "viewer"]},
    ]


def test_the_last_admin_keeps_the_role_and_nobody_disables_themselves(admin, session_factory):
    key = _key(session_factory, "root")
    response = admin.post(
        f"/admin/users/{key}/role", data={f"u{key}-role": "viewer", "confirmed": "yes"}
    )
    assert response.status_code == 303
    assert "The last admin cannot lose the admin role." in admin.get("/admin/users").text
    admin.post(f"/admin/users/{key}/disable", data={"confirmed": "yes"})
    assert "You cannot disable your own account." in admin.get("/admin/users").text
    with session_factory() as session:
        root = find_user(session, "root")
        assert root.role == "admin" and not root.disabled


def test_directory_accounts_show_their_role_read_only(admin, session_factory):
    with session_factory.begin() as session:
        external_login(session, "dora", LDAP, Role.EDITOR)
    key = _key(session_factory, "dora")
    page = admin.get("/admin/users").text
    row = page[page.index(f'id="user-{key}"') :]
    row = row[: row.index("</tr>")]
    assert "directory (LDAP)" in row and "given by the directory" in row
    assert "<select" not in row and "Disable" not in row and "Reset password" not in row
    assert admin.post(f"/admin/users/{key}/role", data={f"u{key}-role": "admin"}).status_code == 409
    assert admin.post(f"/admin/users/{key}/disable", data={"confirmed": "yes"}).status_code == 409
    with session_factory() as session:
        assert find_user(session, "dora").role == "editor"


def test_only_admins_see_the_page(client, user, password):
    client.post("/login", data={"username": user, "password": password})
    assert client.get("/admin/users").status_code == 403
    assert "/admin/users" not in client.get("/").text


def test_german_users_page(admin, session_factory):
    german = {"Accept-Language": "de-CH"}
    page = admin.get("/admin/users", headers=german).text
    assert "<h1>Benutzer</h1>" in page and '<html lang="de-CH">' in page
    response = admin.post(
        "/admin/users",
        data={
            "new-username": "",
            "new-role": "viewer",
            "new-password": "kurz",
            "new-repeat_password": "kurz",
        },
        headers=german,
    )
    assert "Dieses Feld wird benötigt." in response.text  # WTForms' German catalog
    response = _create(admin, "eve", password="kurz")
    assert response.status_code == 400


def _key(session_factory: sessionmaker[Session], name: str) -> int:
    with session_factory() as session:
        found = find_user(session, name)
        assert found is not None
        return found.id


def test_the_language_switch_on_a_form_with_errors_comes_back_to_the_form(admin):
    response = _create(admin, "", password="x")
    assert response.status_code == 400
    assert '<input type="hidden" name="next" value="/admin/users">' in response.text
    listed = admin.get("/admin/users?sort=name&x=%C3%A4").text
    assert '<input type="hidden" name="next" value="/admin/users?sort=name&amp;x=%C3%A4">' in listed
