"""User accounts (mwl.admin.users) against the migrated database."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from werkzeug.security import check_password_hash

from mwl.admin.users import (
    add_user,
    authenticate,
    check_password,
    hash_password,
    list_users,
    remove_user,
    set_password,
    set_role,
)
from mwl.errors import UserError
from mwl.store.models import User


@pytest.mark.production_password_cost
def test_add_user_stores_a_salted_scrypt_hash_not_the_password(session_factory):
    with session_factory.begin() as session:
        add_user(session, "  Bob ", "s3cret passphrase 42", "editor")
    with session_factory() as session:
        row = session.scalars(select(User)).one()
    assert row.username == "bob"
    assert row.role == "editor"
    assert "s3cret" not in row.password_hash
    assert row.password_hash.startswith("scrypt:32768:8:1$")
    # werkzeug's format, so either library can check it.
    assert check_password_hash(row.password_hash, "s3cret passphrase 42")
    assert hash_password("s3cret passphrase 42") != row.password_hash  # a fresh salt each time


def test_authenticate_accepts_the_right_password_only(session_factory):
    with session_factory.begin() as session:
        add_user(session, "carol", "right password, long enough", "viewer")
    with session_factory() as session:
        user = authenticate(session, "Carol", "right password, long enough")
        assert user is not None and user.username == "carol"
        assert authenticate(session, "carol", "wrong password") is None
        assert authenticate(session, "carol", "") is None
        assert authenticate(session, "nobody", "right password, long enough") is None
        assert authenticate(session, "", "right password, long enough") is None


@pytest.mark.parametrize(
    ("username", "password", "role", "message"),
    [
        ("dave", "", "viewer", "password must not be empty"),
        ("", "a long enough pass phrase", "viewer", "username must not be empty"),
        ("da ve", "a long enough pass phrase", "viewer", "spaces"),
        ("x" * 65, "a long enough pass phrase", "viewer", "longer than 64"),
        ("dave", "a long enough pass phrase", "superuser", "unknown role"),
    ],
)
def test_add_user_rejects_bad_input(session_factory, username, password, role, message):
    with pytest.raises(UserError, match=message):
        with session_factory.begin() as session:
            add_user(session, username, password, role)
    with session_factory() as session:
        assert list_users(session) == []


def test_duplicate_username_is_refused_whatever_the_case(session_factory):
    with session_factory.begin() as session:
        add_user(session, "erin", "first long pass phrase", "admin")
    with pytest.raises(UserError, match="already exists"):
        with session_factory.begin() as session:
            add_user(session, "ERIN", "second long pass phrase", "viewer")
    with session_factory() as session:
        assert [(u.username, u.role) for u in list_users(session)] == [("erin", "admin")]


def test_set_password_set_role_list_and_remove(session_factory):
    with session_factory.begin() as session:
        add_user(session, "zoe", "the old pass phrase", "viewer")
        add_user(session, "adam", "his own pass phrase", "viewer")
    with session_factory.begin() as session:
        set_password(session, "zoe", "the new pass phrase")
        set_role(session, "zoe", "admin")
    with session_factory() as session:
        assert authenticate(session, "zoe", "the old pass phrase") is None
        zoe = authenticate(session, "zoe", "the new pass phrase")
        assert zoe is not None and zoe.role == "admin"
        assert [u.username for u in list_users(session)] == ["adam", "zoe"]
    with session_factory.begin() as session:
        remove_user(session, "zoe")
    with session_factory() as session:
        assert [u.username for u in list_users(session)] == ["adam"]
    for change in (
        lambda s: set_password(s, "zoe", "another pass phrase"),
        lambda s: remove_user(s, "zoe"),
        lambda s: set_role(s, "adam", "root"),
    ):
        with pytest.raises(UserError):
            with session_factory.begin() as session:
                change(session)
    with pytest.raises(UserError, match="must not be empty"):
        with session_factory.begin() as session:
            set_password(session, "adam", "")


@pytest.mark.parametrize("stored", ["", "plain", "pbkdf2:sha256$salt$abc", "scrypt:x:8:1$s$h"])
def test_check_password_refuses_hashes_it_does_not_know(stored):
    assert check_password(stored, "anything") is False
