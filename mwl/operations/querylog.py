"""The query log: one row per worklist C-FIND, with who asked, what, and what they got."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from mwl.store.models import QueryLogEntry


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
    #: How the answer ended (see :class:`~mwl.store.models.QueryLogEntry`).
    ended: str = "completed"


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
        ended=record.ended[:16],
    )
    session.add(entry)
    session.flush()
    return entry


def recent_queries(session: Session, limit: int = 100) -> list[QueryLogEntry]:
    """The latest ``limit`` query log rows, newest first (for the admin page)."""
    statement = select(QueryLogEntry).order_by(QueryLogEntry.id.desc()).limit(limit)
    return list(session.scalars(statement))


# Reading the stored identifiers back. They are DICOM JSON (PS3.18 F.2): plain JSON
# keyed by tag. The pages that list them must work without the DICOM adapter, so the
# worklist's keys (PS3.4 Table K.6-1) are named here by tag; others show as the tag.
KEYWORDS_BY_TAG: Mapping[str, str] = {
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
    "00101030": "PatientWeight",
    "00101020": "PatientSize",
    "00380500": "PatientState",
    "001021C0": "PregnancyStatus",
    "00102000": "MedicalAlerts",
    "00102110": "Allergies",
    "00380010": "AdmissionID",
    "00380300": "CurrentPatientLocation",
    "00080080": "InstitutionName",
    "00081040": "InstitutionalDepartmentName",
    "00080050": "AccessionNumber",
    "00321032": "RequestingPhysician",
    "00080090": "ReferringPhysicianName",
    "00402016": "PlacerOrderNumberImagingServiceRequest",
    "00402017": "FillerOrderNumberImagingServiceRequest",
    "0020000D": "StudyInstanceUID",
    "00401001": "RequestedProcedureID",
    "00321060": "RequestedProcedureDescription",
    "00401003": "RequestedProcedurePriority",
    "00401004": "PatientTransportArrangements",
    "00401002": "ReasonForTheRequestedProcedure",
    "00401400": "RequestedProcedureComments",
    "00401008": "ConfidentialityCode",
    "00400001": "ScheduledStationAETitle",
    "00400002": "ScheduledProcedureStepStartDate",
    "00400003": "ScheduledProcedureStepStartTime",
    "00080060": "Modality",
    "00400006": "ScheduledPerformingPhysicianName",
    "00400007": "ScheduledProcedureStepDescription",
    "00400010": "ScheduledStationName",
    "00400011": "ScheduledProcedureStepLocation",
    "00400009": "ScheduledProcedureStepID",
    "00400020": "ScheduledProcedureStepStatus",
}
_ORDER = {tag: place for place, tag in enumerate(KEYWORDS_BY_TAG)}
# Describe the Identifier, not a key to match.
_NOT_KEYS = frozenset({"00080005", "00080052", "00080201"})
_SPS_SEQUENCE = "00400100"
_DATE_KEYS = frozenset({"ScheduledProcedureStepStartDate"})


@dataclass(frozen=True)
class AskedKey:
    """One matching key a modality sent with a value.

    Attributes
    ----------
    keyword
        The DICOM keyword, or the tag as ``(gggg,eeee)`` for keys not in
        :data:`KEYWORDS_BY_TAG`.
    value
        As sent (several values joined by a backslash).
    today
        An SPS Start Date naming the day the query was sent (local time): the
        modality asked for "today", whichever day that was. In a :class:`KeySet`
        such a key has no ``value``, so the habit is counted over the days.
    """

    keyword: str
    value: str
    today: bool = False


@dataclass(frozen=True)
class LoggedQuery:
    """One query log row, with the matching keys it asked in words."""

    key: int
    received_at: dt.datetime  # naive UTC
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    identifier_json: str
    keys: tuple[AskedKey, ...]
    matches: int
    duration_ms: float
    status: int
    error: str

    @property
    def peer_host(self) -> str:
        """The peer's address without the port (``10.0.0.5:49152`` -> ``10.0.0.5``)."""
        return peer_host(self.peer_address)


