"""Re-processing a rejected message from the log after a settings fix, on both databases."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.domain import WorklistQuery
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.reprocess import reprocess_message
from mwl.hl7.server import Hl7Server
from mwl.operations.message_view import ReprocessRefusal
from mwl.operations.messages import RECEIVED, record_message
from mwl.store.models import AuditEvent, Hl7Message, Hl7MessageLink, Patient
from mwl.worklist.matching import find_items

from .conftest import replace_field, sample

pytestmark = pytest.mark.e2e

# A modality value longer than CS allows (16): refused unless hl7_modality_map maps it.
LONG_MODALITY = b"COMPUTEDTOMOGRAPHY"


def send(settings: Settings, session_factory: sessionmaker[Session], raw: bytes) -> bytes:
    """Send ``raw`` to a listener with ``settings`` over a real socket; return the ACK."""
    with Hl7Server(settings, session_factory) as server:
        (ack,) = send_messages(*server.address, [raw], timeout=10)
    return ack


def logged(session_factory: sessionmaker[Session], control_id: str) -> Hl7Message:
    with session_factory() as session:
        return session.scalars(
            select(Hl7Message)
            .where(Hl7Message.message_control_id == control_id)
            .order_by(Hl7Message.id)
        ).first()


def audit_events(session_factory: sessionmaker[Session]) -> list[AuditEvent]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def accessions(session_factory: sessionmaker[Session]) -> list[tuple[str, str]]:
    with session_factory() as session:
        return [(i.accession_number, i.modality) for i in find_items(session, WorklistQuery())]


def test_rejected_message_is_accepted_after_the_mapping_fix(settings, session_factory) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"OBR", 24, LONG_MODALITY)
    ack = send(settings, session_factory, raw)
    assert ack_summary(ack)[:2] == ("AE", "MSG00001")
    before = logged(session_factory, "MSG00001")
    assert "OBR-24" in before.error
    assert accessions(session_factory) == []

    fixed = dataclasses.replace(settings, hl7_modality_map=(("COMPUTEDTOMOGRAPHY", "CT"),))
    outcome = reprocess_message(fixed, session_factory, before.id, "erin")

    assert outcome.refusal is None and outcome.accepted
    assert (outcome.outcome_before, outcome.outcome_after) == ("AE", "AA")
    assert (outcome.error_before, outcome.error_after) == (before.error, "")
    assert "1 step(s) created" in outcome.summary
    after = logged(session_factory, "MSG00001")
    assert (after.outcome, after.error) == ("AA", "")
    assert after.ack == ack == before.ack  # the ACK the sender got, unchanged
    assert after.processed_at >= before.processed_at
    assert accessions(session_factory) == [("ACC0001", "CT")]
    (event,) = audit_events(session_factory)
    assert (event.username, event.action, event.subject) == (
        "erin",
        "reprocess",
        f"hl7:{before.id}",
    )
    assert json.loads(event.changes) == {"outcome": ["AE", "AA"], "error": [before.error, ""]}
    with session_factory() as session:
        links = session.scalars(select(Hl7MessageLink)).all()
        assert [(link.message_key, link.procedure_key is not None) for link in links] == [
            (before.id, True)
        ]


def test_the_current_settings_may_come_from_a_function(settings, session_factory) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"OBR", 24, LONG_MODALITY)
    send(settings, session_factory, raw)
    key = logged(session_factory, "MSG00001").id
    current = {"settings": settings}
    outcome = reprocess_message(lambda: current["settings"], session_factory, key, "erin")
    assert (outcome.outcome_after, outcome.accepted) == ("AE", False)
    current["settings"] = dataclasses.replace(
        settings, hl7_modality_map=(("COMPUTEDTOMOGRAPHY", "CT"),)
    )
    assert reprocess_message(lambda: current["settings"], session_factory, key, "erin").accepted


def test_a_message_that_still_fails_keeps_failing_with_the_new_error(
    settings, session_factory
) -> None:
    only_other = dataclasses.replace(settings, hl7_accepted_senders=("OTHER|*",))
    raw = replace_field(sample("orm_o01_nw.hl7"), b"OBR", 24, LONG_MODALITY)
    assert ack_summary(send(only_other, session_factory, raw))[0] == "AR"
    message = logged(session_factory, "MSG00001")
    assert "MSH-3" in message.error

    # The sender is accepted now, but the modality is still not mapped.
    outcome = reprocess_message(settings, session_factory, message.id, "erin")
    assert outcome.refusal is None
    assert (outcome.outcome_before, outcome.outcome_after) == ("AR", "AE")
    assert "OBR-24" in outcome.error_after and "MSH-3" in outcome.error_before
    stored = logged(session_factory, "MSG00001")
    assert (stored.outcome, stored.error) == ("AE", outcome.error_after)
    assert stored.ack == message.ack
    assert accessions(session_factory) == []
    (event,) = audit_events(session_factory)
    assert json.loads(event.changes)["outcome"] == ["AR", "AE"]


def test_a_failure_rolls_back_what_the_message_had_changed(settings, session_factory) -> None:
    reject = dataclasses.replace(settings, hl7_missing_start="reject")
    raw = replace_field(sample("orm_o01_nw.hl7"), b"ORC", 7, b"")
    assert ack_summary(send(reject, session_factory, raw))[0] == "AE"
    key = logged(session_factory, "MSG00001").id

    # apply_order stores the patient before it finds the missing start: the savepoint
    # must take the patient back while the new outcome and audit event are kept.
    outcome = reprocess_message(reject, session_factory, key, "erin")
    assert outcome.outcome_after == "AE" and "start" in outcome.error_after
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
        assert session.scalar(select(func.count()).select_from(Hl7MessageLink)) == 0
    assert len(audit_events(session_factory)) == 1

    assert reprocess_message(settings, session_factory, key, "erin").accepted
    assert [a for a, _ in accessions(session_factory)] == ["ACC0001"]


def test_accepted_messages_are_not_reprocessed(settings, session_factory) -> None:
    ack = send(settings, session_factory, sample("orm_o01_nw.hl7"))
    assert ack_summary(ack)[0] == "AA"
    message = logged(session_factory, "MSG00001")
    outcome = reprocess_message(settings, session_factory, message.id, "erin")
    assert outcome.refusal is ReprocessRefusal.NOT_REJECTED
    assert (outcome.outcome_before, outcome.outcome_after, outcome.accepted) == ("AA", "AA", False)
    stored = logged(session_factory, "MSG00001")
    assert (stored.outcome, stored.processed_at) == ("AA", message.processed_at)
    assert audit_events(session_factory) == []


def test_messages_in_progress_and_unknown_keys_are_refused(settings, session_factory) -> None:
    with session_factory.begin() as session:
        # As an earlier version stored it before processing, and never got further.
        key = record_message(
            session, sample("orm_o01_nw.hl7"), "10.0.0.1:5000", outcome=RECEIVED, ack=None
        )
    outcome = reprocess_message(settings, session_factory, key, "erin")
    assert outcome.refusal is ReprocessRefusal.IN_PROGRESS
    assert logged(session_factory, "").outcome == "RECEIVED"
    missing = reprocess_message(settings, session_factory, key + 100, "erin")
    assert missing.refusal is ReprocessRefusal.NOT_FOUND
    assert audit_events(session_factory) == []
    assert accessions(session_factory) == []


def test_a_rejected_message_whose_resend_was_accepted_is_refused(settings, session_factory) -> None:
    bad = replace_field(sample("orm_o01_nw.hl7"), b"OBR", 24, LONG_MODALITY)
    assert ack_summary(send(settings, session_factory, bad))[0] == "AE"
    rejected = logged(session_factory, "MSG00001")
    # The RIS fixed the order and sent it again under the same control ID.
    assert ack_summary(send(settings, session_factory, sample("orm_o01_nw.hl7")))[0] == "AA"
    fixed = dataclasses.replace(settings, hl7_modality_map=(("COMPUTEDTOMOGRAPHY", "MR"),))
    outcome = reprocess_message(fixed, session_factory, rejected.id, "erin")
    assert outcome.refusal is ReprocessRefusal.RESEND_ACCEPTED
    assert logged(session_factory, "MSG00001").outcome == "AE"
    assert accessions(session_factory) == [("ACC0001", "CT")]  # not overwritten with MR
