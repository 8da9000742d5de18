"""The message log service against the migrated database (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import select

from mwl.operations.messages import RECEIVED, original_ack, record_message, record_outcome
from mwl.store.models import Hl7Message


def test_record_then_outcome(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        key = record_message(
            session,
            b"MSH|raw\xe4",
            "127.0.0.1:5000",
            sending_application="RIS",
            sending_facility="H",
            message_control_id="C1",
            message_type="ORM^O01",
            outcome=RECEIVED,
            ack=None,
        )
    with session_factory() as session:
        row = session.get(Hl7Message, key)
        assert (row.outcome, row.raw, row.ack, row.processed_at) == (
            "RECEIVED",
            b"MSH|raw\xe4",
            None,
            None,
        )
    with session_factory.begin() as session:
        record_outcome(session, key, "AE", b"MSA|AE|C1", "101 at PID-3")
    with session_factory() as session:
        row = session.get(Hl7Message, key)
        assert (row.outcome, row.ack, row.error) == ("AE", b"MSA|AE|C1", "101 at PID-3")
        assert row.processed_at is not None


def test_original_ack_only_for_accepted_messages_of_the_same_sender(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        record_message(
            session,
            b"m",
            "p",
            sending_application="RIS",
            sending_facility="H",
            message_control_id="C1",
            outcome="AE",
            ack=b"ack-ae",
        )
        assert original_ack(session, "RIS", "H", "C1") is None
        accepted = record_message(
            session,
            b"m",
            "p",
            sending_application="RIS",
            sending_facility="H",
            message_control_id="C1",
            outcome=RECEIVED,
            ack=None,
        )
        assert original_ack(session, "RIS", "H", "C1") is None
        record_outcome(session, accepted, "AA", b"ack-aa")
        assert original_ack(session, "RIS", "H", "C1") == b"ack-aa"
        assert original_ack(session, "RIS", "OTHER", "C1") is None
        assert original_ack(session, "LIS", "H", "C1") is None
        assert original_ack(session, "RIS", "H", "") is None


def test_overlong_header_values_are_cut_not_refused(session_factory) -> None:  # type: ignore[no-untyped-def]
    with session_factory.begin() as session:
        key = record_message(
            session,
            b"m",
            "p" * 100,
            message_control_id="C" * 500,
            message_type="T" * 50,
            outcome="AA",
            ack=b"a",
        )
    with session_factory() as session:
        row = session.scalars(select(Hl7Message).where(Hl7Message.id == key)).one()
        assert (len(row.peer_address), len(row.message_control_id), len(row.message_type)) == (
            64,
            199,
            32,
        )
