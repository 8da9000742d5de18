"""Login sessions of the admin page, kept in the database: start, check, end.

The browser holds a random id and nothing else; the database holds its SHA-256
hash, the account, and two times. A session ends when its row is deleted
(logout; a password change, role change or removal of the account) or when it is
too old: idle longer than the idle timeout, or older than the absolute lifetime,
whatever the use. Every broker on the same database sees the same sessions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from mwl.store.models import User, WebSession, utcnow

# Anything longer cannot be one of ours; it is refused before hashing.
_ID_MAX_LENGTH = 128


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lasts: without use (``idle``) and at most (``lifetime``)."""

    idle: dt.timedelta
    lifetime: dt.timedelta

    @property
    def touch_resolution(self) -> dt.timedelta:
        """How stale ``last_seen_at`` may get: a tenth of the idle time, a minute at most.

        A console refreshing its worklist every few seconds then writes once a
        minute, not on every request, and still never loses more than a tenth of
        its idle allowance to the coarse clock.
        """
        return min(self.idle / 10, dt.timedelta(minutes=1))


@dataclass(frozen=True)
class SessionUser:
    """Who a live session belongs to, copied out of the ORM rows."""

    session_key: int
    user_key: int
    username: str
    role: str
    last_seen_at: dt.datetime


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


def start_session(session: Session, user_key: int) -> str:
    """Open a session for the account ``user_key``; the caller commits.

    Returns
    -------
    str
        The id for the cookie: 43 URL-safe characters (256 random bits). Only its
        hash is stored, so it cannot be read back.
    """
    session_id = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        WebSession(
            token_hash=_hash(session_id), user_key=user_key, created_at=now, last_seen_at=now
        )
    )
    session.flush()
    return session_id


def session_user(
    session: Session, session_id: str, policy: SessionPolicy, now: dt.datetime | None = None
) -> SessionUser | None:
    """The user of the live session ``session_id``, or None (unknown, ended or expired).

    Reads only, so a reader session will do; an expired row is left for
    :func:`purge_expired`, and refused meanwhile.
    """
    if not session_id or len(session_id) > _ID_MAX_LENGTH:
        return None
    now = now or utcnow()
    found = session.execute(
        select(WebSession, User)
        .join(User, User.id == WebSession.user_key)
        .where(WebSession.token_hash == _hash(session_id))
    ).one_or_none()
    if found is None:
        return None
    row, user = found
    if user.disabled:
        return None
    if now - row.last_seen_at >= policy.idle or now - row.created_at >= policy.lifetime:
        return None
    return SessionUser(row.id, user.id, user.username, user.role, row.last_seen_at)


def needs_touch(user: SessionUser, policy: SessionPolicy, now: dt.datetime) -> bool:
    """Whether the session's ``last_seen_at`` is stale enough to be written again."""
    return now - user.last_seen_at >= policy.touch_resolution


def touch_session(session: Session, session_key: int, now: dt.datetime | None = None) -> None:
    """Record use of the session now (restarting its idle clock); the caller commits."""
    session.execute(
        update(WebSession).where(WebSession.id == session_key).values(last_seen_at=now or utcnow())
    )


def end_session(session: Session, session_id: str) -> None:
    """End one session (logout); the caller commits. An unknown id is no error."""
    if session_id and len(session_id) <= _ID_MAX_LENGTH:
        session.execute(delete(WebSession).where(WebSession.token_hash == _hash(session_id)))


def end_user_sessions(session: Session, user_key: int) -> int:
    """End every session of the account ``user_key``; the caller commits.

    Returns
    -------
    int
        How many sessions were ended.
    """
    result = session.execute(delete(WebSession).where(WebSession.user_key == user_key))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_expired(session: Session, policy: SessionPolicy, now: dt.datetime | None = None) -> int:
    """Delete every expired session (they are refused anyway); the caller commits."""
    now = now or utcnow()
    result = session.execute(
        delete(WebSession).where(
            (WebSession.last_seen_at <= now - policy.idle)
            | (WebSession.created_at <= now - policy.lifetime)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
