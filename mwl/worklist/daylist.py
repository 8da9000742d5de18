"""The day list: every scheduled procedure step of one day, whatever its status."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
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
    modality: str | None = None,
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions of one day's steps, over step, procedure and patient.

    Parameters are those of :func:`items_for_day`.
    """
    start = dt.datetime.combine(day, dt.time.min)
    end = start + dt.timedelta(days=1)
    step = ScheduledProcedureStep
    conditions: list[ColumnElement[bool]] = [
        # A half-open range on the bare column keeps the index on start_datetime (and
        # the modality/station + start indexes) usable: no function wraps the column.
        step.start_datetime >= start,
        step.start_datetime < end,
    ]
    if modality:
        conditions.append(step.modality == modality)
    if station:
        conditions.append(step.scheduled_station_ae_title == station)
    if statuses is not None:
        conditions.append(step.status.in_(sorted(s.value for s in statuses)))
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
    station: str | None = None,
    statuses: frozenset[SpsStatus] | None = None,
    text: str | None = None,
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
    station, statuses, text
        As for :func:`items_for_day`.

    Returns
    -------
    list[ModalityCount]
        One entry per modality that has steps, ordered by modality (a step without
        a modality counts under ``""``, which sorts first).
    """
    conditions = day_conditions(day, station=station, statuses=statuses, text=text)
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
