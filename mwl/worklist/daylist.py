"""The day list: every scheduled procedure step of a day (or range), whatever its status.

Filtering, sorting, counting and paging are all done by the database, so a page of
a 20,000-step range costs one indexed range scan, one sort and one count, never a
load of the whole range into Python.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from mwl.domain import SpsStatus, WorklistItem
from mwl.store.models import Patient, RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.matching import worklist_item
from mwl.worklist.names import name_search_key

# Free text is split into words at white space, commas and name component separators,
# so "Müller, Hans", "Müller Hans" and "MÜLLER^HANS" look for the same two words.
_WORD_SEPARATORS = re.compile(r"[\s,;^=]+")


@dataclass(frozen=True)
class ModalityCount:
    """How many steps of one modality a day holds, in total and per status."""

    modality: str
    total: int
    by_status: Mapping[SpsStatus, int] = field(default_factory=dict)


def text_terms(text: str | None) -> list[str]:
    """The words of a free-text search, each of which must be found.

    A ``*`` is dropped: every word already matches anywhere inside a value, so the
    wildcard people are used to from DICOM queries changes nothing.
    """
    if not text:
        return []
    return [word for word in _WORD_SEPARATORS.split(text.replace("*", "")) if word]


def day_conditions(
    day: dt.date,
    *,
    last: dt.date | None = None,
    modality: str | None = None,
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
    priorities: frozenset[str] | None = None,
) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions of the steps from ``day`` to ``last`` (inclusive).

    Parameters are those of :func:`items_for_day`; ``last`` defaults to ``day``,
    ``priorities`` (stored Requested Procedure Priority values, upper case) to all.
    """
    start = dt.datetime.combine(day, dt.time.min)
    end = dt.datetime.combine(max(last or day, day), dt.time.min) + dt.timedelta(days=1)
    step = ScheduledProcedureStep
    conditions: list[ColumnElement[bool]] = [
        # A half-open range on the bare column keeps the index on start_datetime (and
        # the modality/station + start indexes) usable: no function wraps the column.
        step.start_datetime >= start,
        step.start_datetime < end,
    ]
    if modality:
        conditions.append(step.modality == modality.upper())
    if station:
        # AE titles are case-sensitive in DICOM, but people type "ct01" for CT01; the
        # start range above still narrows the rows before the function applies.
        conditions.append(func.upper(step.scheduled_station_ae_title) == station.upper())
    if statuses is not None:
        conditions.append(step.status.in_(sorted(s.value for s in statuses)))
    if priorities is not None:
        conditions.append(
            func.upper(RequestedProcedure.requested_procedure_priority).in_(sorted(priorities))
        )
    for term in text_terms(text):
        conditions.append(_term_condition(term))
    return conditions


def _term_condition(term: str) -> ColumnElement[bool]:
    # IDs and accession numbers as typed (ignoring case); the name through its folded
    # key, so "muller" finds "Müller" on every database.
    alternatives = [
        Patient.patient_id.icontains(term, autoescape=True),
        RequestedProcedure.accession_number.icontains(term, autoescape=True),
    ]
    name_key = name_search_key(term)
    if name_key:
        alternatives.append(Patient.patient_name_key.contains(name_key, autoescape=True))
    return or_(*alternatives)


