"""MPPS over real associations: step status, worklist visibility, status messages to a real RIS."""

from __future__ import annotations

import json

from pydicom.uid import generate_uid
from sqlalchemy import select

from mwl.dicom.mpps import (
    DUPLICATE_SOP_INSTANCE,
    ERROR_ID_MAY_NO_LONGER_BE_UPDATED,
    INVALID_ATTRIBUTE_VALUE,
    MISSING_ATTRIBUTE,
    MISSING_ATTRIBUTE_VALUE,
    NO_SUCH_SOP_INSTANCE,
    PROCESSING_FAILURE,
)
from mwl.operations.outbox import DELIVERED, FAILED
from mwl.store.models import OutboxAttempt, PerformedProcedureStep

from .conftest import (
    STUDY_1,
    STUDY_2,
    find_sps_ids,
    hl7_field,
    n_create,
    n_create_dataset,
    n_set,
    n_set_dataset,
    outbox_rows,
    reference,
    step_statuses,
    wait_until,
)


def _all_settled(writers, count):
    rows = outbox_rows(writers)
    return len(rows) == count and all(r.state in (DELIVERED, FAILED) for r in rows)


def test_in_progress_then_completed(writers, broker_settings, start_broker, ris):
    broker = start_broker(broker_settings)
    assert find_sps_ids(broker.address, "CT01") == ["S1"]
    uid = generate_uid()

    ds = n_create_dataset(reference(STUDY_1, "S1", "ACC1", "RP1"))
    created = n_create(broker.address, ds, uid)

    assert created.code == 0x0000
    assert created.attributes is not None and created.attributes.PerformedProcedureStepID == "PPS1"
    assert step_statuses(writers)["S1"] == "STARTED"
    # STARTED is hidden from the worklist unless asked for by name.
    assert find_sps_ids(broker.address, "CT01") == []
    assert find_sps_ids(broker.address, "CT01", "STARTED") == ["S1"]

    done = n_set(broker.address, n_set_dataset("COMPLETED"), uid)

    assert done.code == 0x0000
    assert step_statuses(writers)["S1"] == "COMPLETED"
    assert find_sps_ids(broker.address, "CT01", "COMPLETED") == ["S1"]
    wait_until(lambda: _all_settled(writers, 2), what="both messages delivered")
    assert ris.accepted_statuses() == [("PL1", "IP"), ("PL1", "CM")]
    first = ris.accepted[0][1]
    assert hl7_field(first, "MSH", 9) == "ORM^O01^ORM_O01"
    assert hl7_field(first, "MSH", 3) == "MWL"
    assert hl7_field(first, "ORC", 1) == "SC"
    assert hl7_field(first, "ORC", 3) == "FI1"
    assert hl7_field(first, "OBR", 18) == "ACC1"
    assert hl7_field(first, "OBR", 19) == "RP1"
    assert hl7_field(first, "OBR", 20) == "S1"
    assert hl7_field(first, "PID", 3) == "P1^^^HOSP"
    assert hl7_field(first, "PID", 5) == "Müller^Hans"
    # Each message once, and the stored MPPS holds the N-SET merged in.
    assert len(ris.received) == 2
    with writers() as session:
        mpps = session.scalars(select(PerformedProcedureStep)).one()
        stored = json.loads(mpps.dataset_json)
        assert mpps.status == "COMPLETED"
        assert [s.scheduled_procedure_step_id for s in mpps.steps] == ["S1"]
    assert stored["00400252"]["Value"] == ["COMPLETED"]  # Performed Procedure Step Status
    assert stored["00400253"]["Value"] == ["PPS1"]  # from the N-CREATE
    assert all(r.ack_code == "AA" and r.ack for r in outbox_rows(writers))


def test_one_mpps_for_several_steps_of_two_orders(writers, broker_settings, start_broker, ris):
    broker = start_broker(broker_settings)
    refs = (
        reference(STUDY_2, "S2", "ACC2", "RP2"),
        reference(STUDY_2, "S3", "ACC2", "RP2"),
        reference(STUDY_1, "S1", "ACC1", "RP1"),
    )

    created = n_create(broker.address, n_create_dataset(*refs, modality="MR"), generate_uid())

    assert created.code == 0x0000
    assert step_statuses(writers) == {"S1": "STARTED", "S2": "STARTED", "S3": "STARTED"}
    assert find_sps_ids(broker.address, "MR01") == []
    wait_until(lambda: _all_settled(writers, 2), what="one message per order")
    by_order = {hl7_field(p, "ORC", 2): p for _, p in ris.accepted}
    assert sorted(by_order) == ["PL1", "PL2"]
    two_steps = by_order["PL2"]
    assert [hl7_field(two_steps, "OBR", 20, n) for n in (0, 1)] == ["S2", "S3"]


