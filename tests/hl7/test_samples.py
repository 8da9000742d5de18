"""The shipped samples as ``mwl samples send`` sends them: dated today, orders first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from mwl.hl7.client import split_messages
from mwl.hl7.samples import redate, sample_batch, samples_directory, sending_rank

DAY = dt.date(2027, 3, 9)


def _segment(message: bytes, name: bytes) -> list[bytes]:
    line = next(s for s in message.split(b"\r") if s.startswith(name))
    return line.split(b"|")


def test_every_sample_date_moves_birth_dates_stay():
    batch = dict(sample_batch(samples_directory(), DAY))
    assert len(batch) == len(list(samples_directory().glob("*.hl7")))
    for name, message in batch.items():
        assert b"202611" not in message, name
        assert _segment(message, b"MSH")[9].endswith(b"-20270309"), name
    order = batch[str(samples_directory() / "orm_o01_nw.hl7")]
    assert _segment(order, b"MSH")[6] == b"20270308143000"  # sent the day before
    assert _segment(order, b"ORC")[7] == b"^^^20270309093000^^R"
    assert _segment(order, b"PID")[7] == b"19800115"
    details = batch[str(samples_directory() / "orm_o01_nw_details.hl7")]
    assert _segment(details, b"TQ1")[7] == b"20270309101500"  # 2026-11-24 -> today


def test_orders_then_patient_updates_then_cancels():
    batch = sample_batch(samples_directory(), DAY)
    ranks = [sending_rank(message) for _, message in batch]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2}
    names = [Path(name).name for name, _ in batch]
    assert names.index("orm_o01_nw.hl7") < names.index("adt_a08_update.hl7")
    assert names.index("adt_a47_change_id.hl7") < names.index("orm_o01_ca.hl7")


def test_redate_leaves_other_days_and_a_message_without_msh_10():
    message = split_messages(
        b"MSH|^~\\&|RIS|H|MWL|R|20250101||ORM^O01||P|2.3\rPID|1||X||N||20261125\r"
    )[0]
    assert redate(message, DAY) == message