def day_statement(
    day: dt.date,
    *,
    modality: str | None = None,
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
) -> Select[ScheduledProcedureStep, RequestedProcedure, Patient]:
    """The query behind :func:`items_for_day` (parameters as there), for reuse and EXPLAIN."""
    conditions = day_conditions(
        day, modality=modality, station=station, statuses=statuses, text=text
    )
    return (
        select(ScheduledProcedureStep, RequestedProcedure, Patient)
        .join(RequestedProcedure, ScheduledProcedureStep.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(and_(*conditions))
        .order_by(
            ScheduledProcedureStep.start_datetime,
            RequestedProcedure.accession_number,
            ScheduledProcedureStep.scheduled_procedure_step_id,
            ScheduledProcedureStep.id,
        )
    )


def items_for_day(
    session: Session,
    day: dt.date,
    *,
    modality: str | None = None,
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
) -> list[WorklistItem]:
    """Return the steps scheduled on ``day`` (local time), ordered by start.

    Unlike a modality's worklist query, canceled, held and started steps are
    included by default: staff need to see them with their status. Every filter is
    a condition of one SQL statement; nothing is filtered in Python.

    Parameters
    ----------
    session
        A read-only unit of work.
    day
        The calendar day, in the department's local time like the stored starts.
    modality
        Only steps of this modality (exact, e.g. ``CT``); None or empty for all.
    station
        Only steps scheduled on this station AE title (exact); None or empty for all.
    statuses
        Only steps with one of these statuses; None for all.
    text
        Free text: every word of it must occur in the patient's name (ignoring case
        and accents, through the folded name key of :func:`mwl.worklist.names.name_search_key`),
        in the patient ID or in the accession number (both ignoring case). None or
        empty for all.

    Returns
    -------
    list[WorklistItem]
        Detached items ordered by start, then accession number and SPS ID.
    """
    stmt = day_statement(day, modality=modality, station=station, statuses=statuses, text=text)
    rows = session.execute(stmt)
    return [worklist_item(step, procedure, patient) for step, procedure, patient in rows]


def modality_counts(
    session: Session,
    day: dt.date,
    *,
    last: dt.date | None = None,
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
    priorities: frozenset[str] | None = None,
) -> list[ModalityCount]:
    """Count the steps of ``day`` per modality, and per status within each.

    The filters are those of :func:`items_for_day` except the modality: the counts
    tell how many steps each modality filter would show.

    Parameters
    ----------
    session
        A read-only unit of work.
    day
        The calendar day, in the department's local time.
    last, station, statuses, text, priorities
        As for :func:`day_conditions`.

    Returns
    -------
    list[ModalityCount]
        One entry per modality that has steps, ordered by modality (a step without
        a modality counts under ``""``, which sorts first).
    """
    conditions = day_conditions(
        day, last=last, station=station, statuses=statuses, text=text, priorities=priorities
    )
    step = ScheduledProcedureStep
    stmt = (
        select(step.modality, step.status, func.count())
        .select_from(step)
        .join(RequestedProcedure, step.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(and_(*conditions))
        .group_by(step.modality, step.status)
        .order_by(step.modality, step.status)
    )
    per_modality: dict[str, dict[SpsStatus, int]] = {}
    for modality, status, count in session.execute(stmt):
        per_modality.setdefault(modality, {})[SpsStatus(status)] = count
    return [
        ModalityCount(modality, sum(by_status.values()), by_status)
        for modality, by_status in per_modality.items()
    ]


# Requested Procedure Priority (0040,1003) defined terms, most urgent first; any
# other stored value (or none) sorts after them, with ROUTINE.
PRIORITY_ORDER = ("STAT", "HIGH", "MEDIUM", "ROUTINE", "LOW")
# The priorities the day list marks: those a department calls urgent.
URGENT = frozenset({"STAT", "HIGH"})
# The step statuses in the order of the workflow, for sorting by status.
STATUS_ORDER = (
    SpsStatus.SCHEDULED,
    SpsStatus.ARRIVED,
    SpsStatus.READY,
    SpsStatus.STARTED,
    SpsStatus.HELD,
    SpsStatus.DEPARTED,
    SpsStatus.COMPLETED,
    SpsStatus.DISCONTINUED,
    SpsStatus.CANCELED,
)


class DaySort(enum.StrEnum):
    """The columns the day list sorts by (the value is the URL's ``sort``)."""

    TIME = "time"
    PRIORITY = "priority"
    PATIENT = "patient"
    PROCEDURE = "procedure"
    MODALITY = "modality"
    STATION = "station"
    STATUS = "status"
    ACCESSION = "accession"


@dataclass(frozen=True)
class DayQuery:
    """What the day list shows: a range of days, its filters and its order."""

    first: dt.date
    last: dt.date | None = None
    modality: str = ""
    station: str = ""
    statuses: frozenset[SpsStatus] | None = None
    text: str = ""
    priorities: frozenset[str] | None = None
    sort: DaySort = DaySort.TIME
    descending: bool = False

    def conditions(self) -> list[ColumnElement[bool]]:
        """The ``WHERE`` conditions of this query (see :func:`day_conditions`)."""
        return day_conditions(
            self.first,
            last=self.last,
            modality=self.modality,
            station=self.station,
            statuses=self.statuses,
            text=self.text,
            priorities=self.priorities,
        )


@dataclass(frozen=True)
class DayPage:
    """One page of the day list and how many steps the whole query matches."""

    items: list[WorklistItem]
    total: int
    offset: int
    limit: int


def priority_rank(column: Any) -> ColumnElement[int]:
    """A number to sort priorities by: 0 for STAT, then HIGH, MEDIUM; ROUTINE and unknown 3."""
    upper = func.upper(column)
    whens = [(upper == value, rank) for rank, value in enumerate(PRIORITY_ORDER)]
    return case(*whens, else_=PRIORITY_ORDER.index("ROUTINE"))


def _sort_columns(sort: DaySort) -> list[Any]:
    step, procedure, patient = ScheduledProcedureStep, RequestedProcedure, Patient
    if sort is DaySort.PRIORITY:
        return [priority_rank(procedure.requested_procedure_priority)]
    if sort is DaySort.PATIENT:
        return [patient.patient_name_key, patient.patient_id]
    if sort is DaySort.PROCEDURE:
        return [procedure.requested_procedure_description]
    if sort is DaySort.MODALITY:
        return [step.modality, step.scheduled_station_ae_title]
    if sort is DaySort.STATION:
        return [step.scheduled_station_ae_title]
    if sort is DaySort.STATUS:
        whens = [(step.status == s.value, rank) for rank, s in enumerate(STATUS_ORDER)]
        return [case(*whens, else_=len(STATUS_ORDER))]
    if sort is DaySort.ACCESSION:
        return [procedure.accession_number]
    return []


def sorted_statement(
    query: DayQuery,
) -> Select[ScheduledProcedureStep, RequestedProcedure, Patient]:
    """The rows of ``query`` in its order; ties (and the time sort) by start, then keys.

    The tie-breakers end in the step's key, so the order is total and paging by
    offset never shows a step twice or skips one while nothing changes.
    """
    keys = _sort_columns(query.sort)
    step = ScheduledProcedureStep
    tail: list[Any] = [
        step.start_datetime,
        RequestedProcedure.accession_number,
        step.scheduled_procedure_step_id,
        step.id,
    ]
    if query.descending:
        # Descending applies to the chosen column (or the time); ties stay by time.
        order = [k.desc() for k in keys] + tail if keys else [c.desc() for c in tail]
    else:
        order = keys + tail
    return (
        select(step, RequestedProcedure, Patient)
        .join(RequestedProcedure, step.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(and_(*query.conditions()))
        .order_by(*order)
    )


def count_steps(session: Session, query: DayQuery) -> int:
    """How many steps ``query`` matches (one ``COUNT`` in SQL)."""
    step = ScheduledProcedureStep
    stmt = (
        select(func.count())
        .select_from(step)
        .join(RequestedProcedure, step.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(and_(*query.conditions()))
    )
    return int(session.scalar(stmt) or 0)


def day_page(
    session: Session,
    query: DayQuery,
    *,
    offset: int = 0,
    limit: int = 100,
    total: int | None = None,
) -> DayPage:
    """One page (``limit`` steps from ``offset``) of ``query``'s steps, with the total.

    ``total``, when the caller knows it already (from :func:`modality_counts`), saves
    the ``COUNT``.

    Raises
    ------
    ValueError
        When ``offset`` is negative or ``limit`` is not positive.
    """
    if offset < 0 or limit < 1:
        raise ValueError(f"bad page: offset {offset}, limit {limit}")
    rows = session.execute(sorted_statement(query).offset(offset).limit(limit))
    items = [worklist_item(step, procedure, patient) for step, procedure, patient in rows]
    if total is None:
        total = count_steps(session, query) if items or offset else 0
    return DayPage(items, total, offset, limit)


def day_items(session: Session, query: DayQuery, *, limit: int) -> list[WorklistItem]:
    """The first ``limit`` steps of ``query`` in its order (for an export)."""
    rows = session.execute(sorted_statement(query).limit(limit))
    return [worklist_item(step, procedure, patient) for step, procedure, patient in rows]


def day_version(session: Session, query: DayQuery) -> str:
    """A short token that changes whenever what ``query`` shows may have changed.

    It hashes the count and the newest ``updated_at`` of the steps in the range,
    their procedures and patients (one aggregate over the start index): a new,
    changed, canceled or purged step changes it. Filters other than the days are
    left out on purpose: a step that leaves the filter changes its row's time too.
    """
    step = ScheduledProcedureStep
    conditions = day_conditions(query.first, last=query.last)
    stmt = (
        select(
            func.count(),
            func.max(step.updated_at),
            func.max(RequestedProcedure.updated_at),
            func.max(Patient.updated_at),
        )
        .select_from(step)
        .join(RequestedProcedure, step.procedure_key == RequestedProcedure.id)
        .join(Patient, RequestedProcedure.patient_key == Patient.id)
        .where(and_(*conditions))
    )
    row = session.execute(stmt).one()
    text = "|".join("" if value is None else str(value) for value in row)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
