"""Many senders at once: every message stored exactly once, every one acknowledged AA."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.server import Hl7Server
from mwl.store.models import Hl7Message, Patient, ScheduledProcedureStep

from .conftest import replace_field, sample

pytestmark = pytest.mark.e2e

CONNECTIONS = 4
MESSAGES = 500
PATIENTS = 25  # shared between connections: concurrent first orders for one patient


def message(connection: int, n: int) -> bytes:
    raw = sample("orm_o01_nw.hl7")
    key = f"{connection}-{n}"
    raw = replace_field(raw, b"MSH", 10, f"C{key}".encode())
    raw = replace_field(raw, b"PID", 3, f"PAT{n % PATIENTS}^^^HOSPITAL^MR".encode())
    raw = replace_field(raw, b"ORC", 2, f"PL{key}".encode())
    raw = replace_field(raw, b"ORC", 3, f"FL{key}".encode())
    raw = replace_field(raw, b"OBR", 18, f"A{key}".encode())
    raw = replace_field(raw, b"OBR", 19, f"R{key}".encode())
    raw = replace_field(raw, b"OBR", 20, f"S{key}".encode())
    return replace_field(raw, b"ZDS", 1, f"1.2.826.0.1.3680043.10.543.{connection}.{n}".encode())


def test_four_connections_of_500_messages(hl7_server: Hl7Server, session_factory) -> None:  # type: ignore[no-untyped-def]
    results: dict[int, list[bytes]] = {}
    failures: list[BaseException] = []

    def sender(connection: int) -> None:
        try:
            payloads = [message(connection, n) for n in range(MESSAGES)]
            results[connection] = send_messages(*hl7_server.address, payloads, timeout=60)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(c,)) for c in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures
    for connection, acks in results.items():
        summaries = [ack_summary(ack)[:2] for ack in acks]
        assert summaries == [("AA", f"C{connection}-{n}") for n in range(MESSAGES)]
    with session_factory() as session:
        total = CONNECTIONS * MESSAGES
        assert session.scalar(select(func.count()).select_from(Hl7Message)) == total
        assert (
            session.scalar(select(func.count(func.distinct(Hl7Message.message_control_id))))
            == total
        )
        assert session.scalars(select(Hl7Message.outcome).distinct()).all() == ["AA"]
        assert session.scalar(select(func.count()).select_from(ScheduledProcedureStep)) == total
        assert session.scalar(select(func.count()).select_from(Patient)) == PATIENTS
