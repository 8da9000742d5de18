"""The limits of the MLLP listener over real loopback sockets: caps, allow-list, frame deadline.

Source addresses in 127.0.0.0/8 stand for different hosts. These tests are about
the transport, so they run on SQLite only.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mwl.hl7.mllp import frame
from mwl.hl7.server import Hl7Server
from mwl.store.engine import make_engine, make_session_factory
from mwl.store.migrate import upgrade

from .edges import (
    ack_code,
    closed_by_peer,
    connect,
    exchange,
    message,
    thread_ticks,
    transport_settings,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('hl7limits') / 'mwl.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url


@pytest.fixture
def serve(database_url: str) -> Iterator:
    engine = make_engine(database_url)
    started: list[Hl7Server] = []

    def start(**changes: object) -> Hl7Server:
        server = Hl7Server(
            transport_settings(database_url, **changes), make_session_factory(engine, writer=True)
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
    engine.dispose()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "closed at once" in r.getMessage()]


def test_connections_over_the_per_address_cap_are_closed_and_a_ris_still_gets_aa(serve, caplog):
    caplog.set_level(logging.INFO, logger="mwl.hl7.server")
    server = serve(hl7_max_connections_per_address=5)
    flood = [connect(server.address, "127.0.0.2") for _ in range(12)]
    try:
        closed = [closed_by_peer(sock, 0.5 if i < 5 else 5.0) for i, sock in enumerate(flood)]
        assert closed == [False] * 5 + [True] * 7
        started = time.monotonic()
        with connect(server.address, "127.0.0.1") as ris:
            assert ack_code(exchange(ris, message("RIS1"))) == "AA"
        assert time.monotonic() - started < 2.0
        # One line for the seven refusals (rate-limited per address).
        lines = refusals(caplog)
        assert len(lines) == 1 and "127.0.0.2" in lines[0] and "per_address" in lines[0]
    finally:
        for sock in flood:
            sock.close()
    # Room again once they are gone.
    assert wait_until_open(server, 0)
    with connect(server.address, "127.0.0.2") as again:
        assert ack_code(exchange(again, message("AGAIN"))) == "AA"


def wait_until_open(server: Hl7Server, count: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while server.open_connections != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.open_connections == count


def test_the_total_cap_counts_connections_from_every_address(serve, caplog):
    caplog.set_level(logging.INFO, logger="mwl.hl7.server")
    server = serve(hl7_max_connections=8, hl7_max_connections_per_address=100)
    held = [connect(server.address, f"127.0.0.{2 + i % 4}") for i in range(8)]
    try:
        assert wait_until_open(server, 8)
        extra = [connect(server.address, f"127.0.0.{10 + i}") for i in range(3)]
        held_extra = [closed_by_peer(sock, 5.0) for sock in extra]
        for sock in extra:
            sock.close()
        assert held_extra == [True, True, True]
        assert not any(closed_by_peer(sock, 0.2) for sock in held)
        lines = refusals(caplog)
        assert len(lines) == 1 and "hl7_max_connections" in lines[0]
        held.pop().close()
        assert wait_until_open(server, 7)
        with connect(server.address, "127.0.0.20") as late:
            assert ack_code(exchange(late, message("LATE"))) == "AA"
    finally:
        for sock in held:
            sock.close()


def test_peers_outside_the_allow_list_are_closed_at_accept(serve, caplog):
    caplog.set_level(logging.INFO, logger="mwl.hl7.server")
    server = serve(hl7_allowed_peers=("127.0.0.1", "127.0.1.0/24"))
    for source in ("127.0.0.1", "127.0.1.77"):
        with connect(server.address, source) as allowed:
            assert ack_code(exchange(allowed, message("OK" + source[-2:]))) == "AA"
    for _ in range(3):
        with connect(server.address, "127.0.0.2") as outsider:
            assert exchange(outsider, message("NOPE")) == b""
    lines = refusals(caplog)
    assert len(lines) == 1 and "127.0.0.2" in lines[0] and "hl7_allowed_peers" in lines[0]


def test_a_frame_that_drips_in_is_closed_at_the_frame_deadline_without_an_ack(serve, caplog):
    caplog.set_level(logging.INFO, logger="mwl.hl7.server")
    # Each byte comes well within the idle timeout; only the frame deadline can stop it.
    server = serve(hl7_frame_timeout_seconds=3.0, hl7_idle_timeout_seconds=5.0)
    data = frame(message("DRIP"))
    with connect(server.address) as sock:
        started = time.monotonic()
        sent, closed_at, answer = 0, None, b""
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_at = time.monotonic()
                break
            sent += 1
            sock.settimeout(1.0)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionError:
                answer = b""
            closed_at = time.monotonic()
            break
    assert closed_at is not None and answer == b""
    assert 2.5 <= closed_at - started <= 5.0, closed_at - started
    assert sent < len(data)
    assert any("hl7_frame_timeout_seconds" in r.getMessage() for r in caplog.records)


def test_the_frame_deadline_starts_again_with_each_message(serve):
    server = serve(hl7_frame_timeout_seconds=1.0, hl7_idle_timeout_seconds=5.0)
    with connect(server.address) as sock:
        assert ack_code(exchange(sock, message("FIRST"))) == "AA"
        time.sleep(1.5)  # longer than a frame may take, shorter than the idle timeout
        assert ack_code(exchange(sock, message("SECOND"))) == "AA"


def test_silent_connections_and_the_listener_cost_no_cpu(serve):
    server = serve()
    silent = [connect(server.address, f"127.0.0.{2 + i % 5}") for i in range(30)]
    try:
        assert wait_until_open(server, 30)
        time.sleep(0.3)
        before = thread_ticks("hl7-")
        time.sleep(2.0)
        # A thread that polled every few milliseconds would take tens of ticks in 2 s.
        assert thread_ticks("hl7-") - before <= 2
    finally:
        for sock in silent:
            sock.close()


def _lowest_free_descriptor() -> int:
    probe = os.dup(0)
    os.close(probe)
    return probe


def test_out_of_descriptors_the_accept_loop_backs_off_and_recovers(serve, caplog):
    caplog.set_level(logging.INFO, logger="mwl.hl7.server")
    server = serve()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # its descriptor, made first
    (listener,) = [t for t in threading.enumerate() if t.name.startswith("hl7-listener")]
    stat = open(f"/proc/self/task/{listener.native_id}/stat", "rb")  # noqa: SIM115

    def ticks() -> int:
        stat.seek(0)
        fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        # No descriptor number left below the limit: the listener's accept() fails (EMFILE).
        resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_descriptor(), hard))
        client.settimeout(10)
        client.connect(server.address)  # completed by the kernel, waiting in the backlog
        time.sleep(0.3)
        before = ticks()
        time.sleep(2.0)
        spent = ticks() - before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        stat.close()
    # A spinning loop takes ~200 ticks in 2 s; backing off 0.1 s between tries, a few.
    assert spent <= 5
    lines = [r.getMessage() for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and "Too many open files" in lines[0]
    with client:
        assert ack_code(exchange(client, message("RECOVERED"))) == "AA"