@dataclass(frozen=True)
class KeySet:
    """A set of matching keys an AE sends, and how many of its recent queries sent it."""

    keys: tuple[AskedKey, ...]
    count: int
    out_of: int


def peer_host(peer_address: str) -> str:
    """The host part of a logged ``host:port`` peer address (IPv6 too)."""
    host, sep, port = peer_address.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else peer_address


def asked_keys(
    identifier_json: str, received_at: dt.datetime | None = None
) -> tuple[AskedKey, ...]:
    """The matching keys of a stored identifier that carry a value, in table order.

    Keys with no value or a lone ``*`` (universal matching, PS3.4 C.2.2.2.3) are
    left out; the keys of the Scheduled Procedure Step Sequence item are listed
    with the others. Text that is not DICOM JSON gives no keys.

    Parameters
    ----------
    identifier_json
        :attr:`mwl.store.models.QueryLogEntry.identifier_json`.
    received_at
        When the query came (naive UTC); an SPS Start Date naming that local day
        is marked ``today``.
    """
    try:
        data = json.loads(identifier_json) if identifier_json else {}
    except ValueError:
        return ()
    if not isinstance(data, dict):
        return ()
    found = list(_elements(data))
    sps = data.get(_SPS_SEQUENCE)
    if isinstance(sps, dict):
        items = sps.get("Value") or []
        if items and isinstance(items[0], dict):
            found.extend(_elements(items[0]))
    found.sort(key=lambda pair: _ORDER.get(pair[0], len(_ORDER)))
    day = _local_day(received_at) if received_at is not None else ""
    keys = []
    for tag, value in found:
        keyword = KEYWORDS_BY_TAG.get(tag) or f"({tag[:4]},{tag[4:]})"
        if keyword in _DATE_KEYS and day and value in (day, f"{day}-{day}"):
            keys.append(AskedKey(keyword, value, today=True))
        else:
            keys.append(AskedKey(keyword, value))
    return tuple(keys)


