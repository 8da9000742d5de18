"""Re-processing a message with the later messages of its order, after a rule change.

Real messages over MLLP first (the listener stores and applies them), then a station
rule is added, then the first order message is re-run with the later one: the preview
shows the difference and stores nothing; applying keeps the newer change.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Hl7StationRule, Settings
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.reprocess import apply_chain, preview_chain
from mwl.hl7.server import Hl7Server
from mwl.operations.message_view import REPROCESS_ACTION, ChainRefusal, reprocess_subject
from mwl.store.models import AuditEvent, Hl7Message, RequestedProcedure, ScheduledProcedureStep

from .conftest import replace_field, sample

pytestmark = pytest.mark.e2e

NEWER_DESCRIPTION = b"CTHEAD^CT Head with contrast^LOCAL"


def later_change(control_id: bytes, description: bytes = NEWER_DESCRIPTION) -> bytes:
    """An XO for the sample order (same placer PLC0001): a new procedure description."""
    message = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, control_id)
    message = replace_field(message, b"ORC", 1, b"XO")
    return replace_field(message, b"OBR", 4, description)


def other_order() -> bytes:
    """A new order of another placer and accession: not part of the chain."""
    message = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, b"MSG00003")
    for segment, position, value in (
        (b"ORC", 2, b"PLC0009"),
        (b"ORC", 3, b"FIL0009"),
        (b"OBR", 2, b"PLC0009"),
        (b"OBR", 3, b"FIL0009"),
        (b"OBR", 18, b"ACC0009"),
        (b"OBR", 19, b"RP0009"),
        (b"OBR", 20, b"SPS0009"),
        (b"ZDS", 1, b"1.2.826.0.1.3680043.10.543.9^MWL^Application^DICOM"),
    ):
        message = replace_field(message, segment, position, value)
    return message


def send(settings: Settings, factory: sessionmaker[Session], *messages: bytes) -> list[str]:
    with Hl7Server(settings, factory) as server:
        acks = send_messages(*server.address, list(messages), timeout=10)
    return [ack_summary(ack)[0] for ack in acks]


def step_values(factory: sessionmaker[Session], accession: str) -> tuple[str, str]:
    """(station AE title, procedure description) of the order's step."""
    with factory() as session:
        row = session.execute(
            select(
                ScheduledProcedureStep.scheduled_station_ae_title,
                RequestedProcedure.requested_procedure_description,
            )
            .join(RequestedProcedure)
            .where(RequestedProcedure.accession_number == accession)
        ).one()
    return row[0], row[1]


def message_key(factory: sessionmaker[Session], control_id: str) -> int:
    with factory() as session:
        return session.scalars(
            select(Hl7Message.id).where(Hl7Message.message_control_id == control_id)
        ).one()


def test_rerun_after_a_station_rule_keeps_the_newer_change(settings, session_factory) -> None:
    first = sample("orm_o01_nw.hl7")
    assert send(settings, session_factory, first, later_change(b"MSG00002"), other_order()) == [
        "AA",
        "AA",
        "AA",
    ]
    assert step_values(session_factory, "ACC0001") == ("", "CT Head with contrast")
    ruled = settings.replace(hl7_station_rules=(Hl7StationRule("CT01", modality="CT"),))
    key = message_key(session_factory, "MSG00001")

    preview = preview_chain(ruled, session_factory, key)
    assert preview.refusal is None and not preview.applied
    assert [m.message_control_id for m in preview.messages] == ["MSG00001", "MSG00002"]
    assert [m.outcome_after for m in preview.messages] == ["AA", "AA"]
    assert "PLC0001" in preview.order_keys and "ACC0001" in preview.order_keys
    (step,) = preview.differences
    changes = {c.field: (c.before, c.after) for c in step.changes}
    # The rule gives the station; the newer description is applied last, so it stays.
    assert changes == {"scheduled_station_ae_title": ("", "CT01")}
    assert step.label == "ACC0001 / SPS0001" and not step.created and not step.removed
    # A preview stores nothing.
    assert step_values(session_factory, "ACC0001") == ("", "CT Head with contrast")

    applied = apply_chain(ruled, session_factory, key, "erin", preview.fingerprint)
    assert applied.applied and applied.refusal is None
    assert applied.differences == preview.differences
    assert step_values(session_factory, "ACC0001") == ("CT01", "CT Head with contrast")
    assert step_values(session_factory, "ACC0009")[0] == ""  # the other order is left alone
    with session_factory() as session:
        audited = session.scalars(
            select(AuditEvent.subject).where(AuditEvent.action == REPROCESS_ACTION)
        ).all()
    second = message_key(session_factory, "MSG00002")
    assert sorted(audited) == sorted([reprocess_subject(key), reprocess_subject(second)])


def test_a_message_arriving_after_the_preview_refuses_the_rerun(settings, session_factory) -> None:
    assert send(settings, session_factory, sample("orm_o01_nw.hl7")) == ["AA"]
    ruled = settings.replace(hl7_station_rules=(Hl7StationRule("CT01", modality="CT"),))
    key = message_key(session_factory, "MSG00001")
    preview = preview_chain(ruled, session_factory, key)
    assert [c.after for d in preview.differences for c in d.changes] == ["CT01"]

    # Meanwhile the RIS sends a change: the preview no longer tells what would happen.
    assert send(settings, session_factory, later_change(b"MSG00002")) == ["AA"]
    refused = apply_chain(ruled, session_factory, key, "erin", preview.fingerprint)
    assert refused.refusal is ChainRefusal.CHANGED and not refused.applied
    assert step_values(session_factory, "ACC0001") == ("", "CT Head with contrast")

    again = preview_chain(ruled, session_factory, key)
    assert len(again.messages) == 2
    done = apply_chain(ruled, session_factory, key, "erin", again.fingerprint)
    assert done.applied
    assert step_values(session_factory, "ACC0001") == ("CT01", "CT Head with contrast")


def test_unknown_and_unfinished_messages_are_refused(settings, session_factory) -> None:
    assert preview_chain(settings, session_factory, 999).refusal is ChainRefusal.NOT_FOUND
