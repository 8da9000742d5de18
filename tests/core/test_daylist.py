"""items_for_day and modality_counts: one day's steps, filtered in SQL, counted per modality."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mwl.domain import (
    Code,
    Order,
    PatientDemographics,
    RequestedProcedure,
    ScheduledStep,
    SpsStatus,
)
from mwl.orders.apply import apply_order
from mwl.store.models import ScheduledProcedureStep
from mwl.worklist.daylist import (
    ModalityCount,
    day_statement,
    items_for_day,
    modality_counts,
    text_terms,
)

DAY = dt.date(2026, 11, 21)

Store = Callable[..., None]


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


@pytest.fixture
def store(session_factory: sessionmaker[Session]) -> Store:
    """Store an order with one step (``S-<accession>``), then set the step's status."""

    def add(
        accession: str,
        start: dt.datetime,
        *,
        patient_id: str = "PAT1",
        name: str = "Doe^Jane",
        modality: str = "CT",
        station: str = "CT01",
        status: SpsStatus = SpsStatus.SCHEDULED,
        protocol: tuple[Code, ...] = (),
    ) -> None:
        order = Order(
            order_control="NW",
            order_status="SC",
            patient=PatientDemographics(patient_id, "HOSP", name, "19800214", "F"),
            procedures=(
                RequestedProcedure(
                    study_instance_uid="",
                    requested_procedure_id=accession,
                    accession_number=accession,
                    placer_order_number=f"PL-{accession}",
                    steps=(
                        ScheduledStep(
                            f"S-{accession}",
                            modality=modality,
                            scheduled_station_ae_title=station,
                            start=start,
                            scheduled_protocol_codes=protocol,
                        ),
                    ),
                ),
            ),
            sending_facility="HOSP",
        )
        with session_factory.begin() as session:
            apply_order(session, order)
            # Statuses reached through MPPS or later messages, set directly: the day
            # list only reads them.
            session.execute(
                update(ScheduledProcedureStep)
                .where(ScheduledProcedureStep.scheduled_procedure_step_id == f"S-{accession}")
                .values(status=status.value)
            )

    return add


def accessions(session: Session, **filters: object) -> list[str]:
    return [i.accession_number for i in items_for_day(session, DAY, **filters)]  # type: ignore[arg-type]


def test_items_of_the_day_only_ordered_by_start_with_all_statuses(session_factory, store):
    store("ACC-LATE", at(15, 30), patient_id="P2", name="Roe^Richard")
    store("ACC-EARLY", at(0, 0), protocol=(Code("P1", "99LOCAL", "Head routine"),))
    store("ACC-CANCEL", at(9), patient_id="P3", status=SpsStatus.CANCELED)
    store("ACC-YESTERDAY", at(23, 59, DAY - dt.timedelta(days=1)))
    store("ACC-TOMORROW", at(0, 0, DAY + dt.timedelta(days=1)))

    with session_factory() as session:
        items = items_for_day(session, DAY)

    assert [i.accession_number for i in items] == ["ACC-EARLY", "ACC-CANCEL", "ACC-LATE"]
    first = items[0]
    assert first.start == at(0, 0)
    assert first.patient_name == "Doe^Jane"
    assert first.patient_id == "PAT1"
    assert first.issuer_of_patient_id == "HOSP"
    assert first.scheduled_station_ae_title == "CT01"
    assert first.scheduled_protocol_codes == (Code("P1", "99LOCAL", "Head routine"),)
    assert first.requested_procedure_code is None
    assert first.study_instance_uid.startswith("2.25.")
    assert first.step_key > 0
    assert items[1].scheduled_procedure_step_status is SpsStatus.CANCELED
    assert items[2].scheduled_procedure_step_status is SpsStatus.SCHEDULED


def test_status_filter_and_empty_day(session_factory, store):
    store("A1", at(8))
    store("A2", at(9), status=SpsStatus.CANCELED)
    store("A3", at(10), status=SpsStatus.STARTED)
    with session_factory() as session:
        assert accessions(session, statuses=frozenset({SpsStatus.SCHEDULED})) == ["A1"]
        both = frozenset({SpsStatus.SCHEDULED, SpsStatus.STARTED})
        assert accessions(session, statuses=both) == ["A1", "A3"]
        assert accessions(session, statuses=frozenset()) == []
        assert items_for_day(session, DAY + dt.timedelta(days=2)) == []


def test_modality_and_station_filters_are_exact_and_combine(session_factory, store):
    store("CT-A", at(8), modality="CT", station="CT01")
    store("CT-B", at(9), modality="CT", station="CT02")
    store("MR-A", at(10), modality="MR", station="MR01")
    with session_factory() as session:
        assert accessions(session, modality="CT") == ["CT-A", "CT-B"]
        assert accessions(session, modality="MR") == ["MR-A"]
        assert accessions(session, station="CT02") == ["CT-B"]
        assert accessions(session, modality="CT", station="CT01") == ["CT-A"]
        assert accessions(session, modality="MR", station="CT01") == []
        assert accessions(session, modality="C") == []  # no prefix matching
        # Empty filters are no filters (what an empty form field sends).
        assert accessions(session, modality="", station="", text="") == ["CT-A", "CT-B", "MR-A"]


