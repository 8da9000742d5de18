"""Manual status changes: the one transition table, as the admin guide prints it."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.domain import MppsStatus, SpsStatus
from mwl.operations.audit import events_for_step
from mwl.operations.outbox import event_from_json
from mwl.orders.apply import apply_order
from mwl.orders.edits import EditError, cancel_step, restore_step
from mwl.orders.status import change_status, reported_as
from mwl.orders.transitions import TRANSITIONS, allowed_statuses
from mwl.store.engine import make_session_factory
from mwl.store.models import OutboxMessage, ScheduledProcedureStep
from tests.factories import one_step_order

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "admin-guide.md"
START = dt.datetime(2026, 12, 3, 9, 30)
RIS = Settings(ris_host="127.0.0.1", ris_port=2575)


def documented_table() -> dict[str, tuple[str, ...]]:
    """The table between the status-transitions markers of the admin guide."""
    text = GUIDE.read_text(encoding="utf-8")
    block = text.split("<!-- status-transitions: begin -->")[1].split(
        "<!-- status-transitions: end -->"
    )[0]
    table = {}
    for line in block.strip().splitlines()[2:]:
        source, targets = (cell.strip() for cell in line.strip("|").split("|"))
        table[source] = tuple(t.strip() for t in targets.split(",") if t.strip() not in ("", "—"))
    return table


def test_the_admin_guide_prints_the_table_of_the_code() -> None:
    code = {s.value: tuple(t.value for t in targets) for s, targets in TRANSITIONS.items()}
    assert documented_table() == code
    # Every status the broker knows has a row, and no status may follow itself.
    assert set(TRANSITIONS) == set(SpsStatus)
    assert all(source not in targets for source, targets in TRANSITIONS.items())
    # The prose names the statuses the RIS hears of, as the MPPS path reports them.
    text = GUIDE.read_text(encoding="utf-8")
    for status, code_value in (("STARTED", "IP"), ("COMPLETED", "CM"), ("DISCONTINUED", "DC")):
        assert re.search(rf"{status}[^.]*`{code_value}`", text), status


def test_only_what_the_mpps_path_reports_is_reported() -> None:
    assert reported_as(Settings(), SpsStatus.STARTED) is MppsStatus.IN_PROGRESS
    assert reported_as(Settings(), SpsStatus.COMPLETED) is MppsStatus.COMPLETED
    assert reported_as(Settings(), SpsStatus.DISCONTINUED) is MppsStatus.DISCONTINUED
    for status in (SpsStatus.ARRIVED, SpsStatus.READY, SpsStatus.HELD, SpsStatus.CANCELED):
        assert reported_as(Settings(), status) is None
    # A site that maps COMPLETED to DEPARTED reports a manual DEPARTED as CM.
    site = Settings(mpps_step_status=(("COMPLETED", "DEPARTED"),))
    assert reported_as(site, SpsStatus.DEPARTED) is MppsStatus.COMPLETED
    assert reported_as(site, SpsStatus.COMPLETED) is None


@pytest.fixture
def writers(engine) -> sessionmaker[Session]:
    factory = make_session_factory(engine, writer=True)
    with factory.begin() as session:
        apply_order(session, one_step_order("ACC1", START, placer="PL1"))
    return factory


def step_key(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return session.scalars(select(ScheduledProcedureStep.id)).one()


def test_a_change_is_audited_and_reported_as_an_mpps_would_be(writers) -> None:
    key = step_key(writers)
    with writers.begin() as session:
        item, queued = change_status(
            session, key, SpsStatus.STARTED, "erin", "modality sends no MPPS", RIS
        )
    assert item.scheduled_procedure_step_status is SpsStatus.STARTED and queued
    with writers.begin() as session:
        _item, queued = change_status(session, key, SpsStatus.COMPLETED, "erin", "done", RIS)
    with writers() as session:
        trail = events_for_step(session, key)
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        events = [event_from_json(row.payload) for row in rows]
    assert [(e.action, e.reason) for e in trail] == [
        ("status", "modality sends no MPPS"),
        ("status", "done"),
    ]
    changes = [(c.field, c.before, c.after) for e in trail for c in e.changes]
    assert changes == [
        ("scheduled_procedure_step_status", "SCHEDULED", "STARTED"),
        ("scheduled_procedure_step_status", "STARTED", "COMPLETED"),
    ]
    assert [(e.status, e.mpps_status) for e in events] == [
        (SpsStatus.STARTED, MppsStatus.IN_PROGRESS),
        (SpsStatus.COMPLETED, MppsStatus.COMPLETED),
    ]
    assert {row.destination for row in rows} == {"127.0.0.1:2575"}
    first = events[0]
    assert (first.accession_number, first.placer_order_number) == ("ACC1", "PL1")
    assert first.scheduled_procedure_step_ids == ("S-ACC1",)
    assert first.mpps_sop_instance_uid == ""  # no MPPS: the page did it


def test_unreported_changes_and_no_ris_queue_nothing(writers) -> None:
    key = step_key(writers)
    with writers.begin() as session:
        assert (
            change_status(session, key, SpsStatus.ARRIVED, "erin", "at the desk", RIS)[1] is False
        )
    with writers.begin() as session:
        assert (
            change_status(session, key, SpsStatus.STARTED, "erin", "begun", Settings())[1] is False
        )
    with writers() as session:
        assert session.scalars(select(OutboxMessage)).all() == []


def test_every_transition_outside_the_table_is_refused(writers) -> None:
    key = step_key(writers)
    for source, target in itertools.product(SpsStatus, SpsStatus):
        with writers.begin() as session:
            session.get(ScheduledProcedureStep, key).status = source.value
        allowed = target in allowed_statuses(source)
        try:
            with writers.begin() as session:
                change_status(session, key, target, "erin", "why", Settings())
        except EditError as exc:
            assert not allowed, (source, target, exc.errors)
            assert "scheduled_procedure_step_status" in exc.errors
        else:
            assert allowed, (source, target)


def test_a_reason_is_required_and_every_problem_is_reported(writers) -> None:
    key = step_key(writers)
    with pytest.raises(EditError) as refused, writers.begin() as session:
        change_status(session, key, SpsStatus.COMPLETED, "erin", "  ", Settings())
    assert set(refused.value.errors) == {"reason", "scheduled_procedure_step_status"}
    with writers() as session:
        assert session.get(ScheduledProcedureStep, key).status == "SCHEDULED"
        assert events_for_step(session, key) == []


def test_cancel_and_restore_follow_the_table(writers) -> None:
    key = step_key(writers)
    with writers.begin() as session:
        session.get(ScheduledProcedureStep, key).status = SpsStatus.DEPARTED.value
    with pytest.raises(EditError), writers.begin() as session:
        cancel_step(session, key, "erin")
    with writers.begin() as session:
        session.get(ScheduledProcedureStep, key).status = SpsStatus.HELD.value
    with writers.begin() as session:
        cancel_step(session, key, "erin", "duplicate")
    with writers.begin() as session:
        assert restore_step(session, key, "erin").scheduled_procedure_step_status is SpsStatus.HELD
