"""The association layer on the wire: cancel, abort, reset and release mid-answer; stalled
readers; limits; bounded PDUs and identifiers; idle associations that cost nothing.

The client is :mod:`tests.rawscu` on a raw socket, so each test decides exactly
what is sent and when. The worklist is synthetic and large enough that an answer
is still being written when the client acts. These tests are about the network
layer, not the database, so they run on SQLite only.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select
from sqlalchemy.engine import Engine

from mwl.config import Settings
from mwl.dicom import keys as keytable
from mwl.dicom.find import FAILURE_IDENTIFIER_DOES_NOT_MATCH
from mwl.dicom.scp import WorklistScp
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.models import QueryLogEntry
from tests.databases import migrated_sqlite_url
from tests.factories import load_steps
from tests.rawscu import DEFLATED, AbortedError, AssociationRejectedError, RawScu, close_all

pytestmark = pytest.mark.e2e

STEPS = 6000
CANCEL, PENDING = 0xFE00, 0xFF00


def full_identifier(modality: str = "CT") -> Dataset:
    """Every key the broker knows, universal except Modality (long responses)."""

    def level(lv: keytable.Level) -> Dataset:
        out = Dataset()
        for spec in keytable.keys_at(lv):
            if spec.vr == "SQ":
                setattr(out, spec.keyword, Sequence([]))
            elif spec.vr not in ("US", "DS", "IS"):
                setattr(out, spec.keyword, "")
        return out

    ds = level(keytable.Level.TOP)
    sps = level(keytable.Level.SPS)
    sps.Modality = modality
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_all()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url(tmp_path_factory.mktemp("netdb")))
    load_steps(make_session_factory(engine, writer=True), STEPS, steps_per_order=50)
    yield engine
    engine.dispose()


def settings_for(engine: Engine, **changes: object) -> Settings:
    return Settings(
        database_url=str(engine.url),
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_ae_title="MWLTEST",
    ).replace(**changes)


@pytest.fixture(scope="module")
def scp(engine: Engine) -> Iterator[WorklistScp]:
    server = WorklistScp(settings_for(engine), make_session_factory(engine))
    server.start()
    yield server
    server.shutdown()


def client(scp: WorklistScp, **kwargs: object) -> RawScu:
    host, port = scp.address
    return RawScu(host, port, **kwargs)  # type: ignore[arg-type]


def query_log(engine: Engine, calling: str) -> list[QueryLogEntry]:
    with make_session_factory(engine)() as session:
        return list(
            session.scalars(
                select(QueryLogEntry)
                .where(QueryLogEntry.calling_ae_title == calling)
                .order_by(QueryLogEntry.id)
            )
        )


def dicom_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dicom-assoc")]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cancel_after_the_first_match_ends_the_answer_with_cancel_twenty_times(scp, engine):
    scu = client(scp)
    scu.associate(calling="CANCEL20", called="MWLTEST")
    received = []
    for message_id in range(1, 21):
        scu.send_find(full_identifier(), message_id=message_id)
        responses = scu.responses()
        assert next(responses).status == PENDING
        scu.send_cancel(message_id=message_id)
        count = 1
        for response in responses:
            if response.status != PENDING:
                break
            count += 1
        # Every answer ends with Cancel, long before its 6,000 matches.
        assert response.status == CANCEL, hex(response.status)
        assert int(response.command.MessageIDBeingRespondedTo) == message_id
        assert count < STEPS
        received.append(count)
    # The association is still good after twenty cancels.
    assert scu.find(full_identifier(modality="NONE"))[-1].status == 0x0000
    assert scu.release() == b"\x06"
    rows = query_log(engine, "CANCEL20")
    assert [r.ended for r in rows] == ["cancelled"] * 20 + ["completed"]
    # The broker counts what it handed to the socket: exactly what the modality got.
    assert [r.matches for r in rows[:20]] == received
    assert {r.status for r in rows[:20]} == {CANCEL}


@pytest.mark.parametrize("how", ["abort", "reset"])
def test_abort_or_reset_mid_answer_frees_the_association_at_once(scp, engine, how):
    calling = f"GONE{how.upper()}"
    warm = client(scp)
    warm.associate(calling="WARMUP", called="MWLTEST")
    warm.find(full_identifier(modality="NONE"))
    warm.release()
    assert wait_until(lambda: scp.server.open_associations == 0, 10)
    threads, fds = len(dicom_threads()), open_fds()
    for _ in range(30):
        scu = client(scp)
        scu.associate(calling=calling, called="MWLTEST")
        scu.send_find(full_identifier())
        assert next(scu.responses()).status == PENDING
        scu.abort() if how == "abort" else scu.reset()
    # Threads, sockets and the answers' buffers go as soon as the peer is gone.
    assert wait_until(lambda: scp.server.open_associations == 0, 10)
    assert wait_until(lambda: len(dicom_threads()) <= threads, 10)
    assert open_fds() <= fds + 4
    rows = query_log(engine, calling)
    assert len(rows) == 30
    assert {r.ended for r in rows} <= {"aborted", "connection lost", "completed"}
    assert {"aborted", "connection lost"} & {r.ended for r in rows}
    # An ended answer that sent no final response keeps Pending as its last status.
    assert all(r.status == PENDING for r in rows if r.ended != "completed")
    # And the SCP still answers.
    scu = client(scp)
    scu.associate(calling="AFTER", called="MWLTEST")
    assert scu.echo(scu.context_for(1)) == 0x0000


def test_release_mid_answer_stops_the_answer_and_gets_release_rp(scp, engine):
    scu = client(scp)
    scu.associate(calling="RELEASER", called="MWLTEST")
    scu.send_find(full_identifier())
    assert next(scu.responses()).status == PENDING
    scu.send(b"\x05\x00" + struct.pack(">L", 4) + b"\x00\x00\x00\x00")
    kinds = []
    while True:
        pdu = scu.read_pdu()
        kinds.append(pdu[0])
        if pdu[0] != 0x04:
            break
    # Pending responses already on their way, then A-RELEASE-RP (no final C-FIND-RSP).
    assert kinds[-1] == 0x06
    assert len(kinds) - 1 < STEPS
    # The requestor closes the connection after A-RELEASE-RP (PS3.8 9.1.5); the SCP
    # then lets the association go.
    scu.close()
    assert wait_until(lambda: scp.server.open_associations == 0, 5)
    assert wait_until(lambda: [r.ended for r in query_log(engine, "RELEASER")] == ["released"], 5)


def test_a_stalled_reader_holds_only_its_own_association_and_is_dropped(engine):
    with WorklistScp(
        settings_for(engine, dicom_network_timeout_seconds=2.0), make_session_factory(engine)
    ) as scp:
        scu = client(scp, rcvbuf=4096)
        scu.associate(calling="STALLED", called="MWLTEST")
        scu.send_find(full_identifier())
        # Never read again. Another modality is served meanwhile.
        time.sleep(0.5)
        other = client(scp)
        other.associate(calling="OTHER", called="MWLTEST")
        started = time.monotonic()
        assert other.echo(other.context_for(1)) == 0x0000
        assert time.monotonic() - started < 2.0
        assert other.release() == b"\x06"
        # The stalled answer is given up once the socket took nothing for 2 s.
        assert wait_until(lambda: scp.server.open_associations == 0, 15)
        rows = query_log(engine, "STALLED")
        assert [r.ended for r in rows] == ["timed out"]
        assert 0 < rows[0].matches < STEPS
        scu.close()


def test_silent_associations_do_not_wake_their_threads(scp):
    scus = []
    for index in range(20):
        scu = client(scp)
        scu.associate(calling=f"IDLE{index:02d}", called="MWLTEST")
        scus.append(scu)
    time.sleep(0.3)
    threads = dicom_threads()
    assert len(threads) >= 20

    def ticks() -> int:
        total = 0
        for thread in threads:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total

    before = ticks()
    time.sleep(2.0)
    # A thread that polled every millisecond would take tens of ticks in 2 s.
    assert ticks() - before <= 2
    for scu in scus:
        scu.release()


def associate_from(
    scp: WorklistScp, calling: str, source_ip: str
) -> tuple[RawScu, tuple[int, int, int] | None]:
    """An association from ``source_ip``, and its rejection (result, source, reason)."""
    scu = RawScu(scp.address[0], scp.address[1], bind=(source_ip, 0))
    try:
        scu.associate(calling=calling, called="MWLTEST")
    except AssociationRejectedError as exc:
        return scu, (exc.result, exc.source, exc.reason)
    return scu, None


def test_each_limit_rejects_with_local_limit_exceeded_and_one_log_line(engine, caplog):
    limits = dict(
        dicom_max_associations=6,
        dicom_max_associations_per_address=3,
        dicom_max_associations_per_ae=2,
    )
    local_limit = (2, 3, 2)  # rejected-transient, service-provider (presentation), limit
    expected = [
        # Per calling AE: the third association of one AE title, each from a new host.
        ("SAMEAE", "127.0.0.2", None),
        ("SAMEAE", "127.0.0.3", None),
        ("SAMEAE", "127.0.0.4", local_limit),
        ("SAMEAE", "127.0.0.5", local_limit),
        # Per address: the fourth association from one host, whatever its AE.
        ("HOSTA1", "127.0.0.6", None),
        ("HOSTA2", "127.0.0.6", None),
        ("HOSTA3", "127.0.0.6", None),
        ("HOSTA4", "127.0.0.6", local_limit),
        # In all: six are established; a seventh and an eighth caller are refused.
        ("SIXTH", "127.0.0.7", None),
        ("SEVENTH", "127.0.0.8", local_limit),
        ("EIGHTH", "127.0.0.9", local_limit),
    ]
    held = []
    with WorklistScp(settings_for(engine, **limits), make_session_factory(engine)) as scp:
        try:
            with caplog.at_level(logging.INFO, logger="mwl.dicom.net.server"):
                for calling, source, rejected in expected:
                    scu, got = associate_from(scp, calling, source)
                    held.append(scu)
                    assert got == rejected, (calling, source)
        finally:
            for scu in held:
                scu.close()
    lines = [r.getMessage() for r in caplog.records if "local limit" in r.getMessage()]
    # One line per limit, however often it is hit.
    assert len([m for m in lines if "dicom_max_associations_per_ae" in m]) == 1
    assert len([m for m in lines if "dicom_max_associations_per_address" in m]) == 1
    assert len([m for m in lines if "(dicom_max_associations)" in m]) == 1


def test_connections_that_never_associate_are_bounded_per_host(engine):
    settings = settings_for(
        engine, dicom_max_associations_per_address=3, dicom_acse_timeout_seconds=2.0
    )
    with WorklistScp(settings, make_session_factory(engine)) as scp:
        silent = [socket.create_connection(scp.address) for _ in range(6)]
        assert wait_until(lambda: scp.server.open_associations == 6, 5)
        # Twice the per-address limit are waiting for their A-ASSOCIATE-RQ: one more is
        # closed at once, before it costs a thread.
        extra = socket.create_connection(scp.address)
        extra.settimeout(5)
        assert extra.recv(10) == b""
        # Another host is not affected.
        other = RawScu(scp.address[0], scp.address[1], bind=("127.0.0.2", 0))
        other.associate(calling="OTHERHOST", called="MWLTEST")
        assert other.release() == b"\x06"
        # The silent ones are closed after the ACSE timeout.
        for sock in silent:
            sock.settimeout(10)
            assert sock.recv(10) == b""
            sock.close()
        extra.close()


def test_a_pdu_longer_than_advertised_is_aborted_by_its_header(scp):
    scu = client(scp)
    scu.associate(calling="LONGPDU", called="MWLTEST")
    assert scu.peer_max_length == 16384
    scu.send(b"\x04\x00" + struct.pack(">L", 16385))  # the header alone
    pdu = scu.read_pdu()
    assert pdu[0] == 0x07 and (pdu[8], pdu[9]) == (2, 6)  # provider, invalid parameter
    assert scu.closed_by_peer(within=5)


def test_an_oversized_associate_request_is_refused_unread(scp):
    scu = client(scp)
    scu.send(b"\x01\x00" + struct.pack(">L", 300 * 1024))
    pdu = scu.read_pdu()
    assert pdu[0] == 0x07
    assert scu.closed_by_peer(within=5)


@pytest.mark.parametrize("garbage", [b"\x09\x00\x00\x00\x00\x04abcd", b"GET / HTTP/1.1\r\n\r\n"])
def test_garbage_is_aborted_and_the_next_association_is_served(scp, garbage):
    scu = client(scp)
    scu.send(garbage)
    with pytest.raises(AbortedError):
        while scu.read_pdu()[0] != 0x07:
            pass
        raise AbortedError()
    good = client(scp)
    good.associate(calling="AFTERJUNK", called="MWLTEST")
    assert good.echo(good.context_for(1)) == 0x0000


def test_an_identifier_over_the_limit_fails_and_the_association_goes_on(engine):
    settings = settings_for(engine, dicom_max_identifier_bytes=2048)
    with WorklistScp(settings, make_session_factory(engine)) as scp:
        scu = client(scp)
        scu.associate(calling="BIGQUERY", called="MWLTEST")
        big = full_identifier()
        big.PatientComments = "x" * 3000  # a legal LT value, over the 2048-byte limit
        (final,) = scu.find(big)
        assert final.status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
        assert "larger than 2048 bytes" in str(final.command.ErrorComment)
        (none,) = scu.find(full_identifier(modality="NONE"))
        assert none.status == 0x0000
        scu.release()


def test_a_deflated_identifier_is_inflated_only_up_to_the_limit(scp, engine):
    scu = client(scp)
    scu.associate(calling="BOMB", called="MWLTEST", transfer_syntaxes=(DEFLATED,))
    # 60 KB that inflate to 60 MB (a valid deflate stream of zeros).
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(bytes(60 * 1024 * 1024)) + packer.flush()
    assert len(bomb) < 65536
    tracemalloc.start()
    try:
        scu.send_find_bytes(bomb)
        (final,) = list(_until_final(scu))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert final.status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert "larger than 65536 bytes" in str(final.command.ErrorComment)
    assert peak < 16 * 1024 * 1024  # never the 60 MB
    scu.release()


def _until_final(scu: RawScu) -> Iterator:
    for response in scu.responses():
        yield response
        if response.status not in (0xFF00, 0xFF01):
            return


def test_a_value_longer_than_its_vr_allows_fails_naming_the_key(scp):
    scu = client(scp)
    scu.associate(calling="LONGVALUE", called="MWLTEST")
    query = full_identifier()
    # As a modality may send it: pydicom's own validation would refuse to set it.
    query["PatientID"] = DataElement(0x00100020, "LO", "P" * 65, validation_mode=config.IGNORE)
    (final,) = scu.find(query)
    assert final.status == FAILURE_IDENTIFIER_DOES_NOT_MATCH
    assert final.command.OffendingElement == 0x00100020
    assert "PatientID" in str(final.command.ErrorComment)
    scu.release()


def test_a_shutdown_ends_open_associations(engine):
    scp = WorklistScp(settings_for(engine), make_session_factory(engine))
    scp.start()
    scu = client(scp)
    scu.associate(calling="SHUTDOWN", called="MWLTEST")
    idle = client(scp)
    idle.associate(calling="SHUTIDLE", called="MWLTEST")
    started = time.monotonic()
    scp.shutdown()
    assert time.monotonic() - started < 5
    assert idle.closed_by_peer(within=5)
    assert scu.closed_by_peer(within=5)
