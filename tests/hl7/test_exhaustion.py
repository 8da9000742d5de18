"""A real ``mwl serve`` under a connection flood and out of file descriptors.

HL7 floods must not stop DICOM or the web page; a process out of descriptors must
not spin or flood its log, and HL7 must come back once descriptors are free again.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.serve import broker_env, start_broker

from .edges import (
    ack_code,
    closed_by_peer,
    connect,
    exchange,
    message,
    process_ticks,
    start_limited_broker,
    wait_for,
)

pytestmark = pytest.mark.e2e

ECHOSCU = "/usr/bin/echoscu"
TICKS_PER_SECOND = 100


def c_echo(port: int) -> int:
    done = subprocess.run(
        [ECHOSCU, "-aet", "CT01", "-aec", "MWLTEST", "-to", "10", "127.0.0.1", str(port)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode


def web_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as response:
        return response.status


def ris_ack(port: int, control_id: str) -> str:
    with connect(("127.0.0.1", port)) as sock:
        return ack_code(exchange(sock, message(control_id), timeout=10))


def test_a_flood_from_one_host_leaves_hl7_dicom_and_the_web_page_answering(tmp_path):
    broker = start_broker(broker_env(f"sqlite:///{tmp_path / 'mwl.db'}"), tmp_path)
    flood: list[socket.socket] = []
    try:
        flood = [connect(("127.0.0.1", broker.hl7_port), "127.0.0.2") for _ in range(60)]
        # The default cap: 20 per address stay, the other 40 are closed at once.
        closed = sum(closed_by_peer(sock, 0.5 if i < 20 else 3.0) for i, sock in enumerate(flood))
        assert closed == 40
        started = time.monotonic()
        assert ris_ack(broker.hl7_port, "RIS1") == "AA"
        assert time.monotonic() - started < 2.0
        assert c_echo(broker.dicom_port) == 0
        assert web_status(broker.web_port) == 200
        lines = [line for line in broker.output if "closed at once" in line]
        assert len(lines) == 1 and "127.0.0.2" in lines[0]
    finally:
        for sock in flood:
            sock.close()
        broker.stop()


def _low_descriptor_limit() -> None:
    # Soft and hard: the broker cannot raise it back.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _ticks_over(pid: int, seconds: float) -> int:
    time.sleep(1.0)  # the accept backlog worked off, the threads asleep
    before = process_ticks(pid)
    time.sleep(seconds)
    return process_ticks(pid) - before


def test_out_of_descriptors_the_broker_neither_spins_nor_floods_its_log_and_recovers(tmp_path):
    env = broker_env(
        f"sqlite:///{tmp_path / 'mwl.db'}",
        MWL_HL7_MAX_CONNECTIONS="5000",
        MWL_HL7_MAX_CONNECTIONS_PER_ADDRESS="5000",
        MWL_DICOM_ACSE_TIMEOUT_SECONDS="300",
    )
    broker = start_limited_broker(env, tmp_path, _low_descriptor_limit)
    pid, hl7_port = broker.process.pid, broker.ports["hl7"]
    held: list[socket.socket] = []
    try:
        # 1. HL7 alone cannot take the last descriptors: past the reserve it refuses.
        held = [connect(("127.0.0.1", hl7_port), f"127.0.0.{2 + i % 6}") for i in range(300)]
        assert wait_for(lambda: broker.lines_with("nearly used up"), 10)
        assert c_echo(broker.ports["dicom"]) == 0
        assert web_status(broker.ports["web"]) == 200
        assert _ticks_over(pid, 2.0) <= 0.1 * 2.0 * TICKS_PER_SECOND
        # 2. Descriptors used up for real, by connections that never associate with DICOM.
        held += [
            connect(("127.0.0.1", broker.ports["dicom"]), f"127.0.1.{i % 3}") for i in range(150)
        ]
        held += [connect(("127.0.0.1", hl7_port), "127.0.2.1") for _ in range(5)]
        assert wait_for(lambda: broker.lines_with("cannot accept"), 10)
        lines_before = len(broker.output)
        # Back-off: a few wake-ups a second, not a spinning accept loop (100 % of a core).
        assert _ticks_over(pid, 3.0) <= 0.1 * 3.0 * TICKS_PER_SECOND
        assert len(broker.output) - lines_before <= 2
        assert len(broker.lines_with("cannot accept")) <= 2  # one per listener at most
    finally:
        for sock in held:
            sock.close()
    try:
        # 3. Descriptors free again: HL7 answers.
        assert wait_for(lambda: _try_ack(hl7_port), 20)
        assert c_echo(broker.ports["dicom"]) == 0
        # The start-up list of settings grows with every new setting (78 lines when
        # this bound was 100 for all output); the rest is what must not flood.
        rest = [line for line in broker.output if " mwl.cli: setting " not in line]
        assert len(rest) < 100 - 78, "\n".join(rest[-50:])
    finally:
        broker.stop()


def _try_ack(port: int) -> bool:
    try:
        return ris_ack(port, "BACK") == "AA"
    except OSError:
        return False


def _soft_limit_below_hard() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))


def test_mwl_serve_raises_its_open_file_limit_to_the_hard_one(tmp_path):
    broker = start_limited_broker(
        broker_env(f"sqlite:///{tmp_path / 'mwl.db'}"), tmp_path, _soft_limit_below_hard
    )
    try:
        with open(f"/proc/{broker.process.pid}/limits") as limits:
            (row,) = [line for line in limits if line.startswith("Max open files")]
        assert row.split()[3:5] == ["1024", "1024"]
        assert broker.lines_with("open-file limit raised from 256 to 1024")
    finally:
        broker.stop()
