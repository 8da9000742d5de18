"""The password policy (mwl.admin.passwords) and the accounts that must follow it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mwl.admin.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordRule,
    WeakPasswordError,
    check_password_policy,
    common_passwords,
    password_problem,
)
from mwl.admin.users import (
    add_user,
    authenticate,
    hash_password,
    require_new_password_if_weak,
    set_password,
)
from mwl.store.models import User

GOOD = "correct horse battery staple"


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("", PasswordRule.TOO_SHORT),
        ("a", PasswordRule.TOO_SHORT),
        (" ", PasswordRule.TOO_SHORT),
        ("password", PasswordRule.TOO_SHORT),
        ("x" * (MIN_LENGTH - 1), PasswordRule.TOO_SHORT),
        ("ab" * 65, PasswordRule.TOO_LONG),
        (" " * MIN_LENGTH, PasswordRule.REPEATED),
        ("a" * 40, PasswordRule.REPEATED),
        # In the shipped list (Royce Williams' 20k list as Django ships it).
        ("1q2w3e4r5t6y7u8i9o0p", PasswordRule.COMMON),
        ("123456789987654321", PasswordRule.COMMON),
        # Case-insensitive, and after NFKC: full-width digits and letters are the same.
        ("1Q2W3E4R5T6Y7U8I9O0P", PasswordRule.COMMON),
        ("１ｑ２ｗ３ｅ４ｒ５ｔ６ｙ７ｕ８ｉ９ｏ０ｐ", PasswordRule.COMMON),
        ("carol", PasswordRule.TOO_SHORT),
        ("carolcarolcarolcarol", PasswordRule.CONTAINS_USERNAME),
        ("my name is CAROL, ok?", PasswordRule.CONTAINS_USERNAME),
        ("my name is ＣＡＲＯＬ, ok?", PasswordRule.CONTAINS_USERNAME),
    ],
)
def test_weak_passwords_are_refused_with_the_rule_they_break(password, rule):
    problem = password_problem(password, "carol")
    assert problem is not None and problem.rule is rule
    with pytest.raises(WeakPasswordError) as raised:
        check_password_policy(password, "carol")
    assert raised.value.rule is rule and raised.value.reason


@pytest.mark.parametrize(
    "password",
    [
        GOOD,
        "x" * (MIN_LENGTH - 1) + "y",  # exactly the minimum, no composition rules
        "ab" * (MAX_LENGTH // 2),  # exactly the maximum
        "Ünïcödé ist erlaubt, 🙂 auch",
        "              a",  # spaces count as characters
    ],
)
def test_long_uncommon_passwords_pass_whatever_they_are_made_of(password):
    assert password_problem(password, "carol") is None
    check_password_policy(password, "carol")


def test_the_maximum_is_at_least_64_and_the_minimum_15():
    assert MIN_LENGTH >= 15 and MAX_LENGTH >= 64


def test_the_shipped_list_is_there_and_compared_normalised():
    listed = common_passwords()
    assert len(listed) > 19_000
    assert {"password", "123456", "qwerty"} <= listed
    assert all(entry == entry.casefold() for entry in listed)


@pytest.mark.parametrize("weak", ["a", " ", "password"])
def test_accounts_cannot_be_given_a_weak_password(session_factory, weak):
    with pytest.raises(WeakPasswordError):
        with session_factory.begin() as session:
            add_user(session, "admin", weak, "admin")
    with session_factory.begin() as session:
        add_user(session, "admin", GOOD, "admin")
    with pytest.raises(WeakPasswordError):
        with session_factory.begin() as session:
            set_password(session, "admin", weak)
    with session_factory() as session:
        assert authenticate(session, "admin", GOOD) is not None
        assert authenticate(session, "admin", weak) is None


def _weak_account(session_factory, name: str, password: str) -> int:
    # As an account made before the policy: stored directly, as an old release did.
    with session_factory.begin() as session:
        user = User(username=name, password_hash=hash_password(password), role="admin")
        session.add(user)
        session.flush()
        return user.id


def test_a_weak_password_at_login_marks_the_user_until_a_good_one_is_set(session_factory):
    key = _weak_account(session_factory, "old", "password")
    with session_factory.begin() as session:
        assert require_new_password_if_weak(session, key, "password") is True
    with session_factory() as session:
        assert session.scalars(select(User.must_change_password)).one() is True
    with session_factory.begin() as session:
        set_password(session, "old", GOOD)
    with session_factory.begin() as session:
        user = session.get(User, key)
        assert user is not None and user.must_change_password is False
        assert require_new_password_if_weak(session, key, GOOD) is False


def test_a_good_password_at_login_leaves_the_user_alone(session_factory):
    with session_factory.begin() as session:
        key = add_user(session, "fine", GOOD, "viewer").id
    with session_factory.begin() as session:
        assert require_new_password_if_weak(session, key, GOOD) is False
        assert require_new_password_if_weak(session, key + 1000, GOOD) is False
    with session_factory() as session:
        assert session.scalars(select(User.must_change_password)).one() is False