def test_free_text_finds_names_ignoring_case_and_accents(session_factory, store):
    store("ACC1", at(8), patient_id="PID-7", name="Müller^Hans^Peter")
    store("ACC2", at(9), patient_id="PID-8", name="Strauß^Jörg")
    store("ACC3", at(10), patient_id="PID-9", name="Mueller^Anna")
    with session_factory() as session:
        for text in ("muller", "MÜLLER", "Müller, Hans", "hans müller", "Mül", "peter", "Mül*"):
            assert accessions(session, text=text) == ["ACC1"], text
        assert accessions(session, text="strauss jörg") == ["ACC2"]
        assert accessions(session, text="JORG") == ["ACC2"]
        assert accessions(session, text="mueller") == ["ACC3"]  # spelled out, as stored
        assert accessions(session, text="müller anna") == []  # every word must match


def test_free_text_finds_patient_ids_and_accession_numbers(session_factory, store):
    store("RAD2026-0001", at(8), patient_id="PID-7", name="Doe^Jane")
    store("RAD2026-0002", at(9), patient_id="XY_42", name="Roe^Richard")
    store("50%OFF", at(10), patient_id="PID-10", name="Poe^Edgar")
    with session_factory() as session:
        assert accessions(session, text="pid-7") == ["RAD2026-0001"]
        assert accessions(session, text="0002") == ["RAD2026-0002"]
        assert accessions(session, text="rad2026") == ["RAD2026-0001", "RAD2026-0002"]
        assert accessions(session, text="PID") == ["RAD2026-0001", "50%OFF"]
        assert accessions(session, text="jane RAD2026") == ["RAD2026-0001"]
        # LIKE's own wildcards are literal characters here.
        assert accessions(session, text="%") == ["50%OFF"]
        assert accessions(session, text="XY_") == ["RAD2026-0002"]
        assert accessions(session, text="_") == ["RAD2026-0002"]
        assert accessions(session, text="/") == []


def test_text_terms_split_at_spaces_commas_and_name_separators():
    assert text_terms("Müller, Hans") == ["Müller", "Hans"]
    assert text_terms("  MÜLLER^HANS  ACC-1 ") == ["MÜLLER", "HANS", "ACC-1"]
    assert text_terms("Mül*") == ["Mül"]
    assert text_terms("") == [] and text_terms(None) == [] and text_terms(" * ") == []


def test_modality_counts_per_status_ignore_the_modality_filter(session_factory, store):
    store("C1", at(8), modality="CT", station="CT01")
    store("C2", at(9), modality="CT", station="CT02", status=SpsStatus.COMPLETED)
    store("C3", at(10), modality="CT", station="CT01", status=SpsStatus.CANCELED)
    store("M1", at(11), modality="MR", station="MR01", patient_id="P2", name="Müller^Hans")
    store("U1", at(12), modality="", station="")
    store("X1", at(12, day=DAY + dt.timedelta(days=1)), modality="US")

    with session_factory() as session:
        counts = modality_counts(session, DAY)
        assert counts == [
            ModalityCount("", 1, {SpsStatus.SCHEDULED: 1}),
            ModalityCount(
                "CT",
                3,
                {SpsStatus.SCHEDULED: 1, SpsStatus.COMPLETED: 1, SpsStatus.CANCELED: 1},
            ),
            ModalityCount("MR", 1, {SpsStatus.SCHEDULED: 1}),
        ]
        assert modality_counts(session, DAY, station="CT01") == [
            ModalityCount("CT", 2, {SpsStatus.SCHEDULED: 1, SpsStatus.CANCELED: 1})
        ]
        scheduled = modality_counts(session, DAY, statuses=frozenset({SpsStatus.SCHEDULED}))
        assert [(c.modality, c.total) for c in scheduled] == [("", 1), ("CT", 1), ("MR", 1)]
        assert [(c.modality, c.total) for c in modality_counts(session, DAY, text="muller")] == [
            ("MR", 1)
        ]
        assert modality_counts(session, DAY + dt.timedelta(days=2)) == []


def explain(engine: Engine, **filters: object) -> str:
    """The database's plan for the day list query, as one text."""
    stmt = day_statement(DAY, **filters)  # type: ignore[arg-type]
    sql = str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # A few rows make a sequential scan cheapest; this asks whether an index
            # *can* serve the query, which is what a full day of a busy department needs.
            conn.exec_driver_sql("SET enable_seqscan = off")
            rows = conn.exec_driver_sql("EXPLAIN " + sql).all()
        else:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
    return "\n".join(str(row[-1]) for row in rows)


def test_filters_keep_an_index_on_the_start_usable(engine, store):
    store("ACC1", at(8))
    postgres = engine.dialect.name == "postgresql"
    for filters in ({}, {"text": "müller 0815"}, {"modality": "CT"}, {"station": "CT01"}):
        plan = explain(engine, **filters)
        if postgres:
            assert "Index Cond" in plan and "start_datetime >=" in plan, (filters, plan)
        else:
            lines = [line for line in plan.splitlines() if "scheduled_procedure_step" in line]
            assert any("USING INDEX" in ln and "start_datetime>" in ln for ln in lines), plan
    # Without statistics SQLite may prefer the status index: still no full scan.
    plan = explain(engine, text="x", statuses=frozenset({SpsStatus.SCHEDULED}))
    if postgres:
        assert "Seq Scan on scheduled_procedure_step" not in plan, plan
    else:
        assert "SCAN scheduled_procedure_step" not in plan, plan
        assert "SEARCH scheduled_procedure_step USING INDEX" in plan, plan
