"""Fuzzing the listener: malformed input gets AE/AR or a closed connection, never a crash.

Each example goes over a real socket to one listener; the listener must answer every
frame, must keep answering good clients, and a rejected message must leave the
worklist as it was (only the message log grows).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.client import ack_summary, send_messages
from mwl.hl7.mllp import MllpFramer, frame
from mwl.hl7.server import Hl7Server
from mwl.store.models import Hl7Message, Patient, ScheduledProcedureStep

from .conftest import all_samples, read_until_closed, replace_field, sample

pytestmark = pytest.mark.e2e

SAMPLE_BYTES = list(all_samples().values())
# Bytes that matter to HL7 and MLLP, plus some that do not.
INTERESTING = st.sampled_from(
    [
        b"|",
        b"^",
        b"~",
        b"\\",
        b"&",
        b"\r",
        b"\n",
        b"\x00",
        b"\x0b",
        b"\x1c",
        b"\xff",
        b"\xc3",
        b"MSH|",
        b"ORC|",
        b"PID|",
        b"OBR|",
        b"\\X",
        b"\\.br\\",
        b"9" * 20,
        b"ZZ",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLE_BYTES)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "random"]))
        at = draw(st.integers(0, len(data)))
        if kind == "insert":
            data[at:at] = draw(INTERESTING)
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "replace":
            data[at : at + 1] = draw(INTERESTING)
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=30))
    return bytes(data)


@pytest.fixture
def fuzz_server(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Hl7Server]:
    with Hl7Server(settings.replace(hl7_idle_timeout_seconds=5), session_factory) as server:
        yield server


def worklist_state(session_factory: sessionmaker[Session]) -> list[tuple[str, ...]]:
    with session_factory() as session:
        steps = session.execute(
            select(
                ScheduledProcedureStep.scheduled_procedure_step_id,
                ScheduledProcedureStep.status,
                ScheduledProcedureStep.modality,
                Patient.patient_name,
            )
            .join(ScheduledProcedureStep.procedure)
            .join(Patient)
            .order_by(ScheduledProcedureStep.id)
        ).all()
        return [tuple(str(v) for v in row) for row in steps]


def log_size(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return len(session.scalars(select(Hl7Message.id)).all())


def exchange(address: tuple[str, int], payload: bytes) -> tuple[list[bytes], bool]:
    """Send one framed payload; return the ACKs for the frames it holds, and whether closed."""
    expected = [f for f in MllpFramer().feed(frame(payload)) if f.strip(b"\r\n\x00 ")]
    framer = MllpFramer()
    acks: list[bytes] = []
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(frame(payload))
        while len(acks) < len(expected):
            data = sock.recv(65536)
            if not data:
                return acks, True
            acks += framer.feed(data)
    return acks, False


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=mutated())
def test_mutated_messages_never_break_the_listener(
    fuzz_server: Hl7Server, session_factory: sessionmaker[Session], payload: bytes
) -> None:
    before = worklist_state(session_factory)
    logged = log_size(session_factory)
    expected = [f for f in MllpFramer().feed(frame(payload)) if f.strip(b"\r\n\x00 ")]
    acks, closed = exchange(fuzz_server.address, payload)
    assert not closed, "the listener closed the connection instead of answering"
    assert len(acks) == len(expected)
    codes = [ack_summary(ack)[0] for ack in acks]
    assert set(codes) <= {"AA", "AE", "AR"}
    # Every frame was logged, whatever its content.
    assert log_size(session_factory) == logged + len(expected)
    if "AA" not in codes:
        assert worklist_state(session_factory) == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(noise=st.binary(max_size=2000))
def test_random_bytes_then_a_good_client(
    fuzz_server: Hl7Server, session_factory: sessionmaker[Session], noise: bytes
) -> None:
    with socket.create_connection(fuzz_server.address, timeout=10) as sock:
        sock.sendall(noise)
        sock.shutdown(socket.SHUT_WR)
        read_until_closed(sock)
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, b"GOOD")
    (ack,) = send_messages(*fuzz_server.address, [raw])
    assert ack_summary(ack)[:2] == ("AA", "GOOD")
