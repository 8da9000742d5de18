"""Helpers of the HL7 edge tests: a transport-only listener on SQLite, raw MLLP peers."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mwl.config import Settings
from mwl.hl7.client import ack_summary
from mwl.hl7.mllp import MllpFramer, frame

from .conftest import replace_field, sample

_LISTENING = {
    "hl7": re.compile(r"HL7 MLLP listening on [\d.]+:(\d+)"),
    "dicom": re.compile(r"DICOM worklist SCP \S+ listening on [\d.]+:(\d+)"),
    "web": re.compile(r"web page on http://[\d.]+:(\d+)/"),
}


def transport_settings(database_url: str, **changes: object) -> Settings:
    """Loopback, ephemeral ports: for tests about the transport, not the mapping."""
    return Settings(
        database_url=database_url,
        bind_address="127.0.0.1",
        hl7_port=0,
        hl7_tls_port=0,
        dicom_port=0,
        web_port=0,
    ).replace(**changes)


def message(control_id: str) -> bytes:
    """The sample new order with MSH-10 ``control_id``."""
    return replace_field(sample("orm_o01_nw.hl7"), b"MSH", 10, control_id.encode())


def exchange(sock: socket.socket, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send one framed message and return the ACK payload (b"" when the peer closed).

    A peer that closes with our bytes unread makes the kernel answer them with a
    reset, so a refusal shows as a reset as often as an end of stream: both are b"".
    """
    sock.settimeout(timeout)
    framer = MllpFramer()
    try:
        sock.sendall(frame(payload))
    except (BrokenPipeError, ConnectionResetError):
        return b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not data:
            return b""
        frames = framer.feed(data)
        if frames:
            return frames[0]


def ack_code(ack: bytes) -> str:
    """MSA-1 of an ACK ("" for no ACK)."""
    return ack_summary(ack)[0] if ack else ""


def connect(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to ``address`` from the loopback address ``source``."""
    sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def thread_ticks(prefix: str) -> int:
    """CPU clock ticks (user + system) of this process's threads named ``prefix``…"""
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread.native_id is not None:
            try:
                with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total


def process_ticks(pid: int) -> int:
    """CPU clock ticks (user + system) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tls_client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca``, with a client certificate when given."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


@dataclass
class Subprocess:
    """A ``mwl serve`` started with its own resource limits, and what it printed."""

    process: subprocess.Popen[str]
    ports: dict[str, int]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def lines_with(self, text: str) -> list[str]:
        return [line for line in list(self.output) if text in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_limited_broker(env: dict[str, str], cwd: Path, preexec: Callable[[], None]) -> Subprocess:
    """``mwl serve`` with ``preexec`` run in the child first (resource limits)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mwl.cli", "serve"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=preexec,
    )
    broker = Subprocess(process, {})
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            broker.output.append(line)
            for service, pattern in _LISTENING.items():
                if match := pattern.match(line):
                    broker.ports[service] = int(match[1])
            if line == "mwl is ready":
                ready.set()
        ready.set()

    broker.reader = threading.Thread(target=pump, daemon=True)
    broker.reader.start()
    if not ready.wait(60) or "mwl is ready" not in broker.output:
        broker.stop()
        pytest.fail("mwl serve did not become ready:\n" + "\n".join(broker.output))
    return broker


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
