"""Per-application state and the one database session of each request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from web.ratelimit import LoginRateLimiter


@dataclass(frozen=True)
class WebState:
    """What ``create_app`` hands to the views, kept in ``app.extensions["mwl"]``."""

    settings: Settings
    session_factory: sessionmaker[Session]
    limiter: LoginRateLimiter
    # Set only when create_app built the engine itself; its owner disposes it.
    owned_engine: Engine | None = None


def state() -> WebState:
    """The current application's :class:`WebState`."""
    found: WebState = current_app.extensions["mwl"]
    return found


def db_session() -> Session:
    """The request's session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = state().session_factory()
    session: Session = g.db_session
    return session


def rollback_session() -> None:
    """Roll back the request's session, if it has one (after an error)."""
    session: Session | None = g.get("db_session")
    if session is not None:
        session.rollback()


def close_session(_error: BaseException | None = None) -> None:
    """Teardown: close the request's session; anything not committed is rolled back."""
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()