def test_unscheduled_mpps_is_kept_without_links(writers, broker_settings, start_broker, ris):
    broker = start_broker(broker_settings)
    # IHE RAD-6 unscheduled case: a new Study Instance UID, every other key empty.
    created = n_create(broker.address, n_create_dataset(reference(generate_uid())), generate_uid())

    assert created.code == 0x0000
    assert set(step_statuses(writers).values()) == {"SCHEDULED"}
    assert find_sps_ids(broker.address, "CT01") == ["S1"]
    with writers() as session:
        mpps = session.scalars(select(PerformedProcedureStep)).one()
        assert mpps.steps == []
        assert mpps.status == "IN PROGRESS"
    assert outbox_rows(writers) == []


def test_reference_by_accession_and_requested_procedure(writers, broker_settings, start_broker):
    broker = start_broker(broker_settings)
    # A modality that made its own Study Instance UID but kept accession and RP ID.
    item = reference(generate_uid(), "", "ACC2", "RP2")

    assert n_create(broker.address, n_create_dataset(item), generate_uid()).code == 0x0000

    assert step_statuses(writers) == {"S1": "SCHEDULED", "S2": "STARTED", "S3": "STARTED"}


def test_step_status_table_is_configuration(writers, broker_settings, start_broker):
    settings = broker_settings.replace(
        mpps_step_status=(("IN PROGRESS", ""), ("COMPLETED", "DEPARTED"))
    )
    broker = start_broker(settings)
    uid = generate_uid()

    n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), uid)
    assert step_statuses(writers)["S1"] == "SCHEDULED"
    n_set(broker.address, n_set_dataset("COMPLETED"), uid)

    assert step_statuses(writers)["S1"] == "DEPARTED"


def test_validation_failures_get_their_statuses(writers, broker_settings, start_broker):
    broker = start_broker(broker_settings)
    address = broker.address
    uid = generate_uid()
    good = n_create_dataset(reference(STUDY_1, "S1"))

    no_station = n_create_dataset(reference(STUDY_1, "S1"))
    del no_station.PerformedStationAETitle
    missing = n_create(address, no_station, generate_uid())
    assert missing.code == MISSING_ATTRIBUTE
    assert "PerformedStationAETitle" in missing.status.ErrorComment

    empty_modality = n_create_dataset(reference(STUDY_1, "S1"), modality="")
    assert n_create(address, empty_modality, generate_uid()).code == MISSING_ATTRIBUTE_VALUE

    completed_at_once = n_create(
        address, n_create_dataset(reference(STUDY_1, "S1"), status="COMPLETED"), generate_uid()
    )
    assert completed_at_once.code == INVALID_ATTRIBUTE_VALUE
    assert "IN PROGRESS" in completed_at_once.status.ErrorComment

    not_a_status = n_create_dataset(reference(STUDY_1, "S1"), status="DONE")
    assert n_create(address, not_a_status, generate_uid()).code == INVALID_ATTRIBUTE_VALUE
    # None of the refused N-CREATEs changed anything.
    assert step_statuses(writers)["S1"] == "SCHEDULED"

    assert n_create(address, good, uid).code == 0x0000
    assert n_create(address, good, uid).code == DUPLICATE_SOP_INSTANCE

    unknown = n_set(address, n_set_dataset("COMPLETED"), generate_uid())
    assert unknown.code == NO_SUCH_SOP_INSTANCE

    patient_change = n_set_dataset("COMPLETED")
    patient_change.PatientID = "OTHER"
    refused = n_set(address, patient_change, uid)
    assert refused.code == INVALID_ATTRIBUTE_VALUE
    assert refused.status["AttributeIdentifierList"].value == 0x00100020  # Patient ID

    no_end = n_set(address, n_set_dataset("COMPLETED", end=False), uid)
    assert no_end.code == MISSING_ATTRIBUTE_VALUE
    assert step_statuses(writers)["S1"] == "STARTED"

    assert n_set(address, n_set_dataset("COMPLETED"), uid).code == 0x0000
    final = n_set(address, n_set_dataset("DISCONTINUED"), uid)
    assert final.code == PROCESSING_FAILURE
    assert final.status.ErrorID == ERROR_ID_MAY_NO_LONGER_BE_UPDATED
    assert step_statuses(writers)["S1"] == "COMPLETED"


