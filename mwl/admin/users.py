"""User accounts of the admin page: create, authenticate, change, list and remove."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import string

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mwl.admin.passwords import check_password_policy, password_problem
from mwl.admin.sessions import end_user_sessions
from mwl.errors import UserError
from mwl.store.models import User


class Role(enum.StrEnum):
    """What a user may do on the admin page; each role includes the ones before it."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"


USERNAME_MAX_LENGTH = 64  # app_user.username is String(64)

# scrypt cost: N=2**15, r=8, p=1 (the OWASP minimum and werkzeug's default), about
# 32 MiB and tens of milliseconds per check, which makes offline guessing expensive.
_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_CHARS = string.ascii_letters + string.digits

# Checked when the username is unknown, so a failed login takes as long whether or
# not the user exists (no user enumeration by timing). Made on first use, not at import.
_dummy_hash: str | None = None


def hash_password(password: str) -> str:
    """Hash ``password`` with scrypt and a random salt.

    The format is werkzeug's (``scrypt:N:r:p$salt$hex``), so
    ``werkzeug.security.check_password_hash`` accepts these hashes too.

    Parameters
    ----------
    password
        The clear-text password; must not be empty.

    Returns
    -------
    str
        The hash to store in ``app_user.password_hash``.

    Raises
    ------
    UserError
        When ``password`` is empty.
    """
    if not password:
        raise UserError("the password must not be empty")
    salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(16))
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt:{_SCRYPT_N}:{_SCRYPT_R}:{_SCRYPT_P}${salt}${digest}"


def check_password(password_hash: str, password: str) -> bool:
    """Tell whether ``password`` matches ``password_hash`` (from :func:`hash_password`).

    Parameters
    ----------
    password_hash
        A stored hash.
    password
        The clear-text password to check.

    Returns
    -------
    bool
        True when they match; False for a wrong password or a hash in an unknown format.
    """
    try:
        method, salt, expected = password_hash.split("$", 2)
        name, n, r, p = method.split(":")
        if name != "scrypt":
            return False
        actual = _scrypt(password, salt, int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: str, n: int, r: int, p: int) -> str:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt.encode("utf-8"),
        n=n,
        r=r,
        p=p,
        # hashlib's default maxmem (32 MiB) is just below what N=2**15, r=8 needs.
        maxmem=132 * n * r * p,
    ).hex()


def normalize_username(username: str) -> str:
    """The stored form of a username: trimmed and lower-cased.

    Lower-casing keeps ``Admin`` and ``admin`` from becoming two accounts, and lets
    people log in however they capitalise their name.
    """
    return username.strip().lower()


def valid_username(username: str) -> str:
    """``username`` normalized, or :class:`UserError` when it cannot be an account name."""
    name = normalize_username(username)
    if not name:
        raise UserError("the username must not be empty")
    if len(name) > USERNAME_MAX_LENGTH:
        raise UserError(f"the username is longer than {USERNAME_MAX_LENGTH} characters", name)
    if not name.isprintable() or any(ch.isspace() for ch in name):
        raise UserError("the username must not contain spaces or control characters", name)
    return name


def _valid_role(role: str | Role) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise UserError(f"unknown role {role!r} (one of: {allowed})") from None


def add_user(
    session: Session, username: str, password: str, role: str | Role = Role.VIEWER
) -> User:
    """Create a user account; the caller commits.

    Parameters
    ----------
    session
        The unit of work.
    username
        Login name; stored trimmed and lower-cased (:func:`normalize_username`).
    password
        Clear-text password; only its scrypt hash is stored.
    role
        ``viewer``, ``editor`` or ``admin``.

    Returns
    -------
    User
        The new, flushed account.

    Raises
    ------
    UserError
        Empty or invalid username, unknown role, or a username that is already
        taken; :class:`~mwl.admin.passwords.WeakPasswordError` for a password the
        policy refuses.
    """
    name = valid_username(username)
    checked_role = _valid_role(role)
    check_password_policy(password, name)
    password_hash = hash_password(password)
    if session.scalar(select(User.id).where(User.username == name)) is not None:
        raise UserError(f"user {name!r} already exists", name)
    user = User(username=name, password_hash=password_hash, role=checked_role.value)
    # A savepoint, so that losing a race with another writer leaves the caller's
    # transaction usable and reports the same error as the check above.
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise UserError(f"user {name!r} already exists", name) from None
    return user


def get_user(session: Session, user_id: int) -> User | None:
    """Return the user with database key ``user_id``, or None."""
    return session.get(User, user_id)


