"""Fixtures of the HL7 adapter tests: the sample messages and a running listener."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from mwl.config import Settings
from mwl.hl7.server import Hl7Server

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "hl7"


def sample(name: str) -> bytes:
    """The bytes of ``samples/hl7/<name>``."""
    return (SAMPLES / name).read_bytes()


def all_samples() -> dict[str, bytes]:
    """Every sample message by file name."""
    return {path.name: path.read_bytes() for path in sorted(SAMPLES.glob("*.hl7"))}


def replace_field(message: bytes, segment: bytes, position: int, value: bytes) -> bytes:
    """``message`` with SEG-n (MSH numbering honoured) set to ``value``."""
    lines = message.split(b"\r")
    for index, line in enumerate(lines):
        if line.startswith(segment + b"|"):
            fields = line.split(b"|")
            n = position - 1 if segment == b"MSH" else position
            fields += [b""] * (n + 1 - len(fields))
            fields[n] = value
            lines[index] = b"|".join(fields)
            return b"\r".join(lines)
    raise AssertionError(f"no {segment!r} segment")


def drop_segment(message: bytes, segment: bytes) -> bytes:
    """``message`` without its ``segment`` lines."""
    return b"\r".join(line for line in message.split(b"\r") if not line.startswith(segment + b"|"))


@pytest.fixture
def hl7_server(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[Hl7Server]:
    """A listener on an ephemeral loopback port, stopped after the test."""
    server = Hl7Server(settings, session_factory)
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (bounded by ``limit`` seconds)."""
    sock.settimeout(limit)
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