def test_scp_assigns_the_uid_when_the_modality_gives_none(writers, broker_settings, start_broker):
    broker = start_broker(broker_settings)

    created = n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), None)

    assert created.code == 0x0000
    # pynetdicom puts the assigned UID in the N-CREATE-RSP; the SCU keeps it there.
    with writers() as session:
        assigned = session.scalars(select(PerformedProcedureStep.sop_instance_uid)).one()
    assert assigned.startswith("1.2.826.0.1.3680043.8.498.")  # pydicom's UID root
    assert n_set(broker.address, n_set_dataset("DISCONTINUED"), assigned).code == 0x0000
    assert step_statuses(writers)["S1"] == "DISCONTINUED"


def test_ris_down_and_broker_restarted(writers, broker_settings, start_broker, ris):
    ris.stop()
    first = start_broker(broker_settings)
    uid_1, uid_2 = generate_uid(), generate_uid()
    n_create(first.address, n_create_dataset(reference(STUDY_1, "S1")), uid_1)
    n_set(first.address, n_set_dataset("COMPLETED"), uid_1)
    n_create(first.address, n_create_dataset(reference(STUDY_2, "S2")), uid_2)
    # The sender keeps trying (and records each failure) while the RIS is down.
    wait_until(lambda: sum(r.attempts for r in outbox_rows(writers)) >= 3, what="failed attempts")
    rows = outbox_rows(writers)
    assert [r.state for r in rows] == ["PENDING"] * 3
    assert rows[0].last_error
    # Per order, only the oldest message is tried: "completed" waits for "in progress".
    assert rows[1].attempts == 0
    first.shutdown()

    ris.start()  # the RIS is back, on the same port
    n_set(start_broker(broker_settings).address, n_set_dataset("DISCONTINUED"), uid_2)

    wait_until(lambda: _all_settled(writers, 4), what="every message delivered")
    accepted = ris.accepted_statuses()
    assert sorted(accepted) == sorted([("PL1", "IP"), ("PL1", "CM"), ("PL2", "IP"), ("PL2", "DC")])
    for order in ("PL1", "PL2"):
        statuses = [status for placer, status in accepted if placer == order]
        assert statuses[0] == "IP" and len(statuses) == 2
    control_ids = [control_id for control_id, _ in ris.accepted]
    assert len(control_ids) == len(set(control_ids)) == len(ris.received) == 4
    with writers() as session:
        errors = session.scalars(
            select(OutboxAttempt).where(OutboxAttempt.outcome == "ERROR")
        ).all()
        assert errors and all(e.error for e in errors)


def test_ris_answering_ae_for_a_while(writers, broker_settings, start_broker, ris):
    ris.code_for = lambda _payload: "AE"
    broker = start_broker(broker_settings)
    n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), generate_uid())

    wait_until(lambda: outbox_rows(writers)[0].rejects >= 3, what="three AE answers")
    row = outbox_rows(writers)[0]
    assert row.state == "PENDING" and row.ack_code == "AE"
    assert "rejected by the test RIS" in row.last_error
    ris.code_for = lambda _payload: "AA"

    wait_until(lambda: _all_settled(writers, 1), what="delivery after the AEs")
    assert ris.accepted_statuses() == [("PL1", "IP")]
    with writers() as session:
        outcomes = session.scalars(select(OutboxAttempt.outcome).order_by(OutboxAttempt.id)).all()
    assert outcomes[-1] == "AA" and set(outcomes[:-1]) == {"AE"}
    assert len(ris.received) == len(outcomes)