def _elements(data: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for tag, element in data.items():
        tag = tag.upper()
        if tag in _NOT_KEYS or not isinstance(element, dict) or element.get("vr") == "SQ":
            continue
        values = [_text(v) for v in element.get("Value") or []]
        value = "\\".join(v for v in values)
        if value.strip() and value.strip() != "*":
            yield tag, value.strip()


def _text(value: object) -> str:
    if isinstance(value, dict):  # a person name: its component groups
        groups = [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
        return "=".join(groups).rstrip("=")
    return "" if value is None else str(value)


def _local_day(received_at: dt.datetime) -> str:
    return received_at.replace(tzinfo=dt.UTC).astimezone().strftime("%Y%m%d")


def _logged(entry: QueryLogEntry) -> LoggedQuery:
    return LoggedQuery(
        key=entry.id,
        received_at=entry.received_at,
        calling_ae_title=entry.calling_ae_title,
        called_ae_title=entry.called_ae_title,
        peer_address=entry.peer_address,
        identifier_json=entry.identifier_json,
        keys=asked_keys(entry.identifier_json, entry.received_at),
        matches=entry.matches,
        duration_ms=entry.duration_ms,
        status=entry.status,
        error=entry.error,
    )


def ae_history(
    session: Session, calling_ae_title: str, *, limit: int = 50, before_key: int | None = None
) -> list[LoggedQuery]:
    """The queries of one calling AE title, newest first.

    Parameters
    ----------
    session
        A read-only unit of work.
    calling_ae_title
        The AE title as logged.
    limit
        At most this many.
    before_key
        Only queries with a smaller key (the next, older page).
    """
    stmt = _newest_first(select(QueryLogEntry), calling_ae_title).limit(limit)
    if before_key is not None:
        stmt = stmt.where(QueryLogEntry.id < before_key)
    return [_logged(entry) for entry in session.scalars(stmt)]


def latest_query(
    session: Session, calling_ae_title: str, *, with_identifier: bool = False
) -> LoggedQuery | None:
    """The newest query of ``calling_ae_title``, or None when it never queried.

    With ``with_identifier``, the newest one whose identifier was stored (a query
    refused before its identifier was read has none).
    """
    stmt = _newest_first(select(QueryLogEntry), calling_ae_title).limit(1)
    if with_identifier:
        stmt = stmt.where(QueryLogEntry.identifier_json != "")
    entry = session.scalars(stmt).first()
    return None if entry is None else _logged(entry)


_Select = TypeVar("_Select", bound="Select[*tuple[Any, ...]]")


def _newest_first(stmt: _Select, calling_ae_title: str) -> _Select:
    """``stmt`` narrowed to the queries of one calling AE title, the newest first."""
    return stmt.where(QueryLogEntry.calling_ae_title == calling_ae_title).order_by(
        QueryLogEntry.id.desc()
    )


def logged_query(session: Session, key: int) -> LoggedQuery | None:
    """The query log row with database key ``key``, or None."""
    entry = session.get(QueryLogEntry, key)
    return None if entry is None else _logged(entry)


def _key_sets(rows: Iterable[tuple[str, dt.datetime]], top: int) -> list[KeySet]:
    counts: Counter[tuple[AskedKey, ...]] = Counter()
    total = 0
    for identifier_json, received_at in rows:
        keys = asked_keys(identifier_json, received_at)
        counts[tuple(AskedKey(k.keyword, "", True) if k.today else k for k in keys)] += 1
        total += 1
    # Counter.most_common keeps first-seen order among ties: rows come newest first.
    return [KeySet(keys, count, total) for keys, count in counts.most_common(top)]


def typical_key_sets(
    session: Session, calling_ae_title: str, *, last: int = 50, top: int = 3
) -> list[KeySet]:
    """The sets of matching keys ``calling_ae_title`` sent most often in its last queries.

    Queries whose identifier was not stored (refused before it was read) are not
    counted.

    Parameters
    ----------
    session
        A read-only unit of work.
    calling_ae_title
        The AE title as logged.
    last
        How many of its newest queries to look at.
    top
        At most this many sets, the most frequent first (ties: the most recent).
    """
    stmt = (
        _newest_first(
            select(QueryLogEntry.identifier_json, QueryLogEntry.received_at), calling_ae_title
        )
        .where(QueryLogEntry.identifier_json != "")
        .limit(last)
    )
    return _key_sets(session.execute(stmt), top)


def typical_keys_by_ae(session: Session, *, last: int = 50) -> dict[str, KeySet]:
    """For each calling AE title, its most frequent key set in its last ``last`` queries.

    One statement for all AEs (a window function, on SQLite and PostgreSQL alike).
    """
    ranked = (
        select(
            QueryLogEntry.calling_ae_title.label("ae"),
            QueryLogEntry.identifier_json.label("identifier_json"),
            QueryLogEntry.received_at.label("received_at"),
            func.row_number()
            .over(partition_by=QueryLogEntry.calling_ae_title, order_by=QueryLogEntry.id.desc())
            .label("place"),
        )
        .where(QueryLogEntry.identifier_json != "")
        .subquery()
    )
    stmt = (
        select(ranked.c.ae, ranked.c.identifier_json, ranked.c.received_at)
        .where(ranked.c.place <= last)
        .order_by(ranked.c.ae, ranked.c.place)
    )
    rows_by_ae: dict[str, list[tuple[str, dt.datetime]]] = {}
    for ae, identifier_json, received_at in session.execute(stmt):
        rows_by_ae.setdefault(ae, []).append((identifier_json, received_at))
    out = {}
    for ae, rows in rows_by_ae.items():
        sets = _key_sets(rows, 1)
        if sets:
            out[ae] = sets[0]
    return out