def find_user(session: Session, username: str) -> User | None:
    """Return the user called ``username`` (compared normalized), or None."""
    return session.scalar(select(User).where(User.username == normalize_username(username)))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the user when ``username`` and ``password`` match, else None.

    A hash is checked even when the user does not exist, so the answer takes about
    as long for an unknown user as for a wrong password.

    Parameters
    ----------
    session
        The unit of work (read only).
    username
        As typed; normalized before lookup.
    password
        As typed.

    Returns
    -------
    User | None
        The account, or None for an unknown user, an empty or a wrong password.
    """
    global _dummy_hash
    user = find_user(session, username) if username.strip() else None
    # An external account (mwl.admin.external) logs in at its provider only; a
    # disabled one nowhere. Both cost a hash like an unknown name.
    if user is None or user.external_source is not None or user.disabled:
        if _dummy_hash is None:
            _dummy_hash = hash_password(secrets.token_urlsafe(16))
        check_password(_dummy_hash, password)
        return None
    if not password or not check_password(user.password_hash, password):
        return None
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Give ``username`` a new password and end its web sessions; the caller commits.

    A session opened with the old password (perhaps by whoever learnt it) must not
    outlive it.

    The password must pass today's policy; a user told to change their password
    (:func:`require_new_password_if_weak`) no longer is.

    Raises
    ------
    UserError
        Unknown user; :class:`~mwl.admin.passwords.WeakPasswordError` for a password
        the policy refuses.
    """
    user = _existing(session, username)
    if user.external_source is not None:
        raise UserError(
            f"user {user.username!r} logs in through {user.external_source}: no local password",
            user.username,
        )
    check_password_policy(password, user.username)
    user.password_hash = hash_password(password)
    user.must_change_password = False
    end_user_sessions(session, user.id)
    session.flush()
    return user


def require_new_password_if_weak(session: Session, user_id: int, password: str) -> bool:
    """Mark the user ``user_id`` to change their password when ``password`` is weak.

    Called at login, the only time the clear-text password is known: accounts made
    before the policy (or under an older one) keep working, but their owner is sent
    to the change-password form until the password passes. The caller commits.

    Parameters
    ----------
    session
        A writer unit of work.
    user_id
        The database key of the user who just logged in with ``password``.
    password
        The password that matched.

    Returns
    -------
    bool
        Whether the user must now change their password.
    """
    user = session.get(User, user_id)
    if user is None or user.external_source is not None:
        # An external account's password is the directory's: its policy, not ours.
        return False
    if not user.must_change_password and password_problem(password, user.username) is not None:
        user.must_change_password = True
        session.flush()
    return user.must_change_password


def set_role(session: Session, username: str, role: str | Role) -> User:
    """Give ``username`` another role and end its web sessions; the caller commits.

    The user logs in again under the new role, so no page opened under the old one
    keeps working as if nothing had changed.

    Raises
    ------
    UserError
        Unknown or external user, or unknown role.
    """
    user = _existing(session, username)
    if user.external_source is not None:
        # Its directory's groups or its provider's claim give the role at every login.
        raise UserError(
            f"user {user.username!r} logs in through {user.external_source}, which gives its role",
            user.username,
        )
    user.role = _valid_role(role).value
    end_user_sessions(session, user.id)
    session.flush()
    return user


def reset_password(session: Session, username: str, password: str) -> User:
    """An admin's new password for ``username``, to be changed at its next login.

    The same policy as :func:`set_password` (which the CLI's ``mwl user passwd``
    and the change-password form use); only the owner should know the password
    they keep, so the account is sent to the change-password form at its next
    login. Its web sessions end. The caller commits.

    Raises
    ------
    UserError
        Unknown or external user; :class:`~mwl.admin.passwords.WeakPasswordError`.
    """
    user = set_password(session, username, password)
    user.must_change_password = True
    session.flush()
    return user


def set_disabled(session: Session, username: str, disabled: bool) -> User:
    """Disable or enable the local account ``username``; the caller commits.

    A disabled account cannot log in and its API tokens are refused; its web
    sessions end now. An external account is disabled at its directory or
    identity provider, which decides at every login.

    Raises
    ------
    UserError
        Unknown or external user.
    """
    user = _existing(session, username)
    if user.external_source is not None:
        raise UserError(
            f"user {user.username!r} logs in through {user.external_source}: disable it there",
            user.username,
        )
    user.disabled = disabled
    if disabled:
        end_user_sessions(session, user.id)
    session.flush()
    return user


def enabled_admins(session: Session) -> int:
    """How many enabled accounts hold the admin role (a broker needs one)."""
    rows = session.scalars(
        select(User.id).where(User.role == Role.ADMIN.value, User.disabled.is_(False))
    )
    return len(list(rows))


def list_users(session: Session) -> list[User]:
    """All accounts, ordered by username."""
    return list(session.scalars(select(User).order_by(User.username)))


def remove_user(session: Session, username: str) -> None:
    """Delete the account ``username`` and its web sessions; the caller commits.

    The foreign key cascades too; ending them here first keeps that visible.

    Raises
    ------
    UserError
        Unknown user.
    """
    user = _existing(session, username)
    end_user_sessions(session, user.id)
    session.delete(user)
    session.flush()


def _existing(session: Session, username: str) -> User:
    user = find_user(session, username)
    if user is None:
        raise UserError(f"no user {normalize_username(username)!r}", normalize_username(username))
    return user