def test_reject_limit_sets_a_message_aside(writers, broker_settings, start_broker, ris):
    # This RIS refuses "in progress" for good but takes "completed".
    ris.code_for = lambda payload: "AR" if hl7_field(payload, "ORC", 5) == "IP" else "AA"
    broker = start_broker(broker_settings.replace(ris_max_rejects=2))
    uid = generate_uid()
    n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), uid)
    n_set(broker.address, n_set_dataset("COMPLETED"), uid)

    wait_until(lambda: _all_settled(writers, 2), what="both messages settled")
    first, second = outbox_rows(writers)
    assert (first.state, first.rejects, first.ack_code) == ("FAILED", 2, "AR")
    assert second.state == "DELIVERED"
    assert ris.accepted_statuses() == [("PL1", "CM")]


def test_omi_message_type(writers, broker_settings, start_broker, ris):
    broker = start_broker(broker_settings.replace(ris_message_type="OMI^O23"))
    ds = n_create_dataset(reference(STUDY_2, "S2"), modality="MR")
    n_create(broker.address, ds, generate_uid())

    wait_until(lambda: _all_settled(writers, 1), what="delivery")
    ((control_id, message),) = ris.accepted
    assert hl7_field(message, "MSH", 9) == "OMI^O23^OMI_O23"
    assert hl7_field(message, "MSH", 10) == control_id
    assert hl7_field(message, "ORC", 5) == "IP"
    assert [hl7_field(message, "IPC", n) for n in (1, 2, 3, 4, 5)] == [
        "ACC2",
        "RP2",
        STUDY_2,
        "S2",
        "MR",
    ]


def test_no_ris_configured_queues_nothing(writers, settings, start_broker):
    broker = start_broker(settings.replace(dicom_ae_title="MWLTEST"))
    assert broker.sender is None

    n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), generate_uid())

    assert step_statuses(writers)["S1"] == "STARTED"
    assert outbox_rows(writers) == []


def test_silent_ris_is_retried_with_the_same_control_id(
    writers, broker_settings, start_broker, ris
):
    ris.code_for = lambda _payload: ""  # takes the message, never answers
    broker = start_broker(broker_settings.replace(ris_ack_timeout_seconds=0.3))
    n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), generate_uid())

    wait_until(lambda: len(ris.received) >= 2, what="a retry after the ACK timeout")
    assert "TimeoutError" in outbox_rows(writers)[0].last_error
    ris.code_for = lambda _payload: "AA"

    wait_until(lambda: _all_settled(writers, 1), what="delivery")
    assert ris.accepted_statuses() == [("PL1", "IP")]
    # Every copy carried one MSH-10, so the RIS can tell a repeat from a new message.
    assert {hl7_field(p, "MSH", 10) for p in ris.received} == {ris.accepted[0][0]}


def test_database_failure_is_a_processing_failure(writers, engine, broker_settings, start_broker):
    broker = start_broker(broker_settings)
    # A real database failure: the tables MPPS needs are gone.
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE mpps_sps")
        connection.exec_driver_sql("DROP TABLE performed_procedure_step")

    result = n_create(broker.address, n_create_dataset(reference(STUDY_1, "S1")), generate_uid())

    assert result.code == PROCESSING_FAILURE
    assert result.status.ErrorComment == "the database is unavailable"
    assert step_statuses(writers)["S1"] == "SCHEDULED"  # nothing half-done
    # The SCP keeps serving.
    assert find_sps_ids(broker.address, "CT01") == ["S1"]


def test_two_brokers_on_one_database_send_each_message_once(
    writers, broker_settings, start_broker, ris
):
    first = start_broker(broker_settings)
    second = start_broker(broker_settings)
    uid_1, uid_2 = generate_uid(), generate_uid()
    # Events arrive through both brokers' SCPs.
    n_create(first.address, n_create_dataset(reference(STUDY_1, "S1")), uid_1)
    n_create(second.address, n_create_dataset(reference(STUDY_2, "S2")), uid_2)
    wait_until(lambda: _all_settled(writers, 2), what="both messages delivered")
    # Exactly one broker holds the sender lease; the other stands by.
    holders = [b for b in (first, second) if b.sender is not None and b.sender._lease.held]
    assert len(holders) == 1
    # The holder stops (or dies): the other takes over.
    holders[0].shutdown()
    other = second if holders[0] is first else first
    n_set(other.address, n_set_dataset("COMPLETED"), uid_1 if other is first else uid_2)
    wait_until(lambda: _all_settled(writers, 3), what="the third message delivered")
    control_ids = [control_id for control_id, _ in ris.accepted]
    assert len(ris.received) == len(set(control_ids)) == 3
