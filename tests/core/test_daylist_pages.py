"""The day list's query in SQL: sort, filters ignoring case, date ranges, pages, counts, version."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mwl.domain import SpsStatus
from mwl.orders.apply import apply_order
from mwl.store.models import RequestedProcedure, ScheduledProcedureStep
from mwl.worklist.daylist import (
    DayQuery,
    DaySort,
    count_steps,
    day_items,
    day_page,
    day_version,
    sorted_statement,
)
from tests.factories import one_step_order

DAY = dt.date(2026, 11, 21)
Store = Callable[..., None]


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


@pytest.fixture
def store(session_factory: sessionmaker[Session]) -> Store:
    def add(
        accession: str,
        start: dt.datetime,
        *,
        priority: str = "",
        status: SpsStatus = SpsStatus.SCHEDULED,
        **values: str,
    ) -> None:
        with session_factory.begin() as session:
            apply_order(session, one_step_order(accession, start, **values))
            procedure = session.scalars(
                select(RequestedProcedure).where(RequestedProcedure.accession_number == accession)
            ).one()
            procedure.requested_procedure_priority = priority
            session.execute(
                update(ScheduledProcedureStep)
                .where(ScheduledProcedureStep.procedure_key == procedure.id)
                .values(status=status.value)
            )

    return add


def accessions(session: Session, query: DayQuery, offset: int = 0, limit: int = 100) -> list[str]:
    return [i.accession_number for i in day_page(session, query, offset=offset, limit=limit).items]


@pytest.fixture
def day(store: Store) -> None:
    store("A-0800", at(8), patient_name="Zeta^Zoe", patient_id="P1", priority="ROUTINE")
    store("A-0900", at(9), patient_name="Alpha^Al", patient_id="P2", priority="STAT")
    store("A-1000", at(10), patient_name="müller^hans", patient_id="P3", priority="HIGH",
          modality="MR", station="mr01")  # fmt: skip
    store("A-1100", at(11), patient_name="Beta^Bo", patient_id="P4", priority="",
          status=SpsStatus.CANCELED)  # fmt: skip
    store("A-1200", at(12), patient_name="Gamma^Gil", patient_id="P5", priority="stat",
          station="CT02")  # fmt: skip
    store("B-NEXT", at(9, day=DAY + dt.timedelta(days=1)), patient_id="P6", priority="STAT")


def test_sort_by_priority_puts_stat_first_then_urgent_then_by_time(session_factory, day):
    with session_factory() as session:
        query = DayQuery(DAY, sort=DaySort.PRIORITY)
        # STAT (in any case) first, by time; HIGH; then ROUTINE and none, by time.
        assert accessions(session, query) == ["A-0900", "A-1200", "A-1000", "A-0800", "A-1100"]
        reverse = DayQuery(DAY, sort=DaySort.PRIORITY, descending=True)
        assert accessions(session, reverse)[:2] == ["A-0800", "A-1100"]


def test_other_sorts_and_the_default_by_time(session_factory, day):
    with session_factory() as session:
        assert accessions(session, DayQuery(DAY)) == [
            "A-0800",
            "A-0900",
            "A-1000",
            "A-1100",
            "A-1200",
        ]
        by_time_desc = accessions(session, DayQuery(DAY, descending=True))
        assert by_time_desc == ["A-1200", "A-1100", "A-1000", "A-0900", "A-0800"]
        by_name = accessions(session, DayQuery(DAY, sort=DaySort.PATIENT))
        assert by_name == ["A-0900", "A-1100", "A-1200", "A-1000", "A-0800"]
        by_status = accessions(session, DayQuery(DAY, sort=DaySort.STATUS))
        assert by_status[-1] == "A-1100"  # canceled last, in the order of the workflow
        by_station = accessions(session, DayQuery(DAY, sort=DaySort.STATION, descending=True))
        assert by_station[0] == "A-1000"  # "mr01" > "CT02" > "CT01"


def test_filters_ignore_case(session_factory, day):
    with session_factory() as session:
        assert accessions(session, DayQuery(DAY, station="MR01")) == ["A-1000"]
        assert accessions(session, DayQuery(DAY, station="ct02")) == ["A-1200"]
        assert accessions(session, DayQuery(DAY, modality="mr")) == ["A-1000"]
        assert accessions(session, DayQuery(DAY, text="MÜLLER")) == ["A-1000"]
        assert accessions(session, DayQuery(DAY, text="a-09")) == ["A-0900"]
        urgent = DayQuery(DAY, priorities=frozenset({"STAT", "HIGH"}))
        assert accessions(session, urgent) == ["A-0900", "A-1000", "A-1200"]


def test_a_range_of_days_and_counts(session_factory, day):
    with session_factory() as session:
        both = DayQuery(DAY, last=DAY + dt.timedelta(days=1))
        assert count_steps(session, both) == 6
        assert accessions(session, both)[-1] == "B-NEXT"
        assert count_steps(session, DayQuery(DAY)) == 5
        assert count_steps(session, DayQuery(DAY, statuses=frozenset({SpsStatus.CANCELED}))) == 1
        # A last day before the first is the first day alone.
        assert count_steps(session, DayQuery(DAY, last=DAY - dt.timedelta(days=3))) == 5


def test_pages_cover_every_step_once_with_the_total(session_factory, day):
    with session_factory() as session:
        query = DayQuery(DAY, sort=DaySort.PRIORITY)
        pages = [day_page(session, query, offset=offset, limit=2) for offset in (0, 2, 4)]
        assert [p.total for p in pages] == [5, 5, 5]
        seen = [i.accession_number for p in pages for i in p.items]
        assert seen == accessions(session, query)
        beyond = day_page(session, query, offset=10, limit=2)
        assert beyond.items == [] and beyond.total == 5
        assert day_page(session, DayQuery(DAY + dt.timedelta(days=5))).total == 0
        assert [i.accession_number for i in day_items(session, query, limit=2)] == seen[:2]
        with pytest.raises(ValueError):
            day_page(session, query, offset=-1)


def test_the_version_changes_with_a_new_changed_or_removed_step(session_factory, store, day):
    query = DayQuery(DAY, modality="CT")
    with session_factory() as session:
        first = day_version(session, query)
        assert day_version(session, query) == first
    store("A-1300", at(13), patient_id="P7")
    with session_factory() as session:
        second = day_version(session, query)
    assert second != first
    with session_factory.begin() as session:
        session.execute(
            update(ScheduledProcedureStep)
            .where(ScheduledProcedureStep.scheduled_procedure_step_id == "S-A-0800")
            .values(status="ARRIVED")
        )
    with session_factory() as session:
        third = day_version(session, query)
        # Another day's change leaves this one's version alone.
        assert third != second
    store("C-LATER", at(9, day=DAY + dt.timedelta(days=4)), patient_id="P8")
    with session_factory() as session:
        assert day_version(session, query) == third


def test_the_sorted_statement_is_parameterised(day):
    sql = str(sorted_statement(DayQuery(DAY, station="x' OR 1=1 --", sort=DaySort.PRIORITY)))
    assert "OR 1=1" not in sql and "CASE" in sql
