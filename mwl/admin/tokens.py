"""API tokens: create, authenticate, list and revoke the bearer tokens of the JSON API."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from mwl.admin.users import find_user, normalize_username
from mwl.errors import MwlError, UserError
from mwl.store.models import ApiToken, User, utcnow

# A recognisable prefix lets secret scanners (and people) tell an mwl token when
# one turns up in a log or a repository.
TOKEN_PREFIX = "mwl_"
NAME_MAX_LENGTH = 64  # api_token.name is String(64)
# Anything longer cannot be one of ours; it is refused before hashing.
_TOKEN_MAX_LENGTH = 128
# Last use is recorded at this resolution, so a busy client does not turn every
# read request into a write.
USE_RESOLUTION = dt.timedelta(minutes=1)


class TokenError(MwlError):
    """An API token cannot be created or revoked as asked (bad name, unknown token)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: never its value, which is not stored."""

    key: int
    username: str
    name: str
    created_at: dt.datetime  # naive UTC
    last_used_at: dt.datetime | None  # naive UTC, at USE_RESOLUTION


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``.

    A plain hash suffices: tokens carry 256 random bits, so there is nothing for
    a slow, salted hash to protect against.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _valid_name(name: str) -> str:
    cleaned = name.strip()
    if len(cleaned) > NAME_MAX_LENGTH:
        raise TokenError(f"the token name is longer than {NAME_MAX_LENGTH} characters")
    if not cleaned.isprintable():
        raise TokenError("the token name must not contain control characters")
    return cleaned


def create_token(session: Session, username: str, name: str = "") -> str:
    """Create an API token acting as ``username``; the caller commits.

    Parameters
    ----------
    session
        The writer unit of work.
    username
        The account the token acts as, with that account's role at each use.
    name
        What the token is for (e.g. ``RIS import``), shown in lists.

    Returns
    -------
    str
        The token, ``mwl_`` and 43 URL-safe characters. Only its hash is stored, so
        this is the one time it can be shown.

    Raises
    ------
    UserError
        Unknown user.
    TokenError
        A name that is too long or holds control characters.
    """
    user = find_user(session, username)
    if user is None:
        raise UserError(f"no user {normalize_username(username)!r}", normalize_username(username))
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_key=user.id, name=_valid_name(name), token_hash=hash_token(token)))
    session.flush()
    return token


def find_token(session: Session, token: str) -> tuple[ApiToken, User] | None:
    """The stored token that ``token`` is, with its user; None when there is none.

    Read only: use :func:`authenticate_token` where the use should be recorded.
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > _TOKEN_MAX_LENGTH:
        return None
    row = session.execute(
        select(ApiToken, User)
        .join(User, ApiToken.user_key == User.id)
        .where(ApiToken.token_hash == hash_token(token))
    ).first()
    if row is None:
        return None
    return row[0], row[1]


def use_is_due(last_used_at: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """Whether a use at ``now`` should be recorded (see :data:`USE_RESOLUTION`)."""
    return last_used_at is None or last_used_at <= (now or utcnow()) - USE_RESOLUTION


def record_use(session: Session, token_key: int, now: dt.datetime | None = None) -> bool:
    """Set the token's last use to ``now`` unless it was set less than a minute ago.

    The condition is part of the UPDATE, so concurrent requests write at most once
    per minute between them. The caller commits.

    Returns
    -------
    bool
        Whether the row was changed.
    """
    now = now or utcnow()
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_key)
        .where(or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - USE_RESOLUTION))
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def authenticate_token(
    session: Session, token: str, *, now: dt.datetime | None = None
) -> User | None:
    """Return the user that ``token`` acts as, or None; records the use (caller commits).

    Parameters
    ----------
    session
        A writer unit of work when the use is to be recorded.
    token
        The bearer token as presented.
    now
        The time of use (naive UTC); defaults to now.

    Returns
    -------
    User | None
        The token's account (its role as it is now), or None for an unknown,
        revoked or malformed token.
    """
    found = find_token(session, token)
    if found is None:
        return None
    row, user = found
    if user.disabled:
        return None
    if use_is_due(row.last_used_at, now):
        record_use(session, row.id, now)
    return user


def list_tokens(session: Session, username: str | None = None) -> list[TokenInfo]:
    """The tokens of ``username``, or of everybody when None, by user and age.

    Parameters
    ----------
    session
        A read-only unit of work.
    username
        Whose tokens; compared normalized.

    Returns
    -------
    list[TokenInfo]
        Ordered by username, then oldest first.
    """
    stmt = (
        select(ApiToken, User.username)
        .join(User, ApiToken.user_key == User.id)
        .order_by(User.username, ApiToken.created_at, ApiToken.id)
    )
    if username is not None:
        stmt = stmt.where(User.username == normalize_username(username))
    return [
        TokenInfo(row.id, name, row.name, row.created_at, row.last_used_at)
        for row, name in session.execute(stmt)
    ]


def revoke_token(session: Session, key: int, *, username: str | None = None) -> TokenInfo:
    """Delete the token with database key ``key``; the caller commits.

    Parameters
    ----------
    session
        The writer unit of work.
    key
        The token's database key, as :func:`list_tokens` shows it.
    username
        When given, only a token of this user may be revoked (a user's own page).

    Returns
    -------
    TokenInfo
        The token as it was.

    Raises
    ------
    TokenError
        No such token (or, with ``username``, none of that user's).
    """
    row = session.execute(
        select(ApiToken, User.username)
        .join(User, ApiToken.user_key == User.id)
        .where(ApiToken.id == key)
    ).first()
    if row is None or (username is not None and row[1] != normalize_username(username)):
        raise TokenError(f"no token {key}")
    token, owner = row
    info = TokenInfo(token.id, owner, token.name, token.created_at, token.last_used_at)
    session.delete(token)
    session.flush()
    return info
