"""API tokens (mwl.admin.tokens) against the migrated database."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import select

from mwl.admin.tokens import (
    TokenError,
    authenticate_token,
    create_token,
    find_token,
    list_tokens,
    revoke_token,
)
from mwl.admin.users import add_user, remove_user, set_role
from mwl.errors import UserError
from mwl.store.models import ApiToken

T0 = dt.datetime(2030, 5, 6, 7, 8, 9)


@pytest.fixture
def users(session_factory):
    with session_factory.begin() as session:
        add_user(session, "alice", "her own pass phrase", "viewer")
        add_user(session, "bob", "his own pass phrase", "editor")


def test_create_token_returns_it_once_and_stores_only_its_hash(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, " Alice ", "  RIS import ")
    assert token.startswith("mwl_") and len(token) == 4 + 43
    with session_factory() as session:
        row = session.scalars(select(ApiToken)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.name)
    assert row.name == "RIS import"
    assert row.last_used_at is None
    with session_factory.begin() as session:
        assert create_token(session, "alice") != token  # random each time


def test_authenticate_token_finds_the_user_with_the_current_role(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "alice", "script")
    with session_factory.begin() as session:
        user = authenticate_token(session, token)
        assert user is not None and (user.username, user.role) == ("alice", "viewer")
        set_role(session, "alice", "admin")
    with session_factory.begin() as session:
        user = authenticate_token(session, token)
        assert user is not None and user.role == "admin"


def test_unknown_malformed_and_altered_tokens_are_refused(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "alice")
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    presented = [
        "",
        "mwl_",
        "mwl_wrong",
        "Bearer " + token,
        token + " ",
        altered,
        "mwl_" + "a" * 500,
        "m\u00fcl_\x00",
    ]
    with session_factory.begin() as session:
        for value in presented:
            assert authenticate_token(session, value) is None, value
        assert authenticate_token(session, token) is not None


def test_last_use_is_recorded_at_most_once_a_minute(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "alice")

    def last_used():
        with session_factory() as session:
            return session.scalars(select(ApiToken.last_used_at)).one()

    with session_factory.begin() as session:
        found = find_token(session, token)  # looks only
        assert found is not None and found[1].username == "alice"
    assert last_used() is None
    with session_factory.begin() as session:
        authenticate_token(session, token, now=T0)
    assert last_used() == T0
    with session_factory.begin() as session:
        authenticate_token(session, token, now=T0 + dt.timedelta(seconds=59))
    assert last_used() == T0
    with session_factory.begin() as session:
        authenticate_token(session, token, now=T0 + dt.timedelta(seconds=61))
    assert last_used() == T0 + dt.timedelta(seconds=61)


def test_list_tokens_per_user_and_for_everyone(session_factory, users):
    with session_factory.begin() as session:
        create_token(session, "bob", "second")
        create_token(session, "alice", "one")
        create_token(session, "bob", "third")
    with session_factory() as session:
        everyone = list_tokens(session)
        bobs = list_tokens(session, "BOB")
    assert [(t.username, t.name) for t in everyone] == [
        ("alice", "one"),
        ("bob", "second"),
        ("bob", "third"),
    ]
    assert [t.name for t in bobs] == ["second", "third"]
    assert all(t.created_at is not None and t.last_used_at is None for t in everyone)


def test_revoked_token_no_longer_authenticates(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "alice", "old")
        kept = create_token(session, "alice", "kept")
    with session_factory() as session:
        key = next(t.key for t in list_tokens(session) if t.name == "old")
    with session_factory.begin() as session:
        info = revoke_token(session, key)
    assert (info.username, info.name) == ("alice", "old")
    with session_factory.begin() as session:
        assert authenticate_token(session, token) is None
        assert authenticate_token(session, kept) is not None
    with pytest.raises(TokenError, match=f"no token {key}"):
        with session_factory.begin() as session:
            revoke_token(session, key)


def test_a_user_may_revoke_only_their_own_tokens(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "bob")
    with session_factory() as session:
        (info,) = list_tokens(session)
    with pytest.raises(TokenError, match="no token"):
        with session_factory.begin() as session:
            revoke_token(session, info.key, username="alice")
    with session_factory.begin() as session:
        assert authenticate_token(session, token) is not None
        revoke_token(session, info.key, username="Bob")
    with session_factory() as session:
        assert list_tokens(session) == []


def test_removing_a_user_removes_their_tokens(session_factory, users):
    with session_factory.begin() as session:
        token = create_token(session, "alice")
        create_token(session, "bob")
    with session_factory.begin() as session:
        remove_user(session, "alice")
    with session_factory.begin() as session:
        assert authenticate_token(session, token) is None
        assert [t.username for t in list_tokens(session)] == ["bob"]


def test_create_token_refuses_bad_input_and_stores_nothing(session_factory, users):
    bad = [
        ("nobody", "", UserError, "no user 'nobody'"),
        ("alice", "x" * 65, TokenError, "longer than 64"),
        ("alice", "tab\there", TokenError, "control characters"),
    ]
    for username, name, error, message in bad:
        with pytest.raises(error, match=message):
            with session_factory.begin() as session:
                create_token(session, username, name)
    with session_factory() as session:
        assert list_tokens(session) == []
