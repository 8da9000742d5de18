"""External accounts (OpenID Connect, LDAP): role from claim values, the user row kept."""

from __future__ import annotations

import pytest

from mwl.admin import external
from mwl.admin.sessions import start_session
from mwl.admin.users import Role, add_user, authenticate, find_user, set_password
from mwl.config import Settings, SettingsError, load_settings
from mwl.errors import UserError
from mwl.store.models import WebSession

ROLE_MAP = (("mwl-viewers", "viewer"), ("MWL-Admins", "admin"), ("mwl-editors", "editor"))


def test_the_highest_mapped_role_wins_and_case_does_not_matter():
    assert external.role_for(["staff", "mwl-editors", "mwl-admins"], ROLE_MAP) is Role.ADMIN
    assert external.role_for(["mwl-viewers", "mwl-editors"], ROLE_MAP) is Role.EDITOR
    assert external.role_for(["staff"], ROLE_MAP) is None
    assert external.role_for([], ROLE_MAP) is None


def test_the_row_is_made_then_its_role_follows_the_provider(session_factory):
    with session_factory.begin() as session:
        user = external.external_login(session, "Erin", external.OIDC, Role.EDITOR)
        assert user is not None
        key = user.id
        session_id = start_session(session, key)
    with session_factory.begin() as session:
        user = external.external_login(session, "erin", external.OIDC, Role.ADMIN)
        assert user is not None and user.id == key and user.role == "admin"
        # A changed role ends the sessions opened under the old one.
        assert session_id
        assert session.query(WebSession).filter_by(user_key=key).count() == 0
    with session_factory() as session:
        row = find_user(session, "erin")
        assert row is not None and row.external_source == "oidc"
        # No local password opens it, and none can be set.
        assert authenticate(session, "erin", external.NO_PASSWORD) is None
    with session_factory.begin() as session, pytest.raises(UserError, match="no local password"):
        set_password(session, "erin", "correct horse battery staple")


def test_no_role_any_more_removes_the_row_and_its_sessions(session_factory):
    with session_factory.begin() as session:
        user = external.external_login(session, "erin", external.LDAP, Role.VIEWER)
        assert user is not None
        key = user.id
        start_session(session, key)
    with session_factory.begin() as session:
        assert external.external_login(session, "erin", external.LDAP, None) is None
    with session_factory() as session:
        assert find_user(session, "erin") is None
        assert session.query(WebSession).filter_by(user_key=key).count() == 0


def test_a_local_account_or_the_other_source_is_never_taken_over(session_factory):
    with session_factory.begin() as session:
        add_user(session, "admin", "correct horse battery staple", "admin")
        external.external_login(session, "carol", external.LDAP, Role.VIEWER)
    with session_factory.begin() as session:
        with pytest.raises(UserError):
            external.external_login(session, "admin", external.OIDC, Role.ADMIN)
        with pytest.raises(UserError):
            external.external_login(session, "carol", external.OIDC, Role.ADMIN)
        # Nor removed by a provider that grants nothing.
        with pytest.raises(UserError):
            external.external_login(session, "admin", external.OIDC, None)
    with session_factory() as session:
        admin = find_user(session, "admin")
        assert admin is not None and admin.external_source is None
        assert authenticate(session, "admin", "correct horse battery staple") is not None


def test_an_invalid_name_from_the_provider_is_refused(session_factory):
    with session_factory.begin() as session, pytest.raises(UserError):
        external.external_login(session, "two words", external.OIDC, Role.VIEWER)


def test_sso_settings_are_checked():
    env = {
        "MWL_OIDC_ISSUER": "https://sso.example.org/realms/hospital",
        "MWL_OIDC_CLIENT_ID": "mwl",
        "MWL_OIDC_ROLE_MAP": '{"mwl-admin": "admin"}',
    }
    assert load_settings(environ=env).oidc_role_map == (("mwl-admin", "admin"),)
    with pytest.raises(SettingsError, match="oidc_issuer"):
        load_settings(environ={**env, "MWL_OIDC_ISSUER": "http://sso.example.org"})
    with pytest.raises(SettingsError, match="MWL_OIDC_ROLE_MAP.*'root'.*is not a role"):
        load_settings(environ={**env, "MWL_OIDC_ROLE_MAP": '{"mwl-admin": "root"}'})
    with pytest.raises(SettingsError, match="oidc_role_map"):
        load_settings(environ={**env, "MWL_OIDC_ROLE_MAP": "{}"})
    with pytest.raises(SettingsError, match="ldap_user_dn_template"):
        Settings(ldap_url="ldap://127.0.0.1", ldap_group_role_map=(("cn=g", "viewer"),))
    with pytest.raises(SettingsError, match="ldap_url"):
        Settings(ldap_url="http://127.0.0.1", ldap_user_dn_template="uid={username}")
    assert "oidc_client_secret" in Settings().redacted()
    secret = Settings(**{**_oidc(), "oidc_client_secret": "s3cret-value"})
    assert "s3cret-value" not in repr(secret) and "s3cret-value" not in str(secret.redacted())


def _oidc() -> dict[str, object]:
    return {
        "oidc_issuer": "https://sso.example.org",
        "oidc_client_id": "mwl",
        "oidc_role_map": (("g", "viewer"),),
    }
