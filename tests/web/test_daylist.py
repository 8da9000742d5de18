"""items_for_day: one day's steps, all statuses, ordered by start."""

from __future__ import annotations

import datetime as dt

from mwl.daylist import items_for_day
from mwl.domain import Code, SpsStatus

DAY = dt.date(2026, 11, 21)


def at(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute))


def test_items_of_the_day_only_ordered_by_start_with_all_statuses(session_factory, add_order):
    add_order("ACC-LATE", at(15, 30), patient_id="P2", patient_name="Roe^Richard")
    add_order("ACC-EARLY", at(0, 0), protocol=(Code("P1", "99LOCAL", "Head routine"),))
    add_order("ACC-CANCEL", at(9), patient_id="P3")
    add_order("ACC-CANCEL", at(9), patient_id="P3", control="CA", order_status="CA")
    add_order("ACC-YESTERDAY", at(23, 59, DAY - dt.timedelta(days=1)))
    add_order("ACC-TOMORROW", at(0, 0, DAY + dt.timedelta(days=1)))

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


def test_status_filter_and_empty_day(session_factory, add_order):
    add_order("A1", at(8))
    add_order("A2", at(9))
    add_order("A2", at(9), control="CA", order_status="CA")
    with session_factory() as session:
        scheduled = items_for_day(session, DAY, statuses=frozenset({SpsStatus.SCHEDULED}))
        assert [i.accession_number for i in scheduled] == ["A1"]
        assert items_for_day(session, DAY + dt.timedelta(days=2)) == []
