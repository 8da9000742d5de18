"""The query log: one row per worklist C-FIND, with who asked, what, and what they got."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mwl.models import QueryLogEntry


@dataclass(frozen=True)
class QueryRecord:
    """One C-FIND as the DICOM adapter saw it.

    ``identifier_json`` is the request Identifier as DICOM JSON (PS3.18 F.2),
    already serialised by the adapter, so this service stays free of DICOM code.
    """

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    identifier_json: str
    matches: int
    duration_ms: float
    status: int
    error: str = ""


def record_query(session: Session, record: QueryRecord) -> QueryLogEntry:
    """Add ``record`` to the query log; the caller commits.

    Parameters
    ----------
    session
        The unit of work.
    record
        The query and its outcome.

    Returns
    -------
    QueryLogEntry
        The new row (flushed, so its ``id`` is set).
    """
    entry = QueryLogEntry(
        calling_ae_title=record.calling_ae_title[:16],
        called_ae_title=record.called_ae_title[:16],
        peer_address=record.peer_address[:64],
        identifier_json=record.identifier_json,
        matches=record.matches,
        duration_ms=record.duration_ms,
        status=record.status,
        error=record.error,
    )
    session.add(entry)
    session.flush()
    return entry


def recent_queries(session: Session, limit: int = 100) -> list[QueryLogEntry]:
    """The latest ``limit`` query log rows, newest first (for the admin page)."""
    statement = select(QueryLogEntry).order_by(QueryLogEntry.id.desc()).limit(limit)
    return list(session.scalars(statement))
