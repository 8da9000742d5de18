"""Links from accepted HL7 messages to the patients and procedures they changed, and back."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.operations.activity import message_changes
from mwl.orders.history import messages_for_item
from mwl.store.models import Hl7Message, Hl7MessageLink, Patient, RequestedProcedure

from .conftest import replace_field, sample

pytestmark = pytest.mark.e2e


def send(server: Hl7Server, *messages: bytes) -> list[str]:
    """Send the messages in order over one connection; return the ACK codes."""
    acks = send_messages(*server.address, list(messages), timeout=10)
    return [ack_summary(ack)[0] for ack in acks]


def message_key(session: Session, control_id: str) -> int:
    return session.scalars(
        select(Hl7Message.id)
        .where(Hl7Message.message_control_id == control_id)
        .order_by(Hl7Message.id)
    ).first()


def links(session: Session) -> list[tuple[str, str | None, str | None]]:
    """Every link as (control ID, patient ID, accession number), in the order recorded."""
    rows = session.execute(
        select(
            Hl7Message.message_control_id, Hl7MessageLink.patient_key, Hl7MessageLink.procedure_key
        )
        .join(Hl7Message, Hl7Message.id == Hl7MessageLink.message_key)
        .order_by(Hl7MessageLink.id)
    ).all()
    result = []
    for control_id, patient_key, procedure_key in rows:
        patient = session.get(Patient, patient_key) if patient_key is not None else None
        procedure = (
            session.get(RequestedProcedure, procedure_key) if procedure_key is not None else None
        )
        result.append(
            (
                control_id,
                patient.patient_id if patient else None,
                procedure.accession_number if procedure else None,
            )
        )
    return result


def test_orders_link_their_procedures_and_patient(hl7_server, session_factory) -> None:
    assert send(hl7_server, sample("orm_o01_nw.hl7"), sample("omi_o23_nw.hl7")) == ["AA", "AA"]
    with session_factory() as session:
        # The OMI has two IPC (two steps) of one requested procedure: one link.
        assert links(session) == [
            ("MSG00001", "PAT0001", "ACC0001"),
            ("MSG00005", "PAT0005", "ACC0005"),
        ]
        procedure = session.scalars(
            select(RequestedProcedure).where(RequestedProcedure.accession_number == "ACC0001")
        ).one()
        (change,) = message_changes(session, message_key(session, "MSG00001"))
        assert change.exists
        assert (change.patient_key, change.procedure_key) == (procedure.patient_key, procedure.id)
        assert (change.patient_id, change.patient_name) == ("PAT0001", "Sample^Anna^Maria^Dr.")
        assert change.accession_number == "ACC0001"
        assert change.requested_procedure_description == "CT Head without contrast"
        assert change.step_keys == tuple(step.id for step in procedure.steps)


def test_adt_links_the_patient_it_changed(hl7_server, session_factory) -> None:
    codes = send(
        hl7_server,
        sample("orm_o01_nw.hl7"),
        sample("adt_a08_update.hl7"),  # PAT0001: on the worklist
        replace_field(sample("adt_a08_update.hl7"), b"PID", 3, b"NOBODY^^^HOSPITAL^MR"),
        sample("orm_o01_nw_no_zds.hl7"),  # PAT0002
        sample("adt_a40_merge.hl7"),  # PAT0002 merged into PAT0010
    )
    assert codes == ["AA"] * 5
    with session_factory() as session:
        assert links(session) == [
            ("MSG00001", "PAT0001", "ACC0001"),
            ("MSG00008", "PAT0001", None),
            # MSG00008 again, for an unknown patient: nothing changed, no link.
            # The link keeps the patient key of then: PAT0002, merged away since.
            ("MSG00002", None, "ACC0002"),
            ("MSG00040", "PAT0010", None),
        ]
        # What the order changed is shown with the procedure's patient now.
        (moved,) = message_changes(session, message_key(session, "MSG00002"))
        assert (moved.exists, moved.patient_id, moved.accession_number) == (
            True,
            "PAT0010",
            "ACC0002",
        )
        (change,) = message_changes(session, message_key(session, "MSG00040"))
        assert (change.exists, change.procedure_key, change.patient_id) == (True, None, "PAT0010")
        assert change.step_keys == ()


def test_rejected_resent_and_unknown_cancels_are_not_linked(hl7_server, session_factory) -> None:
    unknown_cancel = replace_field(sample("orm_o01_ca.hl7"), b"ORC", 2, b"PLC9999")
    unknown_cancel = replace_field(unknown_cancel, b"MSH", 10, b"CA-UNKNOWN")
    unknown_cancel = b"\r".join(
        line for line in unknown_cancel.split(b"\r") if not line.startswith(b"ZDS")
    )
    codes = send(
        hl7_server,
        replace_field(sample("orm_o01_nw.hl7"), b"PID", 3, b""),  # AE: no patient ID
        sample("orm_o01_nw_no_zds.hl7"),
        sample("orm_o01_nw_no_zds.hl7"),  # a resend: original ACK, not applied again
        unknown_cancel,
        sample("orm_o01_nw.hl7"),
        sample("orm_o01_ca.hl7"),  # cancels ACC0001: a status change is a change
    )
    assert codes == ["AE", "AA", "AA", "AA", "AA", "AA"]
    with session_factory() as session:
        assert links(session) == [
            ("MSG00002", "PAT0002", "ACC0002"),
            ("MSG00001", "PAT0001", "ACC0001"),
            ("MSG00004", "PAT0001", "ACC0001"),
        ]
        rejected = message_key(session, "MSG00001")  # the first, rejected copy
        assert message_changes(session, rejected) == []


def test_the_item_page_finds_the_messages_of_its_order_and_patient(
    hl7_server, session_factory
) -> None:
    second_order = replace_field(
        sample("orm_o01_nw_no_zds.hl7"), b"PID", 3, b"PAT0001^^^HOSPITAL^MR"
    )
    codes = send(
        hl7_server,
        sample("orm_o01_nw.hl7"),  # ACC0001 for PAT0001
        second_order,  # ACC0002, also PAT0001
        sample("adt_a08_update.hl7"),  # PAT0001 updated
        sample("orm_o01_ca.hl7"),  # ACC0001 canceled
    )
    assert codes == ["AA"] * 4
    with session_factory() as session:
        steps = {
            procedure.accession_number: procedure.steps[0].id
            for procedure in session.scalars(select(RequestedProcedure))
        }
        # The item page's read (helper A's mwl.orders.history) over these links: the
        # order's own messages and the patient's ADT, not the patient's other order.
        first = messages_for_item(session, steps["ACC0001"])
        assert [(m.message_control_id, m.message_type) for m in first] == [
            ("MSG00001", "ORM^O01"),
            ("MSG00008", "ADT^A08"),
            ("MSG00004", "ORM^O01"),
        ]
        second = messages_for_item(session, steps["ACC0002"])
        assert [m.message_control_id for m in second] == ["MSG00002", "MSG00008"]


def test_a_purged_order_still_shows_as_changed_but_gone(hl7_server, session_factory) -> None:
    assert send(hl7_server, sample("orm_o01_nw.hl7")) == ["AA"]
    with session_factory.begin() as session:
        # Retention removes procedures (and their steps) but keeps the message log.
        session.execute(delete(RequestedProcedure))
    with session_factory() as session:
        (change,) = message_changes(session, message_key(session, "MSG00001"))
        assert (change.exists, change.accession_number, change.step_keys) == (False, "", ())
