"""The MLLP listener over real loopback sockets, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlalchemy import func, select

from mwl.config import Settings
from mwl.hl7.client import ack_summary, send_files, send_messages
from mwl.hl7.mllp import MllpFramer, frame
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import Hl7Message, Patient, RequestedProcedure, ScheduledProcedureStep

from .conftest import SAMPLES, read_until_closed, replace_field, sample

pytestmark = pytest.mark.e2e


def count(session_factory, model) -> int:  # type: ignore[no-untyped-def]
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def good_client_gets_aa(server: Hl7Server, control_id: bytes = b"AFTER1") -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, control_id)
    (ack,) = send_messages(*server.address, [raw], timeout=10)
    assert ack_summary(ack)[:2] == ("AA", control_id.decode())


def test_samples_are_accepted_and_stored(hl7_server: Hl7Server, session_factory) -> None:  # type: ignore[no-untyped-def]
    names = ["orm_o01_nw.hl7", "orm_o01_nw_no_zds.hl7", "orm_o01_nw_v25_tq1.hl7", "omi_o23_nw.hl7"]
    acks = send_messages(*hl7_server.address, [sample(n) for n in names], timeout=10)
    assert [ack_summary(a)[:2] for a in acks] == [
        ("AA", "MSG00001"),
        ("AA", "MSG00002"),
        ("AA", "MSG00003"),
        ("AA", "MSG00005"),
    ]
    with session_factory() as session:
        names_in_db = set(session.scalars(select(Patient.patient_name)))
        assert names_in_db == {
            "Sample^Anna^Maria^Dr.",
            "Müller^Jürgen",
            "Åström^Zoë^^^PhD",
            "Sample^Bernd",
        }
        step = session.scalars(
            select(ScheduledProcedureStep).where(
                ScheduledProcedureStep.scheduled_procedure_step_id == "SPS0001"
            )
        ).one()
        assert (step.modality, step.status, step.start_datetime.isoformat()) == (
            "CT",
            "SCHEDULED",
            "2026-11-21T09:30:00",
        )
        assert step.procedure.accession_number == "ACC0001"
        assert step.procedure.study_instance_uid == "1.2.826.0.1.3680043.10.543.20261121.1"
        derived = session.scalars(
            select(RequestedProcedure.study_instance_uid).where(
                RequestedProcedure.accession_number == "ACC0002"
            )
        ).one()
        assert derived.startswith("2.25.")  # no ZDS: derived from the order numbers
        assert session.scalar(select(func.count()).select_from(ScheduledProcedureStep)) == 5
        log = session.scalars(select(Hl7Message).order_by(Hl7Message.id)).all()
        assert [(m.message_control_id, m.outcome) for m in log] == [
            ("MSG00001", "AA"),
            ("MSG00002", "AA"),
            ("MSG00003", "AA"),
            ("MSG00005", "AA"),
        ]
        assert log[0].raw == sample("orm_o01_nw.hl7")
        assert log[0].ack == acks[0]
        assert log[0].peer_address.startswith("127.0.0.1:")


def test_cancel_after_new_order(hl7_server: Hl7Server, session_factory) -> None:  # type: ignore[no-untyped-def]
    acks = send_messages(*hl7_server.address, [sample("orm_o01_nw.hl7"), sample("orm_o01_ca.hl7")])
    assert [ack_summary(a)[0] for a in acks] == ["AA", "AA"]
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.status)).all() == ["CANCELED"]


def test_duplicate_resend_gets_the_same_ack_and_is_not_applied_again(
    hl7_server: Hl7Server,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    new, cancel = sample("orm_o01_nw.hl7"), sample("orm_o01_ca.hl7")
    first = send_messages(*hl7_server.address, [new, cancel])
    # The resent NW (same MSH-3/4/10) would re-schedule the cancelled step if applied.
    (again,) = send_messages(*hl7_server.address, [new])
    assert again == first[0]
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.status)).all() == ["CANCELED"]
        log = session.scalars(select(Hl7Message).order_by(Hl7Message.id)).all()
        assert [(m.message_control_id, m.outcome) for m in log] == [
            ("MSG00001", "AA"),
            ("MSG00004", "AA"),
            ("MSG00001", "AA"),
        ]
        assert "resend" in log[2].error
    # Another sender with the same control ID is a different message: applied.
    other = replace_field(new, b"MSH", 3, b"OTHERRIS")
    (ack,) = send_messages(*hl7_server.address, [other])
    assert ack != first[0] and ack_summary(ack)[0] == "AA"
    with session_factory() as session:
        assert session.scalars(select(ScheduledProcedureStep.status)).all() == ["SCHEDULED"]


def test_unmapped_order_control_is_ae_naming_orc_1_and_logged(
    hl7_server: Hl7Server,
    session_factory,  # type: ignore[no-untyped-def]
) -> None:
    raw = replace_field(sample("orm_o01_nw.hl7"), b"ORC", 1, b"ZZ")
    (ack,) = send_messages(*hl7_server.address, [raw])
    lines = ack.decode("latin-1").split("\r")
    assert lines[1].startswith("MSA|AE|MSG00001")
    assert lines[2].startswith("ERR|ORC^1^1^103&")  # v2.3.1: ERR-1
    assert count(session_factory, ScheduledProcedureStep) == 0
    assert count(session_factory, Patient) == 0
    with session_factory() as session:
        (logged,) = session.scalars(select(Hl7Message)).all()
        assert (logged.outcome, logged.raw, logged.ack) == ("AE", raw, ack)
        assert "ORC-1" in logged.error
    good_client_gets_aa(hl7_server)


def test_unsupported_message_type_is_ar(hl7_server: Hl7Server) -> None:
    raw = replace_field(sample("orm_o01_nw_v25_tq1.hl7"), b"MSH", 9, b"ORU^R01^ORU_R01")
    (ack,) = send_messages(*hl7_server.address, [raw])
    code, _, _ = ack_summary(ack)
    assert code == "AR"
    assert "|MSH^1^9|200^Unsupported message type^HL70357|E" in ack.decode("utf-8")


def test_garbage_then_good_client(hl7_server: Hl7Server) -> None:
    with socket.create_connection(hl7_server.address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe" * 100)
        # A frame without MSH gets an AR; the connection stays usable.
        sock.sendall(frame(b"not hl7 at all"))
        framer = MllpFramer()
        acks: list[bytes] = []
        while not acks:
            data = sock.recv(65536)
            assert data
            acks = framer.feed(data)
        assert ack_summary(acks[0])[0] == "AR"
    good_client_gets_aa(hl7_server)


def test_oversized_frame_gets_ar_and_close(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    with Hl7Server(settings.replace(hl7_max_frame_bytes=4096), session_factory) as server:
        big = sample("orm_o01_nw.hl7") + b"NTE|1||" + b"x" * 10_000 + b"\r"
        with socket.create_connection(server.address, timeout=10) as sock:
            try:
                sock.sendall(frame(big))
            except OSError:
                pass  # the listener may close before it has read everything
            received = read_until_closed(sock)
        (ack,) = MllpFramer().feed(received)
        assert ack_summary(ack)[:2] == ("AR", "MSG00001")
        # Without a readable MSH the connection is just closed.
        with socket.create_connection(server.address, timeout=10) as sock:
            try:
                sock.sendall(b"\x0b" + b"y" * 6000)
            except OSError:
                pass
            assert read_until_closed(sock) == b""
        good_client_gets_aa(server)


def test_half_frame_then_disconnect(hl7_server: Hl7Server, session_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level("INFO", logger="mwl.hl7.server"):
        with socket.create_connection(hl7_server.address, timeout=10) as sock:
            sock.sendall(b"\x0b" + sample("orm_o01_nw.hl7")[:100])
        good_client_gets_aa(hl7_server)
    assert any("middle of a frame" in r.getMessage() for r in caplog.records)
    assert count(session_factory, Hl7Message) == 1  # the half message was never processed


def test_several_connections_at_once(hl7_server: Hl7Server, session_factory) -> None:  # type: ignore[no-untyped-def]
    # Three idle connections stay open while others are served.
    idle = [socket.create_connection(hl7_server.address, timeout=10) for _ in range(3)]
    try:
        results: dict[int, list[bytes]] = {}

        def client(n: int) -> None:
            raw = replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, f"PAR{n}".encode())
            raw = replace_field(raw, b"OBR", 20, f"SPS{n}".encode())
            results[n] = send_messages(*hl7_server.address, [raw], timeout=20)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(ack_summary(acks[0])[:2] for acks in results.values()) == [
            ("AA", f"PAR{n}") for n in range(4)
        ]
    finally:
        for sock in idle:
            sock.close()


def test_idle_timeout_closes_the_connection(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    with Hl7Server(settings.replace(hl7_idle_timeout_seconds=0.3), session_factory) as server:
        with socket.create_connection(server.address, timeout=10) as sock:
            started = time.monotonic()
            assert read_until_closed(sock) == b""
            assert time.monotonic() - started < 5


def test_shutdown_closes_open_connections(settings: Settings, session_factory) -> None:  # type: ignore[no-untyped-def]
    server = Hl7Server(settings, session_factory)
    server.start()
    host, port = server.address
    sock = socket.create_connection((host, port), timeout=10)
    try:
        (ack,) = send_messages(host, port, [sample("orm_o01_nw.hl7")])
        assert ack_summary(ack)[0] == "AA"
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 5
        assert read_until_closed(sock) == b""
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        send_messages(host, port, [sample("orm_o01_nw.hl7")], timeout=2)


def test_database_unavailable_is_ae_never_aa(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A database file in a directory that does not exist: every connect fails.
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'mwl.db'}")
    try:
        with Hl7Server(settings, make_session_factory(engine, writer=True)) as server:
            (ack,) = send_messages(*server.address, [sample("orm_o01_nw.hl7")])
            code, control_id, text = ack_summary(ack)
            assert (code, control_id) == ("AE", "MSG00001")
            assert "database unavailable" in text
    finally:
        engine.dispose()


def test_send_files_prints_one_line_per_message(hl7_server: Hl7Server, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # Two messages in one file, LF line ends (as an editor saves them).
    both = tmp_path / "both.hl7"
    both.write_bytes(
        (
            sample("orm_o01_nw.hl7")
            + replace_field(sample("orm_o01_nw.hl7"), b"ORC", 1, b"ZZ").replace(
                b"MSG00001", b"MSG00099"
            )
        ).replace(b"\r", b"\n")
    )
    status = send_files(
        *hl7_server.address, [SAMPLES / "orm_o01_nw_no_zds.hl7", both], progress=False
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert lines[0] == f"AA MSG00002 {SAMPLES / 'orm_o01_nw_no_zds.hl7'}"
    assert lines[1] == f"AA MSG00001 {both}"
    assert lines[2].startswith(f"AE MSG00099 {both}: ") and "ORC-1" not in lines[2]
    assert send_files(*hl7_server.address, [SAMPLES / "orm_o01_nw.hl7"], progress=False) == 0


def test_send_files_unreachable_or_missing_file_is_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        # Bound but not listening: connections are refused.
        assert (
            send_files("127.0.0.1", port, [SAMPLES / "orm_o01_nw.hl7"], progress=False, timeout=2)
            == 2
        )
    assert send_files("127.0.0.1", port, [tmp_path / "nope.hl7"], progress=False) == 2


def test_no_patient_data_in_logs_above_debug(hl7_server: Hl7Server, caplog) -> None:  # type: ignore[no-untyped-def]
    bad = replace_field(sample("orm_o01_nw_no_zds.hl7"), b"ORC", 7, b"^^^2026xx")
    bad = replace_field(bad, b"MSH", 10, b"MSGBAD")
    with caplog.at_level("DEBUG"):
        send_messages(*hl7_server.address, [sample("orm_o01_nw.hl7"), bad])
    informative = " ".join(r.getMessage() for r in caplog.records if r.levelno > 10)
    assert "MSG00001" in informative and "MSGBAD" in informative  # control IDs are logged
    for phi in ("Sample", "Anna", "PAT0001", "19800115", "Müller", "PAT0002", "ACC0001"):
        assert phi not in informative


def test_pipelined_messages_are_answered_in_order(hl7_server: Hl7Server) -> None:
    # Some engines send the next message before the ACK of the previous one.
    names = ["orm_o01_nw.hl7", "orm_o01_nw_no_zds.hl7", "orm_o01_ca.hl7"]
    with socket.create_connection(hl7_server.address, timeout=10) as sock:
        sock.sendall(b"".join(frame(sample(n)) for n in names))
        framer = MllpFramer()
        acks: list[bytes] = []
        while len(acks) < len(names):
            data = sock.recv(65536)
            assert data
            acks += framer.feed(data)
    assert [ack_summary(a)[:2] for a in acks] == [
        ("AA", "MSG00001"),
        ("AA", "MSG00002"),
        ("AA", "MSG00004"),
    ]
