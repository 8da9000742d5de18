"""A status changed by hand on the item page reaches a real MLLP RIS as an MPPS would send it.

Order 1 is started by a modality (MPPS N-CREATE); order 2 by a person on the page.
Both messages go through the outbox and the RIS sender to the test RIS over MLLP, and
carry the same fields; changes the MPPS path never reports (ARRIVED) send nothing.
"""

from __future__ import annotations

from pydicom.uid import generate_uid
from sqlalchemy import select

from mwl.admin.users import add_user
from mwl.operations.outbox import DELIVERED
from mwl.store.models import ScheduledProcedureStep
from web import create_app

from .conftest import (
    STUDY_1,
    hl7_field,
    n_create,
    n_create_dataset,
    outbox_rows,
    reference,
    step_statuses,
    wait_until,
)

PASSWORD = "correct horse battery staple"
# Fields the RIS reads: message type, order control and status, order numbers, the
# DICOM identifiers, the patient.
COMPARED = (("MSH", 9), ("ORC", 1), ("ORC", 5), ("PID", 3), ("OBR", 18), ("OBR", 19), ("OBR", 20))


def test_manual_start_and_completion_are_sent_as_mpps_would_send_them(
    writers, broker_settings, start_broker, ris
) -> None:
    broker = start_broker(broker_settings)
    created = n_create(
        broker.address, n_create_dataset(reference(STUDY_1, "S1", "ACC1", "RP1")), generate_uid()
    )
    assert created.code == 0x0000
    wait_until(lambda: len(ris.accepted) == 1, what="the MPPS status at the RIS")

    with writers.begin() as session:
        add_user(session, "erin", PASSWORD, "editor")
        key = session.scalars(
            select(ScheduledProcedureStep.id).where(
                ScheduledProcedureStep.scheduled_procedure_step_id == "S2"
            )
        ).one()
    app = create_app(
        broker_settings,
        broker.readers,
        writer_factory=writers,
        config={"TESTING": True, "WTF_CSRF_ENABLED": False},
    )
    client = app.test_client()
    assert client.post("/login", data={"username": "erin", "password": PASSWORD}).status_code == 302

    arrived = client.post(
        f"/items/{key}/status", data={"status": "ARRIVED", "reason": "at the desk"}
    )
    assert arrived.status_code == 303
    started = client.post(
        f"/items/{key}/status",
        data={"status": "STARTED", "reason": "MR01 sends no MPPS"},
        follow_redirects=True,
    )
    page = started.get_data(as_text=True)
    assert "The status is now Started." in page and "The RIS is told" in page
    assert "MR01 sends no MPPS" in page and "Status changed" in page
    completed = client.post(
        f"/items/{key}/status", data={"status": "COMPLETED", "reason": "done on MR01"}
    )
    assert completed.status_code == 303
    refused = client.post(f"/items/{key}/status", data={"status": "SCHEDULED", "reason": "oops"})
    assert refused.status_code == 422
    assert "A COMPLETED step cannot become SCHEDULED" in refused.get_data(as_text=True)

    wait_until(lambda: len(ris.accepted) == 3, what="both manual changes at the RIS")
    wait_until(
        lambda: all(r.state == DELIVERED for r in outbox_rows(writers)), what="outbox settled"
    )
    assert step_statuses(writers)["S2"] == "COMPLETED"
    assert ris.accepted_statuses() == [("PL1", "IP"), ("PL2", "IP"), ("PL2", "CM")]
    by_mpps, by_hand, completion = (payload for _control_id, payload in ris.accepted)
    assert [hl7_field(by_hand, s, n) for s, n in COMPARED] == [
        "ORM^O01^ORM_O01",
        "SC",
        "IP",
        "P2^^^HOSP",
        "ACC2",
        "RP2",
        "S2",
    ]
    # The same message as the MPPS path, field for field, but for the order's values.
    assert [hl7_field(by_mpps, s, n) for s, n in COMPARED[:3]] == [
        hl7_field(by_hand, s, n) for s, n in COMPARED[:3]
    ]
    assert [line[:3] for line in by_hand.decode().split("\r") if line] == [
        line[:3] for line in by_mpps.decode().split("\r") if line
    ]
    assert hl7_field(completion, "ORC", 5) == "CM"
    # ARRIVED was not sent: the automatic path never reports it.
    assert len(ris.received) == 3
