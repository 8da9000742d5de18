"""Per-application state and the database sessions of each request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from web.ratelimit import LoginRateLimiter

# What the composition root lends the web page from the other adapters, so that the
# web package never imports mwl.hl7 or mwl.dicom itself (see ARCHITECTURE.md):
# - reprocess an HL7 message: message key -> outcome (an object the template shows);
# - preview a worklist query as an AE would get it: (calling AE, identifier as
#   DICOM JSON) -> preview result (see mwl.dicom.preview).
Hl7Reprocessor = Callable[[int], Any]
QueryPreviewer = Callable[[str, str], Any]


@dataclass(frozen=True)
class WebState:
    """What ``create_app`` hands to the views, kept in ``app.extensions["mwl"]``."""

    settings: Settings
    session_factory: sessionmaker[Session]
    limiter: LoginRateLimiter
    # Writer sessions (BEGIN IMMEDIATE on SQLite) for edits, new orders and settings.
    writer_factory: sessionmaker[Session]
    # Set only when create_app built the engine itself; its owner disposes it.
    owned_engine: Engine | None = None
    hl7_reprocessor: Hl7Reprocessor | None = None
    query_previewer: QueryPreviewer | None = None


def state() -> WebState:
    """The current application's :class:`WebState`."""
    found: WebState = current_app.extensions["mwl"]
    return found


def db_session() -> Session:
    """The request's read session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = state().session_factory()
    session: Session = g.db_session
    return session


def writer() -> sessionmaker[Session]:
    """The writer session factory: ``with writer().begin() as session:`` is one change."""
    return state().writer_factory


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
