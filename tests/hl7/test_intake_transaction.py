"""One transaction per message: stored even when applying fails, a failed change rolled back."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.client import ack_summary
from mwl.hl7.intake import retrying_write_conflicts
from mwl.hl7.server import Hl7Server
from mwl.store.models import Hl7Message, Patient, RequestedProcedure, ScheduledProcedureStep

from .conftest import sample

# Two orders in one message: the first complete, the second without any start
# (no ORC-7.4, TQ1 or OBR-27.4), which hl7_missing_start="reject" refuses only after
# the first order's rows were written (the second's lookup flushes them).
TWO_ORDERS = b"\r".join(
    [
        b"MSH|^~\\&|RIS|HOSPITAL|MWL|RADIOLOGY|20261120143000||ORM^O01|TWO0001|P|2.3.1",
        b"PID|1||PAT0002^^^HOSPITAL^MR||Second^Sam||19800115|M",
        b"ORC|NW|PLC0101|FIL0101||SC||^^^20261121093000^^R",
        b"OBR|1|PLC0101|FIL0101|CTHEAD^CT Head^LOCAL||||||||||||||ACC0101|RP0101|SPS0101||||CT",
        b"ORC|NW|PLC0102|FIL0102||SC",
        b"OBR|2|PLC0102|FIL0102|CTCHEST^CT Chest^LOCAL||||||||||||||ACC0102|RP0102|SPS0102||||CT",
    ]
)


def rows(session_factory: sessionmaker[Session], model: type) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_failed_apply_is_rolled_back_and_the_message_kept(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    server = Hl7Server(replace(settings, hl7_missing_start="reject"), session_factory)
    ack = server.handle_message(TWO_ORDERS, "10.0.0.9:4000")
    assert ack_summary(ack)[:2] == ("AE", "TWO0001")
    # Nothing of either order, although the first one had been written.
    for model in (Patient, RequestedProcedure, ScheduledProcedureStep):
        assert rows(session_factory, model) == 0, model
    with session_factory() as session:
        (logged,) = session.scalars(select(Hl7Message)).all()
        assert (logged.raw, logged.outcome, logged.ack) == (TWO_ORDERS, "AE", ack)
        assert logged.processed_at is not None and "start" in logged.error
    # The same order with the default policy (start = now) is applied in full.
    ack = Hl7Server(settings, session_factory).handle_message(
        TWO_ORDERS.replace(b"TWO0001", b"TWO0002"), "10.0.0.9:4000"
    )
    assert ack_summary(ack)[0] == "AA"
    assert rows(session_factory, ScheduledProcedureStep) == 2


def test_an_accepted_message_is_one_commit(
    settings: Settings, engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    commits: list[object] = []

    def count_commit(connection: object) -> None:
        commits.append(connection)

    event.listen(engine, "commit", count_commit)
    try:
        ack = Hl7Server(settings, session_factory).handle_message(sample("orm_o01_nw.hl7"), "x")
    finally:
        event.remove(engine, "commit", count_commit)
    assert ack_summary(ack)[0] == "AA"
    assert len(commits) == 1  # message stored, order applied, outcome recorded
    with session_factory() as session:
        (logged,) = session.scalars(select(Hl7Message)).all()
        assert (logged.outcome, logged.ack) == ("AA", ack)
    assert rows(session_factory, ScheduledProcedureStep) == 1


class _Sqlstate(Exception):
    def __init__(self, sqlstate: str) -> None:
        self.sqlstate = sqlstate


def test_write_conflicts_are_retried_three_times_in_all() -> None:
    calls: list[int] = []

    def conflict() -> bytes:
        calls.append(1)
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        retrying_write_conflicts(conflict, "HL7 message X")
    assert len(calls) == 3

    outcomes: list[Exception | bytes] = [
        OperationalError("UPDATE", {}, _Sqlstate("40P01")),  # deadlock: retried
        b"ACK",
    ]

    def deadlock_once() -> bytes:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retrying_write_conflicts(deadlock_once, "HL7 message X") == b"ACK"

    def unavailable() -> bytes:
        calls.append(1)
        raise OperationalError("SELECT", {}, _Sqlstate("08006"))  # connection failure

    calls.clear()
    with pytest.raises(OperationalError):
        retrying_write_conflicts(unavailable, "HL7 message X")
    assert len(calls) == 1  # not a conflict: the caller answers AE at once
