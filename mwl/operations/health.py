"""Readiness: the database answers and is at the schema this broker was built for.

What ``/ready`` reports (:mod:`web.health`). A stuck outbox or an unreachable RIS is
not here on purpose: they are metrics and alerts; taking the node out of the
balancer would not make the RIS answer, only stop the worklist.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from mwl.store.migrate import current_revision, head_revision, known_revision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """Whether the node can serve, and why not."""

    ready: bool
    # "ok", "newer schema" (a newer release migrated it: a rolling upgrade, still
    # ready), "unavailable" (no answer) or "not migrated" (an older or no revision).
    database: str
    # The schema revision found and the one expected ("" when unknown).
    revision: str = ""
    expected_revision: str = ""
    # The error class when the database did not answer (its text may hold the URL).
    error: str = ""


@functools.cache
def _expected() -> str:
    return head_revision() or ""


def database_readiness(engine: Engine) -> Readiness:
    """Ask the database for its schema revision; never raises for a database error."""
    expected = _expected()
    try:
        found = current_revision(engine) or ""
    except SQLAlchemyError as exc:
        logger.warning("readiness: the database does not answer (%s)", type(exc).__name__)
        return Readiness(False, "unavailable", "", expected, type(exc).__name__)
    if found and found != expected and not known_revision(found):
        # The expand/contract rule (docs/upgrading.md) keeps a schema one release
        # ahead usable by this one: the old node serves on while the new ones start.
        return Readiness(True, "newer schema", found, expected)
    if found != expected:
        return Readiness(False, "not migrated", found, expected)
    return Readiness(True, "ok", found, expected)


class DatabaseProbe:
    """The database's state for ``/health``, never waiting longer than ``wait`` seconds.

    ``/health`` is the balancer's liveness check: it must answer at once even when
    the database host is unreachable (a connect that hangs until its timeout). The
    probe runs on a thread of its own, one at a time; a caller that does not get its
    answer within ``wait`` reports "no answer" and a later call picks the result up.
    """

    def __init__(self, wait: float = 1.0) -> None:
        self._wait = wait
        self._lock = threading.Lock()
        self._running: tuple[Engine, threading.Thread, list[Readiness]] | None = None

    def state(self, engine: Engine) -> str:
        """ "ok", "unavailable", "not migrated", or "no answer" (still asking)."""
        with self._lock:
            running = self._running
            if running is None or running[0] is not engine or not running[1].is_alive():
                found: list[Readiness] = []
                thread = threading.Thread(
                    target=lambda: found.append(database_readiness(engine)),
                    name="mwl-health-database",
                    daemon=True,
                )
                thread.start()
                running = self._running = (engine, thread, found)
        _engine, thread, found = running
        thread.join(self._wait)
        return found[0].database if found else "no answer"
