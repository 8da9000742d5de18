"""What the broker has been doing: the HL7 message log and the modalities that query it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from mwl.store.models import (
    Hl7Message,
    Hl7MessageLink,
    Patient,
    QueryLogEntry,
    RequestedProcedure,
    ScheduledProcedureStep,
)


@dataclass(frozen=True)
class MessageSummary:
    """One received HL7 message as listed in the log (no body)."""

    key: int
    received_at: dt.datetime  # naive UTC
    message_type: str
    message_control_id: str
    sending_application: str
    sending_facility: str
    peer_address: str
    outcome: str  # RECEIVED, or the ACK code sent: AA, AE, AR
    error: str


@dataclass(frozen=True)
class MessageDetail:
    """One received HL7 message with its raw text and the ACK sent."""

    summary: MessageSummary
    raw: bytes
    ack: bytes | None
    processed_at: dt.datetime | None  # naive UTC


@dataclass(frozen=True)
class MessageFilter:
    """Which messages of the log to list; every condition left at None matches all.

    ``message_type`` matches MSH-9 from its start (``ADT`` finds every ADT event,
    ``ORM^O01`` that event); ``outcome`` is ``AA``, ``AE``, ``AR`` or ``RECEIVED``;
    ``received_from`` (inclusive) and ``received_before`` (exclusive) are naive UTC.
    """

    message_type: str | None = None
    outcome: str | None = None
    received_from: dt.datetime | None = None
    received_before: dt.datetime | None = None


@dataclass(frozen=True)
class MessageChange:
    """A patient and (for orders) a requested procedure one message created or changed.

    The patient or procedure may be gone since (merged away, purged by retention):
    their fields are then empty and ``exists`` is False.
    """

    patient_key: int | None
    procedure_key: int | None
    exists: bool
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    requested_procedure_description: str = ""
    step_keys: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScannerActivity:
    """What one calling AE title asked of the worklist."""

    calling_ae_title: str
    last_seen: dt.datetime  # naive UTC
    last_peer_address: str
    queries_since: int
    matches_since: int
    failures_since: int  # queries answered with a status other than success/pending
    total_queries: int


def message_summary(row: Hl7Message) -> MessageSummary:
    """The log line of one stored message, detached from the session."""
    return MessageSummary(
        key=row.id,
        received_at=row.received_at,
        message_type=row.message_type,
        message_control_id=row.message_control_id,
        sending_application=row.sending_application,
        sending_facility=row.sending_facility,
        peer_address=row.peer_address,
        outcome=row.outcome,
        error=row.error,
    )


def recent_messages(
    session: Session,
    *,
    limit: int = 100,
    before_key: int | None = None,
    filters: MessageFilter | None = None,
) -> list[MessageSummary]:
    """The newest HL7 messages first, without their bodies.

    Parameters
    ----------
    session
        A read-only unit of work.
    limit
        At most this many.
    before_key
        Only messages with a smaller key (the next page of the log).
    filters
        Only messages of this type, outcome and time of receipt.

    Returns
    -------
    list[MessageSummary]
        Newest first.
    """
    stmt = select(Hl7Message).order_by(Hl7Message.id.desc()).limit(limit)
    if before_key is not None:
        stmt = stmt.where(Hl7Message.id < before_key)
    if filters is not None:
        if filters.message_type:
            stmt = stmt.where(
                Hl7Message.message_type.startswith(filters.message_type, autoescape=True)
            )
        if filters.outcome:
            stmt = stmt.where(Hl7Message.outcome == filters.outcome)
        if filters.received_from is not None:
            stmt = stmt.where(Hl7Message.received_at >= filters.received_from)
        if filters.received_before is not None:
            stmt = stmt.where(Hl7Message.received_at < filters.received_before)
    return [message_summary(row) for row in session.scalars(stmt)]


def message_detail(session: Session, key: int) -> MessageDetail | None:
    """The message with database key ``key``, body and ACK included, or None."""
    row = session.get(Hl7Message, key)
    if row is None:
        return None
    return MessageDetail(message_summary(row), row.raw, row.ack, row.processed_at)


def message_changes(session: Session, key: int) -> list[MessageChange]:
    """The patients and requested procedures message ``key`` created or changed.

    Parameters
    ----------
    session
        A read-only unit of work.
    key
        The message's key in the log.

    Returns
    -------
    list[MessageChange]
        In the order recorded; empty for a message that changed nothing.
    """
    links = session.execute(
        select(Hl7MessageLink.patient_key, Hl7MessageLink.procedure_key)
        .where(Hl7MessageLink.message_key == key)
        .order_by(Hl7MessageLink.id)
    ).all()
    if not links:
        return []
    patient_keys = {p for p, _ in links if p is not None}
    procedure_keys = {r for _, r in links if r is not None}
    patients = {
        row.id: row for row in session.scalars(select(Patient).where(Patient.id.in_(patient_keys)))
    }
    procedures = {
        row.id: row
        for row in session.scalars(
            select(RequestedProcedure).where(RequestedProcedure.id.in_(procedure_keys))
        )
    }
    steps: dict[int, list[int]] = {}
    for step_key, owner in session.execute(
        select(ScheduledProcedureStep.id, ScheduledProcedureStep.procedure_key)
        .where(ScheduledProcedureStep.procedure_key.in_(procedure_keys))
        .order_by(ScheduledProcedureStep.id)
    ):
        steps.setdefault(owner, []).append(step_key)
    changes = []
    for patient_key, procedure_key in links:
        procedure = procedures.get(procedure_key) if procedure_key is not None else None
        # The procedure's patient now (after a merge), else the one linked.
        patient = procedure.patient if procedure is not None else patients.get(patient_key or -1)
        exists = procedure is not None if procedure_key is not None else patient is not None
        changes.append(
            MessageChange(
                patient_key=patient_key,
                procedure_key=procedure_key,
                exists=exists,
                patient_id=patient.patient_id if patient else "",
                patient_name=patient.patient_name if patient else "",
                accession_number=procedure.accession_number if procedure else "",
                requested_procedure_description=(
                    procedure.requested_procedure_description if procedure else ""
                ),
                step_keys=tuple(steps.get(procedure_key or -1, ())),
            )
        )
    return changes


def scanner_activity(session: Session, since: dt.datetime) -> list[ScannerActivity]:
    """One line per calling AE title that ever queried, most recently seen first.

    Parameters
    ----------
    session
        A read-only unit of work.
    since
        Naive UTC start of the period counted in ``queries_since`` and
        ``matches_since`` (e.g. local midnight of today, in UTC).

    Returns
    -------
    list[ScannerActivity]
        Ordered by last query, newest first.
    """
    recent = QueryLogEntry.received_at >= since
    # Success (0x0000) and Pending (0xFF00/0xFF01) are normal answers; anything
    # else (cancel, failure) counts as a failure for the overview.
    failed = QueryLogEntry.status.not_in([0x0000, 0xFF00, 0xFF01])
    stmt = (
        select(
            QueryLogEntry.calling_ae_title,
            func.max(QueryLogEntry.received_at),
            func.sum(case((recent, 1), else_=0)),
            func.sum(case((recent, QueryLogEntry.matches), else_=0)),
            func.sum(case((recent & failed, 1), else_=0)),
            func.count(),
        )
        .group_by(QueryLogEntry.calling_ae_title)
        .order_by(func.max(QueryLogEntry.received_at).desc(), QueryLogEntry.calling_ae_title)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return []
    # The peer address of each AE's latest query, found by joining on that time:
    # portable to SQLite and PostgreSQL, unlike DISTINCT ON.
    latest = (
        select(
            QueryLogEntry.calling_ae_title.label("ae"),
            func.max(QueryLogEntry.received_at).label("last"),
        )
        .group_by(QueryLogEntry.calling_ae_title)
        .subquery()
    )
    peer_rows = session.execute(
        select(QueryLogEntry.calling_ae_title, QueryLogEntry.peer_address)
        .join(
            latest,
            (QueryLogEntry.calling_ae_title == latest.c.ae)
            & (QueryLogEntry.received_at == latest.c.last),
        )
        # Of queries logged at the same instant, the last stored wins.
        .order_by(QueryLogEntry.id)
    )
    peers = {ae: peer for ae, peer in peer_rows}
    return [
        ScannerActivity(
            calling_ae_title=ae,
            last_seen=last_seen,
            last_peer_address=peers.get(ae, ""),
            queries_since=int(queries or 0),
            matches_since=int(matches or 0),
            failures_since=int(failures or 0),
            total_queries=int(total),
        )
        for ae, last_seen, queries, matches, failures, total in rows
    ]
