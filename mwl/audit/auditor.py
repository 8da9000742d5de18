"""The auditor the services record events with: a no-op while ATNA audit is off."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from mwl.audit import queue
from mwl.audit.messages import Source
from mwl.config import Settings


class Auditor:
    """Queues audit messages in the caller's transaction; ``enabled`` is False without a repository.

    Callers build the message only when ``enabled`` (building costs more than the check).
    """

    def __init__(self, settings: Settings, wake: Callable[[], None] | None = None) -> None:
        self.enabled = bool(settings.audit_syslog_host)
        self.source = Source.named(settings.audit_source_id, settings.audit_enterprise_site_id)
        self._wake = wake

    def record(self, session: Session, message: str) -> None:
        """Queue ``message`` in ``session``'s transaction (which the caller commits)."""
        if not self.enabled:
            return
        queue.enqueue(session, message)
        if self._wake is not None:
            self._wake()

    @classmethod
    def off(cls) -> Auditor:
        """An auditor that records nothing (services built without one)."""
        return cls(Settings())
